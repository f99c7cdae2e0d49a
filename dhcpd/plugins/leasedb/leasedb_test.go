package leasedb

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var (
	serverPrefix = netip.MustParsePrefix("192.168.50.2/24")
	serverAddr   = serverPrefix.Addr()
	otherServer  = net.IPv4(192, 168, 50, 3)
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type harness struct {
	t     *testing.T
	db    *LeaseDB
	store Store
	clock *fakeClock
	opts  Options
}

func pool(first, last string) Range {
	return Range{First: netip.MustParseAddr(first), Last: netip.MustParseAddr(last)}
}

// newHarness opens a LeaseDB on a fresh database file with a fake clock.
func newHarness(t *testing.T, mutate func(*Options)) *harness {
	t.Helper()
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	opts := Options{
		Server:    serverPrefix,
		Pools:     []Range{pool("192.168.50.100", "192.168.50.109")},
		LeaseTime: time.Hour,
		Now:       clock.Now,
	}
	if mutate != nil {
		mutate(&opts)
	}
	h := &harness{t: t, clock: clock, opts: opts}
	h.open(filepath.Join(t.TempDir(), "leases.db"))
	return h
}

func (h *harness) open(path string) {
	h.t.Helper()
	store, err := OpenSQLite(path)
	require.NoError(h.t, err)
	opts := h.opts
	opts.Store = store
	db, err := New(context.Background(), opts)
	require.NoError(h.t, err)
	h.db, h.store = db, store
	h.t.Cleanup(func() { _ = db.Close() })
}

func mac(last byte) net.HardwareAddr { return net.HardwareAddr{0x02, 0, 0x5e, 0x10, 0, last} }

func packet(t *testing.T, mt dhcpv4.MessageType, hw net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	mods = append([]dhcpv4.Modifier{dhcpv4.WithMessageType(mt), dhcpv4.WithHwAddr(hw)}, mods...)
	p, err := dhcpv4.New(mods...)
	require.NoError(t, err)
	return p
}

// handle runs the plugin as the server loop would: a reply of the matching
// type, handed down the chain.
func (h *harness) handle(req *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	h.t.Helper()
	resp, err := dhcpv4.NewReplyFromRequest(req)
	require.NoError(h.t, err)
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		resp.UpdateOption(dhcpv4.OptMessageType(dhcpv4.MessageTypeOffer))
	default:
		resp.UpdateOption(dhcpv4.OptMessageType(dhcpv4.MessageTypeAck))
	}
	out, _ := h.db.Handler4(req, resp)
	return out
}

func (h *harness) discover(hw net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	return h.handle(packet(h.t, dhcpv4.MessageTypeDiscover, hw, mods...))
}

// dora runs DISCOVER and SELECTING REQUEST and returns the ACKed address.
func (h *harness) dora(hw net.HardwareAddr, mods ...dhcpv4.Modifier) netip.Addr {
	h.t.Helper()
	offer := h.discover(hw, mods...)
	require.NotNil(h.t, offer, "no offer")
	ack := h.handle(packet(h.t, dhcpv4.MessageTypeRequest, hw, append(mods,
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(serverAddr.AsSlice()))),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)))...))
	require.NotNil(h.t, ack, "no ack")
	require.Equal(h.t, dhcpv4.MessageTypeAck, ack.MessageType())
	a, _ := netip.AddrFromSlice(ack.YourIPAddr.To4())
	return a
}

func (h *harness) stored() map[netip.Addr]Lease {
	h.t.Helper()
	rows, err := h.store.Load(context.Background())
	require.NoError(h.t, err)
	out := map[netip.Addr]Lease{}
	for _, r := range rows {
		out[r.IP] = r
	}
	return out
}

func addr(ip net.IP) netip.Addr { a, _ := netip.AddrFromSlice(ip.To4()); return a }

func requestIP(ip netip.Addr) dhcpv4.Modifier {
	return dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP(ip.AsSlice())))
}

