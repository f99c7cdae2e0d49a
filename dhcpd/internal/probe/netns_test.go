package probe

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func ip(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	require.NoError(t, err, "ip %v: %s", args, out)
}

// inNamespace runs f on a thread in the network namespace ns: sockets f
// opens stay there.
func inNamespace(t *testing.T, ns string, f func()) {
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
	defer func() { require.NoError(t, unix.Setns(int(self.Fd()), unix.CLONE_NEWNET)) }()
	f()
}

// TestProbeFindsAHostThatDropsPings: two namespaces joined by a veth pair;
// the other side holds an address and drops ICMP echo. The probe finds it
// by ARP and names its MAC; a free address times out as free, and is then
// remembered as free.
func TestProbeFindsAHostThatDropsPings(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root for network namespaces (make test runs as root)")
	}
	server, host := fmt.Sprintf("prb%ds", os.Getpid()%10000), fmt.Sprintf("prb%dh", os.Getpid()%10000)
	for _, ns := range []string{server, host} {
		ip(t, "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	ip(t, "-n", server, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", host)
	ip(t, "-n", host, "link", "set", "eth0", "address", "02:00:5e:00:00:99")
	ip(t, "-n", server, "addr", "add", "192.168.60.2/24", "dev", "eth0")
	ip(t, "-n", host, "addr", "add", "192.168.60.100/24", "dev", "eth0")
	ip(t, "-n", server, "link", "set", "eth0", "up")
	ip(t, "-n", host, "link", "set", "eth0", "up")
	out, err := exec.Command("ip", "netns", "exec", host, "nft", "add table inet guest; "+
		"add chain inet guest input { type filter hook input priority 0; policy accept; }; "+
		"add rule inet guest input icmp type echo-request drop").CombinedOutput()
	require.NoError(t, err, "%s", out)

	var p *Prober
	inNamespace(t, server, func() {
		var err error
		p, err = Open("eth0", 300*time.Millisecond)
		require.NoError(t, err)
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	probe := func(addr string) Result {
		result := make(chan Result, 1)
		p.Probe(netip.MustParseAddr(addr), time.Now(), func(r Result) { result <- r })
		select {
		case r := <-result:
			return r
		case <-time.After(5 * time.Second):
			t.Fatal("the probe never ended")
			return Result{}
		}
	}
	used := probe("192.168.60.100")
	require.NoError(t, used.Err)
	assert.True(t, used.InUse, "found by ARP though it drops pings")
	assert.Equal(t, net.HardwareAddr{2, 0, 0x5e, 0, 0, 0x99}, used.MAC)

	start := time.Now()
	free := probe("192.168.60.101")
	assert.False(t, free.InUse)
	assert.NoError(t, free.Err)
	assert.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond-timerSlack, "free only once the timeout passed")

	start = time.Now()
	assert.False(t, probe("192.168.60.101").InUse)
	assert.Less(t, time.Since(start), 300*time.Millisecond, "remembered as free for a moment: no second probe")
}
