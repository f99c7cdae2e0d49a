package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	kubevirtv1 "kubevirt.io/api/core/v1"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
)

const (
	namespace  = "demo"
	serverName = "lab"
	waitLimit  = 2 * time.Minute
)

// vm is a KubeVirt VM of the demo (a VirtualMachine and its VMI, played by
// a dhclient with the VMI's MAC); the first has an address pinned by
// annotation.
type vm struct {
	name, mac string
	pinned    string
}

var vms = []vm{
	{name: "vm-1", mac: "02:00:5e:00:00:01", pinned: "192.168.50.150"},
	{name: "vm-2", mac: "02:00:5e:00:00:02"},
}

// stranger is a client whose MAC belongs to no VM: onlyKnownVMs keeps it out.
var stranger = vm{name: "stranger", mac: "02:00:5e:00:00:99"}

// vmInterface is the name of the VMs' interface on the Server's network.
const vmInterface = "lab"

type demo struct {
	opts       options
	repo       string
	dir        string
	step       int
	cleanups   []func()
	k8s        client.Client
	env        *envtest.Environment
	kubeconfig string
	id         string
	leases     string // the lease database's directory (the PVC)
	// clients are the dhclients by client name, and their namespaces.
	clients map[string]*exec.Cmd
	netns   map[string]string
	// hyperdhcpdPID is the process playing the pod.
	hyperdhcpdPID int
}