func TestDORAOffersThenCommitsOnRequest(t *testing.T) {
	h := newHarness(t, nil)
	offer := h.discover(mac(1))
	require.NotNil(t, offer)
	assert.Equal(t, "192.168.50.100", offer.YourIPAddr.String())
	assert.Equal(t, time.Hour, offer.IPAddressLeaseTime(0))
	assert.Equal(t, 30*time.Minute, offer.IPAddressRenewalTime(0))
	assert.Equal(t, 52*time.Minute+30*time.Second, offer.IPAddressRebindingTime(0))
	assert.Empty(t, h.stored(), "an OFFER must not be committed")

	ip := h.dora(mac(1))
	assert.Equal(t, addr(offer.YourIPAddr), ip, "the REQUEST gets the offered address")
	row := h.stored()[ip]
	assert.Equal(t, StateBound, row.State)
	assert.Equal(t, mac(1).String(), row.MAC.String())
	assert.Equal(t, h.clock.Now().Add(time.Hour).Unix(), row.Expires.Unix())
}

func TestRequestLifecycle(t *testing.T) {
	serverID := dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(serverAddr.AsSlice())))
	cases := []struct {
		name string
		// run gets a harness where mac(1) holds 192.168.50.100 and returns
		// the reply to check.
		run  func(h *harness) *dhcpv4.DHCPv4
		want dhcpv4.MessageType // 0: no reply
	}{
		{"renewing with ciaddr", func(h *harness) *dhcpv4.DHCPv4 {
			return h.handle(packet(h.t, dhcpv4.MessageTypeRequest, mac(1), dhcpv4.WithClientIP(net.IPv4(192, 168, 50, 100))))
		}, dhcpv4.MessageTypeAck},
		{"init-reboot with its address", func(h *harness) *dhcpv4.DHCPv4 {
			return h.handle(packet(h.t, dhcpv4.MessageTypeRequest, mac(1), requestIP(netip.MustParseAddr("192.168.50.100"))))
		}, dhcpv4.MessageTypeAck},
		{"init-reboot with another client's address", func(h *harness) *dhcpv4.DHCPv4 {
			h.dora(mac(2))
			return h.handle(packet(h.t, dhcpv4.MessageTypeRequest, mac(1), requestIP(netip.MustParseAddr("192.168.50.101"))))
		}, dhcpv4.MessageTypeNak},
		{"init-reboot from another network", func(h *harness) *dhcpv4.DHCPv4 {
			return h.handle(packet(h.t, dhcpv4.MessageTypeRequest, mac(1), requestIP(netip.MustParseAddr("10.0.0.5"))))
		}, dhcpv4.MessageTypeNak},
		{"init-reboot for an address outside the pools", func(h *harness) *dhcpv4.DHCPv4 {
			return h.handle(packet(h.t, dhcpv4.MessageTypeRequest, mac(1), requestIP(netip.MustParseAddr("192.168.50.50"))))
		}, dhcpv4.MessageTypeNak},
		{"init-reboot from a client without a record is not answered (RFC 2131 4.3.2)", func(h *harness) *dhcpv4.DHCPv4 {
			return h.handle(packet(h.t, dhcpv4.MessageTypeRequest, mac(3), requestIP(netip.MustParseAddr("192.168.50.105"))))
		}, 0},
		{"renewing from a client without a record gets a free address", func(h *harness) *dhcpv4.DHCPv4 {
			return h.handle(packet(h.t, dhcpv4.MessageTypeRequest, mac(3), dhcpv4.WithClientIP(net.IPv4(192, 168, 50, 105))))
		}, dhcpv4.MessageTypeAck},
		{"selecting another server", func(h *harness) *dhcpv4.DHCPv4 {
			return h.handle(packet(h.t, dhcpv4.MessageTypeRequest, mac(1),
				dhcpv4.WithOption(dhcpv4.OptServerIdentifier(otherServer)), requestIP(netip.MustParseAddr("192.168.50.100"))))
		}, 0},
		{"selecting with an address that was not offered", func(h *harness) *dhcpv4.DHCPv4 {
			h.dora(mac(2))
			return h.handle(packet(h.t, dhcpv4.MessageTypeRequest, mac(1), serverID, requestIP(netip.MustParseAddr("192.168.50.101"))))
		}, dhcpv4.MessageTypeNak},
		{"selecting without a requested address", func(h *harness) *dhcpv4.DHCPv4 {
			return h.handle(packet(h.t, dhcpv4.MessageTypeRequest, mac(1), serverID))
		}, 0},
		{"renewing an expired lease that is still free", func(h *harness) *dhcpv4.DHCPv4 {
			h.clock.Advance(2 * time.Hour)
			h.db.Reclaim()
			return h.handle(packet(h.t, dhcpv4.MessageTypeRequest, mac(1), dhcpv4.WithClientIP(net.IPv4(192, 168, 50, 100))))
		}, dhcpv4.MessageTypeAck},
		{"renewing an address another client took after expiry", func(h *harness) *dhcpv4.DHCPv4 {
			h.clock.Advance(2 * time.Hour)
			h.db.Reclaim()
			require.Equal(h.t, netip.MustParseAddr("192.168.50.100"), h.dora(mac(2), requestIP(netip.MustParseAddr("192.168.50.100"))))
			return h.handle(packet(h.t, dhcpv4.MessageTypeRequest, mac(1), dhcpv4.WithClientIP(net.IPv4(192, 168, 50, 100))))
		}, dhcpv4.MessageTypeNak},
		{"inform", func(h *harness) *dhcpv4.DHCPv4 {
			return h.handle(packet(h.t, dhcpv4.MessageTypeInform, mac(9), dhcpv4.WithClientIP(net.IPv4(192, 168, 50, 50))))
		}, dhcpv4.MessageTypeAck},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil)
			require.Equal(t, netip.MustParseAddr("192.168.50.100"), h.dora(mac(1)))
			reply := tc.run(h)
			if tc.want == 0 {
				assert.Nil(t, reply)
				return
			}
			require.NotNil(t, reply)
			assert.Equal(t, tc.want, reply.MessageType())
			switch tc.want {
			case dhcpv4.MessageTypeNak:
				assert.True(t, reply.YourIPAddr.IsUnspecified())
				assert.False(t, reply.Options.Has(dhcpv4.OptionIPAddressLeaseTime), "a NAK carries no lease")
				assert.Equal(t, serverAddr.String(), reply.ServerIdentifier().String())
			case dhcpv4.MessageTypeAck:
				if tc.name == "inform" {
					assert.True(t, reply.YourIPAddr.IsUnspecified(), "INFORM gets no address")
					assert.False(t, reply.Options.Has(dhcpv4.OptionIPAddressLeaseTime), "INFORM gets no lease time")
					return
				}
				assert.False(t, reply.YourIPAddr.IsUnspecified())
				assert.Equal(t, StateBound, h.stored()[addr(reply.YourIPAddr)].State, "ACKed lease is durable")
			}
		})
	}
}

