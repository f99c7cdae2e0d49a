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
//	identify=client-id|mac    what keys a lease (default client-id)
//
// hyperdhcpd itself builds the plugin with New from its configuration.
//
// Clients are identified by option 61 (client identifier) when present, else
// by their hardware address; Options.IdentifyByMAC (argument identify=mac)
// always uses the hardware address. The plugin must run after server_id and before
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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/hyperdhcp/hyperdhcp/dhcpd/internal/ratelimit"
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
	// IdentifyByMAC keys leases by hardware address even when a client
	// sends option 61 (Kea's match-client-id false).
	IdentifyByMAC bool
	// Resolver, when set, says who a MAC belongs to (a VM), which then
	// outranks option 61 and the MAC as the lease key.
	Resolver Resolver
	// OnlyKnown drops packets from MACs the Resolver does not know.
	OnlyKnown bool
	// Notify, when set, is told of lease events of clients the Resolver
	// knows, outside any lock; it must not block.
	Notify func(LeaseEvent)
	// ResolverStale, when it returns true (the resolver cannot see the
	// API), lets a MAC the Resolver does not know be served as the VM the
	// lease database last saw it as, so VMs renew through an API outage.
	ResolverStale func() bool
	Store         Store
	// Now is the clock; nil means time.Now. Tests inject their own.
	Now    func() time.Time
	Logger *slog.Logger
	// Observer receives events for metrics; nil ignores them.
	Observer Observer
	// OnStorageFault, when set, is called when lease writes start failing
	// (with the error) and when they succeed again (with nil).
	OnStorageFault func(err error)
}

// Identity is who a client is, as a Resolver knows it.
type Identity struct {
	// Key files the lease: stable across the client's restarts, moves and
	// MAC changes (for a VM: namespace, name and interface).
	Key string
	// Hostname is sent as option 12.
	Hostname string
	// Pin is an address the client must get, if it can be given.
	Pin netip.Addr
}

// LeaseEvent is something a VM's owner wants to know about its address.
type LeaseEvent struct {
	Key    string // the Identity's key
	Reason string // EventAssigned or EventPoolExhausted
	IP     netip.Addr
}

// Reasons of LeaseEvents.
const (
	EventAssigned      = "AddressAssigned"
	EventPoolExhausted = "PoolExhausted"
	// EventPinUnusable: the pinned address (IP) is outside the subnet, the
	// server's, excluded, reserved or held by another client; the VM is
	// served from the pools. Told once per VM and address.
	EventPinUnusable = "PinRefused"
)

// Resolver tells the plugin who sends a packet. It answers from memory:
// the packet path never waits on it.
type Resolver interface {
	// Resolve returns the identity mac belongs to; false when none.
	Resolve(mac net.HardwareAddr) (Identity, bool)
	// PinnedBy returns the key of the identity ip is pinned to; false when
	// the address is pinned to nobody.
	PinnedBy(ip netip.Addr) (string, bool)
}

// Observer is told what the plugin did, for metrics.
type Observer interface {
	// Dropped counts a packet the plugin chose not to answer, with a reason.
	Dropped(reason string)
	// Refused counts a NAK, with a reason.
	Refused(reason string)
	// Committed reports one group commit.
	Committed(changes int, took time.Duration, err error)
	// StorageAvailable reports that lease writes started failing (false)
	// or succeed again (true).
	StorageAvailable(available bool)
}

type nopObserver struct{}

func (nopObserver) Dropped(string)                      {}
func (nopObserver) Refused(string)                      {}
func (nopObserver) Committed(int, time.Duration, error) {}
func (nopObserver) StorageAvailable(bool)               {}

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
	DropUnknownClient  = "init_reboot_from_unknown_client"
	DropForeignRelay   = "relay_outside_subnet"
	DropUnknownMAC     = "unknown_mac"
	DropRenewalsOnly   = "renewals_only"
)

