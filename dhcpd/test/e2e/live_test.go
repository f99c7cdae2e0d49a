package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	crclient "sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/hyperdhcp/hyperdhcp/apis/config"
	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
)

var (
	buildOperatorOnce sync.Once
	operatorBinary    string
	operatorBuildErr  error
)

// startOperator builds hyperdhcp-operator (once per run) and runs it as a
// process against the API server kubeconfig names, until the test ends.
func startOperator(t *testing.T, kubeconfig string) (logPath string) {
	t.Helper()
	buildOperatorOnce.Do(func() {
		operatorBinary = filepath.Join(filepath.Dir(hyperdhcpd), "hyperdhcp-operator")
		out, err := exec.Command("go", "build", "-o", operatorBinary, "../../../operator/cmd/hyperdhcp-operator").CombinedOutput()
		if err != nil {
			operatorBuildErr = fmt.Errorf("build hyperdhcp-operator: %w: %s", err, out)
		}
	})
	require.NoError(t, operatorBuildErr)
	logPath = filepath.Join(t.TempDir(), "operator.log")
	logFile, err := os.Create(logPath)
	require.NoError(t, err)
	cmd := exec.Command(operatorBinary, "--kubeconfig", kubeconfig, "--hyperdhcpd-image", "hyperdhcpd:e2e",
		"--metrics-bind-address", "0", "--health-probe-bind-address", "0")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		logFile.Close()
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			t.Logf("operator log:\n%s", data)
		}
	})
	return logPath
}

// liveBed is a Server reconciled by the real operator and served by
// hyperdhcpd in the test bed, which plays the kubelet: it runs hyperdhcpd
// with the ConfigMap's configuration as the pod would, under the
// ServiceAccount's identity.
type liveBed struct {
	*testBed
	k8s    crclient.Client
	object *hyperdhcpv1beta1.Server
}

func newLiveBed(t *testing.T) *liveBed {
	t.Helper()
	// hyperdhcpd's client certificate names the ServiceAccount the operator
	// binds its Role to: every API call it makes is checked against the
	// rights the operator grants, nothing more.
	env, k8s, kubeconfig, apiHost := startAPIServerAs(t, envtest.User{Name: "system:serviceaccount:vms:hyperdhcpd-lab",
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:vms"}})
	admin, err := env.AddUser(envtest.User{Name: "operator", Groups: []string{"system:masters"}}, nil)
	require.NoError(t, err)
	adminConfig, err := admin.KubeConfig()
	require.NoError(t, err)
	adminPath := filepath.Join(t.TempDir(), "operator.kubeconfig")
	require.NoError(t, os.WriteFile(adminPath, adminConfig, 0o600))
	startOperator(t, adminPath)

	ctx := context.Background()
	require.NoError(t, k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "vms"}}))
	server := &hyperdhcpv1beta1.Server{
		ObjectMeta: metav1.ObjectMeta{Name: "lab", Namespace: "vms"},
		Spec: hyperdhcpv1beta1.ServerSpec{
			NetworkAttachment: hyperdhcpv1beta1.NetworkAttachment{Name: "lab", Interface: "br0"},
			ServerIP:          serverIP,
			Pools:             []hyperdhcpv1beta1.AddressRange{{Start: poolStart, End: poolEnd}},
			Router:            routerIP,
			DNS:               []hyperdhcpv1beta1.IPv4Address{dnsIP},
			LeaseTime:         &metav1.Duration{Duration: 10 * time.Minute},
			KubeVirt:          &hyperdhcpv1beta1.KubeVirtSpec{Enabled: ptr.To(false)},
		},
	}
	require.NoError(t, k8s.Create(ctx, server))

	b := &liveBed{testBed: newTestBed(t, nil), k8s: k8s, object: server}
	cm := &corev1.ConfigMap{}
	require.Eventually(t, func() bool {
		return k8s.Get(ctx, crclient.ObjectKey{Namespace: "vms", Name: "hyperdhcpd-lab"}, cm) == nil
	}, 30*time.Second, 100*time.Millisecond, "the operator renders the ConfigMap")
	require.NoError(t, os.WriteFile(b.config, []byte(cm.Data[config.ConfigMapKey]), 0o600))
	forwardAPIServer(t, b.serverNS, apiHost)
	b.startServerCommand("ip", "netns", "exec", b.serverNS, hyperdhcpd, "serve", "--config", b.config,
		"--lease-database", b.database, "--kubeconfig", kubeconfig, "--log-level", "debug")
	b.waitServed(1)
	b.rolledOut()
	return b
}

