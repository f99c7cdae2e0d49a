package e2e

import (
	"fmt"
	"os/exec"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/hyperdhcp/hyperdhcp/apis/config"
)

// TestEndpointsAreNotOnTheVMNetwork gives the server a cluster-network
// interface beside the VM network, as a pod has, and serves /metrics and
// the probes on its address (the operator passes the pod IP): the cluster
// side reaches them, a VM does not, not even through a route via the
// server's VM-network address, while DHCP still answers the VM.
func TestEndpointsAreNotOnTheVMNetwork(t *testing.T) {
	const podIP, nodeIP = "10.244.7.5", "10.244.7.1"
	b := newTestBed(t, func(c *config.Config) { c.MetricsAddress = podIP + ":8067" })
	cluster := b.id + "k"
	sh(t, "ip", "netns", "add", cluster)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", cluster).Run() })
	quietNamespace(t, cluster)
	sh(t, "ip", "-n", b.serverNS, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", cluster)
	sh(t, "ip", "-n", b.serverNS, "addr", "add", podIP+"/24", "dev", "eth0")
	sh(t, "ip", "-n", b.serverNS, "link", "set", "eth0", "up")
	sh(t, "ip", "-n", cluster, "addr", "add", nodeIP+"/24", "dev", "eth0")
	sh(t, "ip", "-n", cluster, "link", "set", "eth0", "up")
	b.startServer()

	fetch := func(ns, url string) error {
		// timeout, not wget -T: busybox 1.35's wget crashes with -T.
		out, err := exec.Command("ip", "netns", "exec", ns, "timeout", "5", "busybox", "wget", "-qO-", url).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}
	for _, path := range []string{"metrics", "healthz", "readyz"} {
		require.NoError(t, fetch(cluster, "http://"+podIP+":8067/"+path), "the kubelet and Prometheus reach /%s", path)
	}

	vm := b.addClient("02:00:5e:60:00:01")
	got := (&udhcpc{c: vm}).obtain()
	inPool(t, got.IP)
	// A VM that knows the pod network routes to it through the server.
	sh(t, "ip", "-n", vm.ns, "route", "add", "10.244.7.0/24", "via", "192.168.50.2")
	for _, url := range []string{"http://" + podIP + ":8067/metrics", "http://192.168.50.2:8067/metrics"} {
		assert.Error(t, fetch(vm.ns, url), "a VM must not reach %s", url)
	}
}
