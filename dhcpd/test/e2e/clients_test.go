package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hyperdhcp/hyperdhcp/apis/config"
	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

const clientTimeout = 30 * time.Second

// lease is what a client's hook was told, in one shape for all clients.
type lease struct {
	IP, Mask, Router, DNS, Domain, LeaseTime string
}

// driver runs one DHCP client implementation in a client namespace.
type driver interface {
	// obtain gets a lease, first or again after release.
	obtain() lease
	// renew extends the lease.
	renew() lease
	// release gives the lease back.
	release()
}

func newDriver(kind string, c *client) driver {
	switch kind {
	case "udhcpc":
		return &udhcpc{c: c}
	case "dhclient":
		return &dhclient{c: c}
	case "dhcpcd":
		return &dhcpcd{c: c}
	}
	panic("unknown client " + kind)
}

// udhcpc (busybox): SIGUSR1 renews, SIGUSR2 releases.
type udhcpc struct {
	c    *client
	proc *exec.Cmd
	seen int
}

func (d *udhcpc) signal(sig syscall.Signal) {
	d.c.bed.t.Helper()
	require.NoError(d.c.bed.t, d.proc.Process.Signal(sig))
}

func (d *udhcpc) obtain() lease {
	if d.proc == nil {
		d.proc = d.c.start("busybox", "udhcpc", "-f", "-i", "eth0", "-s", d.c.hook(true), "-t", "20", "-T", "1", "-A", "1",
			"-O", "ntpsrv")
	} else {
		d.signal(syscall.SIGUSR1) // released: start over
	}
	return d.wait("bound")
}

func (d *udhcpc) renew() lease {
	d.signal(syscall.SIGUSR1)
	return d.wait("renew")
}

func (d *udhcpc) release() {
	d.signal(syscall.SIGUSR2)
	_, d.seen = d.c.waitEvent(d.seen, clientTimeout, "deconfig")
	d.seen++
}

func (d *udhcpc) wait(names ...string) lease {
	ev, i := d.c.waitEvent(d.seen, clientTimeout, names...)
	d.seen = i + 1
	e := ev.env
	return lease{IP: e["ip"], Mask: e["mask"], Router: e["router"], DNS: e["dns"], Domain: e["domain"], LeaseTime: e["lease"]}
}

// isc-dhcp-client. It has no "renew now": its renewal is waited for at T1.
type dhclient struct {
	c    *client
	seen int
}

func (d *dhclient) args(extra ...string) []string {
	conf := filepath.Join(d.c.dir, "dhclient.conf")
	if _, err := os.Stat(conf); err != nil {
		require.NoError(d.c.bed.t, os.WriteFile(conf, []byte(
			"request subnet-mask, broadcast-address, routers, domain-name, domain-name-servers, host-name, ntp-servers;\n"), 0o644))
	}
	args := []string{"dhclient", "-4", "-v", "-sf", d.c.hook(true), "-cf", conf,
		"-pf", filepath.Join(d.c.dir, "dhclient.pid"), "-lf", filepath.Join(d.c.dir, "dhclient.leases")}
	return append(append(args, extra...), "eth0")
}

func (d *dhclient) obtain() lease {
	d.c.start(d.args("-d")...)
	return d.wait("BOUND", "REBOOT")
}

func (d *dhclient) renew() lease {
	return d.wait("RENEW")
}

func (d *dhclient) release() {
	// -r signals the running dhclient through its pid file, which sends the
	// RELEASE and exits.
	d.c.run(clientTimeout, d.args("-r")...)
	_, d.seen = d.c.waitEvent(d.seen, clientTimeout, "RELEASE")
	d.seen++
}

func (d *dhclient) wait(names ...string) lease {
	ev, i := d.c.waitEvent(d.seen, 2*clientTimeout, names...)
	d.seen = i + 1
	return leaseFromISCEnv(ev.env)
}

func leaseFromISCEnv(e map[string]string) lease {
	return lease{IP: e["new_ip_address"], Mask: e["new_subnet_mask"], Router: e["new_routers"],
		DNS: e["new_domain_name_servers"], Domain: e["new_domain_name"], LeaseTime: e["new_dhcp_lease_time"]}
}

// dhcpcd, as a foreground daemon controlled with -N (renew) and -k (release).
// Every control command repeats -4, or dhcpcd starts a second daemon.
type dhcpcd struct {
	c       *client
	seen    int
	arp     bool
	started bool
}

