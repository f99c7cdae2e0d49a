package controller

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
)

// BenchmarkOperatorMemoryUnrelatedConfigMaps measures the operator's heap
// (in use after GC; the manager runs in this process) before and after
// 10,000 ConfigMaps that are none of its business appear in the cluster.
// The cache selects only the operator's children, so the heap must stay
// under 1.5 times what it was. RSS is reported too; it falls more slowly.
func BenchmarkOperatorMemoryUnrelatedConfigMaps(b *testing.B) {
	const configMaps = 10000
	ctx := context.Background()
	cfg := rest.CopyConfig(adminCfg)
	cfg.QPS, cfg.Burst = 2000, 2000
	fast, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		b.Fatal(err)
	}
	payload := strings.Repeat("x", 1024) // about a CA bundle, as kube-root-ca.crt
	for b.Loop() {
		heapBefore, rssBefore := memory()
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "unrelated-"}}
		if err := admin.Create(ctx, ns); err != nil {
			b.Fatal(err)
		}
		// 16 writers: the API server, not this loop, sets the pace.
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for w := range 16 {
			wg.Go(func() {
				for i := w; i < configMaps; i += 16 {
					if err := fast.Create(ctx, &corev1.ConfigMap{
						ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("cm-%05d", i), Namespace: ns.Name},
						Data:       map[string]string{"data": payload},
					}); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
		// A Server's ConfigMap, created last, reaching the cache means every
		// unrelated one has reached the informer too (events come in order).
		createNetworkAttachment(b, ns.Name, "lab-bridge")
		server := &hyperdhcpv1beta1.Server{
			ObjectMeta: metav1.ObjectMeta{Name: "sentinel", Namespace: ns.Name},
			Spec: hyperdhcpv1beta1.ServerSpec{
				NetworkAttachment: hyperdhcpv1beta1.NetworkAttachment{Name: "lab-bridge"},
				ServerIP:          "192.168.50.2/24",
				Pools:             []hyperdhcpv1beta1.AddressRange{{Start: "192.168.50.100", End: "192.168.50.199"}},
			},
		}
		if err := admin.Create(ctx, server); err != nil {
			b.Fatal(err)
		}
		deadline := time.Now().Add(2 * time.Minute)
		for mgr.GetCache().Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: "hyperdhcpd-sentinel"}, &corev1.ConfigMap{}) != nil {
			if time.Now().After(deadline) {
				b.Fatal("the sentinel Server's ConfigMap never reached the cache")
			}
			time.Sleep(100 * time.Millisecond)
		}
		heapAfter, rssAfter := memory()
		ratio := float64(heapAfter) / float64(heapBefore)
		b.Logf("%d unrelated ConfigMaps: heap in use %.1f -> %.1f MiB (%.2fx), RSS %.1f -> %.1f MiB",
			configMaps, float64(heapBefore)/(1<<20), float64(heapAfter)/(1<<20), ratio,
			float64(rssBefore)/(1<<20), float64(rssAfter)/(1<<20))
		b.ReportMetric(float64(heapBefore)/(1<<20), "heap-MiB-without")
		b.ReportMetric(float64(heapAfter)/(1<<20), "heap-MiB-with")
		b.ReportMetric(ratio, "heap-ratio")
		b.ReportMetric(float64(rssBefore)/(1<<20), "rss-MiB-without")
		b.ReportMetric(float64(rssAfter)/(1<<20), "rss-MiB-with")
		if err := admin.DeleteAllOf(ctx, &corev1.ConfigMap{}, client.InNamespace(ns.Name)); err != nil {
			b.Fatal(err)
		}
		if ratio >= 1.5 {
			b.Errorf("heap in use grew %.2fx (%d to %d bytes) with %d unrelated ConfigMaps; want under 1.5x",
				ratio, heapBefore, heapAfter, configMaps)
		}
	}
}

// memory returns the heap in use after a full GC and the resident set size
// (VmRSS) of this process, in bytes.
func memory() (heap, rss uint64) {
	runtime.GC()
	runtime.GC() // the first one's finalizers may free more
	var stats runtime.MemStats
	runtime.ReadMemStats(&stats)
	data, err := os.ReadFile("/proc/self/status")
	if err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if fields := strings.Fields(line); len(fields) == 3 && fields[0] == "VmRSS:" {
				kb, _ := strconv.ParseUint(fields[1], 10, 64)
				rss = kb << 10
			}
		}
	}
	return stats.HeapInuse, rss
}

// BenchmarkReconcile200Servers creates 200 Servers at once and measures how
// long the operator (on envtest, under its own RBAC) takes until every one
// has its Deployment and a status for its generation.
func BenchmarkReconcile200Servers(b *testing.B) {
	const servers = 200
	ctx := context.Background()
	for b.Loop() {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "bench-"}}
		if err := admin.Create(ctx, ns); err != nil {
			b.Fatal(err)
		}
		createNetworkAttachment(b, ns.Name, "lab-bridge")
		start := time.Now()
		for i := range servers {
			server := &hyperdhcpv1beta1.Server{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("s%03d", i), Namespace: ns.Name},
				Spec: hyperdhcpv1beta1.ServerSpec{
					NetworkAttachment: hyperdhcpv1beta1.NetworkAttachment{Name: "lab-bridge"},
					ServerIP:          "192.168.50.2/24",
					Pools:             []hyperdhcpv1beta1.AddressRange{{Start: "192.168.50.100", End: "192.168.50.199"}},
				},
			}
			if err := admin.Create(ctx, server); err != nil {
				b.Fatal(err)
			}
		}
		for {
			var deployments appsv1.DeploymentList
			var list hyperdhcpv1beta1.ServerList
			if err := admin.List(ctx, &deployments, client.InNamespace(ns.Name)); err != nil {
				b.Fatal(err)
			}
			if err := admin.List(ctx, &list, client.InNamespace(ns.Name)); err != nil {
				b.Fatal(err)
			}
			done := 0
			for _, s := range list.Items {
				if s.Status.ObservedGeneration == s.Generation && len(s.Status.Conditions) > 0 {
					done++
				}
			}
			if len(deployments.Items) == servers && done == servers {
				break
			}
			if time.Since(start) > 5*time.Minute {
				b.Fatalf("after 5m: %d deployments, %d statuses", len(deployments.Items), done)
			}
			time.Sleep(100 * time.Millisecond)
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/200-servers")
	}
}
