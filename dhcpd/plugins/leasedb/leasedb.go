// Package leasedb is hyperdhcpd's address allocation plugin: DHCPv4 leases
// with the RFC 2131 lifecycle, kept in memory and persisted to SQLite with
// group commit, so that a lease is durable before its ACK leaves.
//
// As a CoreDHCP plugin it takes whitespace-separated key=value arguments:
//
//	database=PATH             lease database file (required)
//	server=IP/LEN             server address and subnet (required)
//	pool=FIRST-LAST           an address range; repeat for more (at least one)
//	exclude=IP                an address never to lease; repeatable
//	reserve=MAC,IP[,HOSTNAME] a fixed address for a MAC; repeatable
//	lease=DURATION            lease time (default 1h)
//
// hyperdhcpd itself builds the plugin with New from its configuration.
//
// Clients are identified by option 61 (client identifier) when present, else
// by their hardware address. The plugin must run after server_id and before
// the option plugins: it decides whether a packet is answered at all.
package leasedb

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Defaults of the timing options.
const (
	DefaultLeaseTime        = time.Hour
	DefaultOfferHold        = 30 * time.Second
	DefaultDeclineProbation = 10 * time.Minute
	commitTimeout           = 10 * time.Second
)

// Reservation pins an address (and host name) to a MAC address.
type Reservation struct {
	MAC      net.HardwareAddr
	IP       netip.Addr
	Hostname string
}

// Options configure a LeaseDB.
type Options struct {
	// Server is the server's own address with the subnet's prefix length.
	Server       netip.Prefix
	Pools        []Range
	Exclude      []netip.Addr
	Reservations []Reservation
	LeaseTime    time.Duration
	// OfferHold is how long an offered address stays reserved for the client.
	OfferHold time.Duration
	// DeclineProbation is how long a declined address is quarantined.
	DeclineProbation time.Duration
	// CommitWindow is how long a commit waits for more leases to share its
	// fsync: 0 means DefaultCommitWindow, a negative value no wait.
	CommitWindow time.Duration
	Store        Store
	// Now is the clock; nil means time.Now. Tests inject their own.
	Now    func() time.Time
	Logger *slog.Logger
	// Observer receives events for metrics; nil ignores them.
	Observer Observer
}

// Observer is told what the plugin did, for metrics.
type Observer interface {
	// Dropped counts a packet the plugin chose not to answer, with a reason.
	Dropped(reason string)
	// Committed reports one group commit.
	Committed(batch int, took time.Duration, err error)
}

type nopObserver struct{}

func (nopObserver) Dropped(string)                      {}
func (nopObserver) Committed(int, time.Duration, error) {}

// Reasons passed to Observer.Dropped.
const (
	DropOtherServer    = "client_selected_other_server"
	DropPoolExhausted  = "pool_exhausted"
	DropReservedInUse  = "reserved_address_in_use"
	DropMalformed      = "malformed_request"
	DropCommitFailed   = "lease_commit_failed"
	DropUnknownRelease = "release_of_unknown_lease"
	DropUnknownDecline = "decline_of_unknown_lease"
	DropUnsupported    = "unsupported_message_type"
)

// LeaseDB allocates addresses and tracks leases. All lease state lives in
// memory under mu; the store is written outside mu, so no lock is held
// across disk I/O.
type LeaseDB struct {
	server       netip.Prefix
	leaseTime    time.Duration
	offerHold    time.Duration
	probation    time.Duration
	now          func() time.Time
	log          *slog.Logger
	observer     Observer
	reservations map[string]Reservation // by MAC
	reservedIPs  map[netip.Addr]bool
	excluded     map[netip.Addr]bool
	committer    *committer
	store        Store
	// exhaustedWarning keeps an exhausted pool from flooding the log.
	exhaustedWarning rateLimit

	mu       sync.Mutex
	pools    []*addressPool
	byIP     map[netip.Addr]*Lease
	byClient map[string]*Lease
	// orphans are stored rows that memory dropped (a client moved to
	// another address); the packet that dropped them deletes them from the
	// store with its own commit, so a restart cannot resurrect them.
	orphans []Change
}

