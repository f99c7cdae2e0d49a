package leasedb

import (
	"context"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDeferredACKsAreSentOnlyWhenDurable: the deferring handler decides
// ACKs in memory; Durable writes a whole batch with one commit and lets
// out only the ACKs whose leases are in the store.
func TestDeferredACKsAreSentOnlyWhenDurable(t *testing.T) {
	h, store := newFaultyHarness(t, nil)
	d := h.db.Deferred(false)
	answer := func(req *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
		resp, err := dhcpv4.NewReplyFromRequest(req, dhcpv4.WithMessageType(dhcpv4.MessageTypeAck))
		require.NoError(t, err)
		out, _ := d.Handler4(req, resp)
		return out
	}

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
