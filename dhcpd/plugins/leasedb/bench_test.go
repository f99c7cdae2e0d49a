package leasedb

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// BenchmarkRestart65000Leases measures a restart with a full /16: loading
// 65,000 bound leases from SQLite into memory and the bitmap, and the heap
// that state occupies afterwards.
func BenchmarkRestart65000Leases(b *testing.B) {
	const leases = 65000
	path := filepath.Join(b.TempDir(), "leases.db")
	store, err := OpenSQLite(path)
	if err != nil {
		b.Fatal(err)
	}
	first := netip.MustParseAddr("10.77.1.0")
	expires := time.Now().Add(time.Hour)
	var changes []Change
	for i, a := 0, first; i < leases; i, a = i+1, a.Next() {
		mac := net.HardwareAddr{0x02, 0, byte(i >> 16), byte(i >> 8), byte(i), 1}
		changes = append(changes, Change{Lease: Lease{IP: a, ClientID: "hw:" + mac.String(), MAC: mac, State: StateBound, Expires: expires}})
	}
	if err := store.Apply(context.Background(), changes); err != nil {
		b.Fatal(err)
	}
	// The database file's size per lease once the WAL is copied in: what
	// the lease volume's size is worked out from.
	if _, err := store.db.Exec("PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
		b.Fatal(err)
	}
	info, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	bytesPerLease := float64(info.Size()) / leases
	store.Close()
	opts := Options{
		Server: netip.MustParsePrefix("10.77.0.2/16"),
		Pools:  []Range{{First: first, Last: netip.MustParseAddr("10.77.255.254")}},
	}

	var heap uint64
	for b.Loop() {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		s, err := OpenSQLite(path)
		if err != nil {
			b.Fatal(err)
		}
		o := opts
		o.Store = s
		db, err := New(context.Background(), o)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if got := db.Stats().Used; got != leases {
			b.Fatalf("restored %d leases, want %d", got, leases)
		}
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		heap = after.HeapAlloc - before.HeapAlloc
		db.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(heap)/(1<<20), "MiB-heap")
	b.ReportMetric(bytesPerLease, "bytes/lease")
}

// BenchmarkDiscoverExhausted16 measures a DISCOVER against a /16 pool whose
// every address is bound: the answer (none) must come without a scan of
// the leases.
func BenchmarkDiscoverExhausted16(b *testing.B) {
	store, err := OpenSQLite(":memory:")
	if err != nil {
		b.Fatal(err)
	}
	first, last := netip.MustParseAddr("10.77.0.10"), netip.MustParseAddr("10.77.255.254")
	expires := time.Now().Add(time.Hour)
	var changes []Change
	i := 0
	for a := first; !last.Less(a); a = a.Next() {
		mac := net.HardwareAddr{0x02, 0, byte(i >> 16), byte(i >> 8), byte(i), 1}
		changes = append(changes, Change{Lease: Lease{IP: a, ClientID: "hw:" + mac.String(), MAC: mac, State: StateBound, Expires: expires}})
		i++
	}
	if err := store.Apply(context.Background(), changes); err != nil {
		b.Fatal(err)
	}
	db, err := New(context.Background(), Options{
		Server: netip.MustParsePrefix("10.77.0.2/16"), Pools: []Range{{First: first, Last: last}}, Store: store,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	req, err := dhcpv4.NewDiscovery(net.HardwareAddr{0x02, 0xff, 0, 0, 0, 1})
	if err != nil {
		b.Fatal(err)
	}
	resp, err := dhcpv4.NewReplyFromRequest(req)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if reply, _ := db.Handler4(req, resp); reply != nil {
			b.Fatal("offered from an exhausted pool")
		}
	}
}