// rolledOut reports the Deployment available, as the Deployment controller
// would once the pod the test bed runs is ready (envtest runs no
// controllers).
func (b *liveBed) rolledOut() {
	b.t.Helper()
	ctx := context.Background()
	d := &appsv1.Deployment{}
	require.NoError(b.t, b.k8s.Get(ctx, crclient.ObjectKey{Namespace: "vms", Name: "hyperdhcpd-lab"}, d))
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
	require.NoError(b.t, b.k8s.Status().Update(ctx, d))
	require.Eventually(b.t, func() bool {
		return meta.IsStatusConditionTrue(b.get().Status.Conditions, hyperdhcpv1beta1.ConditionReady)
	}, 20*time.Second, 50*time.Millisecond, "Ready once the Deployment is available")
}

// edit changes the Server's spec with a merge patch and returns when it
// was accepted, with the new generation.
func (b *liveBed) edit(mutate func(*hyperdhcpv1beta1.ServerSpec)) (int64, time.Time) {
	b.t.Helper()
	ctx := context.Background()
	require.NoError(b.t, b.k8s.Get(ctx, crclient.ObjectKeyFromObject(b.object), b.object))
	before := b.object.DeepCopy()
	mutate(&b.object.Spec)
	require.NoError(b.t, b.k8s.Patch(ctx, b.object, crclient.MergeFrom(before)))
	return b.object.Generation, time.Now()
}

// waitServed waits until the Server's status says hyperdhcpd serves
// generation, and returns how long that took.
func (b *liveBed) waitServed(generation int64) {
	b.t.Helper()
	require.Eventually(b.t, func() bool {
		s := b.get()
		return s.Status.Served != nil && s.Status.Served.Generation == generation
	}, 20*time.Second, 20*time.Millisecond, "hyperdhcpd reports serving generation %d", generation)
}

func (b *liveBed) get() *hyperdhcpv1beta1.Server {
	s := &hyperdhcpv1beta1.Server{}
	require.NoError(b.t, b.k8s.Get(context.Background(), crclient.ObjectKeyFromObject(b.object), s))
	return s
}

func (b *liveBed) podTemplateHash() string {
	d := &appsv1.Deployment{}
	require.NoError(b.t, b.k8s.Get(context.Background(), crclient.ObjectKey{Namespace: "vms", Name: "hyperdhcpd-lab"}, d))
	return d.Spec.Template.Annotations["hyperdhcp.io/config-hash"]
}

