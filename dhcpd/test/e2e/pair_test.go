package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	crclient "sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hyperdhcp/hyperdhcp/apis/config"
	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/internal/ha"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/internal/testenv"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

const standbyIP = "192.168.50.3"

// pairBed is a hot-standby pair on the test bed's network: replica lab-0
// is the bed's server (192.168.50.2, br0 in the server namespace), replica
// lab-1 runs in a namespace of its own on the same bridge (192.168.50.3).
// They replicate over that network and elect through envtest's Lease.
type pairBed struct {
	*testBed
	second     *client // the namespace replica lab-1 runs in
	config1    string
	database1  string
	log1       string
	process1   *exec.Cmd
	exited1    chan error
	kubeconfig string
	k8s        crclient.Client
	apiHost    string
	// cutAPI0 and cutAPI1 take the API server away from one replica.
	cutAPI0, cutAPI1 func()
}

func newPairBed(t *testing.T) *pairBed {
	t.Helper()
	return newPairBedWith(t, nil)
}

// newPairBedWith makes a pair bed whose replicas' configuration mutate has
// changed (each replica keeps its own address and database).
func newPairBedWith(t *testing.T, mutate func(*config.Config)) *pairBed {
	t.Helper()
	_, k8s, kubeconfig, apiHost := startAPIServer(t)
	b := newTestBed(t, nil)
	certs, err := testenv.WritePairCerts(b.dir, "pair")
	require.NoError(t, err)
	p := &pairBed{testBed: b, kubeconfig: kubeconfig, k8s: k8s, apiHost: apiHost}
	// The empty Lease the operator makes (hyperdhcpd may only get and
	// update it).
	require.NoError(t, k8s.Create(context.Background(), &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "hyperdhcpd-lab"}}))
	// The Server the active replica reports on.
	require.NoError(t, k8s.Create(context.Background(), &hyperdhcpv1beta1.Server{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "lab"},
		Spec: hyperdhcpv1beta1.ServerSpec{NetworkAttachment: hyperdhcpv1beta1.NetworkAttachment{Name: "lab"}, ServerIP: serverIP,
			Pools:            []hyperdhcpv1beta1.AddressRange{{Start: poolStart, End: poolEnd}},
			HighAvailability: &hyperdhcpv1beta1.HighAvailabilitySpec{StandbyServerIP: standbyIP + "/24"}},
	}))
	p.second = b.addClient("02:00:5e:00:00:03")
	sh(t, "ip", "-n", p.second.ns, "addr", "add", standbyIP+"/24", "dev", "eth0")
	p.cutAPI0 = forwardAPIServer(t, b.serverNS, apiHost)
	p.cutAPI1 = forwardAPIServer(t, p.second.ns, apiHost)

	replica := func(name, self, peer string) *config.HighAvailability {
		return &config.HighAvailability{Replica: name, Lease: "hyperdhcpd-lab", Listen: self + ":8068", Peer: "https://" + peer + ":8068",
			CA: certs.CA, Cert: certs.Cert, Key: certs.Key}
	}
	b.edit(func(c *config.Config) {
		c.Server.KubeVirt = &hyperdhcpv1beta1.KubeVirtSpec{Enabled: new(false)}
		c.Kubernetes = &config.Kubernetes{ServerName: "lab", ServerNamespace: "default", Kubeconfig: kubeconfig}
		c.HighAvailability = replica("lab-0", "192.168.50.2", standbyIP)
		c.HighAvailability.Bootstrap = true
		if mutate != nil {
			mutate(c)
		}
	})
	second := *b.cfg
	second.Server = *b.cfg.Server.DeepCopy()
	second.Server.ServerIP = standbyIP + "/24"
	second.Server.NetworkAttachment.Interface = "eth0"
	p.database1 = filepath.Join(p.second.dir, "leases.db")
	second.LeaseDatabase = p.database1
	second.HighAvailability = replica("lab-1", standbyIP, "192.168.50.2")
	second.HighAvailability.MaxClientLeadTime = b.cfg.HighAvailability.MaxClientLeadTime
	data, err := second.Marshal()
	require.NoError(t, err)
	p.config1 = filepath.Join(p.second.dir, "hyperdhcpd.yaml")
	require.NoError(t, os.WriteFile(p.config1, data, 0o600))
	p.log1 = filepath.Join(p.second.dir, "hyperdhcpd.log")
	t.Cleanup(func() {
		p.stopSecond(syscall.SIGKILL)
		if t.Failed() {
			log, _ := os.ReadFile(p.log1)
			t.Logf("replica lab-1 log:\n%s", log)
		}
	})
	return p
}