func (d *dhcpcd) conf() string {
	conf := filepath.Join(d.c.dir, "dhcpcd.conf")
	require.NoError(d.c.bed.t, os.WriteFile(conf, []byte(
		"option domain_name_servers, domain_name, domain_search, host_name, ntp_servers\nipv4only\nnoipv4ll\n"), 0o644))
	return conf
}

func (d *dhcpcd) obtain() lease {
	args := []string{"dhcpcd", "-4", "-B", "-f", d.conf(), "-c", d.c.hook(false), "-t", "60"}
	if !d.arp {
		args = append(args, "-A") // skip the ~6 s ARP probe where the test is not about it
	}
	d.c.start(append(args, "eth0")...)
	return d.wait("BOUND", "REBOOT")
}

func (d *dhcpcd) renew() lease {
	d.c.run(clientTimeout, "dhcpcd", "-4", "-N", "eth0")
	return d.wait("RENEW")
}

func (d *dhcpcd) release() {
	d.c.run(clientTimeout, "dhcpcd", "-4", "-k", "eth0")
	// dhcpcd 9 reports a release as the daemon stopping.
	_, d.seen = d.c.waitEvent(d.seen, clientTimeout, "RELEASE", "STOPPED")
	d.seen++
}

func (d *dhcpcd) wait(names ...string) lease {
	ev, i := d.c.waitEvent(d.seen, 2*clientTimeout, names...)
	d.seen = i + 1
	return leaseFromISCEnv(ev.env)
}

func inPool(t *testing.T, ip string) {
	t.Helper()
	assert.Regexp(t, `^192\.168\.50\.1([0-4][0-9])$`, ip, "address outside the pool %s-%s", poolStart, poolEnd)
}

// TestClients runs each real client through its lease's life: obtain with
// the configured options, renew, release, obtain the same address again,
// and a second client gets another address.
func TestClients(t *testing.T) {
	for _, kind := range []string{"udhcpc", "dhclient", "dhcpcd"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			b := newTestBed(t, func(c *config.Config) {
				if kind == "dhclient" {
					// dhclient cannot be told to renew: a short lease makes it renew at T1 (30 s).
					c.Server.LeaseTime = &metav1.Duration{Duration: time.Minute}
				}
			})
			b.startServer()

			first := newDriver(kind, b.addClient("02:00:5e:10:00:01"))
			got := first.obtain()
			inPool(t, got.IP)
			assert.Contains(t, []string{"24", "255.255.255.0"}, got.Mask)
			assert.Equal(t, routerIP, got.Router)
			assert.Equal(t, dnsIP, got.DNS)
			assert.Equal(t, domainName, got.Domain)
			assert.NotEmpty(t, got.LeaseTime)
			assert.Equal(t, leasedb.StateBound, b.leases()[mustAddr(t, got.IP)].State, "the lease is in the database")

			renewed := first.renew()
			assert.Equal(t, got.IP, renewed.IP, "renewal keeps the address")

			first.release()
			require.Eventually(t, func() bool {
				return b.leases()[mustAddr(t, got.IP)].State == leasedb.StateFree
			}, 10*time.Second, 100*time.Millisecond, "the release reached the database")

			again := first.obtain()
			assert.Equal(t, got.IP, again.IP, "a returning client gets its address back")

			second := newDriver(kind, b.addClient("02:00:5e:10:00:02")).obtain()
			inPool(t, second.IP)
			assert.NotEqual(t, got.IP, second.IP, "a second client never gets the first one's address")
		})
	}
}

// TestLeasesSurviveKill9 kills hyperdhcpd without warning: the leases that
// were acknowledged are all there after the restart.
func TestLeasesSurviveKill9(t *testing.T) {
	b := newTestBed(t, nil)
	b.startServer()
	clients := []*udhcpc{{c: b.addClient("02:00:5e:20:00:01")}, {c: b.addClient("02:00:5e:20:00:02")}}
	var ips []string
	for _, c := range clients {
		ips = append(ips, c.obtain().IP)
	}
	require.NotEqual(t, ips[0], ips[1])

	b.stopServer(syscall.SIGKILL)
	b.startServer()
	for _, ip := range ips {
		assert.Equal(t, leasedb.StateBound, b.leases()[mustAddr(t, ip)].State, "lease %s survived", ip)
	}
	assert.Equal(t, ips[0], clients[0].renew().IP, "renewal after the restart keeps the address")

	third := (&udhcpc{c: b.addClient("02:00:5e:20:00:03")}).obtain()
	assert.NotContains(t, ips, third.IP, "a new client gets an address nobody holds")

	b.stopServer(syscall.SIGTERM)
	b.startServer()
	assert.Len(t, b.leases(), 3, "a graceful restart keeps them too")
}

