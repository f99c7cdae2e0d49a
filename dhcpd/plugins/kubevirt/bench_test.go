package kubevirt

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubevirtv1 "kubevirt.io/api/core/v1"

	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

const benchVMIs = 10000

func benchMAC(i int) string {
	return fmt.Sprintf("02:10:%02x:%02x:%02x:01", i>>16&0xff, i>>8&0xff, i&0xff)
}

// fullVMI is a VMI as the API serves it, with what the plugin strips away.
func fullVMI(i int) *kubevirtv1.VirtualMachineInstance {
	v := vmi("vms", fmt.Sprintf("vm-%05d", i), "lab-bridge")
	v.Spec.Domain.Devices.Interfaces[1].MacAddress = benchMAC(i)
	v.Labels = map[string]string{"kubevirt.io/domain": v.Name, "app": "bench"}
	v.Annotations = map[string]string{"kubevirt.io/latest-observed-api-version": "v1", "kubevirt.io/storage-observed-api-version": "v1"}
	v.Spec.Domain.Resources.Requests = corev1.ResourceList{}
	v.Status.Phase = kubevirtv1.Running
	v.Status.NodeName = "node-1"
	v.Status.Interfaces = []kubevirtv1.VirtualMachineInstanceNetworkInterface{{Name: "net1", MAC: benchMAC(i), IP: "192.168.50.10", InterfaceName: "eth1"}}
	return v
}

// BenchmarkIndexHeap10000VMIs reports the heap the index holds for 10,000
// VMIs after the cache's transform, as hyperdhcpd keeps them.
func BenchmarkIndexHeap10000VMIs(b *testing.B) {
	var heap uint64
	for b.Loop() {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		x := NewIndex(lab)
		for i := range benchVMIs {
			stripped, _ := stripVMI(fullVMI(i))
			x.SetVMI(stripped.(*kubevirtv1.VirtualMachineInstance))
		}
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		heap = after.HeapAlloc - before.HeapAlloc
		if x.Len() != benchVMIs {
			b.Fatalf("indexed %d MACs", x.Len())
		}
	}
	b.ReportMetric(float64(heap)/(1<<20), "MiB-heap")
}

// BenchmarkDORA is the DISCOVER+REQUEST of the same 100 clients without the
// kubevirt plugin, as VMs with only those 100 VMIs indexed, and as VMs
// among 10,000 indexed VMIs: the last two differ only by the cache's size.
func BenchmarkDORA(b *testing.B) {
	index := func(n int) *Index {
		x := NewIndex(lab)
		for i := range n {
			stripped, _ := stripVMI(fullVMI(i))
			x.SetVMI(stripped.(*kubevirtv1.VirtualMachineInstance))
		}
		return x
	}
	for _, tc := range []struct {
		name     string
		resolver leasedb.Resolver
	}{{"no-kubevirt", nil}, {"100-VMIs", index(100)}, {"10000-VMIs", index(benchVMIs)}} {
		b.Run(tc.name, func(b *testing.B) {
			store, err := leasedb.OpenSQLite(":memory:")
			if err != nil {
				b.Fatal(err)
			}
			db, err := leasedb.New(context.Background(), leasedb.Options{
				Server: netip.MustParsePrefix("192.168.0.2/16"),
				Pools:  []leasedb.Range{{First: netip.MustParseAddr("192.168.1.0"), Last: netip.MustParseAddr("192.168.255.254")}},
				Store:  store, Resolver: tc.resolver, OnlyKnown: tc.resolver != nil,
				Logger: slog.New(slog.DiscardHandler),
			})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			i := 0
			for b.Loop() {
				hw, _ := net.ParseMAC(benchMAC(i % 100))
				i++
				discover, _ := dhcpv4.NewDiscovery(hw)
				offer, _ := dhcpv4.NewReplyFromRequest(discover, dhcpv4.WithMessageType(dhcpv4.MessageTypeOffer))
				offer, _ = db.Handler4(discover, offer)
				if offer == nil {
					b.Fatal("no offer")
				}
				request, _ := dhcpv4.NewRequestFromOffer(offer, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(192, 168, 0, 2))))
				ack, _ := dhcpv4.NewReplyFromRequest(request, dhcpv4.WithMessageType(dhcpv4.MessageTypeAck))
				if ack, _ = db.Handler4(request, ack); ack == nil {
					b.Fatal("no ack")
				}
			}
		})
	}
}

// BenchmarkFirstSync10000VMIs measures the watcher's first list of 10,000
// VMIs from envtest (creating them is not timed).
func BenchmarkFirstSync10000VMIs(b *testing.B) {
	c := kubeClientB(b)
	ctx := context.Background()
	ns := fmt.Sprintf("bench-%d", time.Now().UnixNano())
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		b.Fatal(err)
	}
	for i := range benchVMIs {
		v := fullVMI(i)
		v.Namespace = ns
		v.Status = kubevirtv1.VirtualMachineInstanceStatus{}
		if err := c.Create(ctx, v); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		runCtx, cancel := context.WithCancel(ctx)
		index := NewIndex(Network{Namespace: ns, Name: "lab-bridge"})
		w, err := NewWatcher(cfg, index, []string{ns}, slog.New(slog.DiscardHandler))
		if err != nil {
			b.Fatal(err)
		}
		if synced, err := w.Start(runCtx, 5*time.Minute); err != nil || !synced {
			b.Fatalf("sync: %v %v", synced, err)
		}
		if index.Len() != benchVMIs {
			b.Fatalf("indexed %d", index.Len())
		}
		b.StopTimer()
		// What the watcher holds with 10,000 VMIs: the informer's stripped
		// copies and the index (the test process's own share is small).
		runtime.GC()
		var mem runtime.MemStats
		runtime.ReadMemStats(&mem)
		b.ReportMetric(float64(mem.HeapInuse)/(1<<20), "MiB-heap-in-use")
		b.ReportMetric(rssMiB(), "MiB-RSS")
		cancel()
		b.StartTimer()
	}
}

// rssMiB reads this process's resident set size.
func rssMiB() float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kib float64
			fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), &kib)
			return kib / 1024
		}
	}
	return 0
}

// BenchmarkResolve is the per-packet lookup with few and with 10,000 VMIs
// indexed: a map lookup, whatever the number of VMs.
func BenchmarkResolve(b *testing.B) {
	for _, n := range []int{10, benchVMIs} {
		x := NewIndex(lab)
		for i := range n {
			stripped, _ := stripVMI(fullVMI(i))
			x.SetVMI(stripped.(*kubevirtv1.VirtualMachineInstance))
		}
		hw, _ := net.ParseMAC(benchMAC(n / 2))
		b.Run(fmt.Sprintf("%d-VMIs", n), func(b *testing.B) {
			for b.Loop() {
				if _, ok := x.Resolve(hw); !ok {
					b.Fatal("not found")
				}
			}
		})
	}
}
