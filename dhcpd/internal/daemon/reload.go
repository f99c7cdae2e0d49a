package daemon

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/hyperdhcp/hyperdhcp/apis/config"
	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/internal/server"
)

// filePoll is how often the configuration file is read for an edit. The
// kubelet refreshes a mounted ConfigMap within a minute or so; the
// ConfigMap watch brings an edit within a second while the API answers.
const filePoll = 2 * time.Second

// Outcomes of an edited configuration, for the metric.
const (
	changeApplied         = "applied"
	changeRefused         = "refused"
	changeRestartRequired = "restart_required"
)

// reloader applies edits of the configuration while hyperdhcpd serves. An
// edit reaches it from the configuration file (polled) and, in Kubernetes,
// from a watch of the ConfigMap the file is mounted from; whichever
// brings a generation first applies it and the other then finds nothing
// new. An edit that only live settings (config.RestartOnly) tell apart is
// applied between two packets; one that changes a restart-only setting
// waits for the restart (the operator rolls the pod for it); one that
// fails validation or cannot be applied is refused, and the configuration
// before it keeps serving.
type reloader struct {
	path    string
	apply   func(*config.Config) error
	metrics *server.Metrics
	log     *slog.Logger
	// changed is signalled when served() changes.
	changed chan struct{}

	mu sync.Mutex
	// serving is the configuration served, with the command line's
	// overrides; fileView is the file's configuration it came from, to
	// compare edits with.
	serving, fileView *config.Config
	lastFile          []byte
	// servedSince is when serving started to be served; refused and
	// refusedBecause name the last edit refused (or waiting for a restart),
	// so each is told once.
	servedSince    time.Time
	refused        int64
	refusedBecause string
	restartPending string
}

func newReloader(path string, serving *config.Config, apply func(*config.Config) error, metrics *server.Metrics, log *slog.Logger) (*reloader, error) {
	r := &reloader{path: path, apply: apply, metrics: metrics, log: log, serving: serving, servedSince: time.Now(),
		changed: make(chan struct{}, 1)}
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
		if r.fileView, err = parseDefaulted(data, path); err != nil {
			return nil, err
		}
		r.lastFile = data
	} else {
		r.fileView = serving
	}
	metrics.Serving(serving.Generation())
	return r, nil
}

func parseDefaulted(data []byte, source string) (*config.Config, error) {
	cfg, err := config.Parse(data, source)
	if err != nil {
		return nil, err
	}
	cfg.SetDefaults()
	return cfg, nil
}

// served is the report for the Server's status.served.
func (r *reloader) served() hyperdhcpv1beta1.ServedStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	return hyperdhcpv1beta1.ServedStatus{Generation: r.serving.Generation(), Since: metav1.NewTime(r.servedSince),
		RefusedGeneration: r.refused, RefusedMessage: r.refusedBecause}
}

// pollFile reads the configuration file every filePoll until ctx ends.
func (r *reloader) pollFile(ctx context.Context) {
	ticker := time.NewTicker(filePoll)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		data, err := os.ReadFile(r.path)
		if err != nil {
			// A mounted ConfigMap is swapped by symlink and never missing
			// for long; the next poll reads it.
			continue
		}
		r.mu.Lock()
		if !bytes.Equal(data, r.lastFile) {
			r.lastFile = data
			r.offer(data, "file "+r.path)
		}
		r.mu.Unlock()
	}
}

// watchConfigMap applies the ConfigMap k names as it changes, until ctx
// ends. The watch retries by itself while the API is away.
func (r *reloader) watchConfigMap(ctx context.Context, restConfig *rest.Config, k *config.Kubernetes) error {
	restConfig = rest.CopyConfig(restConfig)
	restConfig.UserAgent = "hyperdhcpd"
	clients, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return fmt.Errorf("watch ConfigMap %s/%s: %w", k.ServerNamespace, k.ConfigMap, err)
	}
	// One object by name: RBAC grants its watch by resourceNames.
	watchList := toolscache.NewFilteredListWatchFromClient(clients.CoreV1().RESTClient(), "configmaps", k.ServerNamespace,
		func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", k.ConfigMap).String()
		})
	informer := toolscache.NewSharedIndexInformer(watchList, &corev1.ConfigMap{}, 0, toolscache.Indexers{})
	seen := func(obj any) {
		cm, ok := obj.(*corev1.ConfigMap)
		if !ok {
			return
		}
		data, ok := cm.Data[config.ConfigMapKey]
		if !ok {
			return
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		r.offer([]byte(data), "ConfigMap "+k.ServerNamespace+"/"+k.ConfigMap)
	}
	if _, err := informer.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    seen,
		UpdateFunc: func(_, obj any) { seen(obj) },
	}); err != nil {
		return fmt.Errorf("watch ConfigMap %s/%s: %w", k.ServerNamespace, k.ConfigMap, err)
	}
	if err := informer.SetWatchErrorHandlerWithContext(r.watchErrors(k)); err != nil {
		return fmt.Errorf("watch ConfigMap %s/%s: %w", k.ServerNamespace, k.ConfigMap, err)
	}
	go informer.RunWithContext(ctx)
	return nil
}

