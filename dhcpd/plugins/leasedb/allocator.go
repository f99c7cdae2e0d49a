package leasedb

import (
	"cmp"
	"container/heap"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
)

// entry is the allocator's record of one address: the lease plus its place
// in an expiry queue and a version that tells a failed commit whether the
// entry changed since.
type entry struct {
	Lease
	queueIndex int
	version    uint64
	// counted is the counter account last added the entry to, so that
	// taking it out again subtracts the same, whatever changed meanwhile.
	counted *int
}

// client is who sends a packet: the key its lease is filed under and its
// hardware address (for reservations and the stored row), and what a
// Resolver knows of it: a host name and a pinned address.
type client struct {
	id       string
	mac      net.HardwareAddr
	hostname string
	pin      netip.Addr
}

// requestKind is the client state a REQUEST comes from (RFC 2131 4.3.2).
type requestKind int

const (
	selecting  requestKind = iota // answering an OFFER: option 54 and 50
	initReboot                    // verifying a remembered address: option 50, no 54
	renewing                      // RENEWING or REBINDING: ciaddr
)

// verdict is what the allocator decided about a REQUEST.
type verdict int

const (
	ack    verdict = iota
	nak            // the client must not use the address
	silent         // RFC 2131 asks for no answer
)

// allocation is the answer to a REQUEST: what was decided, and for an ACK
// what to undo if the lease cannot be made durable.
type allocation struct {
	verdict verdict
	reason  string
	entry   *entry
	version uint64
	before  *Lease // the entry as it was, when the client held it already
	// leaseTime is the lease granted; capped tells it was decided under a
	// lease time cap.
	leaseTime time.Duration
	capped    bool
}

// grantTime is the length of a lease granted now.
func (a *allocator) grantTime() time.Duration {
	if a.leaseCap > 0 {
		return min(a.leaseTime, a.leaseCap)
	}
	return a.leaseTime
}

// allocator is the lease state machine: which address a client gets, when a
// lease ends, and the ordered log of changes the store must apply. It knows
// nothing of packets or storage, and is not safe for concurrent use.
//
// Each address has at most one entry. A held entry (offered, bound,
// declined) owns its address; a free entry only remembers the last client,
// so that client gets its address back while nobody else has taken it. The
// pool bitmaps mark an address unavailable exactly when it is excluded,
// reserved, or held by an entry; counters follow every change, so no
// operation scans the leases.
type allocator struct {
	server    netip.Prefix
	leaseTime time.Duration
	// leaseCap, when set, shortens the leases granted (LeaseDB.SetLeaseTimeCap).
	leaseCap  time.Duration
	offerHold time.Duration
	probation time.Duration

	pools        []*addressPool
	excluded     map[netip.Addr]bool
	reservations map[string]Reservation // by MAC
	reservedIPs  map[netip.Addr]bool
	// pinnedBy names the identity an address is pinned to, if any; pinned
	// addresses are never handed out to anyone else.
	pinnedBy func(netip.Addr) (string, bool)
	size     int // the pools' addresses minus exclusions (reservations included)
	fixed    int // bits set for exclusions and reservations, never for leases

	byIP     map[netip.Addr]*entry
	byClient map[string]*entry
	// vmByMAC remembers which VM identity a MAC last leased for, so a
	// restart without the API still knows the VMs (see LeaseDB.clientOf).
	vmByMAC  map[string]string
	offers   expiryQueue // offered entries; the oldest offer first
	expiry   expiryQueue // bound and declined entries
	used     int         // leasable addresses offered or bound
	declined int         // leasable addresses in quarantine
	outside  int         // held entries the configuration no longer covers
	version  uint64

	// log holds the changes the store has not been given yet, in the order
	// they happened in memory.
	log []Change
}