// New loads the stored leases and returns a plugin ready to serve.
func New(ctx context.Context, opts Options) (*LeaseDB, error) {
	if !opts.Server.IsValid() || !opts.Server.Addr().Is4() {
		return nil, errors.New("leasedb: server address with prefix length is required")
	}
	if len(opts.Pools) == 0 {
		return nil, errors.New("leasedb: at least one pool is required")
	}
	if opts.Store == nil {
		return nil, errors.New("leasedb: a store is required")
	}
	db := &LeaseDB{
		server:       opts.Server,
		leaseTime:    orDefault(opts.LeaseTime, DefaultLeaseTime),
		offerHold:    orDefault(opts.OfferHold, DefaultOfferHold),
		probation:    orDefault(opts.DeclineProbation, DefaultDeclineProbation),
		now:          opts.Now,
		log:          opts.Logger,
		observer:     opts.Observer,
		reservations: map[string]Reservation{},
		reservedIPs:  map[netip.Addr]bool{},
		excluded:     map[netip.Addr]bool{},
		store:        opts.Store,
		byIP:         map[netip.Addr]*Lease{},
		byClient:     map[string]*Lease{},
	}
	if db.now == nil {
		db.now = time.Now
	}
	if db.log == nil {
		db.log = slog.New(slog.DiscardHandler)
	}
	if db.observer == nil {
		db.observer = nopObserver{}
	}
	for _, r := range opts.Pools {
		p, err := newAddressPool(r)
		if err != nil {
			return nil, fmt.Errorf("leasedb: %w", err)
		}
		db.pools = append(db.pools, p)
	}
	for _, a := range opts.Exclude {
		db.excluded[a] = true
		if p := db.poolFor(a); p != nil {
			p.take(a)
		}
	}
	for _, r := range opts.Reservations {
		db.reservations[r.MAC.String()] = r
		db.reservedIPs[r.IP] = true
		// Reserved addresses inside a pool are never handed out dynamically.
		if p := db.poolFor(r.IP); p != nil {
			p.take(r.IP)
		}
	}
	stored, err := db.store.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("leasedb: %w", err)
	}
	if err := db.restore(stored); err != nil {
		return nil, fmt.Errorf("leasedb: %w", err)
	}
	window := opts.CommitWindow
	if window == 0 {
		window = DefaultCommitWindow
	}
	db.committer = newCommitter(db.store, window, db.observer.Committed)
	return db, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// restore rebuilds the in-memory state from stored rows. A held lease that
// cannot be placed means the database does not belong to this configuration
// or two leases share an address: refuse to start rather than hand an
// address out twice.
func (db *LeaseDB) restore(stored []Lease) error {
	now := db.now()
	subnet := db.server.Masked()
	var outside int
	for i := range stored {
		l := stored[i]
		if !subnet.Contains(l.IP) {
			return fmt.Errorf("stored lease %s lies outside the subnet %s: is this the right lease database?", l.IP, subnet)
		}
		switch {
		case l.State == StateOffered:
			continue // never stored; ignore if present
		case l.State == StateDeclined && !l.Expires.After(now):
			continue // probation over: the address is free again
		case l.State == StateBound && !l.Expires.After(now):
			l.State = StateFree // expired while we were down
		}
		if l.held() {
			pool := db.poolFor(l.IP)
			switch {
			case pool != nil && !db.reservedIPs[l.IP]:
				if !pool.take(l.IP) {
					return fmt.Errorf("stored lease %s conflicts with another lease or an excluded address", l.IP)
				}
			case db.reservedIPs[l.IP]:
				// Reserved addresses are marked taken already.
			default:
				// The address left the pools in a configuration change. The
				// client keeps it until expiry; renewals are refused then.
				outside++
				continue
			}
		}
		lease := &l
		db.byIP[l.IP] = lease
		if l.ClientID != "" {
			if prev := db.byClient[l.ClientID]; prev == nil || preferLease(lease, prev) {
				db.byClient[l.ClientID] = lease
			}
		}
	}
	if outside > 0 {
		db.log.Warn("stored leases lie outside every pool and reservation; they are not served", "count", outside)
	}
	db.log.Info("lease database loaded", "rows", len(stored), "held", db.countHeld())
	return nil
}