// watchErrors logs the first failure of the ConfigMap watch of an outage
// (the file still brings edits), not each retry.
func (r *reloader) watchErrors(k *config.Kubernetes) toolscache.WatchErrorHandlerWithContext {
	var told sync.Once
	return func(_ context.Context, _ *toolscache.Reflector, err error) {
		told.Do(func() {
			r.log.Warn("cannot watch the configuration's ConfigMap: edits arrive when the kubelet refreshes the mounted file",
				"configmap", k.ServerNamespace+"/"+k.ConfigMap, "error", err)
		})
	}
}

// offer considers configuration data from source; r.mu is held.
func (r *reloader) offer(data []byte, source string) {
	next, err := parseDefaulted(data, source)
	if err != nil {
		r.refuse(0, err)
		return
	}
	generation := next.Generation()
	switch served := r.serving.Generation(); {
	case generation != 0 && generation <= served:
		return // what is served already, or older: the other source is behind
	case generation == 0 && served == 0 && sameConfig(next, r.fileView):
		return
	}
	// The spec first: a broken edit is refused as such, not taken for one
	// that waits for a restart.
	if errs := hyperdhcpv1beta1.ValidateSpec(&next.Server, field.NewPath("server")); len(errs) > 0 {
		r.refuse(generation, fmt.Errorf("invalid config: %w", errs.ToAggregate()))
		return
	}
	restart, err := r.fileView.RestartFields(next)
	if err != nil {
		r.refuse(generation, err)
		return
	}
	if len(restart) > 0 {
		if why := fmt.Sprint(generation, restart); why != r.restartPending {
			r.restartPending = why
			r.metrics.ConfigChange(changeRestartRequired)
			r.log.Warn("the edited configuration changes settings that take a restart: serving the one before it until hyperdhcpd restarts (the operator replaces the pod)",
				"generation", generation, "serving", r.serving.Generation(), "settings", restart)
		}
		return
	}
	candidate := *r.serving
	candidate.Server = *next.Server.DeepCopy()
	if k := r.serving.Kubernetes; k != nil {
		kc := *k
		kc.ServerGeneration = generation
		candidate.Kubernetes = &kc
	}
	if err := candidate.Validate(); err != nil {
		r.refuse(generation, err)
		return
	}
	start := time.Now()
	if err := r.apply(&candidate); err != nil {
		r.refuse(generation, err)
		return
	}
	r.serving, r.fileView, r.servedSince = &candidate, next, time.Now()
	r.refused, r.refusedBecause = 0, ""
	r.metrics.ConfigChange(changeApplied)
	r.metrics.Serving(generation)
	r.log.Info("configuration applied without a restart", "generation", generation, "source", source,
		"took", time.Since(start).Round(time.Microsecond).String())
	r.signal()
}

// refuse reports an edit that cannot be applied, once per edit.
func (r *reloader) refuse(generation int64, err error) {
	if generation == r.refused && err.Error() == r.refusedBecause {
		return
	}
	r.refused, r.refusedBecause = generation, err.Error()
	r.metrics.ConfigChange(changeRefused)
	r.log.Error("the edited configuration is refused: serving the one before it", "generation", generation,
		"serving", r.serving.Generation(), "error", err)
	r.signal()
}

func (r *reloader) signal() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// sameConfig tells whether a and b say the same.
func sameConfig(a, b *config.Config) bool {
	ma, errA := a.Marshal()
	mb, errB := b.Marshal()
	return errA == nil && errB == nil && bytes.Equal(ma, mb)
}