func newAllocator(opts *Options) (*allocator, error) {
	a := &allocator{
		server:       opts.Server,
		leaseTime:    orDefault(opts.LeaseTime, DefaultLeaseTime),
		offerHold:    orDefault(opts.OfferHold, DefaultOfferHold),
		probation:    orDefault(opts.DeclineProbation, DefaultDeclineProbation),
		excluded:     map[netip.Addr]bool{},
		reservations: map[string]Reservation{},
		reservedIPs:  map[netip.Addr]bool{},
		byIP:         map[netip.Addr]*entry{},
		byClient:     map[string]*entry{},
		vmByMAC:      map[string]string{},
		pinnedBy:     func(netip.Addr) (string, bool) { return "", false },
	}
	if opts.Resolver != nil {
		a.pinnedBy = opts.Resolver.PinnedBy
	}
	for _, r := range opts.Pools {
		p, err := newAddressPool(r)
		if err != nil {
			return nil, err
		}
		for _, q := range a.pools {
			if q.contains(r.First) || q.contains(r.Last) || r.contains(q.First) {
				return nil, fmt.Errorf("pools %s-%s and %s-%s overlap", q.First, q.Last, r.First, r.Last)
			}
		}
		a.pools = append(a.pools, p)
		a.size += p.size
	}
	for _, ip := range opts.Exclude {
		if p := a.poolFor(ip); p != nil && p.take(ip) {
			a.size--
			a.fixed++
		}
		a.excluded[ip] = true
	}
	for _, r := range opts.Reservations {
		a.reservations[r.MAC.String()] = r
		// A reserved address stays part of its pool's numbers (it is used
		// while its client holds it) but is never handed out dynamically.
		if p := a.poolFor(r.IP); p != nil && p.take(r.IP) {
			a.fixed++
		}
		a.reservedIPs[r.IP] = true
	}
	return a, nil
}

func (a *allocator) poolFor(ip netip.Addr) *addressPool {
	for _, p := range a.pools {
		if p.contains(ip) {
			return p
		}
	}
	return nil
}

// leasable reports whether ip is handed out from the pools.
func (a *allocator) leasable(ip netip.Addr) bool {
	return a.poolFor(ip) != nil && !a.excluded[ip] && !a.reservedIPs[ip]
}

// covered reports whether the configuration still gives e's address to e's client.
func (a *allocator) covered(e *entry) bool {
	if a.leasable(e.IP) || e.State == StateDeclined && a.server.Masked().Contains(e.IP) {
		return true
	}
	if owner, ok := a.pinnedBy(e.IP); ok && owner == e.ClientID {
		return true
	}
	r, ok := a.reservations[e.MAC.String()]
	return ok && e.MAC != nil && r.IP == e.IP
}

// taken reports whether a leasable ip is unavailable.
func (a *allocator) taken(ip netip.Addr) bool { return a.poolFor(ip).isTaken(ip) }

// inPool reports whether ip counts in the pools' numbers.
func (a *allocator) inPool(ip netip.Addr) bool { return a.poolFor(ip) != nil && !a.excluded[ip] }

// account adds (sign 1) or removes (sign -1) e from the counters and the
// bitmap.
func (a *allocator) account(e *entry, sign int) {
	if !e.held() {
		return
	}
	if sign < 0 {
		if e.counted != nil {
			*e.counted--
		}
		e.counted = nil
	} else {
		switch {
		case !a.inPool(e.IP):
			if !a.covered(e) {
				e.counted = &a.outside
			}
		case e.State == StateDeclined:
			e.counted = &a.declined
		default:
			e.counted = &a.used
		}
		if e.counted != nil {
			*e.counted++
		}
	}
	if !a.leasable(e.IP) {
		return // reserved and excluded addresses are taken in the bitmap for good
	}
	if sign > 0 {
		a.poolFor(e.IP).take(e.IP)
	} else {
		a.poolFor(e.IP).free(e.IP)
	}
}

// set moves e to state until expires, keeping counters and queues right.
func (a *allocator) set(e *entry, state State, expires time.Time) {
	a.account(e, -1)
	a.offers.unschedule(e)
	a.expiry.unschedule(e)
	e.State, e.Expires = state, expires
	a.version++
	e.version = a.version
	a.account(e, 1)
	a.schedule(e)
}

// schedule queues e for the end of its offer, lease or quarantine.
func (a *allocator) schedule(e *entry) {
	if q := a.queueFor(e); q != nil {
		q.schedule(e)
	}
}