// startSecond runs replica lab-1 and waits until it serves.
func (p *pairBed) startSecond() {
	p.t.Helper()
	p.process1, p.exited1 = startServing(p.t, p.log1, "ip", "netns", "exec", p.second.ns, hyperdhcpd, "serve", "--config", p.config1, "--log-level", p.logLevel)
}

func (p *pairBed) stopSecond(sig syscall.Signal) {
	if p.process1 == nil {
		return
	}
	stopServing(p.process1, p.exited1, sig)
	p.process1 = nil
}

func countIn(path, text string) int {
	data, _ := os.ReadFile(path)
	return strings.Count(string(data), text)
}

// readyz is what the replica in namespace ns answers on /readyz: its
// status line (busybox wget shows no body of an error).
func readyz(ns string) string {
	out, _ := exec.Command("ip", "netns", "exec", ns, "busybox", "wget", "-S", "-O-", "http://127.0.0.1:8067/readyz").CombinedOutput()
	return string(out)
}

// active tells whether the replica in namespace ns says it is active
// (false also when it cannot be asked).
func active(ns string) bool {
	out, err := exec.Command("ip", "netns", "exec", ns, "busybox", "wget", "-qO-", metricsURL).Output()
	return err == nil && strings.Contains(string(out), "\nhyperdhcpd_ha_active 1\n")
}

// metricIn is one metric's value on the replica in namespace ns; it
// fails the test when the replica cannot be asked.
func metricIn(t *testing.T, ns, series string) float64 {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "busybox", "wget", "-qO-", metricsURL).Output()
	require.NoError(t, err, "metrics of the replica in %s", ns)
	for _, line := range strings.Split(string(out), "\n") {
		if value, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(value, 64)
			require.NoError(t, err)
			return v
		}
	}
	return 0
}

// isStandby tells that the replica in namespace ns runs and is not active.
func isStandby(t *testing.T, ns string) bool {
	t.Helper()
	return metricIn(t, ns, "hyperdhcpd_ha_active") == 0
}

// waitServerExit waits up to d for replica lab-0 to end by itself.
func (p *pairBed) waitServerExit(d time.Duration, msg string) {
	p.t.Helper()
	select {
	case <-p.exited:
		p.server = nil
	case <-time.After(d):
		p.t.Fatal(msg)
	}
}

// obtainFrom runs udhcpc once in a new client namespace until it has a
// lease (retrying every second for up to 30 s) and returns the address and
// the server that granted it.
func (p *pairBed) obtainFrom(mac string, extra ...string) (ip, server string) {
	p.t.Helper()
	lease := p.obtainLease(mac, extra...)
	return lease["ip"], lease["serverid"]
}

// obtainLease is obtainFrom returning what udhcpc says of the lease (ip,
// serverid, lease in seconds, ...).
func (p *pairBed) obtainLease(mac string, extra ...string) map[string]string {
	p.t.Helper()
	c := p.addClient(mac)
	args := append([]string{"busybox", "udhcpc", "-n", "-q", "-f", "-i", "eth0", "-s", c.hook(false), "-t", "30", "-T", "1"}, extra...)
	out := c.run(40*time.Second, args...)
	events := c.events()
	require.NotEmpty(p.t, events, "%s", out)
	return events[len(events)-1].env
}

// storedBound is what a replica's database holds bound, by address.
func storedBound(t *testing.T, path string) map[string]string {
	t.Helper()
	store, err := leasedb.OpenSQLite(path)
	require.NoError(t, err)
	defer store.Close()
	rows, err := store.Load(context.Background())
	require.NoError(t, err)
	out := map[string]string{}
	for _, r := range rows {
		if r.State == leasedb.StateBound {
			out[r.IP.String()] = r.MAC.String()
		}
	}
	return out
}

