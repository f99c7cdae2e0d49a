package status

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
)

// ReasonAddressInUse is the reason of the Event recorded on the Server when
// a probe finds an address in use on the network.
const ReasonAddressInUse = "AddressInUse"

// ServerEvents records Events on hyperdhcpd's Server, which `kubectl
// describe server` shows. client-go's correlator aggregates similar Events
// and rate-limits them; recording never blocks (a full queue drops).
type ServerEvents struct {
	recorder record.EventRecorder
	server   *corev1.ObjectReference
	stop     func()
}

// NewServerEvents sends Events about the Server namespace/name through the
// API at cfg until ctx ends or Close. It reads the Server once, for the UID
// that ties the Events to it.
func NewServerEvents(ctx context.Context, cfg *rest.Config, namespace, name string) (*ServerEvents, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "hyperdhcpd"
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create Kubernetes client: %w", err)
	}
	getCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	server, err := client.Resource(servers).Namespace(namespace).Get(getCtx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read Server %s/%s: %w", namespace, name, err)
	}
	clientset, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("events client: %w", err)
	}
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: clientset.CoreV1().Events(namespace)})
	return &ServerEvents{
		recorder: broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "hyperdhcpd"}),
		server: &corev1.ObjectReference{
			APIVersion: hyperdhcpv1beta1.GroupVersion.String(), Kind: "Server",
			Namespace: namespace, Name: name, UID: server.GetUID(), ResourceVersion: server.GetResourceVersion(),
		},
		stop: broadcaster.Shutdown,
	}, nil
}

// AddressInUse records that a probe found ip in use by mac, so it was not
// offered and is quarantined for probation.
func (e *ServerEvents) AddressInUse(ip netip.Addr, mac net.HardwareAddr, probation time.Duration) {
	e.recorder.Eventf(e.server, corev1.EventTypeWarning, ReasonAddressInUse,
		"%s is in use on the network by %s: not offered, quarantined for %s", ip, mac, probation)
}

// Close stops sending Events.
func (e *ServerEvents) Close() { e.stop() }
