package kubevirt

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	kubevirtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// DefaultGrace keeps a deleted VM's address long enough for a delete and
// recreate (a GitOps sync, a VM rebuilt from its manifest) to get it back.
const DefaultGrace = 5 * time.Minute

// Watcher keeps an Index current from an informer cache of the VMIs and
// VMs in the served namespaces. Packets never wait for it: they read the
// index, which holds the last state seen even while the API is away.
type Watcher struct {
	index *Index
	cache cache.Cache
	log   *slog.Logger
	// api answers a cheap request that tells whether the API is reachable:
	// informers retry a broken watch quietly, so they cannot tell.
	api    func(context.Context) error
	synced atomic.Bool
	// degraded holds the last watch error until the watches recover.
	degraded atomic.Pointer[string]
	// OnRefused, when set before Start, is told of pins the index refused.
	OnRefused func(map[string]string)
	// Grace is how long a deleted VM's leases are kept, so that a delete
	// and recreate keeps the address.
	Grace time.Duration

	mu       sync.Mutex
	reported map[string]string // refusals reported, by identity key
	vms      map[string]int    // VM namespace/name -> add and update events seen
	onVMGone func(namespace, name string)
}

// OnVMGone sets what is called when a VirtualMachine is deleted and not
// recreated within the grace period.
func (w *Watcher) OnVMGone(f func(namespace, name string)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.onVMGone = f
}