func run(ctx context.Context, opts options) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root: it creates network namespaces and runs DHCP clients in them")
	}
	repo, err := repoRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "hyperdhcp-demo-")
	if err != nil {
		return err
	}
	d := &demo{opts: opts, repo: repo, dir: dir, id: fmt.Sprintf("hdemo%d", os.Getpid()%10000),
		clients: map[string]*exec.Cmd{}, netns: map[string]string{}}
	defer func() {
		if err != nil {
			// Keep the logs of a failed run; everything else goes.
			kept := filepath.Join(os.TempDir(), fmt.Sprintf("hyperdhcp-demo-logs-%d", time.Now().Unix()))
			if os.Rename(d.logPath(""), kept) == nil {
				err = fmt.Errorf("%w (logs: %s)", err, kept)
			}
		}
		d.cleanup()
	}()
	fmt.Fprintf(opts.out, "HyperDHCP demo: logs go to %s\n", d.logPath(""))
	if err := os.MkdirAll(d.logPath(""), 0o755); err != nil {
		return err
	}

	stepsToRun := []struct {
		title string
		run   func(context.Context) error
	}{
		{"building hyperdhcpd and hyperdhcp-operator", d.build},
		{"starting a local control plane (etcd + kube-apiserver)", d.startControlPlane},
		{"installing the CRDs (Server, KubeVirt's VM and VMI) and starting the operator", d.startOperator},
		{"applying Server " + namespace + "/" + serverName, d.applyServer},
		{"playing the kubelet: hyperdhcpd from the Deployment and its ConfigMap, in a network namespace", d.runPod},
		{"two VMs and a stranger ask for addresses with dhclient", d.runClients},
		{"vm-1 migrates to another node, vm-2 restarts with a new MAC", d.moveVMs},
		{"kubectl patch the Server's DNS: the running hyperdhcpd applies it, no pod restart", d.editLive},
		{"the API server goes away: hyperdhcpd keeps serving VMs; the API server comes back", d.outlastAPIOutage},
		{"what Kubernetes and the lease database say", d.report},
	}
	for _, s := range stepsToRun {
		d.step++
		fmt.Fprintf(opts.out, "[%d/%d] %s\n", d.step, len(stepsToRun), s.title)
		if err := s.run(ctx); err != nil {
			return fmt.Errorf("%s: %w", s.title, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	if opts.keep {
		fmt.Fprintf(opts.out, "\nKEEP=1: everything keeps running. Try:\n  kubectl --kubeconfig %s get servers -A\n  ip netns list\nPress Ctrl-C to stop and clean up.\n", d.kubeconfig)
		<-ctx.Done()
		return nil
	}
	fmt.Fprintln(opts.out, "cleaning up")
	return nil
}

func (d *demo) logPath(name string) string { return filepath.Join(d.dir, "logs", name) }

func (d *demo) detail(format string, args ...any) {
	fmt.Fprintf(d.opts.out, "      "+format+"\n", args...)
}

func (d *demo) onCleanup(f func()) { d.cleanups = append(d.cleanups, f) }

// cleanup undoes everything in reverse order: processes (by PID), network
// namespaces, the control plane, the temporary directory.
func (d *demo) cleanup() {
	for _, f := range slices.Backward(d.cleanups) {
		f()
	}
	_ = os.RemoveAll(d.dir)
}

func repoRoot() (string, error) {
	out, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		return "", fmt.Errorf("find the repository: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// command runs name with output to a log file.
func (d *demo) command(ctx context.Context, log, name string, args ...string) error {
	f, err := os.OpenFile(d.logPath(log), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = d.repo
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w (see %s)", name, strings.Join(args, " "), err, d.logPath(log))
	}
	return nil
}

// start runs a long-lived process, stopped by PID at cleanup.
func (d *demo) start(log string, env []string, name string, args ...string) (*exec.Cmd, error) {
	f, err := os.OpenFile(d.logPath(log), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); f.Close(); close(exited) }()
	d.onCleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	return cmd, nil
}

func (d *demo) bin(name string) string { return filepath.Join(d.dir, "bin", name) }

func (d *demo) build(ctx context.Context) error {
	start := time.Now()
	for name, pkg := range map[string]string{"hyperdhcpd": "./dhcpd/cmd/hyperdhcpd", "hyperdhcp-operator": "./operator/cmd/hyperdhcp-operator"} {
		if err := d.command(ctx, "build.log", "go", "build", "-o", d.bin(name), pkg); err != nil {
			return err
		}
	}
	for tool, pkg := range map[string]string{"dhclient": "isc-dhcp-client", "ip": "iproute2", "unshare": "util-linux", "setpriv": "util-linux"} {
		if _, err := exec.LookPath(tool); err != nil {
			d.detail("installing %s", pkg)
			if err := d.command(ctx, "apt.log", "apt-get", "install", "-y", "-qq", pkg); err != nil {
				return err
			}
		}
	}
	d.detail("done in %s", time.Since(start).Round(time.Second))
	return nil
}

func (d *demo) startControlPlane(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, filepath.Join(d.repo, "hack", "envtest.sh")).Output()
	if err != nil {
		return fmt.Errorf("envtest binaries: %w", err)
	}
	d.env = &envtest.Environment{
		BinaryAssetsDirectory: strings.TrimSpace(string(out)),
		CRDDirectoryPaths: []string{filepath.Join(d.repo, "deploy", "crd"),
			// KubeVirt's VirtualMachine and VirtualMachineInstance, schemaless.
			filepath.Join(d.repo, "dhcpd", "plugins", "kubevirt", "testdata", "crd")},
		ErrorIfCRDPathMissing: true,
	}
	d.env.ControlPlane.GetAPIServer().Configure().
		Set("advertise-address", "127.0.0.1").
		Set("endpoint-reconciler-type", "none")
	cfg, err := d.env.Start()
	if err != nil {
		return err
	}
	d.onCleanup(func() { _ = d.env.Stop() })
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = hyperdhcpv1beta1.AddToScheme(scheme)
	_ = kubevirtv1.AddToScheme(scheme)
	if d.k8s, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		return err
	}
	user, err := d.env.AddUser(envtest.User{Name: "demo-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	data, err := user.KubeConfig()
	if err != nil {
		return err
	}
	d.kubeconfig = filepath.Join(d.dir, "kubeconfig")
	if err := os.WriteFile(d.kubeconfig, data, 0o600); err != nil {
		return err
	}
	d.detail("API server at %s", cfg.Host)
	return nil
}

func (d *demo) startOperator(ctx context.Context) error {
	// The CRDs went in with the control plane. The ClusterRole the operator
	// binds for hyperdhcpd to read VMs comes from deploy/rbac, as with
	// `kubectl apply -k deploy/default`; the operator runs as a process.
	data, err := os.ReadFile(filepath.Join(d.repo, "deploy", "rbac", "vm_reader_clusterrole.yaml"))
	if err != nil {
		return err
	}
	reader := &rbacv1.ClusterRole{}
	if err := yaml.UnmarshalStrict(data, reader); err != nil {
		return fmt.Errorf("vm_reader_clusterrole.yaml: %w", err)
	}
	if err := d.k8s.Create(ctx, reader); err != nil {
		return fmt.Errorf("create ClusterRole %s: %w", reader.Name, err)
	}
	_, err = d.start("operator.log", nil, d.bin("hyperdhcp-operator"), "--kubeconfig", d.kubeconfig,
		"--hyperdhcpd-image", "hyperdhcpd:demo", "--metrics-bind-address", "0", "--health-probe-bind-address", "0")
	return err
}

func (d *demo) applyServer(ctx context.Context) error {
	if err := d.k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}); err != nil {
		return err
	}
	server := &hyperdhcpv1beta1.Server{
		ObjectMeta: metav1.ObjectMeta{Name: serverName, Namespace: namespace},
		Spec: hyperdhcpv1beta1.ServerSpec{
			NetworkAttachment: hyperdhcpv1beta1.NetworkAttachment{Name: "lab-bridge"},
			ServerIP:          "192.168.50.2/24",
			Pools:             []hyperdhcpv1beta1.AddressRange{{Start: "192.168.50.100", End: "192.168.50.199"}},
			Router:            "192.168.50.1",
			DNS:               []hyperdhcpv1beta1.IPv4Address{"192.168.50.53"},
			DomainName:        "demo.internal",
		},
	}
	if err := d.k8s.Create(ctx, server); err != nil {
		return err
	}
	d.detail("serverIP 192.168.50.2/24, pool 192.168.50.100-199, only known VMs (the default)")
	for _, v := range vms {
		if err := d.createVM(ctx, v, v.mac); err != nil {
			return err
		}
		pin := "served from the pool"
		if v.pinned != "" {
			pin = fmt.Sprintf("pinned by hyperdhcp.io/ip.%s: %s", vmInterface, v.pinned)
		}
		d.detail("VirtualMachine %s and its VMI, %s on lab-bridge, %s", v.name, v.mac, pin)
	}
	return nil
}

// createVM creates v's VirtualMachine (if missing) and a VMI with mac on
// the Server's network, as KubeVirt would for a running VM.
func (d *demo) createVM(ctx context.Context, v vm, mac string) error {
	machine := &kubevirtv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: v.name}}
	if v.pinned != "" {
		machine.Annotations = map[string]string{"hyperdhcp.io/ip." + vmInterface: v.pinned}
	}
	if err := d.k8s.Create(ctx, machine); client.IgnoreAlreadyExists(err) != nil {
		return fmt.Errorf("create VirtualMachine %s: %w", v.name, err)
	}
	vmi := &kubevirtv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: v.name}}
	vmi.Spec.Networks = []kubevirtv1.Network{{Name: vmInterface,
		NetworkSource: kubevirtv1.NetworkSource{Multus: &kubevirtv1.MultusNetwork{NetworkName: "lab-bridge"}}}}
	vmi.Spec.Domain.Devices.Interfaces = []kubevirtv1.Interface{{Name: vmInterface, MacAddress: mac}}
	vmi.Status.Phase = kubevirtv1.Running
	vmi.Status.ActivePods = map[types.UID]string{types.UID(v.name + "-launcher-1"): "node-1"}
	if err := d.k8s.Create(ctx, vmi); err != nil {
		return fmt.Errorf("create VirtualMachineInstance %s: %w", v.name, err)
	}
	return nil
}

