package e2e

import (
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/hyperdhcp/hyperdhcp/apis/config"
	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

// writeMACs writes n random, locally administered MACs for perfdhcp -M.
// perfdhcp's own sequential MACs would make every client look alike.
func writeMACs(t *testing.T, path string, n int, seed uint64) []string {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed))
	seen := map[string]bool{}
	var macs []string
	for len(macs) < n {
		mac := net.HardwareAddr{0x02, byte(rng.UintN(256)), byte(rng.UintN(256)), byte(rng.UintN(256)), byte(rng.UintN(256)), byte(rng.UintN(256))}
		if !seen[mac.String()] {
			seen[mac.String()] = true
			macs = append(macs, mac.String())
		}
	}
	require.NoError(t, os.WriteFile(path, []byte(strings.Join(macs, "\n")+"\n"), 0o644))
	return macs
}

// perfdhcpExchange is one "Statistics for:" block of perfdhcp's report.
type perfdhcpExchange struct {
	sent, received, drops, nonUnique int
}

var perfdhcpBlock = regexp.MustCompile(`(?s)\*\*\*Statistics for: (\S+)\*\*\*.*?sent packets: (\d+).*?received packets: (\d+).*?drops: (\d+).*?non unique addresses: (\d+)`)

func parsePerfdhcp(t *testing.T, out string) map[string]perfdhcpExchange {
	t.Helper()
	stats := map[string]perfdhcpExchange{}
	for _, m := range perfdhcpBlock.FindAllStringSubmatch(out, -1) {
		n := func(i int) int { v, _ := strconv.Atoi(m[i]); return v }
		stats[m[1]] = perfdhcpExchange{sent: n(2), received: n(3), drops: n(4), nonUnique: n(5)}
	}
	require.Contains(t, stats, "DISCOVER-OFFER", "perfdhcp report:\n%s", out)
	require.Contains(t, stats, "REQUEST-ACK", "perfdhcp report:\n%s", out)
	return stats
}

// TestPerfdhcpSmoke runs ISC's perfdhcp at a modest rate: no exchange is
// lost and every address handed out is unique.
func TestPerfdhcpSmoke(t *testing.T) {
	b := newTestBed(t, func(c *config.Config) {
		c.Server.Pools = []hyperdhcpv1beta1.AddressRange{{Start: "192.168.50.10", End: "192.168.50.240"}}
	})
	b.startServer()
	load := b.addClient("02:00:5e:50:00:99")
	// perfdhcp unicast to the server acts as a relay (giaddr = its address).
	sh(t, "ip", "-n", load.ns, "addr", "add", "192.168.50.250/24", "dev", "eth0")
	macsFile := filepath.Join(load.dir, "macs.txt")
	// perfdhcp draws clients from the list at random: with 30 clients and
	// ~800 exchanges every one of them is drawn (a miss has p < 1e-11).
	macs := writeMACs(t, macsFile, 30, 1)

	// -d 3: a reply counts as lost only after 3 s (make test runs other
	// packages beside this one on 2 cores); -W: wait 1 s at the end for
	// replies to the last requests instead of counting them unfinished.
	cmd := exec.Command("ip", "netns", "exec", load.ns, "perfdhcp", "-4", "-r", "200", "-p", "4", "-d", "3", "-W", "1000000",
		"-M", macsFile, "192.168.50.2")
	outBytes, err := cmd.CombinedOutput()
	out := string(outBytes)
	require.NoError(t, err, "perfdhcp (exit 3 means unfinished exchanges):\n%s", out)
	stats := parsePerfdhcp(t, out)
	for name, s := range stats {
		assert.Positive(t, s.sent, name)
		assert.Zero(t, s.drops, "%s lost exchanges:\n%s", name, out)
		assert.Zero(t, s.nonUnique, name)
	}

	byMAC := map[string]string{}
	for ip, l := range b.leases() {
		if l.State != leasedb.StateBound {
			continue
		}
		prev, dup := byMAC[l.MAC.String()]
		assert.False(t, dup, "client %s holds %s and %s", l.MAC, prev, ip)
		byMAC[l.MAC.String()] = ip.String()
	}
	if !assert.Len(t, byMAC, len(macs), "every client has exactly one lease (IPs are unique by construction)") {
		for _, m := range macs {
			if _, ok := byMAC[m]; !ok {
				for ip, l := range b.leases() {
					if l.MAC.String() == m {
						t.Logf("client %s: %s %+v", m, ip, l)
					}
				}
				t.Logf("client %s has no bound lease", m)
			}
		}
	}
	t.Logf("perfdhcp: %+v", stats)
}