// NewWatcher prepares the informers for namespaces (nil or empty: all
// namespaces). It makes no API call, so it works while the API is down.
func NewWatcher(cfg *rest.Config, index *Index, namespaces []string, log *slog.Logger) (*Watcher, error) {
	scheme := runtime.NewScheme()
	if err := kubevirtv1.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("register KubeVirt types: %w", err)
	}
	// A static mapping: the default one asks the API's discovery, which
	// would make starting without the API impossible.
	mapper := meta.NewDefaultRESTMapper([]schema.GroupVersion{kubevirtv1.SchemeGroupVersion})
	mapper.Add(kubevirtv1.VirtualMachineInstanceGroupVersionKind, meta.RESTScopeNamespace)
	mapper.Add(kubevirtv1.VirtualMachineGroupVersionKind, meta.RESTScopeNamespace)
	var perNamespace map[string]cache.Config
	if len(namespaces) > 0 {
		perNamespace = map[string]cache.Config{}
		for _, ns := range namespaces {
			perNamespace[ns] = cache.Config{}
		}
	}
	w := &Watcher{index: index, log: log, reported: map[string]string{}, vms: map[string]int{}, Grace: DefaultGrace}
	c, err := cache.New(cfg, cache.Options{
		Scheme:            scheme,
		Mapper:            mapper,
		DefaultNamespaces: perNamespace,
		ByObject: map[client.Object]cache.ByObject{
			&kubevirtv1.VirtualMachineInstance{}: {Transform: stripVMI},
			&kubevirtv1.VirtualMachine{}:         {Transform: stripVM},
		},
		DefaultWatchErrorHandler: func(ctx context.Context, r *toolscache.Reflector, err error) {
			msg := err.Error()
			if w.degraded.Swap(&msg) == nil {
				log.Warn("cannot watch KubeVirt objects; answering from the last state seen", "error", err)
			}
			toolscache.DefaultWatchErrorHandler(ctx, r, err)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("KubeVirt cache: %w", err)
	}
	w.cache = c
	pingConfig := rest.CopyConfig(cfg)
	pingConfig.Timeout = 5 * time.Second
	clientset, err := kubernetes.NewForConfig(pingConfig)
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	w.api = func(context.Context) error { _, err := clientset.Discovery().ServerVersion(); return err }
	return w, nil
}

// healthInterval is how often the watcher checks that the API answers.
const healthInterval = 10 * time.Second

// watchHealth keeps Degraded true while the API does not answer and clears
// it once it does and the first list is complete, until ctx ends.
func (w *Watcher) watchHealth(ctx context.Context) {
	ticker := time.NewTicker(healthInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		if err := w.api(ctx); err != nil {
			msg := "the API server does not answer: " + err.Error()
			if w.degraded.Swap(&msg) == nil {
				w.log.Warn("cannot reach the API; answering VMs from the last state seen", "error", err)
			}
		} else if w.synced.Load() && w.degraded.Swap(nil) != nil {
			w.log.Info("the API answers again; serving VMs from it")
		}
	}
}

// Start runs the informers until ctx ends and waits up to syncTimeout for
// their first list. It returns false when they did not sync in time; they
// keep trying, and the index fills when the API answers.
func (w *Watcher) Start(ctx context.Context, syncTimeout time.Duration) (bool, error) {
	vmis, err := w.cache.GetInformer(ctx, &kubevirtv1.VirtualMachineInstance{}, cache.BlockUntilSynced(false))
	if err != nil {
		return false, fmt.Errorf("VMI informer: %w", err)
	}
	vms, err := w.cache.GetInformer(ctx, &kubevirtv1.VirtualMachine{}, cache.BlockUntilSynced(false))
	if err != nil {
		return false, fmt.Errorf("VM informer: %w", err)
	}
	vmiHandler, err := vmis.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.setVMI(obj) },
		UpdateFunc: func(_, obj any) { w.setVMI(obj) },
		DeleteFunc: func(obj any) {
			if v, ok := unwrap(obj).(*kubevirtv1.VirtualMachineInstance); ok {
				w.index.DeleteVMI(v.Namespace, v.Name)
			}
		},
	})
	if err != nil {
		return false, err
	}
	vmHandler, err := vms.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.setVM(obj) },
		UpdateFunc: func(_, obj any) { w.setVM(obj) },
		DeleteFunc: func(obj any) {
			if v, ok := unwrap(obj).(*kubevirtv1.VirtualMachine); ok {
				w.index.SetVMPins(v.Namespace, v.Name, nil)
				w.vmDeleted(ctx, v.Namespace, v.Name)
			}
		},
	})
	if err != nil {
		return false, err
	}
	go func() {
		if err := w.cache.Start(ctx); err != nil {
			w.log.Error("KubeVirt informers stopped", "error", err)
		}
	}()
	syncCtx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	// Synced means the index holds the first list: the handlers have had
	// every object, not only the informers' stores.
	synced := w.cache.WaitForCacheSync(syncCtx) &&
		toolscache.WaitForCacheSync(syncCtx.Done(), vmiHandler.HasSynced, vmHandler.HasSynced)
	go w.watchHealth(ctx)
	if synced {
		w.synced.Store(true)
		w.degraded.Store(nil)
		// The first list decodes every object in full before the transforms
		// strip them: hand that garbage back to the system now rather than
		// keep it resident (for 10,000 VMIs this is most of the RSS).
		debug.FreeOSMemory()
	} else {
		msg := fmt.Sprintf("the first list of KubeVirt objects did not complete within %s", syncTimeout)
		w.degraded.CompareAndSwap(nil, &msg)
		go func() {
			// The informers keep trying; degraded ends when they get through.
			if w.cache.WaitForCacheSync(ctx) &&
				toolscache.WaitForCacheSync(ctx.Done(), vmiHandler.HasSynced, vmHandler.HasSynced) {
				w.synced.Store(true)
				w.degraded.Store(nil)
				w.log.Info("KubeVirt objects listed; serving VMs from the API again")
			}
		}()
	}
	return synced, nil
}

// Degraded returns the last watch error, if the watches have not recovered
// since; "" when they are fine.
func (w *Watcher) Degraded() string {
	if msg := w.degraded.Load(); msg != nil {
		return *msg
	}
	return ""
}

func (w *Watcher) setVMI(obj any) {
	if v, ok := obj.(*kubevirtv1.VirtualMachineInstance); ok {
		w.refused(w.index.SetVMI(v))
	}
}