// TestPairTakesOverWhenTheActiveIsKilled: with the active killed (-9),
// the standby answers new clients within the Lease's duration, holds every
// lease the active acknowledged (its clients get their addresses again),
// and no address goes to two clients; the killed replica comes back as the
// standby and catches up.
func TestPairTakesOverWhenTheActiveIsKilled(t *testing.T) {
	p := newPairBed(t)
	p.up()

	owner := map[string]string{} // address → MAC, over the whole test
	record := func(mac, ip string) {
		if prev, ok := owner[ip]; ok && prev != mac {
			t.Errorf("%s was ACKed to %s and to %s", ip, prev, mac)
		}
		owner[ip] = mac
	}
	var before []string
	for i := range 5 {
		mac := fmt.Sprintf("02:00:5e:70:00:%02x", i)
		ip, server := p.obtainFrom(mac)
		assert.Equal(t, "192.168.50.2", server, "the active answers")
		record(mac, ip)
		before = append(before, mac)
	}
	standby := storedBound(t, p.database1)
	for ip, mac := range owner {
		assert.Equal(t, mac, standby[ip], "the standby has %s's lease on %s before the ACK left", mac, ip)
	}
	assert.True(t, isStandby(t, p.second.ns), "the standby does not answer")
	assert.Positive(t, metricIn(t, p.second.ns, `hyperdhcpd_packets_dropped_total{reason="standby"}`), "it counts the packets it leaves to the active")

	killed := time.Now()
	p.stopServer(syscall.SIGKILL)
	ip, server := p.obtainFrom("02:00:5e:70:01:00")
	takeover := time.Since(killed)
	t.Logf("a new client got %s from %s %s after the active was killed", ip, server, takeover.Round(time.Millisecond))
	assert.Equal(t, standbyIP, server, "the standby took over")
	record("02:00:5e:70:01:00", ip)

	// The active's clients come back, asking for their address (option 50
	// in the DISCOVER): the survivor knows every one of their leases.
	for i, mac := range before {
		var held string
		for a, m := range owner {
			if m == mac {
				held = a
			}
		}
		got, server := p.obtainFrom(mac, "-r", held)
		assert.Equal(t, held, got, "client %d keeps its address across the failover", i)
		assert.Equal(t, standbyIP, server)
		record(mac, got)
	}

	require.Eventually(t, func() bool {
		server := &hyperdhcpv1beta1.Server{}
		if err := p.k8s.Get(context.Background(), crclient.ObjectKey{Namespace: "default", Name: "lab"}, server); err != nil {
			return false
		}
		s := server.Status.HighAvailability
		return s != nil && s.Active == "lab-1" && s.Since.After(killed) && !s.StandbyInSync
	}, 20*time.Second, 200*time.Millisecond, "the Server's status names the new active, the failover, and a standby not in sync")

	// The killed replica restarts as the standby and catches up.
	p.startServer()
	require.Eventually(t, func() bool { return countIn(p.logPath, "caught up with the active") > 0 }, 20*time.Second, 100*time.Millisecond)
	assert.True(t, isStandby(t, p.serverNS), "the restarted replica is the standby")
	assert.True(t, active(p.second.ns))
}

// TestNewReplicaNeverAnswersFirst: the second replica, started alone
// before the pair ever had an active, does not take the Lease (its
// database is empty); the bootstrap replica does, and the second catches
// up from it.
func TestNewReplicaNeverAnswersFirst(t *testing.T) {
	p := newPairBed(t)
	p.startSecond()
	time.Sleep(ha.LeaseDuration + 2*ha.RetryPeriod)
	assert.True(t, isStandby(t, p.second.ns), "a replica that never caught up does not answer first")
	assert.Contains(t, readyz(p.second.ns), "503 Service Unavailable", "nor is it ready: it could not take over")
	p.startServer()
	require.Eventually(t, func() bool { return active(p.serverNS) }, 20*time.Second, 100*time.Millisecond, "the bootstrap replica takes the Lease")
	require.Eventually(t, func() bool { return countIn(p.log1, "caught up with the active") > 0 }, 20*time.Second, 100*time.Millisecond)
	assert.True(t, isStandby(t, p.second.ns))
	assert.Contains(t, readyz(p.second.ns), "200 OK", "caught up, the standby is ready")
}

