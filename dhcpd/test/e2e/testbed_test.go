// Package e2e runs the hyperdhcpd binary against real DHCP clients
// (dhclient, udhcpc, dhcpcd) and perfdhcp in network namespaces it creates.
// It needs root; missing Debian packages are installed on first use.
//
// Clients never touch the host: each runs in a private mount namespace where
// /run, its state directory and /etc/resolv.conf are bind mounts of the
// test's temporary directory, with a hook script that only applies the
// address (a stock hook rewrites the host's resolv.conf even from another
// network namespace).
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hyperdhcp/hyperdhcp/apis/config"
	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

// The test network: the server on a bridge, clients on veth ports of it.
const (
	serverIP   = "192.168.50.2/24"
	routerIP   = "192.168.50.1"
	dnsIP      = "192.168.50.53"
	poolStart  = "192.168.50.100"
	poolEnd    = "192.168.50.149"
	domainName = "lab.example"
	metricsURL = "http://127.0.0.1:8067/metrics"
)

var (
	hyperdhcpd string // path of the binary under test
	nsCounter  atomic.Int32
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "the e2e tests create network namespaces and need root: run `make test` as root")
		return 1
	}
	if err := ensurePackages(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dir, err := os.MkdirTemp("", "hyperdhcpd-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	hyperdhcpd = filepath.Join(dir, "hyperdhcpd")
	build := exec.Command("go", "build", "-o", hyperdhcpd, "../../cmd/hyperdhcpd")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "build hyperdhcpd: %v\n", err)
		return 1
	}
	return m.Run()
}

// requiredTools maps each tool the tests run to the Debian package with it.
var requiredTools = map[string]string{
	"ip":       "iproute2",
	"unshare":  "util-linux",
	"dhclient": "isc-dhcp-client",
	"udhcpc":   "udhcpc",
	"busybox":  "busybox",
	"dhcpcd":   "dhcpcd-base",
	"perfdhcp": "kea-admin",
	"podman":   "podman",
	"runc":     "runc",
	"skopeo":   "skopeo",
	"nft":      "nftables",
	"tcpdump":  "tcpdump",
}

// ensurePackages installs the Debian packages of missing tools.
func ensurePackages() error {
	var missing []string
	for tool, pkg := range requiredTools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	fmt.Fprintf(os.Stderr, "installing %v\n", missing)
	install := func() error {
		cmd := exec.Command("apt-get", append([]string{"install", "-y", "-qq", "--no-install-recommends"}, missing...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get install %v: %w\n%s", missing, err, out)
		}
		return nil
	}
	if install() == nil {
		return nil
	}
	if out, err := exec.Command("apt-get", "update", "-qq").CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get update: %w\n%s", err, out)
	}
	return install()
}

// sh runs a command and fails the test on error.
func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	require.NoError(t, err, "%s %s: %s", name, strings.Join(args, " "), out)
	return string(out)
}

// testBed is a server namespace with a bridge, and hyperdhcpd on it.
type testBed struct {
	t        *testing.T
	id       string
	serverNS string
	dir      string
	config   string
	cfg      *config.Config
	database string
	server   *exec.Cmd
	exited   chan error
	logPath  string
	clients  int
	// logLevel is hyperdhcpd's (debug unless a test measures speed: debug
	// logs every packet).
	logLevel string
}

