package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	crclient "sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hyperdhcp/hyperdhcp/apis/config"
	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

// smallVolume mounts a tmpfs of size on a new directory: a real
// filesystem that fills up, or turns read-only, as a small PVC does.
func smallVolume(t *testing.T, size string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "volume")
	require.NoError(t, os.Mkdir(dir, 0o755))
	sh(t, "mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir)
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

// ready reports whether hyperdhcpd's /readyz answers 200.
func (b *testBed) ready() bool {
	return exec.Command("ip", "netns", "exec", b.serverNS, "timeout", "5", "busybox", "wget", "-qO-", "http://127.0.0.1:8067/readyz").Run() == nil
}

// logLines counts the lines of hyperdhcpd's log that contain text.
func (b *testBed) logLines(text string) int {
	data, _ := os.ReadFile(b.logPath)
	return strings.Count(string(data), text)
}

// tryLease runs one udhcpc attempt with a short timeout; it reports
// whether the client was acknowledged.
func tryLease(c *client) bool {
	return c.command("busybox", "udhcpc", "-n", "-q", "-f", "-i", "eth0", "-s", c.hook(false), "-t", "2", "-T", "1").Run() == nil
}

// TestDiskFullUnderLoad fills the lease volume while perfdhcp keeps
// hyperdhcpd busy: no client is acknowledged without a stored lease, the
// fault is logged once, counted, turns /readyz and the Server's
// status.leaseStorage, and everything comes back by itself when space is
// freed, with no restart; the database is intact afterwards.
func TestDiskFullUnderLoad(t *testing.T) {
	_, k8s, kubeconfig, apiHost := startAPIServer(t)
	ctx := context.Background()
	require.NoError(t, k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "dhcp"}}))
	require.NoError(t, k8s.Create(ctx, &hyperdhcpv1beta1.Server{ObjectMeta: metav1.ObjectMeta{Namespace: "dhcp", Name: "lab"},
		Spec: hyperdhcpv1beta1.ServerSpec{NetworkAttachment: hyperdhcpv1beta1.NetworkAttachment{Name: "lab"}, ServerIP: serverIP,
			Pools: []hyperdhcpv1beta1.AddressRange{{Start: "192.168.50.10", End: "192.168.50.240"}}}}))
	storageReport := func() *hyperdhcpv1beta1.LeaseStorageStatus {
		server := &hyperdhcpv1beta1.Server{}
		if k8s.Get(ctx, crclient.ObjectKey{Namespace: "dhcp", Name: "lab"}, server) != nil {
			return nil
		}
		return server.Status.LeaseStorage
	}

	volume := smallVolume(t, "4m")
	b := newTestBed(t, func(c *config.Config) {
		c.Server.Pools = []hyperdhcpv1beta1.AddressRange{{Start: "192.168.50.10", End: "192.168.50.240"}}
		c.Server.KubeVirt = &hyperdhcpv1beta1.KubeVirtSpec{Enabled: new(false)} // plain clients here
		c.LeaseDatabase = filepath.Join(volume, "leases.db")
		c.Kubernetes = &config.Kubernetes{ServerName: "lab", ServerNamespace: "dhcp", Kubeconfig: kubeconfig,
			StatusInterval: &metav1.Duration{Duration: time.Second}}
	})
	b.database = filepath.Join(volume, "leases.db")
	forwardAPIServer(t, b.serverNS, apiHost)
	b.startServer()
	require.Eventually(t, func() bool { r := storageReport(); return r != nil && r.Available }, 15*time.Second, 100*time.Millisecond,
		"hyperdhcpd reports its lease storage")

	before := &udhcpc{c: b.addClient("02:00:5e:60:00:01")}
	beforeIP := before.obtain().IP

	// All but 96 KiB of the volume taken: the WAL of a busy server fills that in a few seconds.
	filler := filepath.Join(volume, "filler")
	sh(t, "sh", "-c", `dd if=/dev/zero of="$1" bs=4k 2>/dev/null; truncate -s -96K "$1"`, "sh", filler)

	load := b.addClient("02:00:5e:60:00:99")
	sh(t, "ip", "-n", load.ns, "addr", "add", "192.168.50.250/24", "dev", "eth0")
	macsFile := filepath.Join(load.dir, "macs.txt")
	writeMACs(t, macsFile, 200, 7)
	perfdhcp := exec.Command("ip", "netns", "exec", load.ns, "perfdhcp", "-4", "-r", "200", "-p", "15", "-d", "3", "-M", macsFile, "192.168.50.2")
	var perfdhcpOut bytes.Buffer
	perfdhcp.Stdout, perfdhcp.Stderr = &perfdhcpOut, &perfdhcpOut
	require.NoError(t, perfdhcp.Start())
	perfdhcpDone := make(chan string, 1)
	go func() { _ = perfdhcp.Wait(); perfdhcpDone <- perfdhcpOut.String() }()
	t.Cleanup(func() { _ = perfdhcp.Process.Kill() })

	require.Eventually(t, func() bool { return b.metric("hyperdhcpd_lease_storage_available") == 0 }, 20*time.Second, 100*time.Millisecond,
		"the volume fills up under load")
	during := b.addClient("02:00:5e:60:00:02")
	assert.False(t, tryLease(during), "no ACK while leases cannot be stored")
	assert.False(t, b.ready(), "/readyz says not ready")
	assert.Equal(t, 1.0, b.metric("hyperdhcpd_lease_storage_faults_total"))
	assert.Greater(t, b.metric(`hyperdhcpd_packets_dropped_total{reason="lease_commit_failed"}`), 0.0)
	require.Eventually(t, func() bool { r := storageReport(); return r != nil && !r.Available }, 10*time.Second, 100*time.Millisecond,
		"the Server's status.leaseStorage says unavailable")
	assert.Contains(t, storageReport().Message, "full")

	freed := time.Now()
	require.NoError(t, os.Remove(filler))
	require.Eventually(t, func() bool { return b.metric("hyperdhcpd_lease_storage_available") == 1 }, 10*time.Second, 50*time.Millisecond,
		"writes succeed again without a restart")
	t.Logf("lease writes recovered %s after space was freed", time.Since(freed).Round(time.Millisecond))
	assert.True(t, b.ready(), "ready again")
	duringIP := (&udhcpc{c: during}).obtain().IP
	require.Eventually(t, func() bool { r := storageReport(); return r != nil && r.Available }, 10*time.Second, 100*time.Millisecond,
		"status.leaseStorage says available again")

	out := <-perfdhcpDone
	stats := parsePerfdhcp(t, out)
	assert.Greater(t, stats["REQUEST-ACK"].received, 0, "perfdhcp was served before and after the fault")
	assert.Equal(t, 1, b.logLines("lease database writes are failing"), "one line for the episode")
	assert.Equal(t, 1, b.logLines("lease database writes succeed again"))
	assert.LessOrEqual(t, b.logLines(`"level":"ERROR"`)+b.logLines(`"level":"WARN"`), 5, "a handful of lines, not one per packet")

	// Every client that was acknowledged is in the database, which opens
	// cleanly after a restart.
	b.stopServer(syscall.SIGTERM)
	b.startServer()
	leases := b.leases()
	for _, ip := range []string{beforeIP, duringIP} {
		assert.Equal(t, leasedb.StateBound, leases[mustAddr(t, ip)].State, "lease %s is stored", ip)
	}
}

