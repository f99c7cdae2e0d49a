package controller

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	operatorscheme "github.com/hyperdhcp/hyperdhcp/operator/internal/scheme"
)

const (
	operatorNamespace = "hyperdhcp-system"
	operatorUser      = "system:serviceaccount:" + operatorNamespace + ":hyperdhcp-operator"
	testImage         = "example.test/hyperdhcpd:test"
	makeRunLabel      = "hyperdhcp.io/make-run"
	// allowAllLabel marks the Servers left to the operator started with
	// --allow-all-namespaces that TestAllNamespacesNeedsTheOperatorsFlag
	// starts.
	allowAllLabel = "hyperdhcp.io/test-allow-all"
)

var (
	env         *envtest.Environment
	scheme      *runtime.Scheme
	adminCfg    *rest.Config
	operatorCfg *rest.Config
	admin       client.Client // the test's own, all-powerful client
	operator    client.Client // what the operator may do: deploy/rbac, impersonated
	mgr         ctrl.Manager  // the operator under test
	reconciler  *ServerReconciler
	hyperdhcpd  string // the built binary, to check rendered configurations
	kubeconfig  string // an admin kubeconfig for kubectl
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		return fail(errors.New("KUBEBUILDER_ASSETS is not set: run `make test`, or export KUBEBUILDER_ASSETS=$(make -s envtest)"))
	}
	// Reconcile errors reach the test log; set TEST_LOG_LEVEL=debug for more.
	var level slog.Level
	_ = level.UnmarshalText([]byte(os.Getenv("TEST_LOG_LEVEL")))
	if os.Getenv("TEST_LOG_LEVEL") == "" {
		level = slog.LevelError
	}
	// Once the tests are done, shutting the manager down only produces noise
	// (events that can no longer be written): the logger goes quiet then.
	ctrl.SetLogger(logr.FromSlogHandler(quietable{slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})}))
	defer quiet.Store(true)

	var err error
	if scheme, err = operatorscheme.New(); err != nil {
		return fail(err)
	}
	dir, err := os.MkdirTemp("", "operator-test-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(dir)
	hyperdhcpd = filepath.Join(dir, "hyperdhcpd")
	if out, err := exec.Command("go", "build", "-o", hyperdhcpd, "../../../dhcpd/cmd/hyperdhcpd").CombinedOutput(); err != nil {
		return fail(fmt.Errorf("build hyperdhcpd: %w\n%s", err, out))
	}

	env = &envtest.Environment{
		CRDDirectoryPaths: []string{
			filepath.Join("..", "..", "..", "deploy", "crd"),
			filepath.Join("testdata", "crd"), // Multus' NetworkAttachmentDefinition
		},
		ErrorIfCRDPathMissing: true,
	}
	// kube-apiserver derives its advertise address from the default route;
	// name it so the tests also run on a machine without one.
	env.ControlPlane.GetAPIServer().Configure().
		Set("advertise-address", "127.0.0.1").
		Set("endpoint-reconciler-type", "none")
	if adminCfg, err = env.Start(); err != nil {
		_ = env.Stop() // a start that failed half-way leaves etcd and kube-apiserver running otherwise
		return fail(fmt.Errorf("start envtest: %w", err))
	}
	defer env.Stop()
	if admin, err = client.New(adminCfg, client.Options{Scheme: scheme}); err != nil {
		return fail(err)
	}
	user, err := env.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fail(err)
	}
	data, err := user.KubeConfig()
	if err != nil {
		return fail(err)
	}
	kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, data, 0o600); err != nil {
		return fail(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := applyOperatorRBAC(ctx); err != nil {
		return fail(err)
	}
	// The controller runs with exactly the operator's RBAC: a missing
	// +kubebuilder:rbac marker makes these tests fail.
	operatorCfg = rest.CopyConfig(adminCfg)
	operatorCfg.Impersonate = rest.ImpersonationConfig{UserName: operatorUser}
	operatorCfg.QPS, operatorCfg.Burst = 50, 100 // as the operator's defaults
	if operator, err = client.New(operatorCfg, client.Options{Scheme: scheme}); err != nil {
		return fail(err)
	}
	// Servers labelled makeRunLabel are left to the operator TestMakeTargets
	// starts with `make run`, those labelled allowAllLabel to another.
	others, err := labels.Parse("!" + makeRunLabel + ",!" + allowAllLabel)
	if err != nil {
		return fail(err)
	}
	if mgr, reconciler, err = newManager(others, false); err != nil {
		return fail(err)
	}
	go func() {
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "manager: %v\n", err)
		}
	}()
	return m.Run()
}

