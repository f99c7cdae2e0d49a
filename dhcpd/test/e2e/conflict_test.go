package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hyperdhcp/hyperdhcp/apis/config"
	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

// TestAddressInUseIsNeverOffered: two squatters hold pool addresses by
// hand, one an ordinary host, one whose firewall drops pings.
// hyperdhcpd's ARP probes find both before any OFFER, so dhclient (which
// does not probe) gets the third address; the metric, the log and an Event
// on the Server name each address and squatter MAC. Once the squatters
// leave and the quarantine ends, their addresses are probed again and
// offered.
func TestAddressInUseIsNeverOffered(t *testing.T) {
	_, k8s, kubeconfig, apiHost := startAPIServer(t)
	ctx := context.Background()
	require.NoError(t, k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "vms"}}))
	b := newTestBed(t, func(c *config.Config) {
		c.Server.Pools = []hyperdhcpv1beta1.AddressRange{{Start: "192.168.50.100", End: "192.168.50.102"}}
		c.Server.KubeVirt = &hyperdhcpv1beta1.KubeVirtSpec{Enabled: new(false)} // plain clients here
		c.DeclineProbation = &metav1.Duration{Duration: 3 * time.Second}
		c.Kubernetes = &config.Kubernetes{ServerName: "lab", ServerNamespace: "vms", Kubeconfig: kubeconfig}
	})
	server := &hyperdhcpv1beta1.Server{ObjectMeta: metav1.ObjectMeta{Name: "lab", Namespace: "vms"}, Spec: b.cfg.Server}
	server.Spec.Storage = nil
	require.NoError(t, k8s.Create(ctx, server))
	forwardAPIServer(t, b.serverNS, apiHost)
	b.startServer()

	squatters := []struct{ mac, ip string }{{"02:00:5e:30:00:98", "192.168.50.100"}, {"02:00:5e:30:00:99", "192.168.50.101"}}
	var hosts []*client
	for _, sq := range squatters {
		host := b.addClient(sq.mac)
		sh(t, "ip", "-n", host.ns, "addr", "add", sq.ip+"/24", "dev", "eth0")
		hosts = append(hosts, host)
	}
	out, err := runIn(b.serverNS, "busybox", "ping", "-c", "1", "-W", "1", squatters[0].ip)
	require.NoError(t, err, "the first squatter answers pings: %s", out)
	sh(t, "ip", "netns", "exec", hosts[1].ns, "nft", "add table inet guest; "+
		"add chain inet guest input { type filter hook input priority 0; policy accept; }; "+
		"add rule inet guest input icmp type echo-request drop")
	out, err = runIn(b.serverNS, "busybox", "ping", "-c", "1", "-W", "1", squatters[1].ip)
	require.Error(t, err, "the second squatter's firewall drops pings: %s", out)

	vm := &dhclient{c: b.addClient("02:00:5e:30:00:01")}
	assert.Equal(t, "192.168.50.102", vm.obtain().IP, "no address in use is offered")
	assert.Equal(t, 2.0, b.metric("hyperdhcpd_address_conflicts_total"))
	assert.GreaterOrEqual(t, b.metric(`hyperdhcpd_probes_total{result="free"}`), 1.0)
	log, err := os.ReadFile(b.logPath)
	require.NoError(t, err)
	assert.Equal(t, 2, strings.Count(string(log), "address in use on the network"), "one line per conflict: %s", log)
	for _, sq := range squatters {
		assert.Equal(t, leasedb.StateDeclined, b.leases()[mustAddr(t, sq.ip)].State, "%s is quarantined like a declined address", sq.ip)
		assert.Contains(t, string(log), sq.mac)
		assertEventOn(t, k8s, corev1.ObjectReference{Kind: "Server", Name: "lab", UID: server.UID},
			corev1.EventTypeWarning, "AddressInUse", sq.ip+" is in use on the network by "+sq.mac)
	}

	// The squatters leave; once the quarantine ends their addresses are
	// probed again, nobody answers, and they are offered.
	for _, host := range hosts {
		sh(t, "ip", "-n", host.ns, "addr", "flush", "dev", "eth0")
	}
	time.Sleep(3 * time.Second)
	var got []string
	for _, mac := range []string{"02:00:5e:30:00:02", "02:00:5e:30:00:03"} {
		got = append(got, (&dhclient{c: b.addClient(mac)}).obtain().IP)
	}
	assert.ElementsMatch(t, []string{"192.168.50.100", "192.168.50.101"}, got, "free again after their probation")
	assert.Equal(t, 2.0, b.metric("hyperdhcpd_address_conflicts_total"), "no new conflict")
}

// runIn runs a command in a namespace and returns its combined output.
func runIn(ns string, argv ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...).CombinedOutput()
	return string(out), err
}
