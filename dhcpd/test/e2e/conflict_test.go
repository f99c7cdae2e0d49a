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
	crclient "sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hyperdhcp/hyperdhcp/apis/config"
	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

// TestAddressInUseIsNeverOffered: a squatter holds a pool address by hand
// and its firewall drops pings. hyperdhcpd's ARP probe finds it before the
// OFFER, so dhclient (which does not probe) gets the other address; the
// metric, the log and an Event on the Server name the address and the
// squatter's MAC. Once the squatter leaves and the quarantine ends, the
// address is probed again and offered.
func TestAddressInUseIsNeverOffered(t *testing.T) {
	_, k8s, kubeconfig, apiHost := startAPIServer(t)
	ctx := context.Background()
	require.NoError(t, k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "vms"}}))
	b := newTestBed(t, func(c *config.Config) {
		c.Server.Pools = []hyperdhcpv1beta1.AddressRange{{Start: "192.168.50.100", End: "192.168.50.101"}}
		c.Server.KubeVirt = &hyperdhcpv1beta1.KubeVirtSpec{Enabled: new(false)} // plain clients here
		c.DeclineProbation = &metav1.Duration{Duration: 3 * time.Second}
		c.Kubernetes = &config.Kubernetes{ServerName: "lab", ServerNamespace: "vms", Kubeconfig: kubeconfig}
	})
	server := &hyperdhcpv1beta1.Server{ObjectMeta: metav1.ObjectMeta{Name: "lab", Namespace: "vms"}, Spec: b.cfg.Server}
	server.Spec.Storage = nil
	require.NoError(t, k8s.Create(ctx, server))
	forwardAPIServer(t, b.serverNS, apiHost)
	b.startServer()

	const squatterMAC = "02:00:5e:30:00:99"
	squatter := b.addClient(squatterMAC)
	sh(t, "ip", "-n", squatter.ns, "addr", "add", "192.168.50.100/24", "dev", "eth0")
	sh(t, "ip", "netns", "exec", squatter.ns, "nft", "add table inet guest; "+
		"add chain inet guest input { type filter hook input priority 0; policy accept; }; "+
		"add rule inet guest input icmp type echo-request drop")
	out, err := runIn(b.serverNS, "busybox", "ping", "-c", "1", "-W", "1", "192.168.50.100")
	require.Error(t, err, "the squatter's firewall drops pings: %s", out)

	vm := &dhclient{c: b.addClient("02:00:5e:30:00:01")}
	assert.Equal(t, "192.168.50.101", vm.obtain().IP, "the address in use is never offered")
	assert.Equal(t, 1.0, b.metric("hyperdhcpd_address_conflicts_total"))
	assert.GreaterOrEqual(t, b.metric(`hyperdhcpd_probes_total{result="free"}`), 1.0)
	quarantined := b.leases()[mustAddr(t, "192.168.50.100")]
	assert.Equal(t, leasedb.StateDeclined, quarantined.State, "quarantined like a declined address")
	log, err := os.ReadFile(b.logPath)
	require.NoError(t, err)
	assert.Equal(t, 1, strings.Count(string(log), "address in use on the network"), "one line per conflict: %s", log)
	assert.Contains(t, string(log), squatterMAC)
	assert.Eventually(t, func() bool {
		var events corev1.EventList
		if err := k8s.List(ctx, &events, crclient.InNamespace("vms")); err != nil {
			return false
		}
		for _, e := range events.Items {
			if e.InvolvedObject.Kind == "Server" && e.InvolvedObject.Name == "lab" && e.InvolvedObject.UID == server.UID &&
				e.Type == corev1.EventTypeWarning && e.Reason == "AddressInUse" &&
				strings.Contains(e.Message, "192.168.50.100") && strings.Contains(e.Message, squatterMAC) {
				return true
			}
		}
		return false
	}, 15*time.Second, 200*time.Millisecond, "an AddressInUse Event on the Server")

	// The squatter leaves; once the quarantine ends the address is probed
	// again, nobody answers, and it is offered.
	sh(t, "ip", "-n", squatter.ns, "addr", "flush", "dev", "eth0")
	time.Sleep(3 * time.Second)
	next := &dhclient{c: b.addClient("02:00:5e:30:00:02")}
	assert.Equal(t, "192.168.50.100", next.obtain().IP, "free again after its probation")
	assert.Equal(t, 1.0, b.metric("hyperdhcpd_address_conflicts_total"), "no new conflict")
}

// runIn runs a command in a namespace and returns its combined output.
func runIn(ns string, argv ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...).CombinedOutput()
	return string(out), err
}