// newTestBed creates the server namespace and writes the configuration;
// mutate may change it before it is written.
func newTestBed(t *testing.T, mutate func(*config.Config)) *testBed {
	t.Helper()
	b := &testBed{t: t, id: fmt.Sprintf("hd%d%d", os.Getpid()%1000, nsCounter.Add(1)), dir: t.TempDir(), logLevel: "debug"}
	b.serverNS = b.id + "s"
	b.database = filepath.Join(b.dir, "leases.db")
	b.logPath = filepath.Join(b.dir, "hyperdhcpd.log")
	sh(t, "ip", "netns", "add", b.serverNS)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", b.serverNS).Run() })
	quietNamespace(t, b.serverNS)
	// A bridge takes the lowest MAC of its ports unless it has one of its
	// own; a pod's interface keeps its MAC, and so does this one.
	sh(t, "ip", "-n", b.serverNS, "link", "add", "br0", "address", "02:00:5e:00:00:02", "type", "bridge")
	sh(t, "ip", "-n", b.serverNS, "addr", "add", serverIP, "dev", "br0")
	sh(t, "ip", "-n", b.serverNS, "link", "set", "br0", "up")

	cfg := &config.Config{
		Server: hyperdhcpv1beta1.ServerSpec{
			NetworkAttachment: hyperdhcpv1beta1.NetworkAttachment{Name: "lab", Interface: "br0"},
			ServerIP:          serverIP,
			Pools:             []hyperdhcpv1beta1.AddressRange{{Start: poolStart, End: poolEnd}},
			Router:            routerIP,
			DNS:               []hyperdhcpv1beta1.IPv4Address{dnsIP},
			DomainName:        domainName,
			LeaseTime:         &metav1.Duration{Duration: 10 * time.Minute},
		},
		LeaseDatabase:    b.database,
		DeclineProbation: &metav1.Duration{Duration: time.Hour},
	}
	b.config, b.cfg = filepath.Join(b.dir, "hyperdhcpd.yaml"), cfg
	b.edit(mutate)
	t.Cleanup(func() {
		b.stopServer(syscall.SIGKILL)
		if t.Failed() {
			log, _ := os.ReadFile(b.logPath)
			t.Logf("hyperdhcpd log:\n%s", log)
		}
	})
	return b
}

// edit changes the configuration file; a running server applies what it
// can of it, the rest when it is started again.
func (b *testBed) edit(mutate func(*config.Config)) {
	b.t.Helper()
	if mutate != nil {
		mutate(b.cfg)
	}
	data, err := b.cfg.Marshal()
	require.NoError(b.t, err)
	// Replaced in one step, as the kubelet swaps a mounted ConfigMap: a
	// running server reads its file for edits and must never see half.
	next := b.config + ".next"
	require.NoError(b.t, os.WriteFile(next, data, 0o600))
	require.NoError(b.t, os.Rename(next, b.config))
}

