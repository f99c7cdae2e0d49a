package controller

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/operator/internal/render"
)

var repoRoot = filepath.Join("..", "..", "..")

// makeTarget runs `make TARGET VARS...` at the top of the repository with
// the test API server as the current cluster.
func makeTarget(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("make", append([]string{"--no-print-directory", "-C", repoRoot}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "make %v:\n%s", args, out)
	return string(out)
}

// TestMakeTargets drives the developer workflow against the envtest API
// server: install, deploy (server dry run: there is no kubelet), and run
// the operator from source until it reconciles a sample Server.
func TestMakeTargets(t *testing.T) {
	out := makeTarget(t, "install")
	assert.Contains(t, out, "customresourcedefinition.apiextensions.k8s.io/servers.hyperdhcp.io serverside-applied")

	out = makeTarget(t, "deploy", "DEPLOY_FLAGS=--dry-run=server", "IMG=registry.example/op:v1", "HYPERDHCPD_IMG=registry.example/d:v1")
	assert.Contains(t, out, "deployment.apps/hyperdhcp-operator serverside-applied (server dry run)")
	out = makeTarget(t, "undeploy", "DEPLOY_FLAGS=--dry-run=server")
	assert.Contains(t, out, "(server dry run)")
	out = makeTarget(t, "uninstall", "DEPLOY_FLAGS=--dry-run=server")
	assert.Contains(t, out, `"servers.hyperdhcp.io" deleted (server dry run)`)

	const image = "make-run.example/hyperdhcpd:test"
	// This operator sees only the Servers labelled for it; the suite's own
	// manager leaves exactly those alone.
	run := exec.Command("make", "--no-print-directory", "-C", repoRoot, "run", "HYPERDHCPD_IMG="+image,
		"RUN_ARGS=--server-selector="+makeRunLabel)
	run.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	run.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // make, go run and the operator stop together
	var log strings.Builder
	run.Stdout, run.Stderr = &log, &log
	require.NoError(t, run.Start())
	t.Cleanup(func() {
		_ = syscall.Kill(-run.Process.Pid, syscall.SIGTERM)
		_ = run.Wait()
		if t.Failed() {
			t.Logf("make run:\n%s", log.String())
		}
	})

	ns := newNamespace(t)
	objs, err := readObjects(filepath.Join(repoRoot, "deploy", "samples", "hyperdhcp_v1beta1_server_minimal.yaml"))
	require.NoError(t, err)
	sample := objs[0]
	sample.SetNamespace(ns)
	sample.SetLabels(map[string]string{makeRunLabel: "true"})
	require.NoError(t, admin.Create(t.Context(), sample))

	server := &hyperdhcpv1beta1.Server{}
	require.NoError(t, admin.Get(t.Context(), client.ObjectKeyFromObject(sample), server))
	d := &appsv1.Deployment{}
	require.Eventually(t, func() bool {
		return admin.Get(t.Context(), key(ns, render.Name(server)), d) == nil
	}, 2*time.Minute, 200*time.Millisecond, "the operator started by make run reconciles the sample")
	assert.Equal(t, image, d.Spec.Template.Spec.Containers[0].Image)
}
