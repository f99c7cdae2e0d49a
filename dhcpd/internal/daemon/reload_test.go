package daemon

import (
	"errors"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/hyperdhcp/hyperdhcp/apis/config"
	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/internal/server"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

func render(t *testing.T, generation int64, mutate func(*config.Config)) []byte {
	t.Helper()
	c := &config.Config{
		Server: hyperdhcpv1beta1.ServerSpec{
			NetworkAttachment: hyperdhcpv1beta1.NetworkAttachment{Name: "lab", Interface: "net1"},
			ServerIP:          "192.168.50.2/24",
			Pools:             []hyperdhcpv1beta1.AddressRange{{Start: "192.168.50.100", End: "192.168.50.199"}},
			KubeVirt:          &hyperdhcpv1beta1.KubeVirtSpec{Namespaces: []string{"vms"}},
		},
		Kubernetes: &config.Kubernetes{ServerName: "lab", ServerNamespace: "vms", ServerGeneration: generation, ConfigMap: "hyperdhcpd-lab"},
	}
	if mutate != nil {
		mutate(c)
	}
	data, err := c.Marshal()
	require.NoError(t, err)
	return data
}

// TestReloaderOrdersItsSources drives the reloader with the ConfigMap
// watch and the file as they can interleave, and checks what it applies.
func TestReloaderOrdersItsSources(t *testing.T) {
	start := render(t, 4, nil)
	serving, err := parseDefaulted(start, "test")
	require.NoError(t, err)
	var applied []*config.Config
	fail := false
	apply := func(c *config.Config) error {
		if fail {
			return errors.New("leasedb: pools overlap")
		}
		applied = append(applied, c)
		return nil
	}
	r, err := newReloader(File{Path: "unused", Data: start}, serving, apply, server.NewMetrics(func() leasedb.Stats { return leasedb.Stats{} }),
		slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	r.mu.Lock()
	defer r.mu.Unlock()

	r.offer(start, sourceConfigMap)
	assert.Empty(t, applied, "what is served already")

	dns := func(c *config.Config) { c.Server.DNS = []hyperdhcpv1beta1.IPv4Address{"192.168.50.54"} }
	r.offer(render(t, 5, dns), sourceConfigMap)
	require.Len(t, applied, 1, "a newer generation")
	r.offer(render(t, 5, dns), sourceFile)
	r.offer(start, sourceFile)
	assert.Len(t, applied, 1, "the file catching up, or behind, applies nothing")

	// Consent given: the operator rewrites the namespaces, not the Server.
	consent := func(c *config.Config) { dns(c); c.Server.KubeVirt.Namespaces = []string{"vms", "team-a"} }
	r.offer(render(t, 5, consent), sourceConfigMap)
	require.Len(t, applied, 2, "the same generation with other content, from the ConfigMap watch")
	assert.Equal(t, []string{"vms", "team-a"}, applied[1].Server.KubeVirt.Namespaces)
	r.offer(render(t, 5, dns), sourceFile)
	assert.Len(t, applied, 2, "a stale file of the same generation does not undo it")

	r.offer(render(t, 6, func(c *config.Config) { consent(c); c.Server.ServerIP = "192.168.50.3/24" }), sourceConfigMap)
	assert.Len(t, applied, 2, "a restart-only edit waits for the restart")
	assert.Equal(t, int64(5), r.served().Generation)

	fail = true
	r.offer(render(t, 7, func(c *config.Config) { consent(c); c.Server.LeaseTime = nil }), sourceConfigMap)
	assert.Equal(t, hyperdhcpv1beta1.ServedStatus{Generation: 5, Since: r.served().Since, RefusedGeneration: 7,
		RefusedMessage: "leasedb: pools overlap"}, r.served(), "a refusal is reported with its generation")
	r.offer([]byte("kubernetes: {serverGeneration: 8}\nfutureField: 1\n"), sourceConfigMap)
	assert.Equal(t, int64(8), r.served().RefusedGeneration, "a file this hyperdhcpd cannot parse is refused with its generation")
	assert.Contains(t, r.served().RefusedMessage, "futureField")

	fail = false
	r.offer(render(t, 9, consent), sourceConfigMap)
	require.Len(t, applied, 3)
	assert.Equal(t, hyperdhcpv1beta1.ServedStatus{Generation: 9, Since: r.served().Since}, r.served(), "applied: the refusal is cleared")
}
