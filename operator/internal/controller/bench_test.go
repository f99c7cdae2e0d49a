package controller

import (
	"context"
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
)

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
