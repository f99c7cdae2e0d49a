package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	kubevirtv1 "kubevirt.io/api/core/v1"
	crclient "sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/hyperdhcp/hyperdhcp/apis/config"
	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/internal/testenv"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/kubevirt"
)

// startAPIServer starts a control plane of its own for one test (the test
// may stop it) with the KubeVirt and Server CRDs, and returns a client and
// a kubeconfig file for hyperdhcpd.
func startAPIServer(t *testing.T) (*envtest.Environment, crclient.Client, string, string) {
	return startAPIServerAs(t, envtest.User{Name: "hyperdhcpd", Groups: []string{"system:masters"}})
}

// startAPIServerAs is startAPIServer with hyperdhcpd's kubeconfig for user.
func startAPIServerAs(t *testing.T, hyperdhcpd envtest.User) (*envtest.Environment, crclient.Client, string, string) {
	t.Helper()
	env, cfg, err := testenv.Start(
		filepath.Join("..", "..", "plugins", "kubevirt", "testdata", "crd"),
		filepath.Join("..", "..", "..", "deploy", "crd"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = env.Stop() })

	user, err := env.AddUser(hyperdhcpd, nil)
	require.NoError(t, err)
	kubeconfig, err := user.KubeConfig()
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "kubeconfig")
	require.NoError(t, os.WriteFile(path, kubeconfig, 0o600))

	scheme := kruntime.NewScheme()
	require.NoError(t, kubevirtv1.AddToScheme(scheme))
	require.NoError(t, corev1.AddToScheme(scheme))
	require.NoError(t, appsv1.AddToScheme(scheme))
	require.NoError(t, coordinationv1.AddToScheme(scheme))
	require.NoError(t, rbacv1.AddToScheme(scheme))
	require.NoError(t, hyperdhcpv1beta1.AddToScheme(scheme))
	c, err := crclient.New(cfg, crclient.Options{Scheme: scheme})
	require.NoError(t, err)
	return env, c, path, cfg.Host
}

// createVM makes a VirtualMachine (with annotations) and its VMI with one
// interface on the test bed's network "lab", carrying mac.
func createVM(t *testing.T, c crclient.Client, name, mac string, annotations map[string]string) *kubevirtv1.VirtualMachineInstance {
	return createVMIn(t, c, "vms", "lab", name, mac, annotations)
}

// createVMIn is createVM in namespace, on the Multus network networkName.
func createVMIn(t *testing.T, c crclient.Client, namespace, networkName, name, mac string, annotations map[string]string) *kubevirtv1.VirtualMachineInstance {
	t.Helper()
	ctx := context.Background()
	vm := &kubevirtv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Annotations: annotations}}
	if err := c.Create(ctx, vm); err != nil {
		require.NoError(t, c.Get(ctx, crclient.ObjectKeyFromObject(vm), vm), "create VM %s: %v", name, err)
	}
	vmi := &kubevirtv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	vmi.Spec.Networks = []kubevirtv1.Network{{Name: "lab", NetworkSource: kubevirtv1.NetworkSource{
		Multus: &kubevirtv1.MultusNetwork{NetworkName: networkName}}}}
	vmi.Spec.Domain.Devices.Interfaces = []kubevirtv1.Interface{{Name: "lab", MacAddress: mac}}
	require.NoError(t, c.Create(ctx, vmi))
	return vmi
}