func TestSelectingAnotherServerReleasesTheOffer(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.Pools = []Range{pool("192.168.50.100", "192.168.50.100")} })
	require.NotNil(t, h.discover(mac(1)))
	assert.Equal(t, int64(1), h.db.Stats().Used, "the offer holds the address")
	h.handle(packet(t, dhcpv4.MessageTypeRequest, mac(1),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(otherServer)), requestIP(netip.MustParseAddr("192.168.50.100"))))
	assert.Equal(t, int64(0), h.db.Stats().Used, "choosing another server lets the offer go")
	offer := h.discover(mac(2))
	require.NotNil(t, offer)
	assert.Equal(t, "192.168.50.100", offer.YourIPAddr.String())
}

func TestOfferExpiresAfterHold(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.Pools = []Range{pool("192.168.50.100", "192.168.50.100")} })
	require.NotNil(t, h.discover(mac(1)))
	h.clock.Advance(DefaultOfferHold - time.Second)
	assert.Equal(t, int64(1), h.db.Stats().Used, "the offer holds the address")
	h.clock.Advance(2 * time.Second)
	assert.Equal(t, int64(0), h.db.Stats().Used, "an expired offer frees its address")
	require.NotNil(t, h.discover(mac(2)))
}

func TestSecondClientNeverGetsTheFirstClientsAddress(t *testing.T) {
	h := newHarness(t, nil)
	seen := map[netip.Addr]bool{}
	for i := range byte(10) {
		ip := h.dora(mac(i))
		assert.False(t, seen[ip], "address %s handed out twice", ip)
		seen[ip] = true
	}
	assert.Nil(t, h.discover(mac(42)), "the pool of 10 is exhausted")
	assert.Equal(t, Stats{Size: 10, Used: 10, Free: 0}, h.db.Stats())
}