// preferLease picks the record that should stand for a client with two rows.
func preferLease(a, b *Lease) bool {
	if a.held() != b.held() {
		return a.held()
	}
	return a.Expires.After(b.Expires)
}

func (db *LeaseDB) countHeld() int {
	n := 0
	for _, l := range db.byIP {
		if l.held() {
			n++
		}
	}
	return n
}

func (db *LeaseDB) poolFor(a netip.Addr) *addressPool {
	for _, p := range db.pools {
		if p.contains(a) {
			return p
		}
	}
	return nil
}

// Close writes pending commits and closes the store.
func (db *LeaseDB) Close() error {
	db.committer.close()
	return db.store.Close()
}

// clientID identifies the client: option 61 when present, else chaddr.
func clientID(req *dhcpv4.DHCPv4) string {
	if id := req.GetOneOption(dhcpv4.OptionClientIdentifier); len(id) > 0 {
		return "id:" + hex.EncodeToString(id)
	}
	return "hw:" + req.ClientHWAddr.String()
}

func addrOf(ip net.IP) (netip.Addr, bool) {
	if ip == nil {
		return netip.Addr{}, false
	}
	a, ok := netip.AddrFromSlice(ip.To4())
	if !ok || a.IsUnspecified() {
		return netip.Addr{}, false
	}
	return a, true
}

// Handler4 is the CoreDHCP handler.
func (db *LeaseDB) Handler4(req, resp *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		return db.discover(req, resp)
	case dhcpv4.MessageTypeRequest:
		return db.request(req, resp)
	case dhcpv4.MessageTypeRelease:
		db.release(req)
		return nil, true
	case dhcpv4.MessageTypeDecline:
		db.decline(req)
		return nil, true
	case dhcpv4.MessageTypeInform:
		// INFORM: the client has an address already; answer options only,
		// without yiaddr or lease time (RFC 2131 4.3.5).
		return resp, false
	default:
		db.observer.Dropped(DropUnsupported)
		return nil, true
	}
}

func (db *LeaseDB) discover(req, resp *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
	client := clientID(req)
	requested, _ := addrOf(req.RequestedIPAddress())
	now := db.now()

	db.mu.Lock()
	lease, reason := db.offer(client, req.ClientHWAddr, requested, now)
	var offered Lease
	if lease != nil {
		offered = *lease
	}
	orphans := db.drainOrphans()
	db.mu.Unlock()
	if len(orphans) > 0 {
		db.commitOrDrop(orphans)
	}
	if lease == nil {
		db.observer.Dropped(reason)
		db.log.Debug("no address to offer", "client", client, "reason", reason)
		if reason == DropPoolExhausted && db.exhaustedWarning.Allow(now) {
			db.log.Warn("pool exhausted: DISCOVERs are going unanswered", "pool", db.Stats())
		}
		return nil, true
	}
	db.log.Debug("offer", "client", client, "ip", offered.IP)
	db.fillLease(resp, offered.IP, offered.Hostname, db.leaseTime)
	return resp, false
}