// TestVMsGetTheirLeases runs hyperdhcpd against a real API server with
// KubeVirt's CRDs: VMs on the network are served by identity (pin, host
// name, a MAC change keeps the address), a MAC of no VM gets nothing, and
// through an API outage, even across a restart of hyperdhcpd, a known VM
// renews.
func TestVMsGetTheirLeases(t *testing.T) {
	env, k8s, kubeconfig, apiHost := startAPIServer(t)
	ctx := context.Background()
	require.NoError(t, k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "vms"}}))
	createVM(t, k8s, "db", "02:00:5e:80:00:01", map[string]string{kubevirt.PinAnnotationPrefix + "lab": "192.168.50.20"})
	createVM(t, k8s, "web.1", "02:00:5e:80:00:02", nil)

	b := newTestBed(t, func(c *config.Config) {
		c.Server.NetworkAttachment.Name = "lab"
		c.Server.KubeVirt = &hyperdhcpv1beta1.KubeVirtSpec{Namespaces: []string{"vms"}}
		c.Kubernetes = &config.Kubernetes{ServerName: "lab", ServerNamespace: "vms", Kubeconfig: kubeconfig,
			SyncTimeout: &metav1.Duration{Duration: 3 * time.Second}, VMDeletionGrace: &metav1.Duration{Duration: 2 * time.Second}}
	})
	cutAPI := forwardAPIServer(t, b.serverNS, apiHost)
	b.startServer()

	db := &udhcpc{c: b.addClient("02:00:5e:80:00:01")}
	got := db.obtain()
	assert.Equal(t, "192.168.50.20", got.IP, "the VM's pin annotation")
	assert.Equal(t, "db", db.c.events()[len(db.c.events())-1].env["hostname"], "the VM's name as host name")

	assertEvent(t, k8s, "db", corev1.EventTypeNormal, "AddressAssigned", "192.168.50.20")

	// A second VM pinned to the same address is refused, says so on its
	// VMI, and is served from the pool.
	createVM(t, k8s, "clash", "02:00:5e:80:00:03", map[string]string{kubevirt.PinAnnotationPrefix + "lab": "192.168.50.20"})
	assertEvent(t, k8s, "clash", corev1.EventTypeWarning, "PinRefused", "pinned to vm:vms/db/lab")
	assert.Equal(t, 1.0, b.metric("hyperdhcpd_vm_pins_refused_total"), "counted once, however often the VMI changes")
	inPool(t, (&udhcpc{c: b.addClient("02:00:5e:80:00:03")}).obtain().IP)

	web := newDriver("dhclient", b.addClient("02:00:5e:80:00:02"))
	webLease := web.obtain()
	inPool(t, webLease.IP)

	// A MAC that belongs to no VM gets no answer.
	stranger := b.addClient("02:00:5e:80:00:99")
	out, err := stranger.command("busybox", "udhcpc", "-n", "-q", "-f", "-i", "eth0", "-s", stranger.hook(false), "-t", "3", "-T", "1").CombinedOutput()
	assert.Error(t, err, "onlyKnownVMs: %s", out)
	assert.GreaterOrEqual(t, b.metric(`hyperdhcpd_packets_dropped_total{reason="unknown_mac"}`), 1.0)

	// The VM restarts with a new MAC: a new VMI, the same VM, the same address.
	require.NoError(t, k8s.Delete(ctx, &kubevirtv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{Namespace: "vms", Name: "web.1"}}))
	require.Eventually(t, func() bool {
		return k8s.Get(ctx, crclient.ObjectKey{Namespace: "vms", Name: "web.1"}, &kubevirtv1.VirtualMachineInstance{}) != nil
	}, 10*time.Second, 100*time.Millisecond)
	createVM(t, k8s, "web.1", "02:00:5e:80:00:22", nil)
	moved := newDriver("udhcpc", b.addClient("02:00:5e:80:00:22"))
	assert.Equal(t, webLease.IP, moved.obtain().IP, "a VM keeps its address across a MAC change")

	// Two clones of one image send the same client identifier: two VMs, two addresses.
	var cloneIPs []string
	for i, name := range []string{"clone-a", "clone-b"} {
		mac := fmt.Sprintf("02:00:5e:80:00:5%d", i)
		createVM(t, k8s, name, mac, nil)
		clone := b.addClient(mac)
		out, err := clone.command("busybox", "udhcpc", "-n", "-q", "-f", "-i", "eth0", "-s", clone.hook(false),
			"-t", "5", "-T", "1", "-C", "-x", "0x3d:01c10e1a9e0001").CombinedOutput()
		require.NoError(t, err, "%s", out)
		_, after, _ := strings.Cut(string(out), "lease of ")
		ip, _, _ := strings.Cut(after, " ")
		inPool(t, ip)
		cloneIPs = append(cloneIPs, ip)
	}
	assert.NotEqual(t, cloneIPs[0], cloneIPs[1], "the lease belongs to the VM, not to the client identifier")

	// A live migration: a new virt-launcher pod, the same VMI and MAC.
	var migrating kubevirtv1.VirtualMachineInstance
	require.NoError(t, k8s.Get(ctx, crclient.ObjectKey{Namespace: "vms", Name: "db"}, &migrating))
	migrating.Status.MigrationState = &kubevirtv1.VirtualMachineInstanceMigrationState{
		SourcePod: "virt-launcher-db-aaaaa", TargetPod: "virt-launcher-db-bbbbb", Completed: true}
	migrating.Status.NodeName = "node-2"
	require.NoError(t, k8s.Update(ctx, &migrating))
	assert.Equal(t, "192.168.50.20", db.renew().IP, "a migrated VM keeps its address")

	// The VM is deleted: after the grace period its address goes to another VM.
	require.NoError(t, k8s.Delete(ctx, &kubevirtv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{Namespace: "vms", Name: "web.1"}}))
	require.NoError(t, k8s.Delete(ctx, &kubevirtv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: "vms", Name: "web.1"}}))
	createVM(t, k8s, "newcomer", "02:00:5e:80:00:44", nil)
	require.Eventually(t, func() bool {
		log, _ := os.ReadFile(b.logPath)
		return strings.Contains(string(log), "VM deleted: its leases are free again")
	}, 20*time.Second, 200*time.Millisecond, "the grace period ends")
	newcomer := b.addClient("02:00:5e:80:00:44")
	out, err = newcomer.command("busybox", "udhcpc", "-n", "-q", "-f", "-i", "eth0", "-s", newcomer.hook(false),
		"-t", "5", "-T", "1", "-r", webLease.IP).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "lease of "+webLease.IP+" obtained", "the deleted VM's address goes to another VM")

	// The API server goes away: the pinned VM's renewal is still ACKed...
	cutAPI()
	require.NoError(t, env.ControlPlane.APIServer.Stop())
	assert.Equal(t, "192.168.50.20", db.renew().IP, "renewed from the cache while the API is down")
	assert.Eventually(t, func() bool {
		out, _ := exec.Command("ip", "netns", "exec", b.serverNS, "busybox", "wget", "-qO-", "-S", "http://127.0.0.1:8067/readyz").CombinedOutput()
		return strings.Contains(string(out), "503")
	}, 20*time.Second, 500*time.Millisecond, "a running hyperdhcpd notices the API is gone: not ready")
	// ... and after a restart of hyperdhcpd without the API, from the lease database.
	b.stopServer(syscall.SIGTERM)
	b.startServer()
	assert.Equal(t, "192.168.50.20", db.renew().IP, "renewed from the lease database after a restart without the API")
	readyz, _ := exec.Command("ip", "netns", "exec", b.serverNS, "busybox", "wget", "-qO-", "http://127.0.0.1:8067/readyz").CombinedOutput()
	assert.NotContains(t, string(readyz), "ok", "readiness says degraded")
}