// TestPairKillSeriesUnderLoad kills the active (-9) again and again
// (HYPERDHCP_HA_KILLS times, 2 by default; make bench runs 20) while
// perfdhcp loads it, restarting each killed replica as the standby. From
// tcpdump's record of the bridge: no address was ACKed to two clients, and
// every address ACKed is in the final active's database for its client.
// It reports how long each takeover took until a new client had a lease.
func TestPairKillSeriesUnderLoad(t *testing.T) {
	kills := 2
	if v := os.Getenv("HYPERDHCP_HA_KILLS"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, "HYPERDHCP_HA_KILLS")
		kills = n
	}
	p := newPairBed(t)
	p.up()
	capture := p.captureDHCP()
	load := p.addClient("02:00:5e:75:ff:ff")
	sh(t, "ip", "-n", load.ns, "addr", "add", "192.168.50.250/24", "dev", "eth0")
	macsFile := filepath.Join(load.dir, "macs.txt")
	// The test bed's pool has 50 addresses: 20 for perfdhcp, and the new
	// client each takeover is measured with is one of five.
	writeMACs(t, macsFile, 20, 11)

	type replica struct {
		ip, ns, database string
		kill, start      func()
		caughtUp         func() int
	}
	first := replica{ip: "192.168.50.2", ns: p.serverNS, database: p.database,
		kill:     func() { p.stopServer(syscall.SIGKILL) },
		start:    p.startServer,
		caughtUp: func() int { return countIn(p.logPath, "caught up with the active") }}
	second := replica{ip: standbyIP, ns: p.second.ns, database: p.database1,
		kill: func() { p.stopSecond(syscall.SIGKILL) }, start: p.startSecond,
		caughtUp: func() int { return countIn(p.log1, "caught up with the active") }}
	activeOne, standbyOne := first, second
	var takeovers []time.Duration
	for k := range kills {
		perf := exec.Command("ip", "netns", "exec", load.ns, "perfdhcp", "-4", "-r", "200", "-p", "4", "-d", "2", "-M", macsFile,
			"-s", strconv.Itoa(k+1), activeOne.ip)
		require.NoError(t, perf.Start())
		time.Sleep(2 * time.Second)
		killed := time.Now()
		activeOne.kill()
		_, server := p.obtainFrom(fmt.Sprintf("02:00:5e:75:%02x:01", k%5))
		takeovers = append(takeovers, time.Since(killed))
		assert.Equal(t, standbyOne.ip, server, "kill %d: the standby took over", k)
		_ = perf.Wait() // its exchanges with the killed replica are lost, as they should be

		before := activeOne.caughtUp()
		activeOne.start()
		require.Eventually(t, func() bool { return activeOne.caughtUp() > before }, 30*time.Second, 100*time.Millisecond,
			"kill %d: the killed replica comes back as the standby and catches up", k)
		require.Eventually(t, func() bool { return active(standbyOne.ns) && !active(activeOne.ns) }, 10*time.Second, 100*time.Millisecond)
		activeOne, standbyOne = standbyOne, activeOne
		time.Sleep(time.Second) // the new active's heartbeat finds the standby in sync
	}
	acks := capture.audit(t)
	owner := map[string]string{} // the last client each address was ACKed to
	for _, a := range acks {
		owner[a.ip] = a.mac
	}
	final := storedBound(t, activeOne.database)
	for ip, mac := range owner {
		assert.Equal(t, mac, final[ip], "%s, ACKed to %s on the wire, is in the surviving database", ip, mac)
	}
	slices.Sort(takeovers)
	t.Logf("%d ACKs audited over %d kills; takeover until a new client had a lease: min %s, median %s, max %s (all: %v)",
		len(acks), kills, takeovers[0].Round(time.Millisecond), takeovers[len(takeovers)/2].Round(time.Millisecond),
		takeovers[len(takeovers)-1].Round(time.Millisecond), takeovers)
}

// TestPausedActiveAcknowledgesNothingAfterTakeover: the active is paused
// (SIGSTOP) for longer than the Lease; the standby takes over; resumed,
// the former active sends no ACK (the clients' records say who answered)
// and exits to come back as the standby.
func TestPausedActiveAcknowledgesNothingAfterTakeover(t *testing.T) {
	p := newPairBed(t)
	p.up()
	capture := p.captureDHCP()
	first := "02:00:5e:71:00:01"
	held, server := p.obtainFrom(first)
	require.Equal(t, "192.168.50.2", server)

	require.NoError(t, p.server.Process.Signal(syscall.SIGSTOP))
	require.Eventually(t, func() bool { return active(p.second.ns) }, 15*time.Second, 100*time.Millisecond, "the standby takes over")
	tookOver := time.Now()
	// Clients ask while the former active is still paused: their packets
	// wait in its socket for when it resumes, among them an INIT-REBOOT
	// REQUEST, which names no server and which it would ACK if it could.
	got, server := p.obtainFrom(first, "-r", held)
	assert.Equal(t, held, got)
	assert.Equal(t, standbyIP, server)
	for i := range 3 {
		_, server := p.obtainFrom(fmt.Sprintf("02:00:5e:71:01:%02x", i))
		assert.Equal(t, standbyIP, server)
	}
	require.NoError(t, p.server.Process.Signal(syscall.SIGCONT))
	p.waitServerExit(15*time.Second, "the former active did not step down")
	assert.Positive(t, countIn(p.logPath, "lost the Lease"))
	time.Sleep(500 * time.Millisecond) // the capture's last lines
	acks := capture.acksFrom("192.168.50.2")
	require.NotEmpty(t, acks, "the capture saw the former active's ACKs before the pause")
	for _, at := range acks {
		assert.True(t, at.Before(tookOver), "an ACK from the former active at %s, after the takeover at %s", at, tookOver)
	}
}