// newManager makes an operator with the operator's RBAC and cache options
// for the Servers that serverSelector matches.
func newManager(serverSelector labels.Selector, allowAllNamespaces bool) (ctrl.Manager, *ServerReconciler, error) {
	m, err := ctrl.NewManager(operatorCfg, ctrl.Options{
		Scheme:  scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache:   CacheOptions(serverSelector), // as the operator's own
		// A second manager in this process names its controller "server" too.
		Controller: config.Controller{SkipNameValidation: new(true)},
	})
	if err != nil {
		return nil, nil, err
	}
	r := &ServerReconciler{Client: m.GetClient(), APIReader: m.GetAPIReader(),
		Recorder: m.GetEventRecorder("hyperdhcp-operator"), Image: testImage,
		MaxConcurrentReconciles: 4, NetworkAttachmentRecheck: time.Second,
		AllowAllNamespaces: allowAllNamespaces}
	if err := r.SetupWithManager(m); err != nil {
		return nil, nil, err
	}
	return m, r, nil
}

var quiet atomic.Bool

// quietable is a log handler that can be silenced.
type quietable struct{ slog.Handler }

func (q quietable) Enabled(ctx context.Context, l slog.Level) bool {
	return !quiet.Load() && q.Handler.Enabled(ctx, l)
}
func (q quietable) WithAttrs(a []slog.Attr) slog.Handler { return quietable{q.Handler.WithAttrs(a)} }
func (q quietable) WithGroup(g string) slog.Handler      { return quietable{q.Handler.WithGroup(g)} }

// applyOperatorRBAC installs deploy/rbac as `kubectl apply -k deploy/default`
// would: its "system" namespace becomes hyperdhcp-system.
func applyOperatorRBAC(ctx context.Context) error {
	ns := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": operatorNamespace},
	}}
	if err := admin.Create(ctx, ns); err != nil {
		return fmt.Errorf("create %s: %w", operatorNamespace, err)
	}
	paths, err := filepath.Glob(filepath.Join("..", "..", "..", "deploy", "rbac", "*.yaml"))
	if err != nil {
		return err
	}
	for _, path := range paths {
		if filepath.Base(path) == "kustomization.yaml" {
			continue
		}
		objs, err := readObjects(path)
		if err != nil {
			return err
		}
		for _, obj := range objs {
			if obj.GetNamespace() == "system" {
				obj.SetNamespace(operatorNamespace)
			}
			if subjects, ok := obj.Object["subjects"].([]any); ok {
				for _, s := range subjects {
					if s := s.(map[string]any); s["namespace"] == "system" {
						s["namespace"] = operatorNamespace
					}
				}
			}
			if err := admin.Create(ctx, obj); err != nil {
				return fmt.Errorf("apply %s %s: %w", obj.GetKind(), obj.GetName(), err)
			}
		}
	}
	return nil
}

func readObjects(path string) ([]*unstructured.Unstructured, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	decoder := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var objs []*unstructured.Unstructured
	for {
		var obj map[string]any
		if err := decoder.Decode(&obj); err != nil {
			if errors.Is(err, io.EOF) {
				return objs, nil
			}
			return nil, fmt.Errorf("decode %s: %w", path, err)
		}
		if len(obj) > 0 {
			objs = append(objs, &unstructured.Unstructured{Object: obj})
		}
	}
}

// kubectl runs kubectl against the test API server.
func kubectl(args ...string) (string, error) {
	cmd := exec.Command("kubectl", append([]string{"--kubeconfig", kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
