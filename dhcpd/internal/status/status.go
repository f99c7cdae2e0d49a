// Package status reports hyperdhcpd's pool usage, lease storage health and
// served spec generation in its Server's status. It writes status.pool,
// status.leaseStorage and status.served only, with a merge patch under its own field manager, so it never
// touches the operator's conditions.
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
	// storage reports the lease storage fault in progress (nil: none);
	// storageChanged wakes the reporter when it starts or ends, so the
	// cluster hears of it at once rather than at the next tick.
	storage        func() (since time.Time, err error)
	storageChanged <-chan struct{}
	// served reports the spec generation served and the last refused;
	// servedChanged wakes the reporter when either changes.
	served        func() hyperdhcpv1beta1.ServedStatus
	servedChanged <-chan struct{}
	active        func() bool
	pair          func() *hyperdhcpv1beta1.HighAvailabilityStatus
}

// WatchPair makes the reporter write status.highAvailability from pair (nil
// while this replica is not the active one). Call it before Run.
func (r *Reporter) WatchPair(pair func() *hyperdhcpv1beta1.HighAvailabilityStatus) { r.pair = pair }

// OnlyWhile makes the reporter write only while active returns true: of a
// pair of replicas, the active one reports. Call it before Run.
func (r *Reporter) OnlyWhile(active func() bool) { r.active = active }

// WatchServed makes the reporter write status.served from served, at once
// whenever changed fires. Call it before Run.
func (r *Reporter) WatchServed(served func() hyperdhcpv1beta1.ServedStatus, changed <-chan struct{}) {
	r.served, r.servedChanged = served, changed
}

// WatchStorage makes the reporter write status.leaseStorage from fault
// (the fault in progress and when it began; a nil error when there is
// none), at once whenever changed fires. Call it before Run.
func (r *Reporter) WatchStorage(fault func() (since time.Time, err error), changed <-chan struct{}) {
	r.storage, r.storageChanged = fault, changed
}

// report is what one patch says.
type report struct {
	pool    leasedb.Stats
	storage *hyperdhcpv1beta1.LeaseStorageStatus
	served  *hyperdhcpv1beta1.ServedStatus
	pair    *hyperdhcpv1beta1.HighAvailabilityStatus
}

func (r *Reporter) current(previous *report) report {
	now := report{pool: r.stats()}
	if r.served != nil {
		served := r.served()
		now.served = &served
	}
	if r.pair != nil {
		now.pair = r.pair()
	}
	if r.storage == nil {
		return now
	}
	storage := &hyperdhcpv1beta1.LeaseStorageStatus{Available: true, Since: metav1.Now()}
	if since, err := r.storage(); err != nil {
		// When the fault began, not when the API heard of it.
		storage.Available, storage.Message, storage.Since = false, truncate(err.Error(), 1024), metav1.NewTime(since)
	} else if previous != nil && previous.storage != nil && previous.storage.Available {
		storage.Since = previous.storage.Since
	}
	now.storage = storage
	return now
}

// changedFrom tells whether a patch would say something new.
func (n report) changedFrom(previous *report) bool {
	if previous == nil || n.pool != previous.pool {
		return true
	}
	if (n.served == nil) != (previous.served == nil) || n.served != nil && *n.served != *previous.served {
		return true
	}
	if (n.pair == nil) != (previous.pair == nil) || n.pair != nil && *n.pair != *previous.pair {
		return true
	}
	if (n.storage == nil) != (previous.storage == nil) {
		return true
	}
	return n.storage != nil && (n.storage.Available != previous.storage.Available || n.storage.Message != previous.storage.Message)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
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
	var last *report
	var lastSent time.Time
	ticker := time.NewTicker(r.interval)
	defer ticker.Stop()
	for {
		if r.active != nil && !r.active() {
			// A standby: nothing of its own to say.
		} else if now := r.current(last); now.changedFrom(last) || time.Since(lastSent) > refreshEvery {
			if err := r.patch(ctx, now); err != nil {
				r.log.Warn("could not report pool usage and lease storage", "server", r.namespace+"/"+r.name, "error", err)
			} else {
				last, lastSent = &now, time.Now()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case <-r.storageChanged:
		case <-r.servedChanged:
		}
	}
}

// Patch writes s into status.pool and, when not nil, storage into
// status.leaseStorage.
func (r *Reporter) Patch(ctx context.Context, s leasedb.Stats, storage *hyperdhcpv1beta1.LeaseStorageStatus) error {
	return r.patch(ctx, report{pool: s, storage: storage})
}

func (r *Reporter) patch(ctx context.Context, now report) error {
	s, storage := now.pool, now.storage
	// A merge patch leaves out what it does not name: the message is always
	// named, so a recovery clears the fault's.
	type leaseStorage struct {
		Available bool        `json:"available"`
		Message   string      `json:"message"`
		Since     metav1.Time `json:"since"`
	}
	// The refusal is always named too, so an applied edit clears it.
	type served struct {
		Generation        int64       `json:"generation"`
		Since             metav1.Time `json:"since"`
		RefusedGeneration int64       `json:"refusedGeneration"`
		RefusedMessage    string      `json:"refusedMessage"`
	}
	type status struct {
		Pool         hyperdhcpv1beta1.PoolStatus              `json:"pool"`
		LeaseStorage *leaseStorage                            `json:"leaseStorage,omitempty"`
		Served       *served                                  `json:"served,omitempty"`
		Pair         *hyperdhcpv1beta1.HighAvailabilityStatus `json:"highAvailability,omitempty"`
	}
	report := status{Pool: hyperdhcpv1beta1.PoolStatus{Size: s.Size, Used: s.Used, Free: s.Free}}
	report.Pair = now.pair
	if v := now.served; v != nil {
		report.Served = &served{Generation: v.Generation, Since: v.Since, RefusedGeneration: v.RefusedGeneration, RefusedMessage: truncate(v.RefusedMessage, 1024)}
	}
	if storage != nil {
		report.LeaseStorage = &leaseStorage{Available: storage.Available, Message: storage.Message, Since: storage.Since}
	}
	patch, err := json.Marshal(map[string]status{"status": report})
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