// pod is what the kubelet reads from the Deployment the operator made.
type pod struct {
	deployment *appsv1.Deployment
	container  corev1.Container
	network    struct {
		Name      string   `json:"name"`
		Interface string   `json:"interface"`
		IPs       []string `json:"ips"`
	}
}

func (d *demo) readPod(ctx context.Context) (*pod, error) {
	var deployments appsv1.DeploymentList
	deadline := time.Now().Add(waitLimit)
	for len(deployments.Items) == 0 {
		if time.Now().After(deadline) {
			return nil, errors.New("the operator made no Deployment")
		}
		if err := d.k8s.List(ctx, &deployments, client.InNamespace(namespace)); err != nil {
			return nil, err
		}
		time.Sleep(200 * time.Millisecond)
	}
	p := &pod{deployment: &deployments.Items[0], container: deployments.Items[0].Spec.Template.Spec.Containers[0]}
	var networks []json.RawMessage
	if err := json.Unmarshal([]byte(p.deployment.Spec.Template.Annotations["k8s.v1.cni.cncf.io/networks"]), &networks); err != nil || len(networks) != 1 {
		return nil, fmt.Errorf("the pod's networks annotation: %v", err)
	}
	if err := json.Unmarshal(networks[0], &p.network); err != nil {
		return nil, err
	}
	return p, nil
}

func (d *demo) ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// addNetns creates a network namespace that cleanup deletes.
func (d *demo) addNetns(name string) error {
	if err := d.ip("netns", "add", name); err != nil {
		return err
	}
	d.onCleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	if err := d.ip("-n", name, "link", "set", "lo", "up"); err != nil {
		return err
	}
	return exec.Command("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1").Run()
}