// queueFor is the queue that ends e's offer, lease or quarantine; nil for
// a free entry.
func (a *allocator) queueFor(e *entry) *expiryQueue {
	switch {
	case e.State == StateOffered && a.leasable(e.IP):
		return &a.offers // only dynamic offers may be taken back
	case e.held():
		return &a.expiry
	}
	return nil
}

// drop removes e from memory altogether.
func (a *allocator) drop(e *entry) {
	a.account(e, -1)
	a.offers.unschedule(e)
	a.expiry.unschedule(e)
	if a.byIP[e.IP] == e {
		delete(a.byIP, e.IP)
	}
	if e.ClientID != "" && a.byClient[e.ClientID] == e {
		delete(a.byClient, e.ClientID)
	}
}

func (a *allocator) record(c Change) { a.log = append(a.log, c) }

// takeLog returns the changes made since the last call, in order.
func (a *allocator) takeLog() []Change {
	out := a.log
	a.log = nil
	return out
}

// expire ends every offer, lease and quarantine whose time is up. Expired
// leases are not written: a restart reads an expired row as free anyway.
func (a *allocator) expire(now time.Time) int {
	n := 0
	for e := a.offers.peek(); e != nil && !e.Expires.After(now); e = a.offers.peek() {
		a.set(e, StateFree, e.Expires)
		n++
	}
	for e := a.expiry.peek(); e != nil && !e.Expires.After(now); e = a.expiry.peek() { // bound, declined, offers of reservations
		if e.State == StateDeclined {
			a.drop(e)
		} else {
			a.set(e, StateFree, e.Expires)
		}
		n++
	}
	return n
}

// place gives ip to c in state until expires and returns its entry. The
// address must be free or c's already. The client's entry for another
// address goes; so does another client's memory of ip.
func (a *allocator) place(c client, ip netip.Addr, hostname string, state State, expires time.Time) *entry {
	if prev := a.byClient[c.id]; prev != nil && prev.IP != ip {
		if prev.State == StateBound {
			// A restart must not find the client bound to two addresses.
			a.record(Change{Lease: prev.Lease, Delete: true})
		}
		a.drop(prev)
	}
	e := a.byIP[ip]
	if e != nil && e.ClientID != c.id {
		a.drop(e)
		e = nil
	}
	if e == nil {
		e = &entry{Lease: Lease{IP: ip, ClientID: c.id, State: StateFree}, queueIndex: -1}
		a.byIP[ip] = e
	}
	a.byClient[c.id] = e
	a.rememberVM(c.id, c.mac)
	a.account(e, -1) // the MAC decides whether a reserved address is covered
	e.MAC, e.Hostname = c.mac, cmp.Or(hostname, c.hostname)
	a.account(e, 1)
	a.set(e, state, expires)
	return e
}

// offerTo holds ip for c for the offer hold; a lease c holds already stays bound.
func (a *allocator) offerTo(c client, ip netip.Addr, hostname string, now time.Time) *entry {
	if e := a.byIP[ip]; e != nil && e.ClientID == c.id && e.State == StateBound {
		return e
	}
	return a.place(c, ip, hostname, StateOffered, now.Add(a.offerHold))
}

// discover picks the address to offer, in the order of RFC 2131 4.3.1: a
// reservation, the client's current address, its previous one while free,
// the address it asks for while free, any free address, and at last the
// address of the oldest offer nobody has taken up. It returns nil and a
// reason when nothing can be offered.
func (a *allocator) discover(c client, requested netip.Addr, now time.Time) (*entry, string) {
	a.expire(now)
	if r, ok := a.reservations[c.mac.String()]; ok {
		if holder := a.byIP[r.IP]; holder != nil && holder.held() && holder.ClientID != c.id {
			return nil, DropReservedInUse
		}
		return a.offerTo(c, r.IP, r.Hostname, now), ""
	}
	if a.pinUsable(c) {
		return a.offerTo(c, c.pin, "", now), ""
	}
	if e := a.byClient[c.id]; e != nil && a.leasable(e.IP) && !a.pinnedToOther(e.IP, c) {
		if e.held() || !a.taken(e.IP) {
			return a.offerTo(c, e.IP, "", now), ""
		}
	}
	if requested.IsValid() && a.leasable(requested) && !a.taken(requested) && !a.pinnedToOther(requested, c) {
		return a.offerTo(c, requested, "", now), ""
	}
	for _, p := range a.pools {
		for range p.size - p.taken {
			ip, ok := p.nextFree()
			if !ok {
				break
			}
			if !a.pinnedToOther(ip, c) {
				return a.offerTo(c, ip, "", now), ""
			}
		}
	}
	// Offers to clients that never asked for them must not starve one that
	// will: take back the oldest.
	if oldest := a.offers.peek(); oldest != nil {
		ip := oldest.IP
		a.drop(oldest)
		return a.offerTo(c, ip, "", now), ""
	}
	return nil, DropPoolExhausted
}

