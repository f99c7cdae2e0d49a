package leasedb

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// deferredAnswer returns d's answer to a request, as the chain would ask.
func deferredAnswer(t *testing.T, d *Deferred) func(req *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	return func(req *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
		resp, err := dhcpv4.NewReplyFromRequest(req, dhcpv4.WithMessageType(dhcpv4.MessageTypeAck))
		require.NoError(t, err)
		out, _ := d.Handler4(req, resp)
		return out
	}
}

// TestDeferredACKsAreSentOnlyWhenDurable: the deferring handler decides
// ACKs in memory; Durable writes a whole batch with one commit and lets
// out only the ACKs whose leases are in the store.
func TestDeferredACKsAreSentOnlyWhenDurable(t *testing.T) {
	h, store := newFaultyHarness(t, nil)
	d := h.db.Deferred(false)
	answer := deferredAnswer(t, d)

	var reqs []*dhcpv4.DHCPv4
	for i := range byte(4) {
		offer := h.discover(mac(i))
		require.NotNil(t, offer)
		req := selectingRequest(t, mac(i), offer.YourIPAddr)
		ack := answer(req)
		require.NotNil(t, ack)
		require.Equal(t, offer.YourIPAddr.String(), ack.YourIPAddr.String())
		reqs = append(reqs, req)
	}
	commitsBefore := store.commits.Load()
	sendable := make([]bool, len(reqs))
	d.Durable(context.Background(), reqs, sendable)
	assert.Equal(t, []bool{true, true, true, true}, sendable)
	assert.Equal(t, commitsBefore+1, store.commits.Load(), "one commit for the batch")
	for _, req := range reqs {
		row, ok := store.row(addr(req.RequestedIPAddress()))
		assert.True(t, ok && row.State == StateBound, "%s is durable before its ACK may go", req.RequestedIPAddress())
	}

	// A failing store: the ACK may not go, and the offer is as it was.
	offer := h.discover(mac(9))
	require.NotNil(t, offer)
	store.fail.Store(true)
	req := selectingRequest(t, mac(9), offer.YourIPAddr)
	require.NotNil(t, answer(req), "decided in memory")
	sendable = sendable[:1]
	d.Durable(context.Background(), []*dhcpv4.DHCPv4{req}, sendable)
	assert.False(t, sendable[0], "no ACK without a durable lease")
	h.db.mu.Lock()
	state := h.db.alloc.byIP[addr(offer.YourIPAddr)].State
	h.db.mu.Unlock()
	assert.Equal(t, StateOffered, state, "the failed REQUEST leaves the offer as it was")

	// While the fault lasts, Durable does not wait for the retries.
	offer = h.discover(mac(11))
	require.NotNil(t, offer)
	req = selectingRequest(t, mac(11), offer.YourIPAddr)
	require.NotNil(t, answer(req))
	start := time.Now()
	d.Durable(context.Background(), []*dhcpv4.DHCPv4{req}, sendable)
	assert.False(t, sendable[0])
	assert.Less(t, time.Since(start), retryAfter/2)

	// A request that granted nothing durable (a NAK) may always be answered.
	nak := selectingRequest(t, mac(10), offer.YourIPAddr)
	d.Durable(context.Background(), []*dhcpv4.DHCPv4{nak}, sendable)
	assert.True(t, sendable[0])
}

// TestACKsWrittenWithoutTheReplica: while batches are written without the
// replica (a pair's active without its standby), an ACK decided without a
// lease time cap is taken back, also when its waiter comes after the write;
// ACKs decided under the cap go out, with the capped lease time, which the
// OFFER announced too.
func TestACKsWrittenWithoutTheReplica(t *testing.T) {
	h, store := newFaultyHarness(t, nil)
	d := h.db.Deferred(false)
	answer := func(req *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
		out := deferredAnswer(t, d)(req)
		require.NotNil(t, out)
		return out
	}
	sendable := func(reqs ...*dhcpv4.DHCPv4) []bool {
		out := make([]bool, len(reqs))
		d.Durable(context.Background(), reqs, out)
		return out
	}
	state := func(ip net.IP) State {
		h.db.mu.Lock()
		defer h.db.mu.Unlock()
		return h.db.alloc.byIP[addr(ip)].State
	}

	store.unreplicated.Store(true)
	offer := h.discover(mac(1))
	require.NotNil(t, offer)
	assert.Equal(t, DefaultLeaseTime, offer.IPAddressLeaseTime(0))
	uncapped := selectingRequest(t, mac(1), offer.YourIPAddr)
	answer(uncapped)
	assert.Equal(t, []bool{false}, sendable(uncapped), "a full-length lease the replica does not have")
	assert.Equal(t, StateOffered, state(offer.YourIPAddr), "taken back")

	// A waiter that comes after its batch was written learns it too.
	late := selectingRequest(t, mac(1), offer.YourIPAddr)
	answer(late)
	other := h.discover(mac(2))
	require.NotNil(t, other)
	h.db.SetLeaseTimeCap(2 * time.Minute)
	early := selectingRequest(t, mac(2), other.YourIPAddr)
	ack := answer(early)
	assert.Equal(t, 2*time.Minute, ack.IPAddressLeaseTime(0))
	assert.Equal(t, time.Minute, ack.IPAddressRenewalTime(0))
	assert.Equal(t, []bool{true}, sendable(early), "capped: may go without the replica")
	assert.Equal(t, []bool{false}, sendable(late), "decided without the cap, written (with the batch before) without the replica")
	row, ok := store.row(addr(other.YourIPAddr))
	require.True(t, ok)
	assert.Equal(t, h.clock.Now().Add(2*time.Minute), row.Expires, "the database holds the capped lease")

	// Under the cap: the OFFER and the ACK of the client taken back.
	offer = h.discover(mac(1))
	require.NotNil(t, offer)
	assert.Equal(t, 2*time.Minute, offer.IPAddressLeaseTime(0))
	again := selectingRequest(t, mac(1), offer.YourIPAddr)
	assert.Equal(t, 2*time.Minute, answer(again).IPAddressLeaseTime(0))
	assert.Equal(t, []bool{true}, sendable(again))
	assert.Equal(t, StateBound, state(offer.YourIPAddr))

	// The replica back, the cap lifted: full-length leases again.
	store.unreplicated.Store(false)
	h.db.SetLeaseTimeCap(0)
	renewal := selectingRequest(t, mac(1), offer.YourIPAddr)
	assert.Equal(t, DefaultLeaseTime, answer(renewal).IPAddressLeaseTime(0))
	assert.Equal(t, []bool{true}, sendable(renewal))
}