func (d *demo) runPod(ctx context.Context) error {
	p, err := d.readPod(ctx)
	if err != nil {
		return err
	}
	// The node: a namespace with the bridge the NetworkAttachmentDefinition
	// names; the pod: a namespace whose veth carries the Multus interface.
	node, podNS := d.id+"-node", d.id+"-pod"
	for _, ns := range []string{node, podNS} {
		if err := d.addNetns(ns); err != nil {
			return err
		}
	}
	if err := errors.Join(
		d.ip("-n", node, "link", "add", "br-lab", "type", "bridge"),
		d.ip("-n", node, "link", "set", "br-lab", "up"),
		d.ip("-n", node, "link", "add", "pod", "type", "veth", "peer", "name", p.network.Interface, "netns", podNS),
		d.ip("-n", node, "link", "set", "pod", "master", "br-lab", "up"),
		d.ip("-n", podNS, "addr", "add", p.network.IPs[0], "dev", p.network.Interface),
		d.ip("-n", podNS, "link", "set", p.network.Interface, "up"),
	); err != nil {
		return err
	}

	// What the kubelet mounts: the ConfigMap, the PVC and a service account token.
	mounts, err := d.volumes(ctx, p)
	if err != nil {
		return err
	}
	sa, err := d.serviceAccountFiles(ctx, p)
	if err != nil {
		return err
	}
	// What the container runtime does with the pod's security context.
	security, err := d.applySecurityContext(p, podNS)
	if err != nil {
		return err
	}
	// What kube-proxy does: the kubernetes Service, reachable from the pod.
	apiPort, err := d.proxyAPIServer(podNS)
	if err != nil {
		return err
	}

	script := `set -e
for top in $MOUNT_TOPS; do
	mkdir -p "$POD_DIR/overlay$top/upper" "$POD_DIR/overlay$top/work"
	mount -t overlay overlay -o "lowerdir=$top,upperdir=$POD_DIR/overlay$top/upper,workdir=$POD_DIR/overlay$top/work" "$top"
done
set -- $MOUNTS
while [ $# -gt 0 ]; do mkdir -p "$2"; mount --bind "$1" "$2"; shift 2; done
mount -t tmpfs tmpfs /run
mkdir -p /run/secrets/kubernetes.io/serviceaccount
cp -p "$SA_DIR"/* /run/secrets/kubernetes.io/serviceaccount/
[ "$READ_ONLY_ROOT" = true ] && mount -o remount,bind,ro /
exec setpriv --reuid "$RUN_AS_USER" --regid "$RUN_AS_GROUP" --groups "$FS_GROUP" --bounding-set "$BOUNDING_SET" --no-new-privs "$HYPERDHCPD" "$@"`
	var tops, pairs []string
	for target, source := range mounts {
		top := "/" + strings.Split(strings.TrimPrefix(target, "/"), "/")[0]
		if !slices.Contains(tops, top) {
			tops = append(tops, top)
		}
		pairs = append(pairs, source, target)
	}
	args := []string{"netns", "exec", podNS, "unshare", "--mount", "--propagation", "private", "sh", "-c",
		strings.Replace(script, `"$HYPERDHCPD" "$@"`, `"$HYPERDHCPD" `+shellQuote(p.container.Args), 1), "sh"}
	env := []string{
		"POD_DIR=" + filepath.Join(d.dir, "pod"), "MOUNT_TOPS=" + strings.Join(tops, " "), "MOUNTS=" + strings.Join(pairs, " "),
		"SA_DIR=" + sa, "HYPERDHCPD=" + d.bin("hyperdhcpd"),
		"KUBERNETES_SERVICE_HOST=127.0.0.1", fmt.Sprintf("KUBERNETES_SERVICE_PORT=%d", apiPort),
	}
	cmd, err := d.start("hyperdhcpd.log", append(env, security...), "ip", args...)
	if err != nil {
		return err
	}
	if err := waitFor(ctx, func() bool {
		data, _ := os.ReadFile(d.logPath("hyperdhcpd.log"))
		return bytes.Contains(data, []byte(`"msg":"serving DHCP"`))
	}); err != nil {
		return fmt.Errorf("hyperdhcpd did not start serving: %w", err)
	}
	// ip netns exec, unshare, sh and setpriv each exec the next: the PID is hyperdhcpd's.
	d.hyperdhcpdPID = cmd.Process.Pid
	uid, caps, err := processCredentials(cmd.Process.Pid)
	if err != nil {
		return err
	}
	d.detail("hyperdhcpd %s, serving on %s %s", strings.Join(p.container.Args, " "), p.network.Interface, p.network.IPs[0])
	how := fmt.Sprintf("as uid %s with effective capabilities %s, read-only root", uid, caps)
	if list := p.deployment.Spec.Template.Spec.SecurityContext.Sysctls; len(list) > 0 {
		how += "; port 67 through the pod's sysctls " + sysctls(list)
	}
	d.detail("%s", how)

	// The pod is ready: report it as the deployment controller would.
	deploy := p.deployment
	deploy.Status = appsv1.DeploymentStatus{ObservedGeneration: deploy.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
	return d.k8s.Status().Update(ctx, deploy)
}

// volumes materialises the pod's ConfigMap and PVC volumes as directories,
// keyed by mount path.
func (d *demo) volumes(ctx context.Context, p *pod) (map[string]string, error) {
	sources := map[string]string{}
	for _, v := range p.deployment.Spec.Template.Spec.Volumes {
		dir := filepath.Join(d.dir, "pod", "volumes", v.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		switch {
		case v.ConfigMap != nil:
			cm := &corev1.ConfigMap{}
			if err := d.k8s.Get(ctx, types.NamespacedName{Namespace: namespace, Name: v.ConfigMap.Name}, cm); err != nil {
				return nil, err
			}
			for key, value := range cm.Data {
				if err := os.WriteFile(filepath.Join(dir, key), []byte(value), 0o644); err != nil {
					return nil, err
				}
			}
		case v.PersistentVolumeClaim != nil:
			d.leases = dir
		}
		sources[v.Name] = dir
	}
	mounts := map[string]string{}
	for _, m := range p.container.VolumeMounts {
		mounts[m.MountPath] = sources[m.Name]
	}
	return mounts, nil
}

// serviceAccountFiles requests a token for the pod's ServiceAccount, which
// holds exactly the RBAC the operator granted.
func (d *demo) serviceAccountFiles(ctx context.Context, p *pod) (string, error) {
	sa := &corev1.ServiceAccount{}
	if err := d.k8s.Get(ctx, types.NamespacedName{Namespace: namespace, Name: p.deployment.Spec.Template.Spec.ServiceAccountName}, sa); err != nil {
		return "", err
	}
	request := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(3600))}}
	if err := d.k8s.SubResource("token").Create(ctx, sa, request); err != nil {
		return "", fmt.Errorf("token for %s: %w", sa.Name, err)
	}
	dir := filepath.Join(d.dir, "pod", "serviceaccount")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	return dir, errors.Join(
		os.WriteFile(filepath.Join(dir, "token"), []byte(request.Status.Token), 0o600),
		os.WriteFile(filepath.Join(dir, "ca.crt"), d.env.Config.CAData, 0o644),
		os.WriteFile(filepath.Join(dir, "namespace"), []byte(namespace), 0o644),
	)
}

