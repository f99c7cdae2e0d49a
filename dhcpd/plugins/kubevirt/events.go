package kubevirt

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"
	kubevirtv1 "kubevirt.io/api/core/v1"

	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

// Reporter answers "why has my VM no IP?" with Events on the VMI, which
// `kubectl describe vmi` shows. client-go's correlator aggregates similar
// Events and rate-limits each VMI, so a looping guest cannot flood the API;
// recording never blocks (a full queue drops).
type Reporter struct {
	index    *Index
	recorder record.EventRecorder
	stop     func()
}

// Reasons of the Events hyperdhcpd records on VMIs, besides leasedb's.
const ReasonPinRefused = "PinRefused"

// NewReporter sends Events through the API at cfg until ctx ends.
func NewReporter(ctx context.Context, cfg *rest.Config, index *Index) (*Reporter, error) {
	clientset, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("events client: %w", err)
	}
	scheme := runtime.NewScheme()
	if err := kubevirtv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	broadcaster := record.NewBroadcaster(record.WithContext(ctx), record.WithCorrelatorOptions(record.CorrelatorOptions{
		BurstSize: 10, QPS: 1.0 / 60, // per VMI: 10 at once, then one a minute
	}))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: clientset.CoreV1().Events("")})
	return &Reporter{
		index:    index,
		recorder: broadcaster.NewRecorder(scheme, corev1.EventSource{Component: "hyperdhcpd"}),
		stop:     broadcaster.Shutdown,
	}, nil
}

// Close stops sending Events.
func (r *Reporter) Close() { r.stop() }

// LeaseEvent records a leasedb event on the VMI it concerns.
func (r *Reporter) LeaseEvent(e leasedb.LeaseEvent) {
	vmi, iface, ok := r.vmiOf(e.Key)
	if !ok {
		return
	}
	switch e.Reason {
	case leasedb.EventAssigned:
		r.recorder.Eventf(vmi, corev1.EventTypeNormal, e.Reason, "interface %s was given %s", iface, e.IP)
	case leasedb.EventPoolExhausted:
		r.recorder.Eventf(vmi, corev1.EventTypeWarning, e.Reason, "interface %s got no address: the pool is exhausted", iface)
	case leasedb.EventPinUnusable:
		r.recorder.Eventf(vmi, corev1.EventTypeWarning, e.Reason,
			"interface %s is served from the pool: pinned address %s is outside the subnet, the server's, excluded, reserved or held by another client", iface, e.IP)
	}
}

// PinsRefused records a Warning per refused pin.
func (r *Reporter) PinsRefused(refused map[string]string) {
	for key, why := range refused {
		if vmi, iface, ok := r.vmiOf(key); ok {
			r.recorder.Eventf(vmi, corev1.EventTypeWarning, ReasonPinRefused,
				"interface %s is served from the pool: %s", iface, why)
		}
	}
}

// vmiOf finds the VMI of an identity key "vm:namespace/name/interface".
func (r *Reporter) vmiOf(key string) (*kubevirtv1.VirtualMachineInstance, string, bool) {
	rest, ok := strings.CutPrefix(key, leasedb.VMKeyPrefix)
	if !ok {
		return nil, "", false
	}
	parts := strings.SplitN(rest, "/", 3)
	if len(parts) != 3 {
		return nil, "", false
	}
	vmi, ok := r.index.VMI(parts[0], parts[1])
	return vmi, parts[2], ok
}
