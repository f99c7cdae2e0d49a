package status

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/hyperdhcp/hyperdhcp/dhcpd/internal/testenv"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

var cfg *rest.Config

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	env, restConfig, err := testenv.Start(filepath.Join("..", "..", "..", "deploy", "crd"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "start envtest: %v\n", err)
		return 1
	}
	defer env.Stop()
	cfg = restConfig
	return m.Run()
}

func createServer(t *testing.T) (dynamic.ResourceInterface, *unstructured.Unstructured) {
	t.Helper()
	client, err := dynamic.NewForConfig(cfg)
	require.NoError(t, err)
	server := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "hyperdhcp.io/v1beta1", "kind": "Server",
		"metadata": map[string]any{"generateName": "lab-", "namespace": "default"},
		"spec": map[string]any{
			"networkAttachment": map[string]any{"name": "lab"},
			"serverIP":          "192.168.50.2/24",
			"pools":             []any{map[string]any{"start": "192.168.50.100", "end": "192.168.50.199"}},
		},
	}}
	servers := client.Resource(servers).Namespace("default")
	server, err = servers.Create(t.Context(), server, metav1.CreateOptions{})
	require.NoError(t, err)
	// The operator's conditions, which hyperdhcpd must leave alone.
	server.Object["status"] = map[string]any{"observedGeneration": int64(1), "conditions": []any{map[string]any{
		"type": "Ready", "status": "True", "reason": "Available", "message": "ok", "lastTransitionTime": "2026-01-01T00:00:00Z",
	}}}
	server, err = servers.UpdateStatus(t.Context(), server, metav1.UpdateOptions{FieldManager: "hyperdhcp-operator"})
	require.NoError(t, err)
	return servers, server
}

func pool(t *testing.T, servers dynamic.ResourceInterface, name string) map[string]any {
	t.Helper()
	got, err := servers.Get(context.Background(), name, metav1.GetOptions{})
	require.NoError(t, err)
	p, _, _ := unstructured.NestedMap(got.Object, "status", "pool")
	return p
}

func TestPatchWritesOnlyThePool(t *testing.T) {
	servers, server := createServer(t)
	reporter, err := NewReporter(cfg, "default", server.GetName(), time.Second, nil, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	require.NoError(t, reporter.Patch(t.Context(), leasedb.Stats{Size: 100, Used: 7, Free: 93}, nil))

	got, err := servers.Get(t.Context(), server.GetName(), metav1.GetOptions{})
	require.NoError(t, err)
	p, _, _ := unstructured.NestedMap(got.Object, "status", "pool")
	assert.Equal(t, map[string]any{"size": int64(100), "used": int64(7), "free": int64(93)}, p)
	conditions, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
	assert.Len(t, conditions, 1, "the operator's conditions are untouched")
	var managers []string
	for _, f := range got.GetManagedFields() {
		managers = append(managers, f.Manager)
	}
	assert.Contains(t, managers, FieldManager)
}

func TestRunReportsChanges(t *testing.T) {
	servers, server := createServer(t)
	var used atomic.Int64
	stats := func() leasedb.Stats { u := used.Load(); return leasedb.Stats{Size: 10, Used: u, Free: 10 - u} }
	reporter, err := NewReporter(cfg, "default", server.GetName(), 100*time.Millisecond, stats, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	go reporter.Run(t.Context())

	require.Eventually(t, func() bool { return pool(t, servers, server.GetName())["used"] == int64(0) }, 10*time.Second, 50*time.Millisecond)
	used.Store(3)
	require.Eventually(t, func() bool { return pool(t, servers, server.GetName())["used"] == int64(3) }, 10*time.Second, 50*time.Millisecond)
}

// TestRunReportsLeaseStorageAtOnce: a storage fault reaches
// status.leaseStorage when it starts and when it ends, without waiting for
// the next tick, with its message and the time it began.
func TestRunReportsLeaseStorageAtOnce(t *testing.T) {
	servers, server := createServer(t)
	var fault atomic.Pointer[error]
	changed := make(chan struct{}, 1)
	stats := func() leasedb.Stats { return leasedb.Stats{Size: 10, Free: 10} }
	reporter, err := NewReporter(cfg, "default", server.GetName(), time.Hour, stats, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	began := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	reporter.WatchStorage(func() (time.Time, error) {
		if e := fault.Load(); e != nil {
			return began, *e
		}
		return time.Time{}, nil
	}, changed)
	go reporter.Run(t.Context())

	storage := func() map[string]any {
		got, err := servers.Get(context.Background(), server.GetName(), metav1.GetOptions{})
		require.NoError(t, err)
		s, _, _ := unstructured.NestedMap(got.Object, "status", "leaseStorage")
		return s
	}
	require.Eventually(t, func() bool { return storage()["available"] == true }, 10*time.Second, 50*time.Millisecond)

	full := errors.New("commit leases to /var/lib/hyperdhcp/leases.db: database or disk is full")
	fault.Store(&full)
	changed <- struct{}{}
	require.Eventually(t, func() bool { return storage()["available"] == false }, 10*time.Second, 50*time.Millisecond,
		"reported at once, not after the hour-long interval")
	assert.Equal(t, full.Error(), storage()["message"])
	assert.Equal(t, "2026-11-30T08:00:00Z", storage()["since"], "since: when the fault began")

	fault.Store(nil)
	changed <- struct{}{}
	require.Eventually(t, func() bool { return storage()["available"] == true }, 10*time.Second, 50*time.Millisecond)
	assert.Empty(t, storage()["message"], "the fault's message is cleared")
}