// Reasons passed to Observer.Refused; each NAK says its reason in option 56.
const (
	NakNotOnNetwork = "not_on_network"
	NakOutsidePools = "outside_pools"
	NakInUse        = "in_use"
	NakOtherAddress = "other_address"
	NakReservation  = "not_reservation"
	NakPinned       = "not_pinned_address"
)

var nakMessages = map[string]string{
	NakNotOnNetwork: "address is not on this network",
	NakOutsidePools: "address is not leased from this server's pools",
	NakInUse:        "address is in use by another client",
	NakOtherAddress: "the client's lease is for another address",
	NakReservation:  "address is not this client's reservation",
	NakPinned:       "address is not the one pinned to this client",
}

// LeaseDB is the leasedb plugin: it translates packets for the allocator,
// serialises it under one mutex, and answers a REQUEST only once its lease
// is durable. No lock is held across disk I/O.
type LeaseDB struct {
	server netip.Prefix
	// policy is how packets are read and answered; Reconfigure replaces it.
	policy atomic.Pointer[policy]
	// pinUnusable remembers the unusable pin told per key, to tell it once.
	pinUnusable sync.Map
	now         func() time.Time
	log         *slog.Logger
	observer    Observer
	committer   *committer
	store       Store
	// Warnings that could come once per packet are logged once a minute.
	exhaustedWarning, checkpointWarning ratelimit.PerMinute
	onStorageFault                      func(error)
	stopCheckpoints                     chan struct{}
	closing                             sync.Once
	checkpointsDone                     chan struct{}

	mu    sync.Mutex
	alloc *allocator
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
	alloc, err := newAllocator(&opts)
	if err != nil {
		return nil, fmt.Errorf("leasedb: %w", err)
	}
	db := &LeaseDB{
		server:         opts.Server,
		now:            opts.Now,
		log:            opts.Logger,
		observer:       opts.Observer,
		store:          opts.Store,
		onStorageFault: opts.OnStorageFault,
		alloc:          alloc,
	}
	db.policy.Store(policyOf(&opts, alloc))
	if db.now == nil {
		db.now = time.Now
	}
	if db.log == nil {
		db.log = slog.New(slog.DiscardHandler)
	}
	if db.observer == nil {
		db.observer = nopObserver{}
	}
	stored, err := db.store.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("leasedb: %w", err)
	}
	alloc.restore(stored, db.now())
	stats := alloc.stats()
	if stats.Outside > 0 {
		db.log.Warn("leases outside the configured subnet, pools and reservations are kept until they expire; their renewals are refused",
			"count", stats.Outside)
	}
	db.log.Info("lease database loaded", "rows", len(stored), "used", stats.Used, "quarantined", stats.Quarantined)
	db.committer = newCommitter(db.store, db.observer.Committed, db.storageFaulted)
	db.stopCheckpoints, db.checkpointsDone = make(chan struct{}), make(chan struct{})
	go db.checkpoint()
	return db, nil
}

// policy is the part of the options that says how a packet is read and
// answered, beside the allocator's.
type policy struct {
	// renewalsOnly: see SetRenewalsOnly.
	renewalsOnly  bool
	identifyByMAC bool
	resolver      Resolver
	onlyKnown     bool
	resolverStale func() bool
	notify        func(LeaseEvent)
}

func policyOf(opts *Options, alloc *allocator) *policy {
	return &policy{
		identifyByMAC: opts.IdentifyByMAC,
		resolver:      opts.Resolver,
		onlyKnown:     opts.OnlyKnown,
		resolverStale: opts.ResolverStale,
		notify:        opts.Notify,
	}
}

// SetRenewalsOnly turns renewals-only mode on or off. In it a client is
// told only what it already holds: a RENEWING or REBINDING REQUEST for its
// own bound, unexpired lease is ACKed with the time left, nothing is extended, allocated,
// released or written, and every other packet gets no answer. It is what
// a replica of a pair may do when no replica can hold the Lease (the API
// server is away): renewing a client's own address cannot give it to
// anyone else, and extending nothing keeps the other replica's copy true.
func (db *LeaseDB) SetRenewalsOnly(on bool) {
	db.mu.Lock()
	defer db.mu.Unlock()
	p := *db.policy.Load()
	p.renewalsOnly = on
	db.policy.Store(&p)
}

