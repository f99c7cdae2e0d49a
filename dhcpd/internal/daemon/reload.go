package daemon

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/yaml"

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

	// report is the last status.served, readable while an edit is being
	// applied (r.mu is held then, for as long as a new VM watch syncs).
	report atomic.Pointer[hyperdhcpv1beta1.ServedStatus]

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

// newReloader starts from serving, which file (as read at start) gave.
func newReloader(file File, serving *config.Config, apply func(*config.Config) error, metrics *server.Metrics, log *slog.Logger) (*reloader, error) {
	r := &reloader{path: file.Path, apply: apply, metrics: metrics, log: log, serving: serving, servedSince: time.Now(),
		changed: make(chan struct{}, 1), fileView: serving, lastFile: file.Data}
	if file.Data != nil {
		var err error
		if r.fileView, err = parseDefaulted(file.Data, file.Path); err != nil {
			return nil, err
		}
	}
	metrics.Serving(serving.Generation())
	r.publish()
	return r, nil
}

// File is the configuration file hyperdhcpd was started with: its path, to
// read edits from, and its content as read at start.
type File struct {
	Path string
	Data []byte
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
func (r *reloader) served() hyperdhcpv1beta1.ServedStatus { return *r.report.Load() }

// publish updates the report and wakes the status reporter; r.mu is held
// (or r not yet shared).
func (r *reloader) publish() {
	r.report.Store(&hyperdhcpv1beta1.ServedStatus{Generation: r.serving.Generation(), Since: metav1.NewTime(r.servedSince),
		RefusedGeneration: r.refused, RefusedMessage: r.refusedBecause})
	select {
	case r.changed <- struct{}{}:
	default:
	}
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
		if err != nil || len(data) == 0 {
			// A mounted ConfigMap is swapped by symlink and never missing
			// for long, and an editor may truncate before it writes: the
			// next poll reads it.
			continue
		}
		r.mu.Lock()
		if !bytes.Equal(data, r.lastFile) {
			r.lastFile = data
			r.offer(data, sourceFile)
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
		r.offer([]byte(data), sourceConfigMap)
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

// Where an edit comes from.
const (
	sourceFile      = "file"
	sourceConfigMap = "ConfigMap"
)

// offer considers configuration data from source; r.mu is held.
//
// A newer generation is applied from either source. The same generation
// with other content comes from the operator alone (a namespace's consent
// given or withdrawn changes kubevirt.namespaces, not the Server): it is
// applied from the ConfigMap watch, which sees every change in order, and
// not from the file, which the kubelet may refresh with a version the watch
// has already gone past.
func (r *reloader) offer(data []byte, source string) {
	next, err := parseDefaulted(data, "the edited configuration")
	if err != nil {
		r.refuse(generationOf(data), err)
		return
	}
	generation, served := next.Generation(), r.serving.Generation()
	switch {
	case generation < served:
		return // the other source is behind
	case generation == served && sameConfig(next, r.fileView):
		return // what is served already
	case generation == served && generation != 0 && source == sourceFile:
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
	r.publish()
}

// generationOf reads the Server generation of configuration data that does
// not parse strictly (a field this hyperdhcpd does not know), so that the
// refusal names it and the operator reports it.
func generationOf(data []byte) int64 {
	var loose struct {
		Kubernetes struct {
			ServerGeneration int64 `json:"serverGeneration"`
		} `json:"kubernetes"`
	}
	_ = yaml.Unmarshal(data, &loose)
	return loose.Kubernetes.ServerGeneration
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
	r.publish()
}

// sameConfig tells whether a and b say the same.
func sameConfig(a, b *config.Config) bool {
	ma, errA := a.Marshal()
	mb, errB := b.Marshal()
	return errA == nil && errB == nil && bytes.Equal(ma, mb)
}