// up starts both replicas, lab-0 first, and waits until the standby is in
// sync.
func (p *pairBed) up() {
	p.t.Helper()
	p.startServer()
	require.Eventually(p.t, func() bool { return active(p.serverNS) }, 20*time.Second, 100*time.Millisecond, "lab-0 takes the Lease")
	p.startSecond()
	require.Eventually(p.t, func() bool { return countIn(p.logPath, "the standby is in sync again") > 0 }, 20*time.Second, 100*time.Millisecond)
}

// standbyNotMarkedBehind: the Lease says the standby is in sync, or says
// nothing of it (it was never marked).
func (p *pairBed) standbyNotMarkedBehind() bool {
	label := p.inSyncLabel()
	return label == "true" || label == ""
}

// inSyncLabel is what the Lease says of the standby.
func (p *pairBed) inSyncLabel() string {
	lease := &coordinationv1.Lease{}
	if err := p.k8s.Get(context.Background(), crclient.ObjectKey{Namespace: "default", Name: "hyperdhcpd-lab"}, lease); err != nil {
		return "error: " + err.Error()
	}
	return lease.Labels[ha.InSyncLabel]
}

// TestReplicationCutLeavesTheActiveServingAlone: with the link between the
// replicas cut, the active marks the Lease (standby not in sync) and goes
// on alone; the standby does not take over, since the active keeps its
// Lease; once the link is back the standby catches up, the Lease says so,
// and it holds what the active granted alone.
func TestReplicationCutLeavesTheActiveServingAlone(t *testing.T) {
	p := newPairBed(t)
	p.up()
	require.Eventually(t, func() bool { return p.standbyNotMarkedBehind() }, 5*time.Second, 100*time.Millisecond)
	restore := p.cutReplication()

	lease := p.obtainLease("02:00:5e:72:00:01")
	ip, server := lease["ip"], lease["serverid"]
	assert.Equal(t, "192.168.50.2", server, "the active answers alone")
	assert.Equal(t, strconv.Itoa(int(config.DefaultMaxClientLeadTime.Seconds())), lease["lease"], "for the MCLT at most")
	assert.Equal(t, "false", p.inSyncLabel(), "after marking the Lease")
	assert.Positive(t, countIn(p.logPath, "going on alone"))
	time.Sleep(ha.LeaseDuration + 2*ha.RetryPeriod)
	assert.True(t, isStandby(t, p.second.ns), "the standby does not take a Lease the active renews")
	assert.NotContains(t, storedBound(t, p.database1), ip)

	restore()
	require.Eventually(t, func() bool { return p.inSyncLabel() == "true" }, 15*time.Second, 100*time.Millisecond, "in sync again")
	assert.Equal(t, "02:00:5e:72:00:01", storedBound(t, p.database1)[ip], "the standby caught up with the lease granted alone")
}

