package leasedb

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Deferred answers without waiting, for a server that runs one loop for
// every packet: its Handler4 decides REQUESTs in memory and fills the ACK,
// and Durable later makes the leases of a whole batch of requests durable
// with one commit and tells which replies may go out. An ACK is still never
// sent before its lease is on disk; the caller just waits once per batch
// instead of once per request. With probing on, an OFFER of an address that
// is not the client's own is held for a probe of the network (ProbeFirst),
// and Conflict takes it back when something answers for it.
//
// Every REQUEST Handler4 answered must reach Durable, and every OFFER
// ProbeFirst named must reach its probe, or its state stays in memory until
// the client comes back.
type Deferred struct {
	db     *LeaseDB
	probes bool
	// onReleased, when set, is told of addresses their clients released.
	onReleased func(netip.Addr)

	mu      sync.Mutex
	pending map[*dhcpv4.DHCPv4]pendingAck
	offers  map[*dhcpv4.DHCPv4]pendingOffer
}

// pendingOffer is an OFFER whose address is to be probed before it is sent.
type pendingOffer struct {
	client client
	ip     netip.Addr
}

// Deferred returns the deferring face of db; probeOffers holds OFFERs of
// addresses that are not the client's own for a probe.
func (db *LeaseDB) Deferred(probeOffers bool) *Deferred {
	return &Deferred{
		db:      db,
		probes:  probeOffers,
		pending: make(map[*dhcpv4.DHCPv4]pendingAck),
		offers:  make(map[*dhcpv4.DHCPv4]pendingOffer),
	}
}

// Handler4 is the CoreDHCP handler; a REQUEST's ACK it returns may be sent
// only once Durable says so, an OFFER only after ProbeFirst's probe.
func (d *Deferred) Handler4(req, resp *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
	return d.db.handle(req, resp, d)
}

func (d *Deferred) ack(req *dhcpv4.DHCPv4, ack pendingAck) {
	d.mu.Lock()
	d.pending[req] = ack
	d.mu.Unlock()
}

func (d *Deferred) offer(req *dhcpv4.DHCPv4, offer pendingOffer) {
	if !d.probes {
		return
	}
	d.mu.Lock()
	d.offers[req] = offer
	d.mu.Unlock()
}

// OnReleased has f told of each address its client releases: a prober
// may count it free for a moment without probing it (the client said it
// stopped using it).
func (d *Deferred) OnReleased(f func(netip.Addr)) { d.onReleased = f }

func (d *Deferred) released(ip netip.Addr) {
	if d.onReleased != nil {
		d.onReleased(ip)
	}
}

func (d *Deferred) take(req *dhcpv4.DHCPv4) (pendingAck, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ack, ok := d.pending[req]
	delete(d.pending, req)
	return ack, ok
}

// ProbeFirst returns the address the OFFER to req grants when it must be
// probed before the OFFER is sent.
func (d *Deferred) ProbeFirst(req *dhcpv4.DHCPv4) (netip.Addr, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	offer, ok := d.offers[req]
	delete(d.offers, req)
	return offer.ip, ok
}

// Conflict takes back the OFFER of ip to req: the host at mac answered for
// it. The address is quarantined like a declined one; once the quarantine
// ends it is probed again before it is offered.
func (d *Deferred) Conflict(req *dhcpv4.DHCPv4, ip netip.Addr, mac net.HardwareAddr) {
	c, ok := d.db.clientOf(req)
	if !ok {
		return
	}
	var probation time.Duration
	d.db.locked(func(now time.Time) {
		d.db.alloc.decline(c, ip, now)
		probation = d.db.alloc.probation // the allocator is replaced by Reconfigure, under the lock
	})
	d.db.log.Warn("address in use on the network: not offered, quarantined", "ip", ip, "mac", mac.String(),
		"client", c.id, "probation", probation)
}

// Durable waits until the leases the replies to reqs grant are written, with
// one wait for all of them, and sets sendable[i] to whether the reply to
// reqs[i] may be sent: false only when its lease could not be written (the
// allocation is taken back and counted). Requests without a pending lease
// (NAKs, INFORMs) may always be answered.
func (d *Deferred) Durable(ctx context.Context, reqs []*dhcpv4.DHCPv4, sendable []bool) {
	acks := make([]pendingAck, len(reqs))
	has := make([]bool, len(reqs))
	var upTo uint64
	for i, req := range reqs {
		acks[i], has[i] = d.take(req)
		upTo = max(upTo, acks[i].ticket)
	}
	err := d.db.committer.wait(ctx, upTo)
	for i := range reqs {
		switch {
		case !has[i]:
			sendable[i] = true
		case !acks[i].sendable(err):
			d.db.ackFailed(acks[i])
			sendable[i] = false
		default:
			d.db.ackDurable(acks[i])
			sendable[i] = true
		}
	}
}