// offer picks the address for a DISCOVER and holds it; called with mu held.
func (db *LeaseDB) offer(client string, mac net.HardwareAddr, requested netip.Addr, now time.Time) (*Lease, string) {
	if r, ok := db.reservations[mac.String()]; ok {
		if holder := db.byIP[r.IP]; holder != nil && holder.ClientID != client && holder.held() && holder.Expires.After(now) {
			return nil, DropReservedInUse
		}
		return db.hold(client, mac, r.IP, r.Hostname, StateOffered, now.Add(db.offerHold)), ""
	}
	if l := db.byClient[client]; l != nil {
		switch {
		case l.State == StateOffered || l.State == StateBound:
			if db.dynamic(l.IP) {
				if l.State == StateOffered {
					l.Expires = now.Add(db.offerHold)
				}
				return l, ""
			}
		case l.State == StateFree && db.byIP[l.IP] == l && db.dynamic(l.IP) && db.poolFor(l.IP).take(l.IP):
			// A returning client gets its previous address while it is free.
			return db.hold(client, mac, l.IP, "", StateOffered, now.Add(db.offerHold)), ""
		}
	}
	if requested.IsValid() && db.dynamic(requested) && db.claimable(requested, client, now) && db.poolFor(requested).take(requested) {
		return db.hold(client, mac, requested, "", StateOffered, now.Add(db.offerHold)), ""
	}
	a, ok := db.takeAny()
	if !ok {
		db.reclaim(now)
		if a, ok = db.takeAny(); !ok {
			return nil, DropPoolExhausted
		}
	}
	return db.hold(client, mac, a, "", StateOffered, now.Add(db.offerHold)), ""
}

// dynamic reports whether a is leasable from the pools.
func (db *LeaseDB) dynamic(a netip.Addr) bool {
	return db.poolFor(a) != nil && !db.excluded[a] && !db.reservedIPs[a]
}

// claimable reports whether client may take a: nobody holds it, or only as
// a memory of a past lease.
func (db *LeaseDB) claimable(a netip.Addr, client string, now time.Time) bool {
	l := db.byIP[a]
	if l == nil || l.State == StateFree || l.ClientID == client && l.State != StateDeclined {
		return true
	}
	if !l.Expires.After(now) {
		db.expire(l)
		return true
	}
	return false
}