// SetLeaseTimeCap caps the leases granted from now on at d (0: no cap). A
// replica of a pair that goes on without its standby caps them at the
// maximum client lead time, so a lease the standby never saw ends soon
// after a takeover. An ACK decided without the cap whose lease then gets
// written without the replica is taken back (ErrUnreplicated).
func (db *LeaseDB) SetLeaseTimeCap(d time.Duration) {
	db.mu.Lock()
	defer db.mu.Unlock()
	db.alloc.leaseCap = d
}

// Reconfigure applies edited options while the plugin serves: pools,
// exclusions, reservations, lease time, client identity and the resolver.
// Every lease stays. A lease the new options no longer cover is kept until
// it expires, its renewals refused, as after a restart. The server, store
// and daemon settings (OfferHold, DeclineProbation, Observer, Logger,
// OnStorageFault) are those New was given; only the others are read.
//
// A packet handled while Reconfigure runs is answered by either the old or
// the new options for the allocator, but hyperdhcpd's server runs it while
// no packet is being answered (Server.Reconfigure).
func (db *LeaseDB) Reconfigure(opts Options) error {
	if len(opts.Pools) == 0 {
		return errors.New("leasedb: at least one pool is required")
	}
	if opts.Server != db.server {
		return fmt.Errorf("leasedb: the server address (%s) cannot change while serving (to %s)", db.server, opts.Server)
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	opts.OfferHold, opts.DeclineProbation = db.alloc.offerHold, db.alloc.probation
	alloc, err := db.alloc.reconfigured(&opts)
	if err != nil {
		return fmt.Errorf("leasedb: %w", err)
	}
	db.alloc = alloc
	next := policyOf(&opts, alloc)
	next.renewalsOnly = db.policy.Load().renewalsOnly
	db.policy.Store(next)
	if outside := alloc.stats().Outside; outside > 0 {
		db.log.Warn("leases outside the configured subnet, pools and reservations are kept until they expire; their renewals are refused",
			"count", outside)
	}
	return nil
}

// storageFaulted reports a storage fault episode: one line, a metric and
// the callback when writes start failing, the same when they recover.
func (db *LeaseDB) storageFaulted(err error, since time.Time, attempts int) {
	if err != nil {
		db.log.Error("lease database writes are failing: no REQUEST is acknowledged until a write succeeds; retrying every second", "error", err)
	} else {
		db.log.Info("lease database writes succeed again", "after", time.Since(since).Round(time.Millisecond).String(), "failed_attempts", attempts)
	}
	db.observer.StorageAvailable(err == nil)
	if db.onStorageFault != nil {
		db.onStorageFault(err)
	}
}

// StorageFault returns the storage fault in progress, with when writes
// started failing; a nil error while writes succeed.
func (db *LeaseDB) StorageFault() (since time.Time, err error) { return db.committer.fault() }

// StorageError describes the storage fault in progress (writes failing
// since when, and why); nil while writes succeed.
func (db *LeaseDB) StorageError() error {
	since, err := db.committer.fault()
	if err == nil {
		return nil
	}
	return fmt.Errorf("lease database writes failing since %s: %w", since.UTC().Format(time.RFC3339), err)
}

// A checkpoint copies the WAL into the database file, after which the
// writer starts the WAL over instead of growing it. The committer restarts
// the WAL itself every few hundred commits (a checkpoint beside a busy
// writer never catches up); this one, beside the writer, copies the rest
// every checkpointInterval, and every second during a storage fault, since
// a full volume is often full of WAL.
const (
	checkpointInterval = 10 * time.Second
	checkpointPoll     = time.Second
)

// checkpointer is a Store whose journal can be checkpointed.
type checkpointer interface {
	Checkpoint(ctx context.Context) (walPages, copied int, err error)
	WALSize() int64
}

// checkpoint runs checkpoints beside the writer (SQLite would otherwise
// run them inside some client's commit) until the LeaseDB closes.
func (db *LeaseDB) checkpoint() {
	defer close(db.checkpointsDone)
	store, ok := db.store.(checkpointer)
	if !ok {
		return
	}
	ticker := time.NewTicker(checkpointPoll)
	defer ticker.Stop()
	last := time.Now()
	for {
		select {
		case <-db.stopCheckpoints:
			return
		case <-ticker.C:
		}
		wal := store.WALSize()
		faulty := db.committer.faulty()
		if wal == 0 || !(faulty || time.Since(last) >= checkpointInterval) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
		pages, copied, err := store.Checkpoint(ctx)
		cancel()
		switch {
		case err == nil:
			last = time.Now()
			db.log.Debug("lease database checkpoint", "wal_pages", pages, "copied", copied)
		case faulty:
			// Part of the storage fault already logged.
			db.log.Debug("lease database checkpoint failed", "error", err)
		case db.checkpointWarning.Allow(db.now()):
			db.log.Warn("lease database checkpoint failed; the WAL grows until one succeeds", "error", err)
		}
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// locked runs f with the lease lock held and hands the changes f made to
// the committer, in order, to be written in the background: for changes
// no reply depends on. The deferred unlock keeps a panicking f from locking
// out every other packet.
func (db *LeaseDB) locked(f func(now time.Time)) {
	if db.lockedTicket(f) != 0 {
		db.committer.flush()
	}
}

// lockedTicket is locked for a caller that waits for the changes to be
// durable: it returns their ticket (0 when f changed nothing), and the wait
// writes them.
func (db *LeaseDB) lockedTicket(f func(now time.Time)) uint64 {
	db.mu.Lock()
	defer db.mu.Unlock()
	f(db.now())
	changes := db.alloc.takeLog()
	if len(changes) == 0 {
		return 0 // nothing to write or wait for: most DISCOVERs, NAKs, Stats
	}
	return db.committer.append(changes)
}

// Close writes pending changes and closes the store.
func (db *LeaseDB) Close() error {
	db.closing.Do(func() { close(db.stopCheckpoints) })
	<-db.checkpointsDone
	db.committer.close()
	return db.store.Close()
}

// Check reports whether the plugin can still serve: the lease lock can be
// taken and no write has hung. It backs hyperdhcpd's liveness probe.
func (db *LeaseDB) Check(timeout time.Duration) error {
	acquired := make(chan struct{})
	go func() {
		db.mu.Lock()
		db.mu.Unlock() //nolint:staticcheck // only proving the lock can be taken
		close(acquired)
	}()
	select {
	case <-acquired:
	case <-time.After(timeout):
		return fmt.Errorf("the lease lock has been held for more than %s", timeout)
	}
	if d := db.committer.stuckFor(time.Now()); d > timeout {
		return fmt.Errorf("a lease database write has been running for %s", d.Round(time.Second))
	}
	return nil
}

// clientOf identifies the sender: by its Resolver identity when it has
// one, else option 61 when present (unless leases are keyed by MAC), else
// chaddr. It returns false (and counts the drop) for a MAC the Resolver does
// not know when only known clients are served.
func (db *LeaseDB) clientOf(req *dhcpv4.DHCPv4) (client, bool) {
	c := client{mac: req.ClientHWAddr, id: "hw:" + req.ClientHWAddr.String()}
	p := db.policy.Load()
	if p.resolver != nil {
		if who, ok := p.resolver.Resolve(req.ClientHWAddr); ok {
			c.id, c.hostname, c.pin = who.Key, who.Hostname, who.Pin
			return c, true
		}
		if key, pin, ok := db.storedVM(p, req.ClientHWAddr); ok {
			c.id, c.pin = key, pin
			return c, true
		}
		if p.onlyKnown {
			db.observer.Dropped(DropUnknownMAC)
			return c, false
		}
	}
	if p.identifyByMAC {
		return c, true
	}
	if id := req.GetOneOption(dhcpv4.OptionClientIdentifier); len(id) > 0 {
		c.id = "id:" + hex.EncodeToString(id)
	}
	return c, true
}

// storedVM returns the VM identity the lease database knows mac by, while
// the resolver is stale. A lease the VM holds outside the pools was its
// pinned address: it stays pinned until the resolver can say otherwise.
func (db *LeaseDB) storedVM(p *policy, mac net.HardwareAddr) (key string, pin netip.Addr, ok bool) {
	if p.resolverStale == nil || !p.resolverStale() {
		return "", netip.Addr{}, false
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	if key, ok = db.alloc.vmByMAC[mac.String()]; !ok {
		return "", netip.Addr{}, false
	}
	if e := db.alloc.byClient[key]; e != nil && e.State == StateBound && !db.alloc.leasable(e.IP) {
		pin = e.IP
	}
	return key, pin, true
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

// Handler4 is the CoreDHCP handler: it returns an ACK once its lease is
// written.
func (db *LeaseDB) Handler4(req, resp *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
	return db.handle(req, resp, nil)
}

// deferral receives what Deferred leaves for later: ACKs whose leases are
// not yet written, OFFERs whose address is to be probed first.
type deferral interface {
	ack(req *dhcpv4.DHCPv4, ack pendingAck)
	offer(req *dhcpv4.DHCPv4, offer pendingOffer)
	released(ip netip.Addr)
}

// handle answers req; with defer_ set, REQUEST, RELEASE and DECLINE do not
// wait for their changes to be written, and OFFERs of an address that is
// not the client's own are handed over for a probe (see Deferred).
func (db *LeaseDB) handle(req, resp *dhcpv4.DHCPv4, defer_ deferral) (*dhcpv4.DHCPv4, bool) {
	if relay, ok := addrOf(req.GatewayIPAddr); ok && !db.server.Masked().Contains(relay) {
		// A relay on another subnet needs a pool of that subnet.
		db.observer.Dropped(DropForeignRelay)
		return nil, true
	}
	if db.policy.Load().renewalsOnly {
		return db.confirmOnly(req, resp)
	}
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		return db.discover(req, resp, defer_)
	case dhcpv4.MessageTypeRequest:
		return db.request(req, resp, defer_)
	case dhcpv4.MessageTypeRelease:
		db.release(req, defer_)
		return nil, true
	case dhcpv4.MessageTypeDecline:
		db.decline(req, defer_ == nil)
		return nil, true
	case dhcpv4.MessageTypeInform:
		// INFORM: the client has an address already; answer options only,
		// without yiaddr or lease time (RFC 2131 4.3.5) — if it may be served.
		if _, known := db.clientOf(req); !known {
			return nil, true
		}
		return resp, false
	default:
		db.observer.Dropped(DropUnsupported)
		return nil, true
	}
}

// confirmOnly answers req in renewals-only mode.
func (db *LeaseDB) confirmOnly(req, resp *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
	c, known := db.clientOf(req)
	if !known {
		return nil, true
	}
	// Only RENEWING and REBINDING (ciaddr): a client in INIT-REBOOT may
	// have given its address up to the other replica, which may have given
	// it to someone else since.
	target, ok := addrOf(req.ClientIPAddr)
	_, named := addrOf(req.ServerIdentifier())
	_, requested := addrOf(req.RequestedIPAddress())
	switch {
	case req.MessageType() == dhcpv4.MessageTypeInform:
		return resp, false
	case req.MessageType() != dhcpv4.MessageTypeRequest || named || requested || !ok:
		// A new client, a choice between servers, or a reboot: not without the Lease.
		db.observer.Dropped(DropRenewalsOnly)
		return nil, true
	}
	var lease Lease
	var now time.Time
	db.mu.Lock()
	now = db.now()
	lease, ok = db.alloc.confirm(c, target, now)
	db.mu.Unlock()
	if !ok {
		db.observer.Dropped(DropRenewalsOnly)
		return nil, true
	}
	db.fillLeaseFor(resp, lease.IP, lease.Hostname, lease.Expires.Sub(now).Truncate(time.Second))
	return resp, false
}

func (db *LeaseDB) discover(req, resp *dhcpv4.DHCPv4, defer_ deferral) (*dhcpv4.DHCPv4, bool) {
	c, known := db.clientOf(req)
	if !known {
		return nil, true
	}
	requested, _ := addrOf(req.RequestedIPAddress())
	var offered Lease
	var reason string
	var now time.Time
	var leaseTime time.Duration
	pinUnusable, own := false, false
	db.locked(func(t time.Time) {
		now, leaseTime = t, db.alloc.grantTime()
		pinUnusable = c.pin.IsValid() && !db.alloc.pinUsable(c)
		var previous netip.Addr
		if e := db.alloc.byClient[c.id]; e != nil {
			previous = e.IP
		}
		if e, why := db.alloc.discover(c, requested, now); e != nil {
			offered = e.Lease
			own = db.alloc.owns(c, previous, e.IP)
		} else {
			reason = why
		}
	})
	if pinUnusable {
		if last, told := db.pinUnusable.Swap(c.id, c.pin); !told || last != c.pin {
			db.tell(c, EventPinUnusable, c.pin)
		}
	} else {
		db.pinUnusable.Delete(c.id)
	}
	if reason != "" {
		db.observer.Dropped(reason)
		if reason == DropPoolExhausted {
			db.tell(c, EventPoolExhausted, netip.Addr{})
		}
		if reason == DropPoolExhausted && db.exhaustedWarning.Allow(now) {
			db.log.Warn("pool exhausted: DISCOVERs are going unanswered", "pool", db.Stats())
		}
		return nil, true
	}
	db.fillLeaseFor(resp, offered.IP, offered.Hostname, leaseTime)
	if defer_ != nil && !own {
		defer_.offer(req, pendingOffer{client: c, ip: offered.IP})
	}
	return resp, false
}

// request answers a REQUEST. With defer_ nil it waits for the lease to be
// written before it returns the ACK; otherwise it hands the pending ACK to
// defer_ and returns at once.
func (db *LeaseDB) request(req, resp *dhcpv4.DHCPv4, defer_ deferral) (*dhcpv4.DHCPv4, bool) {
	c, known := db.clientOf(req)
	if !known {
		return nil, true
	}
	serverID, hasServerID := addrOf(req.ServerIdentifier())
	requested, hasRequested := addrOf(req.RequestedIPAddress())
	ciaddr, hasCiaddr := addrOf(req.ClientIPAddr)

	var target netip.Addr
	var kind requestKind
	switch {
	case hasServerID:
		if serverID != db.server.Addr() {
			// The client chose another server: let our offer go, say nothing.
			db.locked(func(now time.Time) {
				if e := db.alloc.byClient[c.id]; e != nil && e.State == StateOffered {
					db.alloc.set(e, StateFree, now)
				}
			})
			db.observer.Dropped(DropOtherServer)
			return nil, true
		}
		if !hasRequested {
			db.observer.Dropped(DropMalformed)
			return nil, true
		}
		target, kind = requested, selecting
	case hasRequested:
		target, kind = requested, initReboot
	case hasCiaddr:
		target, kind = ciaddr, renewing
	default:
		db.observer.Dropped(DropMalformed)
		return nil, true
	}
	if !db.server.Masked().Contains(target) {
		return db.nak(req, NakNotOnNetwork)
	}

	var al allocation
	var lease Lease
	ticket := db.lockedTicket(func(now time.Time) {
		// The entry is the allocator's: its lease is copied under the lock.
		if al = db.alloc.request(c, target, kind, now); al.verdict == ack {
			lease = al.entry.Lease
		}
	})
	switch al.verdict {
	case silent:
		db.observer.Dropped(al.reason)
		return nil, true
	case nak:
		return db.nak(req, al.reason)
	}
	pending := pendingAck{client: c, allocation: al, lease: lease, ticket: ticket}
	if defer_ != nil {
		defer_.ack(req, pending)
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
		defer cancel()
		if err := db.committer.wait(ctx, ticket); !pending.sendable(err) {
			db.ackFailed(pending)
			return nil, true
		}
		db.ackDurable(pending)
	}
	db.fillLeaseFor(resp, lease.IP, lease.Hostname, al.leaseTime)
	return resp, false
}

// pendingAck is an ACK decided in memory whose lease is not yet known to be
// written.
type pendingAck struct {
	client     client
	allocation allocation
	lease      Lease
	ticket     uint64
}

// sendable tells whether the ACK may go out once the commit it waited for
// ended with err: written, and replicated unless its lease time was capped
// (see ErrUnreplicated).
func (ack pendingAck) sendable(err error) bool {
	return err == nil || errors.Is(err, ErrUnreplicated) && ack.allocation.capped
}

// ackFailed takes back an ACK whose lease could not be written: without a
// durable lease there is no ACK; the client retries.
func (db *LeaseDB) ackFailed(ack pendingAck) {
	db.locked(func(now time.Time) { db.alloc.revert(ack.allocation, now) })
	// The fault is logged once per episode by storageFaulted.
	db.observer.Dropped(DropCommitFailed)
}

// ackDurable reports an ACK whose lease is written.
func (db *LeaseDB) ackDurable(ack pendingAck) {
	if before := ack.allocation.before; before == nil || before.State != StateBound {
		db.tell(ack.client, EventAssigned, ack.lease.IP) // a new address, not a renewal
	}
}

// tell notifies a lease event of a client the Resolver knows.
func (db *LeaseDB) tell(c client, reason string, ip netip.Addr) {
	if notify := db.policy.Load().notify; notify != nil && strings.HasPrefix(c.id, VMKeyPrefix) {
		notify(LeaseEvent{Key: c.id, Reason: reason, IP: ip})
	}
}

func (db *LeaseDB) release(req *dhcpv4.DHCPv4, defer_ deferral) {
	if db.forOtherServer(req) {
		return
	}
	c, ok := db.clientOf(req)
	if !ok {
		return
	}
	ciaddr, _ := addrOf(req.ClientIPAddr)
	var known bool
	ticket := db.lockedTicket(func(now time.Time) { known = db.alloc.release(c, ciaddr, now) })
	if !known {
		db.observer.Dropped(DropUnknownRelease)
	} else if defer_ != nil {
		defer_.released(ciaddr)
	}
	db.settleOrFlush(ticket, defer_ == nil)
}

// settleOrFlush settles ticket, or leaves its changes to the background
// writer when the caller must not wait.
func (db *LeaseDB) settleOrFlush(ticket uint64, settle bool) {
	switch {
	case ticket == 0:
	case settle:
		db.settle(ticket)
	default:
		db.committer.flush()
	}
}

// settle waits until the changes up to ticket are written, when no reply
// depends on them: it keeps a flood of RELEASEs and DECLINEs from running
// ahead of the disk. A failure is retried by the committer.
func (db *LeaseDB) settle(ticket uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
	defer cancel()
	_ = db.committer.wait(ctx, ticket)
}

func (db *LeaseDB) decline(req *dhcpv4.DHCPv4, settle bool) {
	if db.forOtherServer(req) {
		return
	}
	c, ok := db.clientOf(req)
	if !ok {
		return
	}
	declined, _ := addrOf(req.RequestedIPAddress())
	var known bool
	ticket := db.lockedTicket(func(now time.Time) { known = db.alloc.decline(c, declined, now) })
	if !known {
		db.observer.Dropped(DropUnknownDecline)
	} else {
		db.log.Warn("address declined by client, quarantined", "ip", declined, "client", c.id)
	}
	db.settleOrFlush(ticket, settle)
}

// forOtherServer reports (and counts) a RELEASE or DECLINE whose option 54
// names another server: that server's lease, not ours.
func (db *LeaseDB) forOtherServer(req *dhcpv4.DHCPv4) bool {
	if id, ok := addrOf(req.ServerIdentifier()); ok && id != db.server.Addr() {
		db.observer.Dropped(DropOtherServer)
		return true
	}
	return false
}

func (db *LeaseDB) nak(req *dhcpv4.DHCPv4, reason string) (*dhcpv4.DHCPv4, bool) {
	db.observer.Refused(reason)
	// A NAK carries none of the options the chain may have added so far.
	nak, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(db.server.Addr().AsSlice()))),
		dhcpv4.WithOption(dhcpv4.OptMessage(nakMessages[reason])),
	)
	if err != nil {
		db.observer.Dropped(DropMalformed)
		return nil, true
	}
	if _, relayed := addrOf(req.GatewayIPAddr); relayed {
		// RFC 2131 4.3.2: the relay must broadcast a NAK to the client.
		nak.SetBroadcast()
	}
	return nak, true
}

// fillLeaseFor sets the address, lease time and renewal times of an OFFER
// or ACK.
func (db *LeaseDB) fillLeaseFor(resp *dhcpv4.DHCPv4, a netip.Addr, hostname string, leaseTime time.Duration) {
	leaseTime = max(leaseTime, time.Second)
	resp.YourIPAddr = net.IP(a.AsSlice())
	resp.UpdateOption(dhcpv4.OptIPAddressLeaseTime(leaseTime))
	resp.UpdateOption(dhcpv4.OptRenewTimeValue(leaseTime / 2))
	resp.UpdateOption(dhcpv4.OptRebindingTimeValue(leaseTime * 7 / 8))
	if hostname != "" {
		resp.UpdateOption(dhcpv4.OptHostName(hostname))
	}
}

// Stats counts the addresses of the pools.
type Stats struct {
	// Size is the pools' addresses minus exclusions; reserved addresses
	// inside a pool count, and are used while their client holds them.
	Size int64
	// Used are offered or bound; Quarantined were declined; Free is the rest.
	Used, Quarantined, Free int64
	// Outside counts held leases that the configuration no longer covers
	// (kept until they expire).
	Outside int64
}

// Stats returns the current pool usage.
func (db *LeaseDB) Stats() Stats {
	var s Stats
	db.locked(func(now time.Time) {
		db.alloc.expire(now)
		s = db.alloc.stats()
	})
	return s
}

// ReleaseKeys frees the bound leases whose key starts with prefix (a
// deleted VM's interfaces: "vm:namespace/name/") and returns how many. It
// walks the clients, which is fine for an event as rare as a VM deletion.
func (db *LeaseDB) ReleaseKeys(prefix string) int {
	n := 0
	ticket := db.lockedTicket(func(now time.Time) {
		for key, e := range db.alloc.byClient {
			if strings.HasPrefix(key, prefix) && e.State == StateBound {
				db.alloc.set(e, StateFree, now)
				db.alloc.record(Change{Lease: e.Lease})
				n++
			}
		}
	})
	db.settle(ticket)
	return n
}

// Audit checks the plugin's bookkeeping against its leases; nil when they agree.
func (db *LeaseDB) Audit() error {
	var err error
	db.locked(func(time.Time) { err = db.alloc.audit() })
	return err
}

// Reclaim ends every offer, lease and quarantine whose time is up and
// returns how many. Packets do this as they come; this keeps the counts
// right while none come.
func (db *LeaseDB) Reclaim() int {
	var n int
	db.locked(func(now time.Time) { n = db.alloc.expire(now) })
	return n
}
