package server

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

var (
	fuzzOnce   sync.Once
	fuzzServer *Server
	fuzzDB     *leasedb.LeaseDB
	fuzzStore  *leasedb.SQLiteStore
)

// fuzzTarget builds one server with the full plugin chain for the process
// (the stock plugins allow one chain per process).
func fuzzTarget(t testing.TB) (*Server, *leasedb.LeaseDB) {
	fuzzOnce.Do(func() {
		spec := hyperdhcpv1beta1.ServerSpec{
			NetworkAttachment: hyperdhcpv1beta1.NetworkAttachment{Name: "lab", Interface: "lo"},
			ServerIP:          "192.168.77.2/24",
			Pools:             []hyperdhcpv1beta1.AddressRange{{Start: "192.168.77.100", End: "192.168.77.109"}},
			Router:            "192.168.77.1",
			DNS:               []hyperdhcpv1beta1.IPv4Address{"192.168.77.53"},
			DomainName:        "lab.example",
			DomainSearch:      []hyperdhcpv1beta1.DNSName{"lab.example"},
			NTP:               []hyperdhcpv1beta1.IPv4Address{"192.168.77.123"},
			MTU:               new(int32(1450)),
			StaticRoutes:      []hyperdhcpv1beta1.StaticRoute{{Destination: "10.0.0.0/8", Gateway: "192.168.77.1"}},
			BootFile:          "pxelinux.0",
			NextServer:        "192.168.77.10",
			Options:           []hyperdhcpv1beta1.DHCPOption{{Code: 252, Value: "http://wpad/proxy.pac"}},
			Reservations:      []hyperdhcpv1beta1.Reservation{{MAC: "02:00:5e:10:00:01", IP: "192.168.77.20", Hostname: "pxe"}},
		}
		hyperdhcpv1beta1.SetDefaults(&spec)
		var err error
		fuzzStore, err = leasedb.OpenSQLite(":memory:")
		if err != nil {
			panic(err)
		}
		prefix := netip.MustParsePrefix(string(spec.ServerIP))
		metrics := NewMetrics(func() leasedb.Stats { return fuzzDB.Stats() })
		fuzzDB, err = leasedb.New(context.Background(), leasedb.Options{
			Server: prefix,
			Pools:  []leasedb.Range{{First: netip.MustParseAddr("192.168.77.100"), Last: netip.MustParseAddr("192.168.77.109")}},
			Reservations: []leasedb.Reservation{{
				MAC: net.HardwareAddr{2, 0, 0x5e, 0x10, 0, 1}, IP: netip.MustParseAddr("192.168.77.20"), Hostname: "pxe"}},
			Store: fuzzStore, Observer: metrics,
			// measure and fuzz the code, not the wait for company
		})
		if err != nil {
			panic(err)
		}
		chain, err := BuildChain(&spec, fuzzDB.Handler4)
		if err != nil {
			panic(err)
		}
		fuzzServer = New(nil, chain, Options{}, metrics, slog.New(slog.DiscardHandler))
	})
	return fuzzServer, fuzzDB
}

// FuzzHandle feeds arbitrary bytes through parsing and the whole plugin
// chain. It must never panic (a recovered plugin panic counts as a failure
// here) and must leave the lease database consistent.
func FuzzHandle(f *testing.F) {
	// Real client packets (udhcpc, dhclient, dhcpcd) live in testdata; add
	// the message types they were not caught sending.
	mac := net.HardwareAddr{2, 0, 0x5e, 0x10, 0, 7}
	for _, mods := range [][]dhcpv4.Modifier{
		{dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease), dhcpv4.WithClientIP(net.IPv4(192, 168, 77, 100))},
		{dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(192, 168, 77, 100)))},
		{dhcpv4.WithMessageType(dhcpv4.MessageTypeInform), dhcpv4.WithClientIP(net.IPv4(192, 168, 77, 50))},
		{dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithClientIP(net.IPv4(192, 168, 77, 100))},
		{dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover), dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte{1, 2, 3}))},
	} {
		p, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(mac)}, mods...)...)
		require.NoError(f, err)
		f.Add(p.ToBytes())
	}
	f.Add([]byte{})
	f.Add([]byte("not a packet"))

	f.Fuzz(func(t *testing.T, data []byte) {
		srv, db := fuzzTarget(t)
		before := testutil.ToFloat64(srv.metrics.dropped.WithLabelValues(DropHandlerPanic))
		reply, dest := srv.Handle(data)
		require.Equal(t, before, testutil.ToFloat64(srv.metrics.dropped.WithLabelValues(DropHandlerPanic)), "a plugin panicked")
		if reply != nil {
			require.NotNil(t, dest)
			_, err := dhcpv4.FromBytes(reply.ToBytes())
			require.NoError(t, err, "the reply must be a valid packet")
		}
		checkConsistent(t, db)
	})
}

// checkConsistent asserts the lease invariants: the counters, bitmaps and
// indexes agree with the leases (recounted by Audit), the pool numbers are
// those of the configuration, and no client is stored bound twice.
func checkConsistent(t *testing.T, db *leasedb.LeaseDB) {
	require.NoError(t, db.Audit())
	stats := db.Stats()
	require.Equal(t, int64(10), stats.Size, "the pool has ten addresses (the reservation lies outside it)")
	require.GreaterOrEqual(t, stats.Free, int64(0))
	require.Equal(t, stats.Size, stats.Used+stats.Quarantined+stats.Free)
	stored, err := fuzzStore.Load(context.Background())
	require.NoError(t, err)
	owners := map[string]netip.Addr{}
	for _, l := range stored {
		require.True(t, netip.MustParsePrefix("192.168.77.0/24").Contains(l.IP), "stored lease %s outside the subnet", l.IP)
		if l.State == leasedb.StateBound && l.ClientID != "" {
			prev, dup := owners[l.ClientID]
			require.False(t, dup, "client %s is stored as bound to %s and %s", l.ClientID, prev, l.IP)
			owners[l.ClientID] = l.IP
		}
	}
}

func TestStaticRoutesCarryTheDefaultRoute(t *testing.T) {
	srv, _ := fuzzTarget(t)
	discover, err := dhcpv4.NewDiscovery(net.HardwareAddr{2, 0, 0x5e, 0x10, 0, 0x42},
		dhcpv4.WithRequestedOptions(dhcpv4.OptionClasslessStaticRoute, dhcpv4.OptionRouter))
	require.NoError(t, err)
	offer, _ := srv.Handle(discover.ToBytes())
	require.NotNil(t, offer)
	var routes dhcpv4.Routes
	require.NoError(t, routes.FromBytes(offer.Options.Get(dhcpv4.OptionClasslessStaticRoute)))
	var got []string
	for _, r := range routes {
		got = append(got, r.String())
	}
	require.Contains(t, got, "route to 0.0.0.0/0 via 192.168.77.1", "option 121 must carry the default route (RFC 3442)")
	require.Contains(t, got, "route to 10.0.0.0/8 via 192.168.77.1")
}
