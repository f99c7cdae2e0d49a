package leasedb

import (
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func renew(t *testing.T, h *harness, hw net.HardwareAddr, ip netip.Addr) *dhcpv4.DHCPv4 {
	t.Helper()
	resp := h.handle(packet(t, dhcpv4.MessageTypeRequest, hw, dhcpv4.WithClientIP(net.IP(ip.AsSlice()))))
	require.NotNil(t, resp, "no answer to the renewal of %s", ip)
	return resp
}

// TestReconfigureKeepsLeasesAndAppliesTheEdit edits a serving LeaseDB the
// way a live Server edit does and checks each kind of change, then that
// the state equals what a restart with the edited options loads.
func TestReconfigureKeepsLeasesAndAppliesTheEdit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	h := newHarness(t, nil)
	require.NoError(t, h.db.Close())
	h.open(path)

	kept := h.dora(mac(1))     // .100, stays inside the narrowed pool
	stranded := h.dora(mac(2)) // .101, left outside it
	declined := h.dora(mac(3)) // .102, quarantined
	h.handle(packet(t, dhcpv4.MessageTypeDecline, mac(3), requestIP(declined)))
	offered := h.discover(mac(4)) // an offer in flight across the edit
	require.NotNil(t, offered)
	require.Equal(t, "192.168.50.100", kept.String())
	require.Equal(t, "192.168.50.101", stranded.String())

	edited := h.opts
	edited.Pools = []Range{pool("192.168.50.100", "192.168.50.100"), pool("192.168.50.102", "192.168.50.109")}
	edited.Reservations = []Reservation{{MAC: mac(9), IP: netip.MustParseAddr("192.168.50.150"), Hostname: "fixed"}}
	edited.LeaseTime = 2 * time.Hour
	require.NoError(t, h.db.Reconfigure(edited))
	require.NoError(t, h.db.Audit())
	assert.Equal(t, Stats{Size: 9, Used: 2, Quarantined: 1, Free: 6, Outside: 1}, h.db.Stats(), "the kept lease and the offer used, the stranded one outside")

	ack := renew(t, h, mac(1), kept)
	assert.Equal(t, dhcpv4.MessageTypeAck, ack.MessageType(), "a lease the edit still covers renews")
	assert.Equal(t, 2*time.Hour, ack.IPAddressLeaseTime(0), "with the new lease time")
	assert.Equal(t, dhcpv4.MessageTypeNak, renew(t, h, mac(2), stranded).MessageType(), "a lease outside the edited pools is refused")

	// The offer made before the edit is still the client's.
	selecting := h.handle(packet(t, dhcpv4.MessageTypeRequest, mac(4),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(serverAddr.AsSlice()))),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offered.YourIPAddr))))
	require.NotNil(t, selecting)
	assert.Equal(t, dhcpv4.MessageTypeAck, selecting.MessageType())

	reserved := h.discover(mac(9))
	require.NotNil(t, reserved)
	assert.Equal(t, "192.168.50.150", reserved.YourIPAddr.String(), "a reservation added live is offered")
	for i := byte(20); i < 25; i++ {
		ip := h.dora(mac(i))
		assert.NotEqual(t, stranded, ip, "the stranded address is nobody else's until its lease ends")
		assert.NotEqual(t, declined, ip, "the quarantine stays")
	}
	require.NoError(t, h.db.Audit())
	live := h.db.Stats()

	require.NoError(t, h.db.Close())
	h.opts = edited
	h.open(path)
	restarted := h.db.Stats()
	// (The reserved client's offer, which a restart forgets, lies outside
	// the pools and counts in neither.)
	assert.Equal(t, restarted, live, "a live edit leaves what a restart with the edit loads")
}

func TestReconfigureRefusesABadEditAndKeepsServing(t *testing.T) {
	h := newHarness(t, nil)
	ip := h.dora(mac(1))
	before := h.db.Stats()
	edited := h.opts
	edited.Pools = []Range{pool("192.168.50.100", "192.168.50.120"), pool("192.168.50.110", "192.168.50.130")}
	assert.ErrorContains(t, h.db.Reconfigure(edited), "overlap")
	edited = h.opts
	edited.Server = netip.MustParsePrefix("192.168.60.2/24")
	assert.ErrorContains(t, h.db.Reconfigure(edited), "cannot change while serving")
	assert.Equal(t, before, h.db.Stats())
	assert.Equal(t, dhcpv4.MessageTypeAck, renew(t, h, mac(1), ip).MessageType())
}

