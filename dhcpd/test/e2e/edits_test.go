package e2e

import (
	"net/netip"
	"os"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/hyperdhcp/hyperdhcp/apis/config"
	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
)

// TestEditsKeepServing makes each kind of Server edit that strands a live
// lease, and rolls the server onto it as the operator would: the server
// must come back and serve, keep the stranded lease out of anyone else's
// hands until it expires, and refuse its renewal so the client moves.
func TestEditsKeepServing(t *testing.T) {
	cases := []struct {
		name string
		edit func(c *config.Config, held string)
		// moved: the server's own address changed to another subnet.
		moved bool
	}{
		{"pool narrowed past a lease", func(c *config.Config, _ string) {
			c.Server.Pools = []hyperdhcpv1beta1.AddressRange{{Start: "192.168.50.120", End: "192.168.50.149"}}
		}, false},
		{"leased address newly excluded", func(c *config.Config, held string) {
			c.Server.Exclude = []hyperdhcpv1beta1.IPv4Address{hyperdhcpv1beta1.IPv4Address(held)}
		}, false},
		{"server moved to another subnet", func(c *config.Config, _ string) {
			c.Server.ServerIP = "192.168.60.2/24"
			c.Server.Router = "192.168.60.1"
			c.Server.Pools = []hyperdhcpv1beta1.AddressRange{{Start: "192.168.60.100", End: "192.168.60.149"}}
		}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newTestBed(t, nil)
			b.startServer()
			old := &udhcpc{c: b.addClient("02:00:5e:50:00:01")}
			held := old.obtain().IP

			b.stopServer(syscall.SIGTERM)
			b.edit(func(c *config.Config) { tc.edit(c, held) })
			if tc.moved {
				sh(t, "ip", "-n", b.serverNS, "addr", "flush", "dev", "br0")
				sh(t, "ip", "-n", b.serverNS, "addr", "add", string(b.cfg.Server.ServerIP), "dev", "br0")
			}
			b.startServer()
			log, err := os.ReadFile(b.logPath)
			require.NoError(t, err)
			assert.Contains(t, string(log), "leases outside the configured subnet, pools and reservations are kept until they expire")

			fresh := (&udhcpc{c: b.addClient("02:00:5e:50:00:02")}).obtain()
			assert.NotEqual(t, held, fresh.IP, "the stranded lease is not handed to anyone else")
			assert.True(t, inConfig(b.cfg, fresh.IP), "a new client gets an address of the edited configuration: %s", fresh.IP)

			if tc.moved {
				return // the old client renews by unicast to an address the server left: nobody answers it until T2
			}
			// The stranded client's renewal is refused; it starts over and
			// lands inside the new configuration.
			old.signal(syscall.SIGUSR1)
			_, i := old.c.waitEvent(old.seen, clientTimeout, "nak")
			old.seen = i + 1
			moved := old.wait("bound")
			assert.True(t, inConfig(b.cfg, moved.IP), "after the NAK the client gets an address of the edited configuration: %s", moved.IP)
			assert.Equal(t, 1.0, b.metric(`hyperdhcpd_naks_total{reason="outside_pools"}`))
		})
	}
}

func inConfig(c *config.Config, ip string) bool {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	for _, e := range c.Server.Exclude {
		if string(e) == ip {
			return false
		}
	}
	for _, p := range c.Server.Pools {
		start, end := netip.MustParseAddr(string(p.Start)), netip.MustParseAddr(string(p.End))
		if !a.Less(start) && !end.Less(a) {
			return true
		}
	}
	return false
}
