package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kubevirtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
)

// hook records what dhclient was told and applies only the address: a stock
// dhclient-script would rewrite this host's /etc/resolv.conf.
const hook = `#!/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
case "$reason" in
BOUND|RENEW|REBOOT)
	ip addr replace "$new_ip_address/$new_subnet_mask" dev "$interface"
	env > "%s.partial" && mv "%s.partial" "%s" ;;
esac
exit 0
`

func (d *demo) runClients(ctx context.Context) error {
	for i, v := range append(slices.Clone(vms), stranger) {
		if err := d.startClient(v.name, v.mac, fmt.Sprintf("vm%d", i+1)); err != nil {
			return err
		}
	}
	for _, v := range vms {
		env, err := d.waitLease(ctx, v.name)
		if err != nil {
			return err
		}
		kind := "from the pool"
		if v.pinned != "" {
			kind = "pinned"
		}
		d.detail("%s %s: %s (%s) hostname=%s router=%s dns=%s domain=%s lease=%ss",
			v.name, v.mac, env["new_ip_address"], kind, or(env["new_host_name"], "-"), env["new_routers"],
			env["new_domain_name_servers"], env["new_domain_name"], env["new_dhcp_lease_time"])
	}
	// The stranger asked as long as the VMs took to be answered, and then some.
	time.Sleep(3 * time.Second)
	if _, err := os.Stat(filepath.Join(d.dir, "clients", stranger.name, "lease.env")); err == nil {
		return fmt.Errorf("%s, a MAC of no VM, got a lease", stranger.name)
	}
	d.detail("%s %s: no answer (its MAC belongs to no VM on this network)", stranger.name, stranger.mac)
	return nil
}

// waitLease waits for the lease the client in clients/<name> reports (if
// reasons are given, for a dhclient-script call with one of them) and
// returns what dhclient was told.
func (d *demo) waitLease(ctx context.Context, name string, reasons ...string) (map[string]string, error) {
	result := filepath.Join(d.dir, "clients", name, "lease.env")
	var env map[string]string
	if err := waitFor(ctx, func() bool {
		data, err := os.ReadFile(result)
		if err != nil {
			return false
		}
		env = map[string]string{}
		for _, line := range strings.Split(string(data), "\n") {
			if k, val, ok := strings.Cut(line, "="); ok {
				env[k] = strings.Trim(val, "'")
			}
		}
		return len(reasons) == 0 || slices.Contains(reasons, env["reason"])
	}); err != nil {
		return nil, fmt.Errorf("%s got no lease (%s): %w", name, strings.Join(reasons, ", "), err)
	}
	return env, nil
}

// moveVMs migrates vm-1 (a new virt-launcher pod on another node; its
// dhclient restarts and asks for its address again) and restarts vm-2 with
// a new MAC (a new VMI): both keep their addresses.
func (d *demo) moveVMs(ctx context.Context) error {
	migrated, restarted := vms[0], vms[1]
	before, err := d.waitLease(ctx, restarted.name)
	if err != nil {
		return err
	}

	vmi := &kubevirtv1.VirtualMachineInstance{}
	if err := d.k8s.Get(ctx, client.ObjectKey{Namespace: namespace, Name: migrated.name}, vmi); err != nil {
		return err
	}
	vmi.Status.MigrationState = &kubevirtv1.VirtualMachineInstanceMigrationState{
		SourcePod: migrated.name + "-launcher-1", TargetPod: migrated.name + "-launcher-2", TargetNode: "node-2", Completed: true}
	vmi.Status.ActivePods = map[types.UID]string{types.UID(migrated.name + "-launcher-2"): "node-2"}
	vmi.Status.NodeName = "node-2"
	if err := d.k8s.Update(ctx, vmi); err != nil {
		return fmt.Errorf("migrate %s: %w", migrated.name, err)
	}
	if err := d.restartClient(migrated.name); err != nil {
		return err
	}
	env, err := d.waitLease(ctx, migrated.name)
	if err != nil {
		return err
	}
	d.detail("%s migrated to node-2 (virt-launcher %s-launcher-2), asked again: %s", migrated.name, migrated.name, env["new_ip_address"])

	if err := d.stopClient(restarted.name); err != nil {
		return err
	}
	if err := d.k8s.Delete(ctx, &kubevirtv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: restarted.name}}); err != nil {
		return err
	}
	if err := waitFor(ctx, func() bool {
		return d.k8s.Get(ctx, client.ObjectKey{Namespace: namespace, Name: restarted.name}, &kubevirtv1.VirtualMachineInstance{}) != nil
	}); err != nil {
		return err
	}
	const newMAC = "02:00:5e:00:00:22"
	if err := d.createVM(ctx, restarted, newMAC); err != nil {
		return err
	}
	if err := d.startClient(restarted.name+"-new-mac", newMAC, "vm9"); err != nil {
		return err
	}
	env, err = d.waitLease(ctx, restarted.name+"-new-mac")
	if err != nil {
		return err
	}
	d.detail("%s restarted with a new MAC %s: %s (before: %s)", restarted.name, newMAC, env["new_ip_address"], before["new_ip_address"])
	return nil
}