func TestReleaseFreesAndReturningClientGetsItsAddressBack(t *testing.T) {
	h := newHarness(t, nil)
	ip1 := h.dora(mac(1))
	h.dora(mac(2))
	h.handle(packet(t, dhcpv4.MessageTypeRelease, mac(1), dhcpv4.WithClientIP(net.IP(ip1.AsSlice()))))
	assert.Equal(t, StateFree, h.stored()[ip1].State)
	assert.Equal(t, int64(1), h.db.Stats().Used)

	assert.Equal(t, ip1, h.dora(mac(1)), "a returning client gets its previous address while it is free")
}

func TestReleaseOfSomeoneElsesAddressIsIgnored(t *testing.T) {
	h := newHarness(t, nil)
	ip1 := h.dora(mac(1))
	h.handle(packet(t, dhcpv4.MessageTypeRelease, mac(2), dhcpv4.WithClientIP(net.IP(ip1.AsSlice()))))
	assert.Equal(t, StateBound, h.stored()[ip1].State)
}

func TestDeclineQuarantinesForTheProbationTime(t *testing.T) {
	h := newHarness(t, func(o *Options) {
		o.Pools = []Range{pool("192.168.50.100", "192.168.50.101")}
		o.DeclineProbation = 10 * time.Minute
	})
	ip := h.dora(mac(1))
	h.handle(packet(t, dhcpv4.MessageTypeDecline, mac(1), requestIP(ip)))
	assert.Equal(t, StateDeclined, h.stored()[ip].State)

	next := h.dora(mac(1))
	assert.NotEqual(t, ip, next, "the declining client gets another address")
	assert.Nil(t, h.discover(mac(2)), "the declined address is not offered to anyone")

	h.clock.Advance(11 * time.Minute)
	offer := h.discover(mac(2))
	require.NotNil(t, offer)
	assert.Equal(t, ip, addr(offer.YourIPAddr), "after probation the address is back")
}

func TestExpiredLeasesAreReclaimed(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.Pools = []Range{pool("192.168.50.100", "192.168.50.100")} })
	ip := h.dora(mac(1))
	assert.Nil(t, h.discover(mac(2)))
	h.clock.Advance(time.Hour + time.Second)
	assert.Equal(t, ip, h.dora(mac(2)), "an expired lease's address goes to the next client")
}

func TestClientIdentifierOutranksHardwareAddress(t *testing.T) {
	h := newHarness(t, nil)
	a := h.dora(mac(1), dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte{0xff, 1, 2, 3})))
	b := h.dora(mac(1), dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte{0xff, 4, 5, 6})))
	assert.NotEqual(t, a, b, "two client identifiers behind one MAC are two clients")
	c := h.dora(mac(7), dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte{0xff, 1, 2, 3})))
	assert.Equal(t, a, c, "one client identifier on a new MAC is the same client")
}