// ext4Volume mounts a fresh ext4 filesystem of size from an image file on
// a loop device, as a block PVC is; it returns the mount point and the image.
func ext4Volume(t *testing.T, size string) (dir, image string) {
	t.Helper()
	dir, image = filepath.Join(t.TempDir(), "volume"), filepath.Join(t.TempDir(), "volume.img")
	require.NoError(t, os.Mkdir(dir, 0o755))
	sh(t, "truncate", "-s", size, image)
	sh(t, "mkfs.ext4", "-q", image)
	sh(t, "mount", "-o", "loop", image, dir)
	t.Cleanup(func() { _ = exec.Command("umount", dir).Run() })
	return dir, image
}

// TestVolumeTurnsReadOnlyWhileServing: the kernel turns the lease volume
// read-only under a running server, as ext4 does on an I/O error
// (errors=remount-ro; here the "abort" mount option): no ACK without a
// stored lease, the fault logged once and counted, not ready but alive.
// Recovery is what the pod's restart does: the volume checked and mounted
// again, hyperdhcpd started on it with every lease acknowledged before.
func TestVolumeTurnsReadOnlyWhileServing(t *testing.T) {
	volume, image := ext4Volume(t, "16M")
	b := newTestBed(t, func(c *config.Config) { c.LeaseDatabase = filepath.Join(volume, "leases.db") })
	b.database = filepath.Join(volume, "leases.db")
	b.startServer()
	first := (&udhcpc{c: b.addClient("02:00:5e:61:00:01")}).obtain()

	sh(t, "mount", "-o", "remount,abort", volume)
	second := b.addClient("02:00:5e:61:00:02")
	assert.False(t, tryLease(second), "no ACK while the volume is read-only")
	assert.Equal(t, 0.0, b.metric("hyperdhcpd_lease_storage_available"))
	assert.False(t, b.ready(), "not ready")
	assert.NoError(t, exec.Command("ip", "netns", "exec", b.serverNS, "timeout", "5", "busybox", "wget", "-qO-", "http://127.0.0.1:8067/healthz").Run(),
		"alive: a restart would not make the volume writable")
	assert.Equal(t, 1, b.logLines("lease database writes are failing"))
	assert.Equal(t, 1, b.logLines("read-only file system"), "the cause is in the line")

	// The clients' mount namespaces still hold the aborted mount, so the
	// "repaired volume" is a checked copy of the image on its own loop device.
	b.stopServer(syscall.SIGTERM)
	sh(t, "umount", volume)
	repaired := image + ".repaired"
	sh(t, "cp", "--sparse=always", image, repaired)
	_ = exec.Command("e2fsck", "-fy", repaired).Run() // exit 1: errors corrected
	sh(t, "mount", "-o", "loop", repaired, volume)
	b.startServer()
	assert.Equal(t, leasedb.StateBound, b.leases()[mustAddr(t, first.IP)].State, "the lease acknowledged before is there")
	got := (&udhcpc{c: second}).obtain()
	assert.Equal(t, leasedb.StateBound, b.leases()[mustAddr(t, got.IP)].State)
}

// TestBadLeaseDirectoryIsRefusedBeforeBinding: a missing directory (an
// unmounted volume) and a read-only one stop hyperdhcpd with a clear error
// before it serves, as other bad configuration does.
func TestBadLeaseDirectoryIsRefusedBeforeBinding(t *testing.T) {
	readOnly := smallVolume(t, "1m")
	sh(t, "mount", "-o", "remount,ro", readOnly)
	for _, tc := range []struct {
		name, dir, want string
	}{
		{"missing", filepath.Join(t.TempDir(), "not-mounted"), "does not exist (is the lease volume mounted?)"},
		{"read-only", readOnly, "is not writable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newTestBed(t, func(c *config.Config) { c.LeaseDatabase = filepath.Join(tc.dir, "leases.db") })
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, "ip", "netns", "exec", b.serverNS, hyperdhcpd, "serve", "--config", b.config).CombinedOutput()
			require.Error(t, err, "hyperdhcpd must not start: %s", out)
			assert.Contains(t, string(out), tc.dir)
			assert.Contains(t, string(out), tc.want)
			assert.NotContains(t, string(out), "serving DHCP")
		})
	}
}