func (db *LeaseDB) takeAny() (netip.Addr, bool) {
	for _, p := range db.pools {
		if a, ok := p.takeAny(); ok {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// hold records a lease for client on a (whose pool bit is already taken, or
// which is reserved) and forgets the client's previous address.
func (db *LeaseDB) hold(client string, mac net.HardwareAddr, a netip.Addr, hostname string, state State, expires time.Time) *Lease {
	if prev := db.byClient[client]; prev != nil && prev.IP != a {
		db.forget(prev)
	}
	if other := db.byIP[a]; other != nil && other.ClientID != client {
		// a was free but remembered for another client; that memory goes.
		if db.byClient[other.ClientID] == other {
			delete(db.byClient, other.ClientID)
		}
	}
	l := db.byIP[a]
	if l == nil || l.ClientID != client {
		l = &Lease{IP: a, ClientID: client}
		db.byIP[a] = l
	}
	l.MAC, l.Hostname, l.State, l.Expires = mac, hostname, state, expires
	db.byClient[client] = l
	return l
}

// forget drops a client's lease and frees its address.
func (db *LeaseDB) forget(l *Lease) {
	if l.held() {
		db.freeAddress(l.IP)
	}
	if l.State != StateOffered {
		db.orphans = append(db.orphans, Change{Lease: *l, Delete: true})
	}
	if db.byIP[l.IP] == l {
		delete(db.byIP, l.IP)
	}
	if db.byClient[l.ClientID] == l {
		delete(db.byClient, l.ClientID)
	}
}

func (db *LeaseDB) freeAddress(a netip.Addr) {
	if p := db.poolFor(a); p != nil && !db.reservedIPs[a] && !db.excluded[a] {
		p.free(a)
	}
}

// drainOrphans returns and clears the pending deletions; with mu held.
func (db *LeaseDB) drainOrphans() []Change {
	out := db.orphans
	db.orphans = nil
	return out
}

// expire turns a held lease whose time is up into a free one.
func (db *LeaseDB) expire(l *Lease) {
	if !l.held() {
		return
	}
	db.freeAddress(l.IP)
	if l.State == StateDeclined {
		delete(db.byIP, l.IP)
		return
	}
	l.State = StateFree
}

// reclaim expires every lease whose time is up; called with mu held.
func (db *LeaseDB) reclaim(now time.Time) int {
	n := 0
	for _, l := range db.byIP {
		if l.held() && !l.Expires.After(now) {
			db.expire(l)
			n++
		}
	}
	return n
}

// Reclaim expires every lease whose time is up and returns how many.
func (db *LeaseDB) Reclaim() int {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.reclaim(db.now())
}

func (db *LeaseDB) request(req, resp *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
	client := clientID(req)
	now := db.now()
	serverID, selecting := addrOf(req.ServerIdentifier())
	requested, hasRequested := addrOf(req.RequestedIPAddress())
	ciaddr, hasCiaddr := addrOf(req.ClientIPAddr)

	var target netip.Addr
	switch {
	case selecting: // SELECTING: the answer to an OFFER
		if serverID != db.server.Addr() {
			// The client chose another server: let our offer go, say nothing.
			db.mu.Lock()
			if l := db.byClient[client]; l != nil && l.State == StateOffered {
				db.forget(l)
			}
			db.mu.Unlock()
			db.observer.Dropped(DropOtherServer)
			return nil, true
		}
		if !hasRequested {
			db.observer.Dropped(DropMalformed)
			return nil, true
		}
		target = requested
	case hasRequested: // INIT-REBOOT: verifying a remembered address
		target = requested
	case hasCiaddr: // RENEWING or REBINDING
		target = ciaddr
	default:
		db.observer.Dropped(DropMalformed)
		return nil, true
	}
	if !db.server.Masked().Contains(target) {
		return db.nak(req, client, "address is not on this network", target)
	}

	db.mu.Lock()
	lease, ok := db.bind(client, req.ClientHWAddr, target, now)
	var row Lease
	if ok {
		row = *lease
	}
	changes := db.drainOrphans()
	db.mu.Unlock()
	if !ok {
		if len(changes) > 0 {
			db.commitOrDrop(changes)
		}
		return db.nak(req, client, "address is not this client's", target)
	}

	ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
	defer cancel()
	if err := db.committer.commit(ctx, append(changes, Change{Lease: row})...); err != nil {
		// Without a durable lease there is no ACK; the client retries.
		db.log.Error("lease not committed, not acknowledging", "ip", row.IP, "client", client, "error", err)
		db.observer.Dropped(DropCommitFailed)
		return nil, true
	}
	db.log.Debug("ack", "client", client, "ip", row.IP, "expires", row.Expires)
	db.fillLease(resp, row.IP, row.Hostname, db.leaseTime)
	return resp, false
}

// bind makes target the client's bound lease if it may have it; with mu held.
func (db *LeaseDB) bind(client string, mac net.HardwareAddr, target netip.Addr, now time.Time) (*Lease, bool) {
	expires := now.Add(db.leaseTime)
	if r, ok := db.reservations[mac.String()]; ok {
		if r.IP != target || !db.claimable(target, client, now) {
			return nil, false
		}
		return db.hold(client, mac, target, r.Hostname, StateBound, expires), true
	}
	if !db.dynamic(target) {
		return nil, false // outside the pools, excluded, or someone's reservation
	}
	if l := db.byIP[target]; l != nil && l.ClientID == client && (l.State == StateOffered || l.State == StateBound) {
		return db.hold(client, mac, target, "", StateBound, expires), true
	}
	// The client is not known to hold target (a reboot, a restart of ours
	// that lost an offer, or a lease from before): as the authority for this
	// subnet, grant it when it is free, refuse it otherwise.
	if !db.claimable(target, client, now) || !db.poolFor(target).take(target) {
		return nil, false
	}
	return db.hold(client, mac, target, "", StateBound, expires), true
}

// commitOrDrop writes changes that no reply waits for, logging a failure.
func (db *LeaseDB) commitOrDrop(changes []Change) {
	ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
	defer cancel()
	if err := db.committer.commit(ctx, changes...); err != nil {
		db.log.Error("lease changes not committed", "changes", len(changes), "error", err)
	}
}

func (db *LeaseDB) release(req *dhcpv4.DHCPv4) {
	client := clientID(req)
	ciaddr, ok := addrOf(req.ClientIPAddr)
	db.mu.Lock()
	l := db.byClient[client]
	if !ok || l == nil || l.IP != ciaddr || l.State != StateBound {
		db.mu.Unlock()
		db.observer.Dropped(DropUnknownRelease)
		return
	}
	db.freeAddress(l.IP)
	l.State, l.Expires = StateFree, db.now()
	row := *l
	db.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
	defer cancel()
	if err := db.committer.commit(ctx, Change{Lease: row}); err != nil {
		// The address is free in memory; after a restart it would look bound
		// until it expires, which wastes it but never hands it out twice.
		db.log.Error("release not committed", "ip", row.IP, "error", err)
	}
	db.log.Debug("release", "client", client, "ip", row.IP)
}

func (db *LeaseDB) decline(req *dhcpv4.DHCPv4) {
	client := clientID(req)
	declined, ok := addrOf(req.RequestedIPAddress())
	now := db.now()
	db.mu.Lock()
	l := db.byIP[declined]
	if !ok || l == nil || l.ClientID != client || !l.held() {
		db.mu.Unlock()
		db.observer.Dropped(DropUnknownDecline)
		return
	}
	// The address is in use by someone we do not know: quarantine it, and
	// detach it from the client so its next DISCOVER gets another address.
	if db.byClient[client] == l {
		delete(db.byClient, client)
	}
	quarantined := &Lease{IP: declined, State: StateDeclined, Expires: now.Add(db.probation)}
	db.byIP[declined] = quarantined
	row := *quarantined
	db.mu.Unlock()

	db.log.Warn("address declined by client, quarantined", "ip", declined, "client", client, "until", row.Expires)
	ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
	defer cancel()
	if err := db.committer.commit(ctx, Change{Lease: row}); err != nil {
		db.log.Error("decline not committed", "ip", declined, "error", err)
	}
}

func (db *LeaseDB) nak(req *dhcpv4.DHCPv4, client, why string, target netip.Addr) (*dhcpv4.DHCPv4, bool) {
	db.log.Debug("nak", "client", client, "requested", target, "reason", why)
	// A NAK carries none of the options the chain may have added so far.
	nak, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(db.server.Addr().AsSlice()))),
		dhcpv4.WithOption(dhcpv4.OptMessage(why)),
	)
	if err != nil {
		db.observer.Dropped(DropMalformed)
		return nil, true
	}
	return nak, true
}