func TestReservationsAndExclusions(t *testing.T) {
	h := newHarness(t, func(o *Options) {
		o.Pools = []Range{pool("192.168.50.100", "192.168.50.103")}
		o.Exclude = []netip.Addr{netip.MustParseAddr("192.168.50.100")}
		o.Reservations = []Reservation{
			{MAC: mac(9), IP: netip.MustParseAddr("192.168.50.101"), Hostname: "pxe"},
			{MAC: mac(8), IP: netip.MustParseAddr("192.168.50.20")},
		}
	})
	offer := h.discover(mac(9))
	require.NotNil(t, offer)
	assert.Equal(t, "192.168.50.101", offer.YourIPAddr.String())
	assert.Equal(t, "pxe", offer.HostName())
	assert.Equal(t, netip.MustParseAddr("192.168.50.20"), h.dora(mac(8)), "reservations outside the pools work")

	got := map[netip.Addr]bool{h.dora(mac(1)): true, h.dora(mac(2)): true}
	assert.Equal(t, map[netip.Addr]bool{netip.MustParseAddr("192.168.50.102"): true, netip.MustParseAddr("192.168.50.103"): true}, got,
		"dynamic clients get neither the excluded nor the reserved address")
	assert.Nil(t, h.discover(mac(3)))

	nak := h.handle(packet(t, dhcpv4.MessageTypeRequest, mac(9), requestIP(netip.MustParseAddr("192.168.50.102"))))
	require.NotNil(t, nak)
	assert.Equal(t, dhcpv4.MessageTypeNak, nak.MessageType(), "a reserved client may only have its reservation")
}

func TestRestartKeepsLeases(t *testing.T) {
	dir := t.TempDir()
	h := newHarness(t, nil)
	h.db.Close()
	path := filepath.Join(dir, "leases.db")
	h.open(path)
	ip1 := h.dora(mac(1))
	ip2 := h.dora(mac(2))
	h.handle(packet(t, dhcpv4.MessageTypeDecline, mac(2), requestIP(ip2)))
	require.NoError(t, h.db.Close())

	h.open(path)
	assert.Equal(t, ip1, h.dora(mac(1)), "the same client keeps its address across a restart")
	for i := byte(10); i < 18; i++ {
		ip := h.dora(mac(i))
		assert.NotEqual(t, ip1, ip)
		assert.NotEqual(t, ip2, ip, "the quarantine survives the restart")
	}
	assert.Equal(t, Stats{Size: 10, Used: 9, Quarantined: 1, Free: 0}, h.db.Stats())
}

func TestRestartOnAnotherSubnetKeepsOldLeasesUntilTheyExpire(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	store, err := OpenSQLite(path)
	require.NoError(t, err)
	old := netip.MustParseAddr("10.9.9.9")
	require.NoError(t, store.Apply(context.Background(), []Change{{Lease: Lease{
		IP: old, ClientID: "hw:" + mac(1).String(), MAC: mac(1), State: StateBound, Expires: time.Now().Add(time.Hour),
	}}}))
	db, err := New(context.Background(), Options{Server: serverPrefix, Pools: []Range{pool("192.168.50.100", "192.168.50.109")}, Store: store})
	require.NoError(t, err, "a Server moved to another subnet must still serve")
	defer db.Close()
	assert.Equal(t, Stats{Size: 10, Free: 10, Outside: 1}, db.Stats())
	h := &harness{t: t, db: db, store: store}
	nak := h.handle(packet(t, dhcpv4.MessageTypeRequest, mac(1), dhcpv4.WithClientIP(net.IP(old.AsSlice()))))
	require.NotNil(t, nak)
	assert.Equal(t, dhcpv4.MessageTypeNak, nak.MessageType(), "the old lease's renewal is refused")
	assert.Equal(t, "192.168.50.100", h.discover(mac(1)).YourIPAddr.String())
}

func TestConcurrentClientsGetDistinctDurableLeases(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.Pools = []Range{pool("192.168.50.10", "192.168.50.250")} })
	const clients = 200
	results := make(chan netip.Addr, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			hw := net.HardwareAddr{0x02, 0, 0, 0, byte(i >> 8), byte(i)}
			results <- h.dora(hw)
		})
	}
	wg.Wait()
	close(results)
	seen := map[netip.Addr]bool{}
	for ip := range results {
		assert.False(t, seen[ip], "duplicate %s", ip)
		seen[ip] = true
	}
	assert.Len(t, h.stored(), clients)
}