// VMKeyPrefix starts the lease keys of VM interfaces (see the kubevirt plugin).
const VMKeyPrefix = "vm:"

// owns tells whether ip, just offered to c, is the client's own: its
// reservation, its pin, or the address it held or was offered before the
// DISCOVER (previous; invalid when none). Only other addresses are probed
// before an OFFER: the client itself would answer for its own.
func (a *allocator) owns(c client, previous, ip netip.Addr) bool {
	if r, ok := a.reservations[c.mac.String()]; ok && r.IP == ip {
		return true
	}
	return (c.pin.IsValid() && c.pin == ip) || previous == ip
}

func (a *allocator) rememberVM(key string, mac net.HardwareAddr) {
	if strings.HasPrefix(key, VMKeyPrefix) && mac != nil {
		a.vmByMAC[mac.String()] = key
	}
}

// pinnedToOther reports whether ip is pinned to someone other than c.
func (a *allocator) pinnedToOther(ip netip.Addr, c client) bool {
	owner, ok := a.pinnedBy(ip)
	return ok && owner != c.id
}

// pinUsable reports whether c's pinned address can be given to it: inside
// the subnet, not the server's, excluded or reserved, and held by nobody
// else. A pin that cannot be used is ignored and the client is served from
// the pools; the Resolver reports why.
func (a *allocator) pinUsable(c client) bool {
	switch {
	case !c.pin.IsValid(), !a.server.Masked().Contains(c.pin), c.pin == a.server.Addr(), a.excluded[c.pin], a.reservedIPs[c.pin],
		c.pin == a.server.Masked().Addr(), c.pin == hyperdhcpv1beta1.BroadcastAddress(a.server):
		return false
	}
	holder := a.byIP[c.pin]
	return holder == nil || !holder.held() || holder.ClientID == c.id
}

// request decides a REQUEST for target. An ACK is recorded in the log; the
// caller must not answer before the log up to it is durable, and must call
// revert if it cannot be made so.
func (a *allocator) request(c client, target netip.Addr, kind requestKind, now time.Time) allocation {
	a.expire(now)
	known := a.byClient[c.id]
	r, reserved := a.reservations[c.mac.String()]
	if kind == initReboot && known == nil && !reserved && !a.pinUsable(c) {
		// RFC 2131 4.3.2: no record of this client, so stay silent and let
		// a server that knows it answer.
		return allocation{verdict: silent, reason: DropUnknownClient}
	}
	hostname := ""
	pinned := !reserved && a.pinUsable(c)
	switch {
	case reserved:
		if r.IP != target {
			return allocation{verdict: nak, reason: NakReservation}
		}
		hostname = r.Hostname
	case pinned:
		if c.pin != target {
			return allocation{verdict: nak, reason: NakPinned}
		}
	case !a.leasable(target):
		return allocation{verdict: nak, reason: NakOutsidePools}
	case a.pinnedToOther(target, c):
		return allocation{verdict: nak, reason: NakInUse}
	}
	holder := a.byIP[target]
	switch {
	case holder != nil && holder.held() && holder.ClientID != c.id:
		return allocation{verdict: nak, reason: NakInUse}
	case !reserved && !pinned && kind == initReboot && known.IP != target && (holder == nil || !holder.held()):
		return allocation{verdict: nak, reason: NakOtherAddress}
	}
	var before *Lease
	if holder != nil && holder.ClientID == c.id && holder.held() {
		saved := holder.Lease
		before = &saved
	}
	grant := a.grantTime()
	e := a.place(c, target, hostname, StateBound, now.Add(grant))
	a.record(Change{Lease: e.Lease})
	return allocation{verdict: ack, entry: e, version: e.version, before: before, leaseTime: grant, capped: a.leaseCap > 0}
}