func shellQuote(args []string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(quoted, " ")
}

func waitFor(ctx context.Context, done func() bool) error {
	deadline := time.Now().Add(waitLimit)
	for !done() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

func (d *demo) report(ctx context.Context) error {
	server := &hyperdhcpv1beta1.Server{}
	key := types.NamespacedName{Namespace: namespace, Name: serverName}
	if err := waitFor(ctx, func() bool {
		return d.k8s.Get(ctx, key, server) == nil && server.Status.Pool != nil && server.Status.Pool.Used == int64(len(vms))
	}); err != nil {
		return fmt.Errorf("hyperdhcpd did not report %d leases in the Server's status: %w", len(vms), err)
	}
	out, err := exec.CommandContext(ctx, "kubectl", "--kubeconfig", d.kubeconfig, "get", "servers", "-n", namespace).CombinedOutput()
	if err != nil {
		return fmt.Errorf("kubectl get servers: %w: %s", err, out)
	}
	d.detail("$ kubectl get servers -n %s", namespace)
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		d.detail("%s", line)
	}
	out, err = exec.CommandContext(ctx, "kubectl", "--kubeconfig", d.kubeconfig, "describe", "vmi", vms[0].name, "-n", namespace).CombinedOutput()
	if err != nil {
		return fmt.Errorf("kubectl describe vmi: %w: %s", err, out)
	}
	d.detail("$ kubectl describe vmi %s -n %s | sed -n '/^Events:/,$p'", vms[0].name, namespace)
	_, events, _ := strings.Cut(string(out), "Events:")
	d.detail("Events:")
	for _, line := range strings.Split(strings.TrimRight(events, "\n"), "\n") {
		if strings.TrimSpace(line) != "" {
			d.detail("%s", line)
		}
	}
	out, err = exec.CommandContext(ctx, d.bin("hyperdhcpd"), "leases", "list", "--lease-database", filepath.Join(d.leases, "leases.db")).CombinedOutput()
	if err != nil {
		return fmt.Errorf("hyperdhcpd leases list: %w: %s", err, out)
	}
	d.detail("$ hyperdhcpd leases list")
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		d.detail("%s", line)
	}
	return nil
}