func TestParseArgs(t *testing.T) {
	spec, path, err := parseArgs([]string{"database=/tmp/x.db", "server=192.168.50.2/24", "pool=192.168.50.10-192.168.50.20",
		"exclude=192.168.50.11", "reserve=02:00:5e:10:00:01,192.168.50.5,pxe", "lease=30m", "identify=mac"})
	require.NoError(t, err)
	assert.Equal(t, "/tmp/x.db", path)
	opts, err := OptionsFromSpec(spec)
	require.NoError(t, err)
	assert.Equal(t, serverPrefix, opts.Server)
	assert.Equal(t, []Range{pool("192.168.50.10", "192.168.50.20")}, opts.Pools)
	assert.Equal(t, 30*time.Minute, opts.LeaseTime)
	assert.Equal(t, "pxe", opts.Reservations[0].Hostname)
	assert.True(t, opts.IdentifyByMAC)

	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"database=d", "server=x"}, "leasedb.serverIP"},
		{[]string{"database=d", "server=192.168.50.2/24", "pool=1.2.3.4"}, "want FIRST-LAST"},
		{[]string{"nonsense"}, "not key=value"},
		{[]string{"color=blue"}, "unknown key"},
		{[]string{"server=192.168.50.2/24"}, "database=PATH is required"},
		// The checks hyperdhcpd makes of a Server apply to the plugin too.
		{[]string{"database=d", "server=192.168.50.2/24", "pool=10.0.0.1-10.0.0.9"}, "leasedb.pools"},
		{[]string{"database=d", "server=192.168.50.2/24", "pool=192.168.50.10-192.168.50.20", "pool=192.168.50.15-192.168.50.30"}, "overlap"},
		{[]string{"database=d", "server=192.168.50.2/24", "pool=192.168.50.1-192.168.50.20"}, "server's own address"},
		{[]string{"database=d", "server=192.168.50.2/24", "pool=192.168.50.10-192.168.50.20", "lease=1s"}, "leaseTime"},
	} {
		_, _, err := parseArgs(bad.args)
		assert.ErrorContains(t, err, bad.want, "%v", bad.args)
	}
}

func TestDatabaseIsDurableByConfiguration(t *testing.T) {
	store, err := OpenSQLite(filepath.Join(t.TempDir(), "leases.db"))
	require.NoError(t, err)
	defer store.Close()
	var journal string
	var synchronous int
	require.NoError(t, store.db.QueryRow("PRAGMA journal_mode").Scan(&journal))
	require.NoError(t, store.db.QueryRow("PRAGMA synchronous").Scan(&synchronous))
	assert.Equal(t, "wal", journal)
	assert.Equal(t, 2, synchronous, "synchronous=FULL: a commit survives power loss")
}

func TestClientMovingToAnotherAddressLeavesOneStoredLease(t *testing.T) {
	h := newHarness(t, nil)
	first := h.dora(mac(1))
	moved := netip.MustParseAddr("192.168.50.105")
	ack := h.handle(packet(t, dhcpv4.MessageTypeRequest, mac(1), dhcpv4.WithClientIP(net.IP(moved.AsSlice()))))
	require.NotNil(t, ack)
	require.Equal(t, dhcpv4.MessageTypeAck, ack.MessageType())
	stored := h.stored()
	assert.NotContains(t, stored, first, "the old lease is deleted with the commit of the new one")
	assert.Equal(t, StateBound, stored[moved].State)
	assert.Equal(t, int64(1), h.db.Stats().Used)
}

func TestDatabasePathWithURICharacters(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"a#1.db", "a?b.db", "100%.db"} {
		store, err := OpenSQLite(filepath.Join(dir, name))
		require.NoError(t, err)
		require.NoError(t, store.Close())
		assert.FileExists(t, filepath.Join(dir, name), "the database is the file named, not a prefix of it")
	}
}
