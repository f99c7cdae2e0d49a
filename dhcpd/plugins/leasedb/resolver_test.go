package leasedb

import (
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// vms is a Resolver over a fixed table, standing in for the kubevirt
// plugin's cache.
type vms struct {
	mu    sync.Mutex
	byMAC map[string]Identity
}

func (v *vms) Resolve(mac net.HardwareAddr) (Identity, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	id, ok := v.byMAC[mac.String()]
	return id, ok
}

func (v *vms) PinnedBy(ip netip.Addr) (string, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, id := range v.byMAC {
		if id.Pin == ip {
			return id.Key, true
		}
	}
	return "", false
}

func (v *vms) set(mac net.HardwareAddr, id Identity) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.byMAC[mac.String()] = id
}

func newVMHarness(t *testing.T, onlyKnown bool) (*harness, *vms) {
	resolver := &vms{byMAC: map[string]Identity{}}
	h, _ := newFaultyHarness(t, func(o *Options) { o.Resolver, o.OnlyKnown = resolver, onlyKnown })
	return h, resolver
}

func TestALeaseBelongsToTheVM(t *testing.T) {
	h, resolver := newVMHarness(t, true)
	resolver.set(mac(1), Identity{Key: "vm:lab/web-1/default", Hostname: "web-1"})
	offer := h.discover(mac(1))
	require.NotNil(t, offer)
	assert.Equal(t, "web-1", offer.HostName(), "the VM's name is its host name")
	first := h.dora(mac(1))

	// Restarted with a new MAC: the same VM, the same address.
	resolver.set(mac(2), Identity{Key: "vm:lab/web-1/default", Hostname: "web-1"})
	assert.Equal(t, first, h.dora(mac(2)))

	// Two clones sending one client identifier are two VMs.
	cloneID := dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte("cloned-image")))
	resolver.set(mac(3), Identity{Key: "vm:lab/clone-a/default"})
	resolver.set(mac(4), Identity{Key: "vm:lab/clone-b/default"})
	assert.NotEqual(t, h.dora(mac(3), cloneID), h.dora(mac(4), cloneID))
}

func TestOnlyKnownVMsAreAnswered(t *testing.T) {
	h, _ := newVMHarness(t, true)
	assert.Nil(t, h.discover(mac(9)), "a MAC of no VM gets nothing")
	open, _ := newVMHarness(t, false)
	assert.NotNil(t, open.discover(mac(9)), "with onlyKnownVMs false it is served from the pool")
}

func TestPinnedAddresses(t *testing.T) {
	h, resolver := newVMHarness(t, false)
	pin := netip.MustParseAddr("192.168.50.100")
	resolver.set(mac(1), Identity{Key: "vm:lab/db/default", Pin: pin})
	other := h.dora(mac(9))
	assert.NotEqual(t, pin, other, "a pinned address is never handed to anyone else, even before its VM asks")
	assert.Equal(t, pin, h.dora(mac(1)), "the VM gets its pin")

	nak := h.handle(packet(t, dhcpv4.MessageTypeRequest, mac(1), dhcpv4.WithClientIP(net.IP(other.AsSlice()))))
	require.NotNil(t, nak)
	assert.Equal(t, dhcpv4.MessageTypeNak, nak.MessageType(), "a pinned VM may only have its pin")

	// A pin someone else holds cannot be used: the VM is served from the pool meanwhile.
	resolver.set(mac(2), Identity{Key: "vm:lab/late/default", Pin: other})
	got := h.dora(mac(2))
	assert.NotEqual(t, other, got)
	assert.NoError(t, h.db.Audit())
}

