package kubevirt

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	kubevirtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hyperdhcp/hyperdhcp/dhcpd/internal/testenv"
)

var cfg *rest.Config

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	env, restConfig, err := testenv.Start(filepath.Join("testdata", "crd"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "start envtest: %v\n", err)
		return 1
	}
	defer env.Stop()
	cfg = restConfig
	return m.Run()
}

func kubeClient(t *testing.T) client.Client {
	c, err := newKubeClient()
	require.NoError(t, err)
	return c
}

func kubeClientB(b *testing.B) client.Client {
	c, err := newKubeClient()
	if err != nil {
		b.Fatal(err)
	}
	return c
}

func newKubeClient() (client.Client, error) {
	scheme := runtime.NewScheme()
	if err := kubevirtv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	return client.New(cfg, client.Options{Scheme: scheme})
}

func createNamespace(t *testing.T, c client.Client, name string) {
	require.NoError(t, c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}))
}

// TestWatcherIndexesVMsOnTheServedNetwork runs the watcher against a real
// API server: VMIs and VMs created from KubeVirt's Go types appear in the
// index, changes follow, deletions go, and namespaces not served are not
// watched.
func TestWatcherIndexesVMsOnTheServedNetwork(t *testing.T) {
	c := kubeClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	createNamespace(t, c, "vms")
	createNamespace(t, c, "elsewhere")

	web := vmi("vms", "web", "lab-bridge")
	web.Spec.Domain.Devices.Interfaces[1].MacAddress = "02:00:5e:00:10:01"
	require.NoError(t, c.Create(ctx, web))
	other := vmi("elsewhere", "web", "vms/lab-bridge")
	other.Spec.Domain.Devices.Interfaces[1].MacAddress = "02:00:5e:00:10:02"
	require.NoError(t, c.Create(ctx, other))

	index := NewIndex(lab)
	w, err := NewWatcher(cfg, index, []string{"vms"}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	synced, err := w.Start(ctx, 30*time.Second)
	require.NoError(t, err)
	require.True(t, synced)
	assert.Empty(t, w.Degraded())

	id, ok := index.Resolve(mac("02:00:5e:00:10:01"))
	require.True(t, ok, "a VMI present before the start is indexed by the first sync")
	assert.Equal(t, "vm:vms/web/net1", id.Key)
	_, ok = index.Resolve(mac("02:00:5e:00:10:02"))
	assert.False(t, ok, "a namespace not served is not watched")

	// The VM's annotation pins the interface; a new MAC follows.
	vm := &kubevirtv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: "vms", Name: "web",
		Annotations: map[string]string{PinAnnotationPrefix + "net1": "192.168.50.20"}}}
	require.NoError(t, c.Create(ctx, vm))
	require.NoError(t, c.Get(ctx, client.ObjectKeyFromObject(web), web))
	web.Spec.Domain.Devices.Interfaces[1].MacAddress = "02:00:5e:00:10:09"
	require.NoError(t, c.Update(ctx, web))
	require.Eventually(t, func() bool {
		id, ok := index.Resolve(mac("02:00:5e:00:10:09"))
		return ok && id.Pin.String() == "192.168.50.20"
	}, 10*time.Second, 50*time.Millisecond)
	_, ok = index.Resolve(mac("02:00:5e:00:10:01"))
	assert.False(t, ok, "the old MAC is gone")

	require.NoError(t, c.Delete(ctx, web))
	require.Eventually(t, func() bool { return index.Len() == 0 }, 10*time.Second, 50*time.Millisecond)
}

func TestWatcherStartsWithoutTheAPI(t *testing.T) {
	unreachable := rest.CopyConfig(cfg)
	unreachable.Host = "https://127.0.0.1:1"
	w, err := NewWatcher(unreachable, NewIndex(lab), []string{"vms"}, slog.New(slog.DiscardHandler))
	require.NoError(t, err, "preparing the watcher makes no API call")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	synced, err := w.Start(ctx, 2*time.Second)
	require.NoError(t, err)
	assert.False(t, synced, "the first sync is waited for, bounded")
	assert.Eventually(t, func() bool { return w.Degraded() != "" }, 5*time.Second, 50*time.Millisecond)
}
