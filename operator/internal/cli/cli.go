// Package cli is the operator's command line.
package cli

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/go-logr/logr"
	"github.com/urfave/cli/v2"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/hyperdhcp/hyperdhcp/operator/internal/controller"
	"github.com/hyperdhcp/hyperdhcp/operator/internal/scheme"
	"github.com/hyperdhcp/hyperdhcp/operator/internal/version"
)

func envVar(flag string) []string {
	return []string{"HYPERDHCP_OPERATOR_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))}
}

// App returns the operator's command line application.
func App() *cli.App {
	return &cli.App{
		Name:    "hyperdhcp-operator",
		Usage:   "reconcile hyperdhcp.io Servers into hyperdhcpd deployments",
		Version: fmt.Sprintf("%s (commit %s, built %s)", version.Version, version.Commit, version.Date),
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "kubeconfig", EnvVars: []string{"KUBECONFIG"}, Usage: "kubeconfig file (default: in-cluster, then ~/.kube/config)"},
			&cli.StringFlag{Name: "hyperdhcpd-image", EnvVars: envVar("hyperdhcpd-image"), Value: version.HyperdhcpdImage, Usage: "hyperdhcpd image for Servers that name none"},
			&cli.StringFlag{Name: "metrics-bind-address", EnvVars: envVar("metrics-bind-address"), Value: ":8080", Usage: "address of /metrics; 0 turns it off"},
			&cli.StringFlag{Name: "health-probe-bind-address", EnvVars: envVar("health-probe-bind-address"), Value: ":8081", Usage: "address of /healthz and /readyz"},
			&cli.BoolFlag{Name: "leader-elect", EnvVars: envVar("leader-elect"), Usage: "elect a leader so that replicas never reconcile at once"},
			&cli.StringFlag{Name: "leader-election-namespace", EnvVars: envVar("leader-election-namespace"), Usage: "namespace of the leader Lease (default: the pod's)"},
			&cli.IntFlag{Name: "max-concurrent-reconciles", EnvVars: envVar("max-concurrent-reconciles"), Value: 4, Usage: "Servers reconciled in parallel"},
			&cli.Float64Flag{Name: "kube-api-qps", EnvVars: envVar("kube-api-qps"), Value: 50, Usage: "sustained requests per second to the API server"},
			&cli.IntFlag{Name: "kube-api-burst", EnvVars: envVar("kube-api-burst"), Value: 100, Usage: "request burst to the API server"},
			&cli.BoolFlag{Name: "allow-all-namespaces", EnvVars: envVar("allow-all-namespaces"), Usage: "let Servers with kubevirt.allNamespaces read the VMs of every namespace (a ClusterRoleBinding); without it they serve their own namespace only"},
			&cli.StringFlag{Name: "server-selector", EnvVars: envVar("server-selector"), Usage: "reconcile only Servers matching this label selector (default: all)"},
			&cli.StringFlag{Name: "log-level", EnvVars: envVar("log-level"), Value: "info", Usage: "debug, info, warn or error"},
		},
		HideHelpCommand: true,
		Action:          run,
	}
}

func run(c *cli.Context) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return fmt.Errorf("invalid log level: %w", err)
	}
	ctrl.SetLogger(logr.FromSlogHandler(slog.NewJSONHandler(c.App.ErrWriter, &slog.HandlerOptions{Level: level})))

	scheme, err := scheme.New()
	if err != nil {
		return err
	}
	restConfig, err := restConfig(c.String("kubeconfig"))
	if err != nil {
		return err
	}
	// Each Server takes about ten writes to set up; client-go's default of
	// 5 requests per second would make a large install take minutes.
	restConfig.QPS, restConfig.Burst = float32(c.Float64("kube-api-qps")), c.Int("kube-api-burst")
	var serverSelector labels.Selector
	if sel := c.String("server-selector"); sel != "" {
		if serverSelector, err = labels.Parse(sel); err != nil {
			return fmt.Errorf("invalid --server-selector: %w", err)
		}
	}
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Scheme:                  scheme,
		Cache:                   controller.CacheOptions(serverSelector),
		Metrics:                 metricsserver.Options{BindAddress: c.String("metrics-bind-address")},
		HealthProbeBindAddress:  c.String("health-probe-bind-address"),
		LeaderElection:          c.Bool("leader-elect"),
		LeaderElectionID:        "hyperdhcp-operator.hyperdhcp.io",
		LeaderElectionNamespace: c.String("leader-election-namespace"),
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	reconciler := &controller.ServerReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Recorder:  mgr.GetEventRecorder("hyperdhcp-operator"),
		Image:     c.String("hyperdhcpd-image"),

		MaxConcurrentReconciles: c.Int("max-concurrent-reconciles"),
		AllowAllNamespaces:      c.Bool("allow-all-namespaces"),
	}
	if err := reconciler.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up controller: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("add health check: %w", err)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return fmt.Errorf("add ready check: %w", err)
	}
	ctrl.Log.Info("starting operator", "version", version.Version, "hyperdhcpdImage", reconciler.Image, "allowAllNamespaces", reconciler.AllowAllNamespaces)
	return mgr.Start(c.Context)
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		cfg, err := ctrl.GetConfig()
		if err != nil {
			return nil, fmt.Errorf("find the cluster: %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}

// Main runs the operator and returns the process exit code.
func Main(args []string) int {
	ctx := ctrl.SetupSignalHandler()
	if err := App().RunContext(ctx, args); err != nil {
		fmt.Fprintf(os.Stderr, "hyperdhcp-operator: %v\n", err)
		return 1
	}
	return 0
}
