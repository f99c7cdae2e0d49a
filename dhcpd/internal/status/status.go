// Package status reports hyperdhcpd's pool usage in its Server's status.
// It writes status.pool only, with a merge patch under its own field
// manager, so it never touches the operator's conditions.
package status

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

// FieldManager is the name hyperdhcpd's status writes are recorded under.
const FieldManager = "hyperdhcpd"

// refreshEvery re-sends unchanged counts now and then, so that a status
// wiped by hand (or a restore) comes back.
const refreshEvery = 5 * time.Minute

var servers = hyperdhcpv1beta1.GroupVersion.WithResource("servers")

// Reporter patches status.pool of one Server when the counts change, at most
// once per interval.
type Reporter struct {
	client    dynamic.NamespaceableResourceInterface
	namespace string
	name      string
	interval  time.Duration
	stats     func() leasedb.Stats
	log       *slog.Logger
}

// RESTConfig loads a kubeconfig file, or the in-cluster configuration when
// path is empty.
func RESTConfig(path string) (*rest.Config, error) {
	if path == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster Kubernetes config: %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", path, err)
	}
	return cfg, nil
}

// NewReporter returns a reporter for the Server namespace/name.
func NewReporter(cfg *rest.Config, namespace, name string, interval time.Duration, stats func() leasedb.Stats, log *slog.Logger) (*Reporter, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "hyperdhcpd"
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create Kubernetes client: %w", err)
	}
	return &Reporter{client: client.Resource(servers), namespace: namespace, name: name, interval: interval, stats: stats, log: log}, nil
}

// Run reports until ctx ends. A failed patch is logged and retried on the
// next tick: DHCP service never depends on the API server.
func (r *Reporter) Run(ctx context.Context) {
	var last leasedb.Stats
	var lastSent time.Time
	ticker := time.NewTicker(r.interval)
	defer ticker.Stop()
	for {
		if s := r.stats(); s != last || time.Since(lastSent) > refreshEvery {
			if err := r.Patch(ctx, s); err != nil {
				r.log.Warn("could not report pool usage", "server", r.namespace+"/"+r.name, "error", err)
			} else {
				last, lastSent = s, time.Now()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// Patch writes s into status.pool.
func (r *Reporter) Patch(ctx context.Context, s leasedb.Stats) error {
	type status struct {
		Pool hyperdhcpv1beta1.PoolStatus `json:"pool"`
	}
	patch, err := json.Marshal(map[string]status{"status": {Pool: hyperdhcpv1beta1.PoolStatus{Size: s.Size, Used: s.Used, Free: s.Free}}})
	if err != nil {
		return fmt.Errorf("encode status patch: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = r.client.Namespace(r.namespace).Patch(ctx, r.name, types.MergePatchType, patch,
		metav1.PatchOptions{FieldManager: FieldManager}, "status")
	if err != nil {
		return fmt.Errorf("patch %s %s/%s status: %w", schema.GroupResource{Group: servers.Group, Resource: servers.Resource}, r.namespace, r.name, err)
	}
	return nil
}