func TestVMsRenewFromTheDatabaseWhileTheResolverIsStale(t *testing.T) {
	resolver := &vms{byMAC: map[string]Identity{}}
	stale := false
	h, _ := newFaultyHarness(t, func(o *Options) {
		o.Resolver, o.OnlyKnown, o.ResolverStale = resolver, true, func() bool { return stale }
	})
	resolver.set(mac(1), Identity{Key: "vm:lab/web/net1", Hostname: "web"})
	ip := h.dora(mac(1))

	// The API is gone and the index is empty (a restart without it).
	resolver.byMAC = map[string]Identity{}
	renewal := packet(t, dhcpv4.MessageTypeRequest, mac(1), dhcpv4.WithClientIP(net.IP(ip.AsSlice())))
	assert.Nil(t, h.handle(renewal), "with a working API, a MAC of no VM is not served")
	stale = true
	ack := h.handle(renewal)
	require.NotNil(t, ack, "while the API is away, the VM the database knows renews")
	assert.Equal(t, dhcpv4.MessageTypeAck, ack.MessageType())
	assert.Nil(t, h.discover(mac(2)), "an unknown MAC is still not served")
}

func TestReleaseKeysFreesADeletedVMsLeases(t *testing.T) {
	h, resolver := newVMHarness(t, true)
	resolver.set(mac(1), Identity{Key: "vm:lab/web/net1"})
	resolver.set(mac(2), Identity{Key: "vm:lab/web/net2"})
	resolver.set(mac(3), Identity{Key: "vm:lab/webby/net1"})
	h.dora(mac(1))
	h.dora(mac(2))
	h.dora(mac(3))
	assert.Equal(t, 2, h.db.ReleaseKeys("vm:lab/web/"))
	assert.Equal(t, int64(1), h.db.Stats().Used, "only the deleted VM's leases are freed")
	require.NoError(t, h.db.Audit())
}

func TestAnUnusablePinIsToldOncePerAddress(t *testing.T) {
	var events []LeaseEvent
	resolver := &vms{byMAC: map[string]Identity{}}
	h, _ := newFaultyHarness(t, func(o *Options) {
		o.Resolver, o.OnlyKnown = resolver, true
		o.Exclude = []netip.Addr{netip.MustParseAddr("192.168.50.30")}
		o.Notify = func(e LeaseEvent) { events = append(events, e) }
	})
	resolver.set(mac(1), Identity{Key: "vm:lab/web/net1", Pin: netip.MustParseAddr("192.168.50.30")})
	inPool := h.dora(mac(1))
	h.dora(mac(1))
	assert.NotEqual(t, netip.MustParseAddr("192.168.50.30"), inPool, "an excluded pin is not given; the VM is served from the pool")
	var refusals []LeaseEvent
	for _, e := range events {
		if e.Reason == EventPinUnusable {
			refusals = append(refusals, e)
		}
	}
	assert.Equal(t, []LeaseEvent{{Key: "vm:lab/web/net1", Reason: EventPinUnusable, IP: netip.MustParseAddr("192.168.50.30")}}, refusals)
}

func TestPinsOnTheNetworkOrBroadcastAddressAreRefused(t *testing.T) {
	h, resolver := newVMHarness(t, true)
	for i, pin := range []string{"192.168.50.0", "192.168.50.255"} {
		hw := mac(byte(10 + i))
		resolver.set(hw, Identity{Key: "vm:lab/vm" + pin + "/net1", Pin: netip.MustParseAddr(pin)})
		assert.NotEqual(t, netip.MustParseAddr(pin), h.dora(hw), "%s is no host address", pin)
	}
}

func TestInformFromAnUnknownMACIsNotAnswered(t *testing.T) {
	h, resolver := newVMHarness(t, true)
	inform := func(hw net.HardwareAddr) *dhcpv4.DHCPv4 {
		return h.handle(packet(t, dhcpv4.MessageTypeInform, hw, dhcpv4.WithClientIP(net.IPv4(192, 168, 50, 77))))
	}
	assert.Nil(t, inform(mac(9)))
	resolver.set(mac(1), Identity{Key: "vm:lab/web/net1"})
	assert.NotNil(t, inform(mac(1)))
}