// quietNamespace brings up loopback and turns IPv6 off, so only our DHCP
// traffic is on the wire.
func quietNamespace(t *testing.T, ns string) {
	t.Helper()
	sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
	sh(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
}

// startServer runs hyperdhcpd and waits until it serves.
func (b *testBed) startServer() {
	b.t.Helper()
	b.startServerCommand("ip", "netns", "exec", b.serverNS, hyperdhcpd, "serve", "--config", b.config, "--log-level", b.logLevel)
}

// startServerCommand runs a command that serves as hyperdhcpd in the
// server namespace (the binary, or its image) and waits until it serves.
func (b *testBed) startServerCommand(name string, args ...string) {
	b.t.Helper()
	b.server, b.exited = startServing(b.t, b.logPath, name, args...)
}

// stopServer signals hyperdhcpd and waits for it to exit.
func (b *testBed) stopServer(sig syscall.Signal) {
	if b.server == nil {
		return
	}
	stopServing(b.server, b.exited, sig)
	b.server = nil
}

// startServing runs a command that serves as hyperdhcpd, its output
// appended to logPath, and waits until this run (not an earlier one in the
// same log) says it serves. exited receives its end.
func startServing(t *testing.T, logPath, name string, args ...string) (cmd *exec.Cmd, exited chan error) {
	t.Helper()
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	require.NoError(t, err)
	defer logFile.Close()
	offset, _ := logFile.Seek(0, 2)
	cmd = exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	require.NoError(t, cmd.Start())
	exited = make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	require.Eventually(t, func() bool {
		data, _ := os.ReadFile(logPath)
		return int64(len(data)) > offset && strings.Contains(string(data[offset:]), "serving DHCP")
	}, 15*time.Second, 50*time.Millisecond, "hyperdhcpd did not start serving")
	return cmd, exited
}

// stopServing signals cmd and waits for it to exit, killing it after 10 s.
func stopServing(cmd *exec.Cmd, exited chan error, sig syscall.Signal) {
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// leases reads the lease database as it is on disk.
func (b *testBed) leases() map[netip.Addr]leasedb.Lease {
	b.t.Helper()
	store, err := leasedb.OpenSQLite(b.database)
	require.NoError(b.t, err)
	defer store.Close()
	rows, err := store.Load(context.Background())
	require.NoError(b.t, err)
	out := map[netip.Addr]leasedb.Lease{}
	for _, r := range rows {
		out[r.IP] = r
	}
	return out
}

// metric returns the value of one metric line such as
// `hyperdhcpd_packets_dropped_total{reason="malformed_packet"}`, or 0.
func (b *testBed) metric(series string) float64 {
	b.t.Helper()
	out, err := exec.Command("ip", "netns", "exec", b.serverNS, "busybox", "wget", "-qO-", metricsURL).Output()
	require.NoError(b.t, err, "fetch metrics")
	scanner := bufio.NewScanner(strings.NewReader(string(out)))
	for scanner.Scan() {
		if value, ok := strings.CutPrefix(scanner.Text(), series+" "); ok {
			var v float64
			_, err := fmt.Sscan(value, &v)
			require.NoError(b.t, err)
			return v
		}
	}
	return 0
}

// client is a namespace with one interface, eth0, on the server's bridge.
type client struct {
	bed   *testBed
	ns    string
	mac   string
	dir   string
	procs []*exec.Cmd
}

// addClient creates a client namespace whose eth0 has the given MAC.
func (b *testBed) addClient(mac string) *client {
	b.t.Helper()
	b.clients++
	c := &client{bed: b, ns: fmt.Sprintf("%sc%d", b.id, b.clients), mac: mac, dir: b.t.TempDir()}
	sh(b.t, "ip", "netns", "add", c.ns)
	b.t.Cleanup(func() {
		for _, p := range c.procs {
			// Each client runs in its own process group: dhcpcd's privilege
			// separation forks helpers that would outlive its main process.
			_ = syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
			_ = p.Wait()
		}
		_ = exec.Command("ip", "netns", "del", c.ns).Run()
	})
	quietNamespace(b.t, c.ns)
	port := fmt.Sprintf("p%d", b.clients)
	sh(b.t, "ip", "-n", b.serverNS, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", c.ns)
	sh(b.t, "ip", "-n", b.serverNS, "link", "set", port, "master", "br0", "up")
	sh(b.t, "ip", "-n", c.ns, "link", "set", "eth0", "address", mac, "up")

	for _, d := range []string{"run", "state", "events"} {
		require.NoError(b.t, os.MkdirAll(filepath.Join(c.dir, d), 0o755))
	}
	require.NoError(b.t, os.WriteFile(filepath.Join(c.dir, "resolv.conf"), nil, 0o644))
	return c
}

// hookScript records each client event and, where the client leaves that
// to its hook (udhcpc, dhclient), applies the address; dhcpcd configures
// addresses itself. Clients run hooks with an environment of their own, so
// the events directory is written into the script.
const hookScript = `#!/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
event="${reason:-$1}"
case "$event" in
bound|renew)
	ip addr flush dev "$interface"
	ip addr add "$ip/$mask" dev "$interface" ;;
deconfig)
	ip addr flush dev "$interface" ;;
PREINIT)
	ip link set "$interface" up ;;
BOUND|RENEW|REBIND|REBOOT)
	[ -n "$new_subnet_mask" ] && [ "%s" = apply ] && ip addr replace "$new_ip_address/$new_subnet_mask" dev "$interface" ;;
EXPIRE|FAIL|RELEASE|STOP)
	[ "%s" = apply ] && ip addr flush dev "$interface" ;;
esac
# Recorded once applied, so a test that saw the event finds the address.
# Write, then rename: the test must never read a half-written event.
env > "%s/.partial.$$"
mv "%s/.partial.$$" "%s/$(date +%%s%%N)-$event"
exit 0
`

// hook writes the hook script and returns its path; apply says whether it
// configures the address.
func (c *client) hook(apply bool) string {
	mode := "record"
	if apply {
		mode = "apply"
	}
	path := filepath.Join(c.dir, "hook-"+mode+".sh")
	events := filepath.Join(c.dir, "events")
	require.NoError(c.bed.t, os.WriteFile(path, []byte(fmt.Sprintf(hookScript, mode, mode, events, events, events)), 0o755))
	return path
}

// command returns a command run in the client's network namespace and in a
// private mount namespace where /run, the DHCP clients' state directories
// and /etc/resolv.conf are the test's own files.
func (c *client) command(argv ...string) *exec.Cmd {
	script := `set -e
mount --bind "$CLIENT_DIR/run" /run
for d in /var/lib/dhcp /var/lib/dhcpcd; do
	[ -d "$d" ] && mount --bind "$CLIENT_DIR/state" "$d"
done
mount --bind "$CLIENT_DIR/resolv.conf" /etc/resolv.conf
exec "$@"`
	args := append([]string{"netns", "exec", c.ns, "unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"}, argv...)
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(), "CLIENT_DIR="+c.dir)
	return cmd
}

// run runs a client command to completion.
func (c *client) run(timeout time.Duration, argv ...string) string {
	c.bed.t.Helper()
	cmd := c.command(argv...)
	done := make(chan struct{})
	timer := time.AfterFunc(timeout, func() { _ = cmd.Process.Kill() })
	defer timer.Stop()
	defer close(done)
	out, err := cmd.CombinedOutput()
	require.NoError(c.bed.t, err, "%v: %s", argv, out)
	return string(out)
}

// start runs a client command in the background until the test ends.
func (c *client) start(argv ...string) *exec.Cmd {
	c.bed.t.Helper()
	cmd := c.command(argv...)
	logFile, err := os.Create(filepath.Join(c.dir, fmt.Sprintf("client-%d.log", len(c.procs))))
	require.NoError(c.bed.t, err)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(c.bed.t, cmd.Start())
	c.procs = append(c.procs, cmd)
	return cmd
}

// event is one call of the hook script.
type event struct {
	name string
	env  map[string]string
}

// events returns the hook calls so far, oldest first.
func (c *client) events() []event {
	entries, err := os.ReadDir(filepath.Join(c.dir, "events"))
	require.NoError(c.bed.t, err)
	var out []event
	for _, e := range entries { // ReadDir sorts by name: by time
		if strings.HasPrefix(e.Name(), ".") {
			continue // still being written
		}
		data, err := os.ReadFile(filepath.Join(c.dir, "events", e.Name()))
		require.NoError(c.bed.t, err)
		env := map[string]string{}
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, "="); ok {
				env[k] = v
			}
		}
		_, name, _ := strings.Cut(e.Name(), "-")
		out = append(out, event{name: name, env: env})
	}
	return out
}

// waitEvent waits for a hook call named one of names after the first skip
// events, and returns it with its index.
func (c *client) waitEvent(skip int, timeout time.Duration, names ...string) (event, int) {
	c.bed.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		evs := c.events()
		for i := skip; i < len(evs); i++ {
			for _, n := range names {
				if evs[i].name == n {
					return evs[i], i
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	var seen []string
	for _, e := range c.events() {
		seen = append(seen, e.name)
	}
	c.bed.t.Fatalf("client %s: no %v event within %s (events: %v)", c.ns, names, timeout, seen)
	return event{}, 0
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	require.NoError(t, err, "client reported address %q", s)
	return a
}