// TestVMsOfAConsentingNamespaceWithLeastPrivilege runs hyperdhcpd as the
// operator sets it up when another namespace consents: a user that may read
// VMs only through the hyperdhcp-vm-reader ClusterRole bound in the
// Server's namespace and the consenting one, and a configuration that
// names only those. The VM in the consenting namespace is served; one in a
// namespace that did not consent is not; nothing is Forbidden, so
// hyperdhcpd is not degraded.
func TestVMsOfAConsentingNamespaceWithLeastPrivilege(t *testing.T) {
	_, k8s, kubeconfig, apiHost := startAPIServerAs(t, envtest.User{Name: "hyperdhcpd-sa"})
	ctx := context.Background()
	data, err := os.ReadFile(filepath.Join("..", "..", "..", "deploy", "rbac", "vm_reader_clusterrole.yaml"))
	require.NoError(t, err)
	reader := &rbacv1.ClusterRole{}
	require.NoError(t, yaml.UnmarshalStrict(data, reader))
	require.NoError(t, k8s.Create(ctx, reader))
	for _, ns := range []string{"vms", "team-a", "team-b"} {
		require.NoError(t, k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}))
	}
	for _, ns := range []string{"vms", "team-a"} { // what the operator binds once team-a consents
		require.NoError(t, k8s.Create(ctx, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "hyperdhcpd-lab-vm-reader"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: reader.Name},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "hyperdhcpd-sa"}},
		}))
	}
	createVMIn(t, k8s, "team-a", "vms/lab", "consented", "02:00:5e:90:00:01", nil)
	createVMIn(t, k8s, "team-b", "vms/lab", "refused", "02:00:5e:90:00:02", nil)

	b := newTestBed(t, func(c *config.Config) {
		c.Server.NetworkAttachment.Name = "lab"
		c.Server.KubeVirt = &hyperdhcpv1beta1.KubeVirtSpec{Namespaces: []string{"vms", "team-a"}} // render.WatchOnly's output
		c.Kubernetes = &config.Kubernetes{ServerName: "lab", ServerNamespace: "vms", Kubeconfig: kubeconfig,
			SyncTimeout: &metav1.Duration{Duration: 10 * time.Second}}
	})
	forwardAPIServer(t, b.serverNS, apiHost)
	b.startServer()
	log, err := os.ReadFile(b.logPath)
	require.NoError(t, err)
	require.Contains(t, string(log), "serving KubeVirt VMs", "the first sync completes with only the granted rights")

	got := (&udhcpc{c: b.addClient("02:00:5e:90:00:01")}).obtain()
	inPool(t, got.IP)
	stranger := b.addClient("02:00:5e:90:00:02")
	out, err := stranger.command("busybox", "udhcpc", "-n", "-q", "-f", "-i", "eth0", "-s", stranger.hook(false), "-t", "3", "-T", "1").CombinedOutput()
	assert.Error(t, err, "a VM of a namespace that did not consent is not served: %s", out)
	readyz, err := exec.Command("ip", "netns", "exec", b.serverNS, "busybox", "wget", "-qO-", "http://127.0.0.1:8067/readyz").CombinedOutput()
	assert.NoError(t, err, "ready, not degraded: %s", readyz)
}

