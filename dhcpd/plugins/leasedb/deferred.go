package leasedb

import (
	"context"
	"sync"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Deferred answers REQUESTs without waiting for each lease to be written,
// for a server that sends many ACKs after one durable write: its Handler4
// decides and fills the ACK in memory, and Durable later makes the leases
// of a whole batch of requests durable with one commit and tells which
// replies may go out. An ACK is still never sent before its lease is on
// disk; the caller just waits once per batch instead of once per request.
//
// Every request Handler4 answered must reach Durable, or its
// allocation stays in memory until the client comes back.
type Deferred struct {
	db      *LeaseDB
	mu      sync.Mutex
	pending map[*dhcpv4.DHCPv4]pendingAck
}

// Deferred returns the deferring face of db.
func (db *LeaseDB) Deferred() *Deferred {
	return &Deferred{db: db, pending: make(map[*dhcpv4.DHCPv4]pendingAck)}
}

// Handler4 is the CoreDHCP handler; a REQUEST's ACK it returns may be sent
// only once Durable says so.
func (d *Deferred) Handler4(req, resp *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
	return d.db.handle(req, resp, d.add)
}

func (d *Deferred) add(req *dhcpv4.DHCPv4, ack pendingAck) {
	d.mu.Lock()
	d.pending[req] = ack
	d.mu.Unlock()
}

func (d *Deferred) take(req *dhcpv4.DHCPv4) (pendingAck, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ack, ok := d.pending[req]
	delete(d.pending, req)
	return ack, ok
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
		case err != nil:
			d.db.ackFailed(acks[i])
			sendable[i] = false
		default:
			d.db.ackDurable(acks[i])
			sendable[i] = true
		}
	}
}
