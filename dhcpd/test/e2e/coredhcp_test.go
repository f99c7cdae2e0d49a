package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

var (
	coreDHCPOnce  sync.Once
	coreDHCP      string
	coreDHCPBuild error
)

// buildCoreDHCP builds stock CoreDHCP with our plugins (../coredhcp).
func buildCoreDHCP(t *testing.T) string {
	t.Helper()
	coreDHCPOnce.Do(func() {
		coreDHCP = filepath.Join(filepath.Dir(hyperdhcpd), "coredhcp")
		out, err := exec.Command("go", "build", "-o", coreDHCP, "../coredhcp").CombinedOutput()
		if err != nil {
			coreDHCPBuild = fmt.Errorf("build CoreDHCP with our plugins: %w\n%s", err, out)
		}
	})
	require.NoError(t, coreDHCPBuild)
	return coreDHCP
}

// startCoreDHCP runs CoreDHCP in the server namespace with the given
// leasedb arguments and returns its log and a channel that gets its exit.
func (b *testBed) startCoreDHCP(name, leasedbArgs string) (logPath string, exited chan error) {
	b.t.Helper()
	conf := filepath.Join(b.dir, name+".yml")
	require.NoError(b.t, os.WriteFile(conf, []byte(fmt.Sprintf(`server4:
  listen: ["%%br0"]
  plugins:
    - server_id: 192.168.50.2
    - leasedb: %s
    - netmask: 255.255.255.0
    - router: %s
    - dns: %s
    - extraopts: domain=%s
`, leasedbArgs, routerIP, dnsIP, domainName)), 0o600))
	logPath = filepath.Join(b.dir, name+".log")
	logFile, err := os.Create(logPath)
	require.NoError(b.t, err)
	defer logFile.Close()
	cmd := exec.Command("ip", "netns", "exec", b.serverNS, buildCoreDHCP(b.t), "-conf", conf)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	require.NoError(b.t, cmd.Start())
	exited = make(chan error, 1)
	done := make(chan struct{})
	go func() {
		exited <- cmd.Wait()
		close(done)
	}()
	b.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if b.t.Failed() {
			data, _ := os.ReadFile(logPath)
			b.t.Logf("%s log:\n%s", name, data)
		}
	})
	return logPath, exited
}

// TestCoreDHCPServesWithOurPlugins: a CoreDHCP user swaps its range plugin
// for leasedb (and adds extraopts) in CoreDHCP's own YAML, and a real client
// gets a durable lease from it. The plugin checks its arguments as
// hyperdhcpd checks a Server and locks its database the same way.
func TestCoreDHCPServesWithOurPlugins(t *testing.T) {
	b := newTestBed(t, nil)
	args := fmt.Sprintf("database=%s server=%s pool=%s-%s lease=10m", b.database, serverIP, poolStart, poolEnd)
	logPath, exited := b.startCoreDHCP("coredhcp", args)
	require.Eventually(t, func() bool {
		data, _ := os.ReadFile(logPath)
		return strings.Contains(string(data), "Listen")
	}, 15*time.Second, 50*time.Millisecond, "CoreDHCP did not start listening")

	got := (&udhcpc{c: b.addClient("02:00:5e:70:00:01")}).obtain()
	inPool(t, got.IP)
	assert.Equal(t, routerIP, got.Router)
	assert.Equal(t, dnsIP, got.DNS)
	assert.Equal(t, domainName, got.Domain, "extraopts answered too")
	assert.Equal(t, leasedb.StateBound, b.leases()[mustAddr(t, got.IP)].State, "the lease is in the database")

	// A second server on the same database is refused by the lock.
	secondLog, secondExit := b.startCoreDHCP("second", args)
	select {
	case err := <-secondExit:
		require.Error(t, err)
		data, _ := os.ReadFile(secondLog)
		assert.Contains(t, string(data), "in use by another hyperdhcpd")
	case <-time.After(15 * time.Second):
		t.Fatal("a second CoreDHCP on the same lease database kept running")
	}
	select {
	case err := <-exited:
		t.Fatalf("the first CoreDHCP exited: %v", err)
	default:
	}

	// Invalid arguments stop CoreDHCP with the reason, as hyperdhcpd's check does.
	badLog, badExit := b.startCoreDHCP("bad", fmt.Sprintf("database=%s/bad.db server=%s pool=10.0.0.1-10.0.0.9", b.dir, serverIP))
	select {
	case err := <-badExit:
		require.Error(t, err)
		data, _ := os.ReadFile(badLog)
		assert.Contains(t, string(data), "leasedb.pools[0]")
	case <-time.After(15 * time.Second):
		t.Fatal("CoreDHCP started with a pool outside the subnet")
	}
}