// assertEvent waits for an Event on the VMI vms/name.
func assertEvent(t *testing.T, k8s crclient.Client, name, eventType, reason, message string) {
	t.Helper()
	assertEventOn(t, k8s, corev1.ObjectReference{Kind: "VirtualMachineInstance", Name: name}, eventType, reason, message)
}

// assertEventOn waits for an Event in namespace vms about the object
// named by involved (its UID too, when set) whose message contains message.
func assertEventOn(t *testing.T, k8s crclient.Client, involved corev1.ObjectReference, eventType, reason, message string) {
	t.Helper()
	assert.Eventually(t, func() bool {
		var events corev1.EventList
		if err := k8s.List(context.Background(), &events, crclient.InNamespace("vms")); err != nil {
			return false
		}
		for _, e := range events.Items {
			if e.InvolvedObject.Kind == involved.Kind && e.InvolvedObject.Name == involved.Name &&
				(involved.UID == "" || e.InvolvedObject.UID == involved.UID) &&
				e.Type == eventType && e.Reason == reason && strings.Contains(e.Message, message) {
				return true
			}
		}
		return false
	}, 15*time.Second, 200*time.Millisecond, "no %s %s Event on %s %s", eventType, reason, involved.Kind, involved.Name)
}

// forwardAPIServer makes the API server on this host's loopback reachable
// at the same address inside the server namespace, as the kubernetes
// Service is from a pod (the certificate names 127.0.0.1). cut ends it and
// every connection through it: from the namespace, the API is gone.
func forwardAPIServer(t *testing.T, ns, host string) (cut func()) {
	t.Helper()
	u, err := url.Parse(host)
	require.NoError(t, err)
	listener := listenInNamespace(t, ns, u.Host)
	var mu sync.Mutex
	var conns []net.Conn
	cut = func() {
		listener.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}
	t.Cleanup(cut)
	go func() {
		for {
			conn, err := listener.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
			go func() {
				defer conn.Close()
				upstream, err := net.Dial("tcp", u.Host)
				if err != nil {
					return
				}
				defer upstream.Close()
				go func() { _, _ = io.Copy(upstream, conn) }()
				_, _ = io.Copy(conn, upstream)
			}()
		}
	}()
	return cut
}

// listenInNamespace opens a TCP listener inside a network namespace; the
// socket stays there when the thread returns to its own.
func listenInNamespace(t *testing.T, ns, addr string) net.Listener {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	require.NoError(t, err)
	defer self.Close()
	target, err := os.Open("/run/netns/" + ns)
	require.NoError(t, err)
	defer target.Close()
	require.NoError(t, unix.Setns(int(target.Fd()), unix.CLONE_NEWNET))
	listener, listenErr := net.Listen("tcp", addr)
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		panic(fmt.Sprintf("cannot return to the test's network namespace: %v", err))
	}
	require.NoError(t, listenErr)
	return listener
}