// TestDeclineQuarantines puts a host on the first pool address: dhcpcd's ARP
// probe finds it, the client DECLINEs, and the server quarantines it.
func TestDeclineQuarantines(t *testing.T) {
	b := newTestBed(t, func(c *config.Config) {
		c.Server.Pools = []hyperdhcpv1beta1.AddressRange{{Start: "192.168.50.100", End: "192.168.50.101"}}
		// The client's own probe and DECLINE are under test, not the server's.
		c.Server.ConflictDetection = &hyperdhcpv1beta1.ConflictDetectionSpec{Enabled: new(false)}
	})
	b.startServer()
	squatter := b.addClient("02:00:5e:30:00:99")
	sh(t, "ip", "-n", squatter.ns, "addr", "add", "192.168.50.100/24", "dev", "eth0")

	d := &dhcpcd{c: b.addClient("02:00:5e:30:00:01"), arp: true}
	got := d.obtain()
	assert.Equal(t, "192.168.50.101", got.IP, "the client ends up on the free address")
	declined := b.leases()[mustAddr(t, "192.168.50.100")]
	assert.Equal(t, leasedb.StateDeclined, declined.State, "the address in use is quarantined")
	assert.True(t, declined.Expires.After(time.Now().Add(50*time.Minute)), "for the probation time")
}

// TestMalformedPacketsAreDroppedAndCounted sends garbage to the server port;
// the server counts it and keeps serving.
func TestMalformedPacketsAreDroppedAndCounted(t *testing.T) {
	b := newTestBed(t, nil)
	b.startServer()
	attacker := b.addClient("02:00:5e:40:00:99")
	sh(t, "ip", "-n", attacker.ns, "addr", "add", "192.168.50.250/24", "dev", "eth0")
	garbage := []string{"x", "not a dhcp packet at all", fmt.Sprintf("%0300d", 7)}
	for _, g := range garbage {
		sh(t, "ip", "netns", "exec", attacker.ns, "bash", "-c", fmt.Sprintf("printf %%s %q > /dev/udp/192.168.50.2/67", g))
	}
	require.Eventually(t, func() bool {
		return b.metric(`hyperdhcpd_packets_dropped_total{reason="malformed_packet"}`) >= float64(len(garbage))
	}, 10*time.Second, 100*time.Millisecond)

	got := (&udhcpc{c: b.addClient("02:00:5e:40:00:01")}).obtain()
	inPool(t, got.IP)
	for _, probe := range []string{"healthz", "readyz"} {
		out, err := exec.Command("ip", "netns", "exec", b.serverNS, "busybox", "wget", "-qO-", "http://127.0.0.1:8067/"+probe).CombinedOutput()
		require.NoError(t, err, "%s: %s", probe, out)
		assert.Equal(t, "ok\n", string(out))
	}
	assert.Equal(t, 1.0, b.metric(`hyperdhcpd_packets_sent_total{type="ACK"}`))
	assert.Equal(t, 50.0, b.metric(`hyperdhcpd_pool_addresses{state="size"}`))
	assert.Equal(t, 1.0, b.metric(`hyperdhcpd_pool_addresses{state="used"}`))
}

// TestSecondServerCannotShareTheDatabase: SO_REUSEPORT would let a second
// hyperdhcpd bind beside the first; the database lock stops it first.
func TestSecondServerCannotShareTheDatabase(t *testing.T) {
	b := newTestBed(t, nil)
	b.startServer()
	out, err := exec.Command("ip", "netns", "exec", b.serverNS, hyperdhcpd, "serve", "--config", b.config, "--metrics-address", "0").CombinedOutput()
	require.Error(t, err, "a second server started: %s", out)
	assert.Contains(t, string(out), "is in use by another hyperdhcpd")
	got := (&udhcpc{c: b.addClient("02:00:5e:70:00:01")}).obtain()
	inPool(t, got.IP)
}