// BenchmarkReconfigure measures the pause an edit puts on the packet path
// (Reconfigure runs while no packet is answered): a /24 and a /16 full of
// bound leases.
func BenchmarkReconfigure(b *testing.B) {
	for _, size := range []struct {
		name, server, first string
		leases              int
	}{
		{"leases=250", "10.0.0.1/24", "10.0.0.2", 250},
		{"leases=65000", "10.0.0.1/16", "10.0.1.0", 65000},
	} {
		b.Run(size.name, func(b *testing.B) {
			store, err := OpenSQLite(filepath.Join(b.TempDir(), "leases.db"))
			require.NoError(b, err)
			first := netip.MustParseAddr(size.first)
			last := first
			rows := make([]Change, 0, size.leases)
			for i := range size.leases {
				hw := net.HardwareAddr{2, 0, byte(i >> 16), byte(i >> 8), byte(i), 1}
				rows = append(rows, Change{Lease: Lease{IP: last, ClientID: "hw:" + hw.String(), MAC: hw, State: StateBound, Expires: time.Now().Add(time.Hour)}})
				last = last.Next()
			}
			require.NoError(b, store.Apply(b.Context(), rows))
			opts := Options{Server: netip.MustParsePrefix(size.server), Pools: []Range{{First: first, Last: last}}, Store: store}
			db, err := New(b.Context(), opts)
			require.NoError(b, err)
			defer db.Close()
			b.ResetTimer()
			for i := range b.N {
				opts.LeaseTime = time.Hour + time.Duration(i%2)*time.Minute
				if err := db.Reconfigure(opts); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestReconfigureExcludingALeasedAddressRefusesItsRenewal(t *testing.T) {
	h := newHarness(t, nil)
	ip := h.dora(mac(1))
	edited := h.opts
	edited.Exclude = []netip.Addr{ip}
	require.NoError(t, h.db.Reconfigure(edited))
	require.NoError(t, h.db.Audit())
	assert.Equal(t, Stats{Size: 9, Free: 9, Outside: 1}, h.db.Stats())
	assert.Equal(t, dhcpv4.MessageTypeNak, renew(t, h, mac(1), ip).MessageType(), "a newly excluded address is not renewed")
	for i := byte(2); i < 11; i++ {
		assert.NotEqual(t, ip, h.dora(mac(i)), "nor handed to anyone")
	}
}

// TestRenewalsOnlyConfirmsWithoutExtending: a client's own lease is ACKed
// with the time it has left and nothing is written; new clients, choices
// between servers and other clients' addresses get no answer.
func TestRenewalsOnlyConfirmsWithoutExtending(t *testing.T) {
	h := newHarness(t, nil)
	ip := h.dora(mac(1))
	before := h.stored()[ip]
	h.clock.Advance(20 * time.Minute)
	h.db.SetRenewalsOnly(true)

	ack := renew(t, h, mac(1), ip)
	require.Equal(t, dhcpv4.MessageTypeAck, ack.MessageType())
	assert.Equal(t, 40*time.Minute, ack.IPAddressLeaseTime(0), "the time the lease has left")
	assert.Equal(t, before, h.stored()[ip], "nothing is written")
	assert.Nil(t, h.handle(packet(t, dhcpv4.MessageTypeRequest, mac(1), requestIP(ip))),
		"not INIT-REBOOT: the address may have been given up and given away meanwhile")

	assert.Nil(t, h.discover(mac(2)), "no new client")
	assert.Nil(t, h.handle(packet(t, dhcpv4.MessageTypeRequest, mac(2), dhcpv4.WithClientIP(net.IP(ip.AsSlice())))), "not another's address")
	assert.Nil(t, h.handle(packet(t, dhcpv4.MessageTypeRequest, mac(1), requestIP(ip),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(serverAddr.AsSlice()))))), "no SELECTING")
	h.clock.Advance(41 * time.Minute)
	assert.Nil(t, h.handle(packet(t, dhcpv4.MessageTypeRequest, mac(1), dhcpv4.WithClientIP(net.IP(ip.AsSlice())))), "not once it expired")

	h.db.SetRenewalsOnly(false)
	assert.NotNil(t, h.discover(mac(2)), "answering again")
}