// confirm answers a REQUEST without changing anything: the client's own
// bound, unexpired lease on target, or nothing (see LeaseDB.SetRenewalsOnly).
func (a *allocator) confirm(c client, target netip.Addr, now time.Time) (Lease, bool) {
	e := a.byIP[target]
	if e == nil || e.State != StateBound || e.ClientID != c.id || !e.Expires.After(now) {
		return Lease{}, false
	}
	return e.Lease, true
}

// revert undoes an ACK that could not be made durable, unless the entry has
// changed since; it records the state memory returns to, so the store ends
// up agreeing whatever became of the failed write.
func (a *allocator) revert(al allocation, now time.Time) {
	e := al.entry
	if a.byIP[e.IP] != e || e.version != al.version {
		return
	}
	if b := al.before; b != nil && (b.State == StateBound && b.Expires.After(now) || b.State == StateOffered) {
		a.account(e, -1)
		e.MAC, e.Hostname = b.MAC, b.Hostname
		a.account(e, 1)
		a.set(e, b.State, b.Expires)
	} else {
		a.set(e, StateFree, now)
	}
	if e.State == StateBound {
		a.record(Change{Lease: e.Lease})
	} else {
		a.record(Change{Lease: e.Lease, Delete: true})
	}
}

// release ends c's lease on ip (RFC 2131 4.3.4); false when c holds no such lease.
func (a *allocator) release(c client, ip netip.Addr, now time.Time) bool {
	e := a.byClient[c.id]
	if e == nil || e.IP != ip || e.State != StateBound {
		return false
	}
	a.set(e, StateFree, now)
	a.record(Change{Lease: e.Lease})
	return true
}

// decline quarantines ip, which c reports in use by someone else (RFC 2131
// 4.3.3), and detaches it from c so its next DISCOVER gets another address.
func (a *allocator) decline(c client, ip netip.Addr, now time.Time) bool {
	e := a.byIP[ip]
	if e == nil || e.ClientID != c.id || (e.State != StateOffered && e.State != StateBound) {
		return false
	}
	a.account(e, -1)
	if a.byClient[c.id] == e {
		delete(a.byClient, c.id)
	}
	e.ClientID, e.MAC, e.Hostname = "", nil, ""
	a.account(e, 1)
	a.set(e, StateDeclined, now.Add(a.probation))
	a.record(Change{Lease: e.Lease})
	return true
}

// restore loads stored rows into a fresh allocator. Leases the
// configuration no longer covers (a narrowed pool, a new exclusion, another
// subnet) are kept until they expire, so their addresses are not given to
// anyone else meanwhile; their renewals are refused.
func (a *allocator) restore(rows []Lease, now time.Time) {
	for _, row := range rows {
		switch {
		case row.State == StateOffered:
			continue // never stored; ignore if present
		case row.State == StateDeclined && (!row.Expires.After(now) || !a.server.Masked().Contains(row.IP)):
			continue
		case row.State == StateBound && !row.Expires.After(now):
			row.State = StateFree // expired while we were down
		}
		if row.State == StateFree && (row.ClientID == "" || !a.leasable(row.IP)) {
			continue
		}
		e := &entry{Lease: row, queueIndex: -1}
		e.State = StateFree // set below accounts for the row's state
		if row.ClientID != "" {
			switch prev := a.byClient[row.ClientID]; {
			case prev == nil || preferRow(&row, &prev.Lease):
				a.byClient[row.ClientID] = e
			case !row.held():
				continue // a client's older memory
			}
			// A held row that lost to a better one of the same client stays
			// held until it expires, filed under its address only.
		}
		a.byIP[row.IP] = e
		a.rememberVM(row.ClientID, row.MAC)
		a.set(e, row.State, row.Expires)
	}
}