// TestServerEditsApplyLive edits a Server the operator reconciles while
// hyperdhcpd serves it: each edit that can be applied live is, by the same
// process, within a second; clients see it at their next renewal or
// DISCOVER; perfdhcp loses no exchange across ten edits; an invalid edit
// leaves the last good spec serving and says so; an edit of serverIP
// rolls the pod instead.
func TestServerEditsApplyLive(t *testing.T) {
	b := newLiveBed(t)
	pid := b.server.Process.Pid
	hash := b.podTemplateHash()
	require.NotEmpty(t, hash)

	first := &udhcpc{c: b.addClient("02:00:5e:60:00:01")}
	got := first.obtain()
	assert.Equal(t, dnsIP, got.DNS)
	held := got.IP

	// DNS: a renewal after the edit carries the new servers.
	generation, edited := b.edit(func(s *hyperdhcpv1beta1.ServerSpec) {
		s.DNS = []hyperdhcpv1beta1.IPv4Address{"192.168.50.54", "192.168.50.55"}
	})
	b.waitServed(generation)
	t.Logf("edit to status.served: %s", time.Since(edited).Round(time.Millisecond))
	assert.Equal(t, "192.168.50.54 192.168.50.55", first.renew().DNS, "the renewal carries the edited DNS servers")
	assert.Equal(t, 1.0, b.metric(`hyperdhcpd_config_changes_total{result="applied"}`))
	assert.Equal(t, float64(generation), b.metric("hyperdhcpd_config_generation"))

	// A reservation added live: the reserved client's first DISCOVER gets it.
	generation, _ = b.edit(func(s *hyperdhcpv1beta1.ServerSpec) {
		s.Reservations = []hyperdhcpv1beta1.Reservation{{MAC: "02:00:5e:60:00:02", IP: "192.168.50.20", Hostname: "fixed"}}
	})
	b.waitServed(generation)
	assert.Equal(t, "192.168.50.20", (&udhcpc{c: b.addClient("02:00:5e:60:00:02")}).obtain().IP, "the reservation added live")

	// A pool narrowed past a lease: its renewal is NAKed and the client
	// moves into the new pool.
	generation, _ = b.edit(func(s *hyperdhcpv1beta1.ServerSpec) {
		s.Pools = []hyperdhcpv1beta1.AddressRange{{Start: "192.168.50.120", End: "192.168.50.149"}}
	})
	b.waitServed(generation)
	require.False(t, inConfig(&config.Config{Server: b.get().Spec}, held), "the first lease (%s) is outside the narrowed pool", held)
	first.signal(syscall.SIGUSR1)
	_, i := first.c.waitEvent(first.seen, clientTimeout, "nak")
	first.seen = i + 1
	moved := first.wait("bound")
	assert.True(t, inConfig(&config.Config{Server: b.get().Spec}, moved.IP), "after the NAK the client gets an address of the narrowed pool: %s", moved.IP)
	assert.Equal(t, 1.0, b.metric(`hyperdhcpd_naks_total{reason="outside_pools"}`))

	// An edit that passes the API server but not validation (overlapping
	// pools) is not applied: the Server says why, the last good spec serves.
	good := generation
	generation, _ = b.edit(func(s *hyperdhcpv1beta1.ServerSpec) {
		s.Pools = append(s.Pools, hyperdhcpv1beta1.AddressRange{Start: "192.168.50.140", End: "192.168.50.160"})
		s.DNS = []hyperdhcpv1beta1.IPv4Address{"192.168.50.99"}
	})
	require.Eventually(t, func() bool {
		c := meta.FindStatusCondition(b.get().Status.Conditions, hyperdhcpv1beta1.ConditionDegraded)
		return c != nil && c.Status == metav1.ConditionTrue && c.Reason == hyperdhcpv1beta1.ReasonInvalidSpec &&
			c.ObservedGeneration == generation && strings.Contains(c.Message, fmt.Sprintf("keeps serving generation %d", good))
	}, 20*time.Second, 50*time.Millisecond, "Degraded=True, InvalidSpec, naming the generation still served")
	assert.True(t, meta.IsStatusConditionTrue(b.get().Status.Conditions, hyperdhcpv1beta1.ConditionReady), "the server still serves")
	assertEventOn(t, b.k8s, corev1.ObjectReference{Kind: "Server", Namespace: "vms", Name: "lab", UID: b.get().UID},
		corev1.EventTypeWarning, hyperdhcpv1beta1.ReasonInvalidSpec, "overlap")
	assert.Equal(t, good, b.get().Status.Served.Generation)
	assert.Equal(t, "192.168.50.54 192.168.50.55", first.renew().DNS, "the last good spec answers")

	// perfdhcp at 500/s for 10 s while the Server is edited ten times:
	// every exchange is answered.
	generation, _ = b.edit(func(s *hyperdhcpv1beta1.ServerSpec) {
		s.Pools = []hyperdhcpv1beta1.AddressRange{{Start: "192.168.50.120", End: "192.168.50.240"}}
		s.DNS = []hyperdhcpv1beta1.IPv4Address{dnsIP}
	})
	b.waitServed(generation)
	load := b.addClient("02:00:5e:60:00:99")
	sh(t, "ip", "-n", load.ns, "addr", "add", "192.168.50.250/24", "dev", "eth0")
	macsFile := filepath.Join(load.dir, "macs.txt")
	writeMACs(t, macsFile, 60, 7)
	perfdhcp := exec.Command("ip", "netns", "exec", load.ns, "perfdhcp", "-4", "-r", "500", "-p", "10", "-d", "3", "-W", "1000000",
		"-M", macsFile, "192.168.50.2")
	var out []byte
	var perfErr error
	done := make(chan struct{})
	go func() { out, perfErr = perfdhcp.CombinedOutput(); close(done) }()
	time.Sleep(500 * time.Millisecond)
	for i := range 10 {
		generation, _ = b.edit(func(s *hyperdhcpv1beta1.ServerSpec) {
			s.DNS = []hyperdhcpv1beta1.IPv4Address{hyperdhcpv1beta1.IPv4Address(fmt.Sprintf("192.168.50.%d", 60+i))}
		})
		b.waitServed(generation)
		time.Sleep(300 * time.Millisecond)
	}
	<-done
	require.NoError(t, perfErr, "perfdhcp (exit 3 means unfinished exchanges):\n%s", out)
	stats := parsePerfdhcp(t, string(out))
	for name, s := range stats {
		assert.Positive(t, s.sent, name)
		assert.Zero(t, s.drops, "%s: exchanges lost across the edits:\n%s", name, out)
	}
	t.Logf("perfdhcp at 500/s across ten edits: %+v", stats)
	assert.Equal(t, 14.0, b.metric(`hyperdhcpd_config_changes_total{result="applied"}`), "every valid edit applied")

	assert.Equal(t, pid, b.server.Process.Pid)
	log, err := os.ReadFile(b.logPath)
	require.NoError(t, err)
	assert.Equal(t, 1, strings.Count(string(log), "serving DHCP"), "one hyperdhcpd process served throughout")
	assert.Equal(t, hash, b.podTemplateHash(), "no edit so far rolled the pod")
	progressing := meta.FindStatusCondition(b.get().Status.Conditions, hyperdhcpv1beta1.ConditionProgressing)
	require.NotNil(t, progressing)
	assert.Equal(t, metav1.ConditionFalse, progressing.Status, "%+v", progressing)

	// serverIP takes a restart: the operator rolls the pod; this hyperdhcpd
	// keeps serving the spec before it until it is replaced.
	generation, _ = b.edit(func(s *hyperdhcpv1beta1.ServerSpec) { s.ServerIP = "192.168.50.3/24" })
	require.Eventually(t, func() bool { return b.podTemplateHash() != hash }, 20*time.Second, 50*time.Millisecond,
		"an edit of serverIP changes the pod template")
	require.Eventually(t, func() bool {
		log, _ := os.ReadFile(b.logPath)
		return strings.Contains(string(log), "settings that take a restart")
	}, 10*time.Second, 50*time.Millisecond)
	assert.Less(t, b.get().Status.Served.Generation, generation)
}