// TestPairRollingUpdate updates the pair as the operator rolls it: the
// standby first (it restarts and catches up), then the active, which gives
// its Lease up as it stops, so the standby takes over at its next try. A
// client asking every 200 ms is never left without an answer for longer
// than a client rebinds (the last eighth of its lease, 7.5 s here), so no
// client loses its lease to the update.
func TestPairRollingUpdate(t *testing.T) {
	leaseTime := time.Minute
	p := newPairBedWith(t, func(c *config.Config) { c.Server.LeaseTime = &metav1.Duration{Duration: leaseTime} })
	p.up()

	prober := p.addClient("02:00:5e:78:00:01")
	type answer struct {
		at     time.Time
		server string
	}
	var answers []answer
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			before := len(prober.events())
			cmd := prober.command("busybox", "udhcpc", "-n", "-q", "-f", "-i", "eth0", "-s", prober.hook(false), "-t", "1", "-T", "1")
			if cmd.Run() != nil {
				continue
			}
			if events := prober.events(); len(events) > before {
				answers = append(answers, answer{at: time.Now(), server: events[len(events)-1].env["serverid"]})
			}
		}
	}()
	started := time.Now()

	// The standby first: it restarts and catches up before the active goes.
	p.stopSecond(syscall.SIGTERM)
	before := countIn(p.log1, "caught up with the active")
	p.startSecond()
	require.Eventually(t, func() bool { return countIn(p.log1, "caught up with the active") > before }, 20*time.Second, 100*time.Millisecond)
	require.Eventually(t, func() bool { return p.standbyNotMarkedBehind() }, 10*time.Second, 100*time.Millisecond)
	time.Sleep(time.Second) // a heartbeat finds the standby where the stream stands

	// Then the active: it gives its Lease up as it stops.
	stopping := time.Now()
	p.stopServer(syscall.SIGTERM)
	assert.Positive(t, countIn(p.logPath, "gave the Lease up"))
	require.Eventually(t, func() bool { return active(p.second.ns) }, 10*time.Second, 50*time.Millisecond)
	t.Logf("the standby took over %s after the active was told to stop", time.Since(stopping).Round(time.Millisecond))
	before = countIn(p.logPath, "caught up with the active")
	p.startServer()
	require.Eventually(t, func() bool { return countIn(p.logPath, "caught up with the active") > before }, 20*time.Second, 100*time.Millisecond)
	time.Sleep(2 * time.Second) // answers from the new active
	close(stop)
	<-stopped

	require.NotEmpty(t, answers)
	var longest time.Duration
	last := started
	for _, a := range answers {
		longest = max(longest, a.at.Sub(last))
		last = a.at
	}
	assert.Equal(t, standbyIP, answers[len(answers)-1].server, "the former standby answers after the update")
	var offsets []string
	for _, a := range answers {
		offsets = append(offsets, fmt.Sprintf("%s@%s", a.at.Sub(started).Round(10*time.Millisecond), a.server))
	}
	t.Logf("answers: %v", offsets)
	rebinding := leaseTime / 8
	assert.Less(t, longest, rebinding, "no client goes without an answer for longer than it rebinds")
	t.Logf("rolling update: %d answers, the longest time without one %s (a client rebinds for %s)", len(answers),
		longest.Round(time.Millisecond), rebinding)
}