// stopClient ends a client's dhclient without a RELEASE, as a VM that
// stops or moves does.
func (d *demo) stopClient(name string) error {
	cmd := d.clients[name]
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	return waitFor(context.Background(), func() bool { return syscall.Kill(cmd.Process.Pid, 0) != nil })
}

// restartClient restarts a client's dhclient on its lease file: it asks for
// its address again (INIT-REBOOT), as a guest does after a migration.
func (d *demo) restartClient(name string) error {
	if err := d.stopClient(name); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(d.dir, "clients", name, "lease.env")); err != nil {
		return err
	}
	return d.startDhclient(name, d.netns[name])
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// startClient plays a VM's NIC: a namespace whose eth0, with mac, is on the
// node's bridge through port, and a dhclient in it whose hook writes what it
// was told to clients/<name>/lease.env.
func (d *demo) startClient(name, mac, port string) error {
	node := d.id + "-node"
	v := vm{name: name, mac: mac}
	ns := fmt.Sprintf("%s-%s", d.id, port)
	if err := d.addNetns(ns); err != nil {
		return err
	}
	if err := d.ip("-n", node, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns); err != nil {
		return err
	}
	if err := d.ip("-n", node, "link", "set", port, "master", "br-lab", "up"); err != nil {
		return err
	}
	if err := d.ip("-n", ns, "link", "set", "eth0", "address", v.mac, "up"); err != nil {
		return err
	}
	dir := filepath.Join(d.dir, "clients", v.name)
	for _, sub := range []string{"run", "state"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return err
		}
	}
	result := filepath.Join(dir, "lease.env")
	if err := os.WriteFile(filepath.Join(dir, "hook.sh"), []byte(fmt.Sprintf(hook, result, result, result)), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), nil, 0o644); err != nil {
		return err
	}
	return d.startDhclient(v.name, ns)
}

// startDhclient runs dhclient for the client clients/<name> in namespace
// ns, with extra arguments before the interface.
func (d *demo) startDhclient(name, ns string, extra ...string) error {
	dir := filepath.Join(d.dir, "clients", name)
	// A private mount namespace: /run, dhclient's state and resolv.conf
	// are this client's own files.
	script := `set -e
mount --bind "$1/run" /run
[ -d /var/lib/dhcp ] && mount --bind "$1/state" /var/lib/dhcp
mount --bind "$1/resolv.conf" /etc/resolv.conf
dir=$1; shift
exec dhclient -4 -d -v -sf "$dir/hook.sh" -pf "$dir/run/dhclient.pid" -lf "$dir/state/dhclient.leases" "$@" eth0`
	args := append([]string{"netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
		"sh", "-c", script, "sh", dir}, extra...)
	cmd, err := d.start(name+".log", nil, "ip", args...)
	if err != nil {
		return err
	}
	d.clients[name], d.netns[name] = cmd, ns
	return nil
}

// editLive changes the Server's DNS servers with kubectl: the operator
// renders the ConfigMap, the same hyperdhcpd process applies it, and vm-1
// asking again is told the new servers.
func (d *demo) editLive(ctx context.Context) error {
	const patch = `{"spec":{"dns":["192.168.50.54"]}}`
	edited := time.Now()
	out, err := exec.CommandContext(ctx, "kubectl", "--kubeconfig", d.kubeconfig, "patch", "server", serverName, "-n", namespace,
		"--type", "merge", "-p", patch).CombinedOutput()
	if err != nil {
		return fmt.Errorf("kubectl patch: %w: %s", err, out)
	}
	d.detail("$ kubectl patch server %s -n %s --type merge -p '%s'", serverName, namespace, patch)
	server := &hyperdhcpv1beta1.Server{}
	if err := waitFor(ctx, func() bool {
		return d.k8s.Get(ctx, types.NamespacedName{Namespace: namespace, Name: serverName}, server) == nil &&
			server.Status.Served != nil && server.Status.Served.Generation == server.Generation
	}); err != nil {
		return fmt.Errorf("hyperdhcpd did not report serving the edited spec: %w", err)
	}
	if err := syscall.Kill(d.hyperdhcpdPID, 0); err != nil {
		return fmt.Errorf("hyperdhcpd (PID %d) is gone: %w", d.hyperdhcpdPID, err)
	}
	d.detail("status.served.generation %d %s after the patch, from hyperdhcpd PID %d, the one started above",
		server.Generation, time.Since(edited).Round(time.Millisecond), d.hyperdhcpdPID)
	vm := vms[0].name
	if err := d.restartClient(vm); err != nil {
		return err
	}
	env, err := d.waitLease(ctx, vm)
	if err != nil {
		return err
	}
	if env["new_domain_name_servers"] != "192.168.50.54" {
		return fmt.Errorf("%s was told DNS %q after the edit, want 192.168.50.54", vm, env["new_domain_name_servers"])
	}
	d.detail("%s asked again: %s, DNS %s", vm, env["new_ip_address"], env["new_domain_name_servers"])
	return nil
}