// reconfigured returns an allocator for opts that holds a's entries, as
// restore would from their rows but without a trip through the store: the
// same entries (a pending ACK's allocation refers to its entry), the same
// offers, versions and unwritten log. a must not be used afterwards.
func (a *allocator) reconfigured(opts *Options) (*allocator, error) {
	b, err := newAllocator(opts)
	if err != nil {
		return nil, err
	}
	b.vmByMAC, b.version, b.log, b.leaseCap = a.vmByMAC, a.version, a.log, a.leaseCap
	// Sized and heaped once: growing the maps and sifting each entry up
	// the queues doubles the time packets wait (a /16 in 135 ms → 60 ms).
	b.byIP, b.byClient = make(map[netip.Addr]*entry, len(a.byIP)), make(map[string]*entry, len(a.byClient))
	b.offers, b.expiry = make(expiryQueue, 0, len(a.offers)), make(expiryQueue, 0, len(a.expiry))
	move := func(e *entry) {
		if e.State == StateFree && (e.ClientID == "" || !b.leasable(e.IP)) {
			return // memory of an address the pools no longer lease
		}
		if a.byIP[e.IP] == e {
			b.byIP[e.IP] = e
		}
		if e.ClientID != "" && a.byClient[e.ClientID] == e {
			b.byClient[e.ClientID] = e
		}
		e.counted, e.queueIndex = nil, -1
		b.account(e, 1)
		if q := b.queueFor(e); q != nil {
			e.queueIndex = len(*q)
			*q = append(*q, e)
		}
	}
	for _, e := range a.byIP {
		move(e)
	}
	for _, e := range a.byClient {
		if a.byIP[e.IP] != e {
			move(e)
		}
	}
	heap.Init(&b.offers)
	heap.Init(&b.expiry)
	return b, nil
}

// preferRow picks the row that should stand for a client with two.
func preferRow(a, b *Lease) bool {
	if a.held() != b.held() {
		return a.held()
	}
	return a.Expires.After(b.Expires)
}

// stats counts the addresses of the pools.
func (a *allocator) stats() Stats {
	return Stats{
		Size:        int64(a.size),
		Used:        int64(a.used),
		Quarantined: int64(a.declined),
		Free:        int64(a.size - a.used - a.declined),
		Outside:     int64(a.outside),
	}
}

// audit recounts the state from the entries and compares it with the
// counters, the bitmaps, the queues and the client index, which every
// operation keeps up to date incrementally. Tests and the fuzz targets call
// it after each step.
func (a *allocator) audit() error {
	var used, declined, outside, queued, leased int
	for ip, e := range a.byIP {
		switch {
		case e.IP != ip:
			return fmt.Errorf("the entry for %s is filed under %s", e.IP, ip)
		case e.held() && a.leasable(ip) && !a.taken(ip):
			return fmt.Errorf("held %s is free in the bitmap", ip)
		case !e.held() && a.leasable(ip) && a.taken(ip):
			return fmt.Errorf("unheld %s is taken in the bitmap", ip)
		case e.held() && e.queueIndex < 0:
			return fmt.Errorf("held %s is in no expiry queue", ip)
		}
		if !e.held() {
			continue
		}
		queued++
		if a.leasable(ip) {
			leased++
		}
		switch {
		case !a.inPool(ip):
			if !a.covered(e) {
				outside++
			}
		case e.State == StateDeclined:
			declined++
		default:
			used++
		}
	}
	if used != a.used || declined != a.declined || outside != a.outside {
		return fmt.Errorf("counters say %d used, %d declined, %d outside; the entries say %d, %d, %d",
			a.used, a.declined, a.outside, used, declined, outside)
	}
	if queued != len(a.offers)+len(a.expiry) {
		return fmt.Errorf("%d held entries but %d queued", queued, len(a.offers)+len(a.expiry))
	}
	for id, e := range a.byClient {
		if a.byIP[e.IP] != e || e.ClientID != id {
			return fmt.Errorf("client %s points at an entry that is not its own", id)
		}
	}
	taken := 0
	for _, p := range a.pools {
		taken += p.taken
	}
	if taken != a.fixed+leased {
		return fmt.Errorf("bitmaps hold %d addresses; exclusions, reservations and leases account for %d", taken, a.fixed+leased)
	}
	return nil
}