// cutReplication drops the replication traffic between the replicas (both
// ways, in both namespaces) until the returned function puts it back.
func (p *pairBed) cutReplication() (restore func()) {
	t := p.t
	t.Helper()
	cut := func(ns, peer string) func() {
		nft := func(args ...string) { sh(t, "ip", append([]string{"netns", "exec", ns, "nft"}, args...)...) }
		nft("add", "table", "inet", "replication")
		nft("add", "chain", "inet", "replication", "out", "{ type filter hook output priority 0; }")
		nft("add", "rule", "inet", "replication", "out", "ip", "daddr", peer, "tcp", "dport", "8068", "drop")
		nft("add", "rule", "inet", "replication", "out", "ip", "daddr", peer, "tcp", "sport", "8068", "drop")
		return func() { sh(t, "ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "replication") }
	}
	restore0, restore1 := cut(p.serverNS, standbyIP), cut(p.second.ns, "192.168.50.2")
	return func() { restore0(); restore1() }
}

// TestTakeoverFromALoneActiveWaitsOutTheMCLT: the active, cut from its
// standby, grants a lease alone (for the MCLT, 10 s here) and is killed;
// the standby takes the Lease, which says it was not in sync, so it grants
// nothing new until every lease granted alone has ended (the MCLT after the
// takeover); then it serves new clients, and no address went to two.
func TestTakeoverFromALoneActiveWaitsOutTheMCLT(t *testing.T) {
	const mclt = 10 * time.Second
	p := newPairBedWith(t, func(c *config.Config) {
		c.HighAvailability.MaxClientLeadTime = &metav1.Duration{Duration: mclt}
	})
	p.up()
	capture := p.captureDHCP()
	p.cutReplication()
	alone := p.obtainLease("02:00:5e:77:00:01")
	assert.Equal(t, "192.168.50.2", alone["serverid"])
	assert.Equal(t, "10", alone["lease"], "granted alone: for the MCLT")
	require.Equal(t, "false", p.inSyncLabel())

	killed := time.Now()
	p.stopServer(syscall.SIGKILL)
	_, server := p.obtainFrom("02:00:5e:77:00:02")
	served := time.Since(killed)
	assert.Equal(t, standbyIP, server)
	assert.Positive(t, countIn(p.log1, "took over from an active that was alone"))
	assert.Greater(t, served, mclt+ha.LeaseDuration-time.Second, "nothing new before the MCLT after the takeover")
	t.Logf("after a takeover from a lone active, a new client was served %s after the kill", served.Round(time.Millisecond))

	capture.audit(t)
}

// TestActiveCutFromTheAPIHandsOver: the active loses its way to the API
// server, so it cannot renew its Lease: it grants nothing more (renewals of
// its clients' own leases only, as it cannot tell this from an API outage)
// and the standby, in sync, takes over; once the active sees the API again
// and that the other replica holds the Lease, it exits to come back as the
// standby.
func TestActiveCutFromTheAPIHandsOver(t *testing.T) {
	p := newPairBed(t)
	p.up()
	cut := time.Now()
	p.cutAPI0()
	require.Eventually(t, func() bool { return countIn(p.logPath, "answering renewals of existing leases only") > 0 },
		20*time.Second, 100*time.Millisecond, "the active without the API grants nothing more")
	t.Logf("the active stopped granting %s after losing the API", time.Since(cut).Round(time.Millisecond))
	_, server := p.obtainFrom("02:00:5e:73:00:01")
	assert.Equal(t, standbyIP, server)
	t.Logf("a new client was answered by the standby %s after the cut", time.Since(cut).Round(time.Millisecond))

	forwardAPIServer(t, p.serverNS, p.apiHost)
	p.waitServerExit(20*time.Second, "the former active did not step down once it saw the new holder")
	assert.Positive(t, countIn(p.logPath, "lost the Lease"))
}

// TestAPIServerDownLeavesRenewalsOnly: with the API server gone nobody can
// hold the Lease: the former active keeps answering its clients' renewals
// with the time their leases have left and grants nothing new. When the
// active then dies too, its client's renewal at T1 goes unanswered and its
// rebinding at T2 is answered by the standby, which hears neither the
// active nor the API server, with the time left again. Once the API server
// is back the standby holds the Lease and new clients are served. The API
// server goes away by cutting both replicas' way to it (envtest's
// kube-apiserver comes back with a new CA, which no client would trust).
func TestAPIServerDownLeavesRenewalsOnly(t *testing.T) {
	// The shortest lease time a Server may have: T2 comes 52.5 s after
	// a lease.
	p := newPairBedWith(t, func(c *config.Config) { c.Server.LeaseTime = &metav1.Duration{Duration: time.Minute} })
	p.up()
	client := &udhcpc{c: p.addClient("02:00:5e:74:00:01")}
	got := client.obtain()
	held := got.IP

	p.cutAPI0()
	p.cutAPI1()
	require.Eventually(t, func() bool { return countIn(p.logPath, "answering renewals of existing leases only") > 0 },
		20*time.Second, 100*time.Millisecond, "the active notices it cannot renew the Lease")

	renewed := client.renew()
	assert.Equal(t, held, renewed.IP, "the client keeps its address")
	leaseTime, _ := strconv.Atoi(renewed.LeaseTime)
	assert.Less(t, leaseTime, 60, "with the time its lease has left, not a new lease")
	assert.Positive(t, leaseTime)

	stranger := p.addClient("02:00:5e:74:00:02")
	_, err := stranger.command("busybox", "udhcpc", "-n", "-q", "-f", "-i", "eth0", "-s", stranger.hook(false), "-t", "3", "-T", "1").CombinedOutput()
	assert.Error(t, err, "no new client without the Lease")

	p.stopServer(syscall.SIGKILL)
	ev, i := client.c.waitEvent(client.seen, 70*time.Second, "renew")
	client.seen = i + 1
	assert.Equal(t, held, ev.env["ip"], "the client keeps its address")
	assert.Equal(t, standbyIP, ev.env["serverid"], "rebound by the standby")
	rebound, _ := strconv.Atoi(ev.env["lease"])
	assert.Less(t, rebound, leaseTime, "with the time its lease has left")
	assert.Positive(t, rebound)
	assert.Positive(t, countIn(p.log1, "the standby hears neither the active nor the API server"))

	forwardAPIServer(t, p.second.ns, p.apiHost)
	ip, server := p.obtainFrom("02:00:5e:74:00:03")
	t.Logf("after the API server came back, %s answered a new client with %s", server, ip)
	assert.Equal(t, standbyIP, server)
	assert.NotEqual(t, held, ip)
}

// dhcpCapture is tcpdump's decoded view of the DHCP packets on the bridge.
type dhcpCapture struct{ path string }

// captureDHCP records every DHCP packet on the bridge until the test ends.
func (p *pairBed) captureDHCP() *dhcpCapture {
	p.t.Helper()
	path := filepath.Join(p.dir, "dhcp.txt")
	out, err := os.Create(path)
	require.NoError(p.t, err)
	cmd := exec.Command("ip", "netns", "exec", p.serverNS, "tcpdump", "-i", "br0", "-n", "-tt", "-l", "-v", "udp port 67 or udp port 68")
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(p.t, cmd.Start())
	p.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		out.Close()
	})
	require.Eventually(p.t, func() bool { return countIn(path, "listening on br0") > 0 }, 5*time.Second, 50*time.Millisecond)
	return &dhcpCapture{path: path}
}