// fillLease sets the address, lease time and renewal times of an OFFER or ACK.
func (db *LeaseDB) fillLease(resp *dhcpv4.DHCPv4, a netip.Addr, hostname string, leaseTime time.Duration) {
	resp.YourIPAddr = net.IP(a.AsSlice())
	resp.UpdateOption(dhcpv4.OptIPAddressLeaseTime(leaseTime))
	resp.UpdateOption(dhcpv4.OptRenewTimeValue(leaseTime / 2))
	resp.UpdateOption(dhcpv4.OptRebindingTimeValue(leaseTime * 7 / 8))
	if hostname != "" {
		resp.UpdateOption(dhcpv4.OptHostName(hostname))
	}
}

// rateLimit allows one event per minute.
type rateLimit struct {
	mu   sync.Mutex
	last time.Time
}

// Allow reports whether an event at now may happen.
func (r *rateLimit) Allow(now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Sub(r.last) < time.Minute {
		return false
	}
	r.last = now
	return true
}

// Stats counts the pools' addresses.
type Stats struct {
	Size, Used, Free int64
}

// Stats returns the current pool usage.
func (db *LeaseDB) Stats() Stats {
	db.mu.Lock()
	defer db.mu.Unlock()
	var s Stats
	for _, p := range db.pools {
		s.Size += p.size
	}
	for a := range db.excluded {
		if db.poolFor(a) != nil {
			s.Size--
		}
	}
	now := db.now()
	for a, l := range db.byIP {
		if l.held() && l.Expires.After(now) && db.poolFor(a) != nil {
			s.Used++
		}
	}
	s.Free = s.Size - s.Used
	return s
}