// TestConfigFileEditsApplyLive edits hyperdhcpd's configuration file
// outside Kubernetes: a valid edit is applied by the running process, a
// broken one is refused (logged once, counted) and the last good one keeps
// serving, and a restart-only one waits for the restart.
func TestConfigFileEditsApplyLive(t *testing.T) {
	b := newTestBed(t, nil)
	b.startServer()
	pid := b.server.Process.Pid
	c := &udhcpc{c: b.addClient("02:00:5e:61:00:01")}
	assert.Equal(t, dnsIP, c.obtain().DNS)

	b.edit(func(c *config.Config) { c.Server.DNS = []hyperdhcpv1beta1.IPv4Address{"192.168.50.54"} })
	require.Eventually(t, func() bool { return b.logLines("configuration applied without a restart") == 1 }, 10*time.Second, 50*time.Millisecond)
	assert.Equal(t, "192.168.50.54", c.renew().DNS)

	b.edit(func(c *config.Config) {
		c.Server.Pools = []hyperdhcpv1beta1.AddressRange{{Start: "192.168.50.160", End: "192.168.50.150"}}
	})
	require.Eventually(t, func() bool { return b.logLines("the edited configuration is refused") == 1 }, 10*time.Second, 50*time.Millisecond)
	assert.Equal(t, 1.0, b.metric(`hyperdhcpd_config_changes_total{result="refused"}`))
	assert.Equal(t, "192.168.50.54", c.renew().DNS, "the last good configuration serves")

	b.edit(func(c *config.Config) {
		c.Server.Pools = []hyperdhcpv1beta1.AddressRange{{Start: poolStart, End: poolEnd}}
		c.Port = 6767
	})
	require.Eventually(t, func() bool { return b.logLines("settings that take a restart") == 1 }, 10*time.Second, 50*time.Millisecond)
	assert.Equal(t, 1.0, b.metric(`hyperdhcpd_config_changes_total{result="restart_required"}`))
	assert.Equal(t, "192.168.50.54", c.renew().DNS)
	assert.Equal(t, pid, b.server.Process.Pid)
	log, err := os.ReadFile(b.logPath)
	require.NoError(t, err)
	assert.Contains(t, string(log), "settings=[port]")
}