func (w *Watcher) setVM(obj any) {
	v, ok := obj.(*kubevirtv1.VirtualMachine)
	if !ok {
		return
	}
	w.mu.Lock()
	w.vms[v.Namespace+"/"+v.Name]++
	w.mu.Unlock()
	// Only the VM's own annotations: its template's reach the VMI itself
	// when KubeVirt creates it, and are read there.
	w.refused(w.index.SetVMPins(v.Namespace, v.Name, v.Annotations))
}

// vmDeleted frees a deleted VM's leases after the grace period, unless a VM
// of that name came back meanwhile.
func (w *Watcher) vmDeleted(ctx context.Context, namespace, name string) {
	key := namespace + "/" + name
	w.mu.Lock()
	seen := w.vms[key]
	w.mu.Unlock()
	time.AfterFunc(w.Grace, func() {
		w.mu.Lock()
		recreated, gone := w.vms[key] != seen, w.onVMGone
		if !recreated {
			delete(w.vms, key)
		}
		w.mu.Unlock()
		// A VMI that outlives its VM (an orphaning delete) still runs and
		// still uses its address: its lease ends by expiry, not here.
		_, running := w.index.VMI(namespace, name)
		if !recreated && !running && ctx.Err() == nil && gone != nil {
			gone(namespace, name)
		}
	})
}

// refused reports the refusals that are new: a VMI's status changes often,
// and each change must not repeat the same complaint.
func (w *Watcher) refused(refusals map[string]string) {
	w.mu.Lock()
	fresh := map[string]string{}
	for key, why := range refusals {
		if w.reported[key] != why {
			fresh[key] = why
			w.reported[key] = why
		}
	}
	w.mu.Unlock()
	for key, why := range fresh {
		w.log.Warn("pinned address refused; the VM is served from the pool", "vm", key, "reason", why)
	}
	if len(fresh) > 0 && w.OnRefused != nil {
		w.OnRefused(fresh)
	}
}

func unwrap(obj any) any {
	if t, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		return t.Obj
	}
	return obj
}

// ours keeps only the pin annotations.
func ours(annotations map[string]string) map[string]string {
	var out map[string]string
	for k, v := range annotations {
		if strings.HasPrefix(k, PinAnnotationPrefix) {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
		}
	}
	return out
}

// stripVMI keeps what the index reads, so that 10,000 VMIs cost little
// memory. It must be idempotent: the cache may call it again on its output.
func stripVMI(in any) (any, error) {
	v, ok := in.(*kubevirtv1.VirtualMachineInstance)
	if !ok {
		return in, nil
	}
	out := &kubevirtv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{
		Name: v.Name, Namespace: v.Namespace, UID: v.UID, ResourceVersion: v.ResourceVersion,
		DeletionTimestamp: v.DeletionTimestamp, Annotations: ours(v.Annotations),
	}}
	for _, i := range v.Spec.Domain.Devices.Interfaces {
		out.Spec.Domain.Devices.Interfaces = append(out.Spec.Domain.Devices.Interfaces,
			kubevirtv1.Interface{Name: i.Name, MacAddress: i.MacAddress})
	}
	for _, n := range v.Spec.Networks {
		if n.Multus != nil {
			out.Spec.Networks = append(out.Spec.Networks, kubevirtv1.Network{Name: n.Name,
				NetworkSource: kubevirtv1.NetworkSource{Multus: &kubevirtv1.MultusNetwork{NetworkName: n.Multus.NetworkName}}})
		}
	}
	for _, s := range v.Status.Interfaces {
		out.Status.Interfaces = append(out.Status.Interfaces,
			kubevirtv1.VirtualMachineInstanceNetworkInterface{Name: s.Name, MAC: s.MAC})
	}
	return out, nil
}

// stripVM keeps the VM's pin annotations.
func stripVM(in any) (any, error) {
	v, ok := in.(*kubevirtv1.VirtualMachine)
	if !ok {
		return in, nil
	}
	out := &kubevirtv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{
		Name: v.Name, Namespace: v.Namespace, UID: v.UID, ResourceVersion: v.ResourceVersion,
		Annotations: ours(v.Annotations),
	}}
	out.Status.PrintableStatus = v.Status.PrintableStatus
	return out, nil
}