// ack is a DHCPACK seen on the wire.
type ack struct {
	at              time.Time
	server, ip, mac string
	lease           time.Duration
}

// audit reports every address ACKed to a client while another client's
// lease on it, as ACKed on the wire, had not ended, once the capture has
// its last lines; it returns the ACKs.
func (c *dhcpCapture) audit(t *testing.T) []ack {
	t.Helper()
	time.Sleep(500 * time.Millisecond) // the capture's last lines
	acks := c.acks()
	require.NotEmpty(t, acks)
	type holder struct {
		mac   string
		until time.Time
	}
	held := map[string]holder{}
	for _, a := range acks {
		if h, ok := held[a.ip]; ok && h.mac != a.mac && a.at.Before(h.until) {
			t.Errorf("%s was ACKed to %s until %s and, by %s at %s, to %s", a.ip, h.mac, h.until.Format(time.StampMicro),
				a.server, a.at.Format(time.StampMicro), a.mac)
		}
		require.Positive(t, a.lease, "the capture shows each ACK's lease time")
		held[a.ip] = holder{mac: a.mac, until: a.at.Add(a.lease)}
	}
	return acks
}

// acks returns every DHCPACK on the wire, in order.
func (c *dhcpCapture) acks() []ack {
	data, _ := os.ReadFile(c.path)
	var out []ack
	var cur ack
	var isACK bool
	flush := func() {
		if isACK {
			out = append(out, cur)
		}
		cur, isACK = ack{}, false
	}
	for _, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case line != "" && line[0] >= '0' && line[0] <= '9':
			// A packet: "1764500000.123456 IP (tos ...)", then its fields.
			flush()
			var sec, usec int64
			if _, err := fmt.Sscanf(line, "%d.%d", &sec, &usec); err == nil {
				cur.at = time.Unix(sec, usec*1000)
			}
		case strings.Contains(trimmed, ".67 > ") && cur.server == "":
			cur.server, _, _ = strings.Cut(trimmed, ".67 > ")
		case strings.HasPrefix(trimmed, "Your-IP "):
			cur.ip = strings.TrimPrefix(trimmed, "Your-IP ")
		case strings.HasPrefix(trimmed, "Client-Ethernet-Address "):
			cur.mac = strings.TrimPrefix(trimmed, "Client-Ethernet-Address ")
		case strings.HasPrefix(trimmed, "Lease-Time (51)"):
			// "Lease-Time (51), length 4: 600"
			if _, seconds, ok := strings.Cut(trimmed, ": "); ok {
				n, _ := strconv.Atoi(seconds)
				cur.lease = time.Duration(n) * time.Second
			}
		case strings.Contains(trimmed, "DHCP-Message (53)") && strings.HasSuffix(trimmed, "ACK"):
			isACK = true
		}
	}
	flush()
	return out
}

// acksFrom returns when each DHCPACK from server was on the wire.
func (c *dhcpCapture) acksFrom(server string) []time.Time {
	var out []time.Time
	for _, a := range c.acks() {
		if a.server == server {
			out = append(out, a.at)
		}
	}
	return out
}
