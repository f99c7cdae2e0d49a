package leasedb

import (
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func pool20(o *Options) { o.Pools = []Range{pool("192.168.50.100", "192.168.50.119")} }

func TestLapsedOfferFloodDoesNotShrinkThePool(t *testing.T) {
	h := newHarness(t, pool20)
	for i := range 200 {
		h.discover(mac(byte(i)))
	}
	h.clock.Advance(time.Minute) // every offer lapses
	for i := range 20 {
		h.dora(mac(byte(i)))
	}
	assert.Equal(t, int64(20), h.db.Stats().Used)
}

func TestFullPoolAnswersConsistently(t *testing.T) {
	h := newHarness(t, pool20)
	for i := range 20 {
		h.dora(mac(byte(i)))
	}
	for range 5 {
		assert.Nil(t, h.discover(mac(200)), "the pool is full")
	}
	h.handle(packet(t, dhcpv4.MessageTypeRelease, mac(3), dhcpv4.WithClientIP(netip.MustParseAddr("192.168.50.103").AsSlice())))
	require.NotNil(t, h.discover(mac(200)), "a released address is offered again")
}

func TestOfferFloodNeverStarvesARealClient(t *testing.T) {
	h := newHarness(t, pool20)
	for i := range 100 {
		h.discover(mac(byte(100 + i)))
	}
	offer := h.discover(mac(1))
	require.NotNil(t, offer, "the oldest unrequested offer is taken back")
	h.dora(mac(1))
}

func TestDiscoverHonoursRequestedFreeAddress(t *testing.T) {
	h := newHarness(t, pool20)
	want := netip.MustParseAddr("192.168.50.117")
	offer := h.discover(mac(1), requestIP(want))
	require.NotNil(t, offer)
	assert.Equal(t, want, addr(offer.YourIPAddr))
}