// TestKubeVirtSettingsApplyLive edits the KubeVirt settings of a running
// hyperdhcpd: another namespace to serve starts a new VM watch, synced
// before it replaces the old one, and its VM is served; onlyKnownVMs off
// serves a MAC of no VM. The process and every lease stay.
func TestKubeVirtSettingsApplyLive(t *testing.T) {
	_, k8s, kubeconfig, apiHost := startAPIServer(t)
	for _, ns := range []string{"vms", "team-a"} {
		require.NoError(t, k8s.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}))
	}
	createVMIn(t, k8s, "vms", "lab", "here", "02:00:5e:62:00:01", nil)
	createVMIn(t, k8s, "team-a", "vms/lab", "there", "02:00:5e:62:00:02", nil)

	b := newTestBed(t, func(c *config.Config) {
		c.Server.NetworkAttachment.Name = "lab"
		c.Server.KubeVirt = &hyperdhcpv1beta1.KubeVirtSpec{Namespaces: []string{"vms"}}
		c.Kubernetes = &config.Kubernetes{ServerName: "lab", ServerNamespace: "vms", Kubeconfig: kubeconfig, ServerGeneration: 1,
			SyncTimeout: &metav1.Duration{Duration: 10 * time.Second}}
	})
	forwardAPIServer(t, b.serverNS, apiHost)
	b.startServer()
	pid := b.server.Process.Pid
	here := (&udhcpc{c: b.addClient("02:00:5e:62:00:01")}).obtain()
	inPool(t, here.IP)
	unserved := func(mac string) bool {
		c := b.addClient(mac)
		out, err := c.command("busybox", "udhcpc", "-n", "-q", "-f", "-i", "eth0", "-s", c.hook(false), "-t", "2", "-T", "1").CombinedOutput()
		return err != nil && !strings.Contains(string(out), "obtained")
	}
	require.True(t, unserved("02:00:5e:62:00:02"), "a VM of a namespace not served gets nothing")

	b.edit(func(c *config.Config) {
		c.Server.KubeVirt.Namespaces = []string{"vms", "team-a"}
		c.Kubernetes.ServerGeneration = 2
	})
	require.Eventually(t, func() bool { return b.metric("hyperdhcpd_config_generation") == 2 }, 20*time.Second, 100*time.Millisecond)
	there := &udhcpc{c: b.addClient("02:00:5e:62:00:02")}
	inPool(t, there.obtain().IP)
	assert.Equal(t, "there", there.c.events()[len(there.c.events())-1].env["hostname"], "the VM's name, from the new watch")
	require.True(t, unserved("02:00:5e:62:00:99"), "onlyKnownVMs: a MAC of no VM gets nothing")

	b.edit(func(c *config.Config) {
		c.Server.KubeVirt.OnlyKnownVMs = ptr.To(false)
		c.Kubernetes.ServerGeneration = 3
	})
	require.Eventually(t, func() bool { return b.metric("hyperdhcpd_config_generation") == 3 }, 20*time.Second, 100*time.Millisecond)
	inPool(t, (&udhcpc{c: b.addClient("02:00:5e:62:00:98")}).obtain().IP)
	assert.Equal(t, pid, b.server.Process.Pid)
	assert.Equal(t, 2.0, b.metric(`hyperdhcpd_config_changes_total{result="applied"}`))
}
