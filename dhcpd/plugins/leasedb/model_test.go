package leasedb

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/stretchr/testify/require"
)

// The model-based test drives LeaseDB with packets from many clients, clock
// jumps, restarts and configuration edits, and checks it after every step
// against a small reference model: what each client was promised (ACKed),
// which addresses are quarantined, and what the configuration leases.

const modelClients = 24

var modelConfigs = []struct {
	name    string
	pools   []Range
	exclude []netip.Addr
}{
	{"twelve", []Range{pool("192.168.50.100", "192.168.50.111")}, nil},
	{"narrowed", []Range{pool("192.168.50.100", "192.168.50.107")}, []netip.Addr{netip.MustParseAddr("192.168.50.101")}},
	{"two pools, one excluded", []Range{pool("192.168.50.100", "192.168.50.105"), pool("192.168.50.200", "192.168.50.205")},
		[]netip.Addr{netip.MustParseAddr("192.168.50.103")}},
}

type promise struct {
	ip      netip.Addr
	expires time.Time
}

type modelRun struct {
	t       *testing.T
	h       *harness
	path    string
	config  int
	ops     []byte
	step    int
	trace   []string
	promise map[int]promise          // by client: its unexpired ACK
	offer   map[int]netip.Addr       // by client: the last address offered to it
	quarant map[netip.Addr]time.Time // declined addresses, until when
	dropped *lastDrop
	held    map[int]bool // clients that ever had an address
}

func (m *modelRun) next() byte {
	if m.step >= len(m.ops) {
		return 0
	}
	b := m.ops[m.step]
	m.step++
	return b
}

func (m *modelRun) now() time.Time { return m.h.clock.Now() }

func modelMAC(c int) net.HardwareAddr { return net.HardwareAddr{0x02, 0, 0x5e, 0x20, 0, byte(c)} }

// clientMods gives every third client a client identifier, and makes
// clients 0 and 1 send the same one, as two VMs cloned from one image do.
func clientMods(c int) []dhcpv4.Modifier {
	switch {
	case c < 2:
		return []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte("cloned")))}
	case c%3 == 0:
		return []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte{1, byte(c)}))}
	}
	return nil
}

// identity is who the server sees: clients 0 and 1 are one client to it.
func identity(c int) int {
	if c < 2 {
		return 0
	}
	return c
}

func (m *modelRun) packet(mt dhcpv4.MessageType, c int, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	return m.h.handle(packet(m.t, mt, modelMAC(c), append(clientMods(c), mods...)...))
}

func (m *modelRun) leasable(ip netip.Addr) bool {
	cfg := modelConfigs[m.config]
	for _, r := range cfg.pools {
		if r.contains(ip) {
			for _, e := range cfg.exclude {
				if e == ip {
					return false
				}
			}
			return true
		}
	}
	return false
}

func (m *modelRun) size() int {
	n := 0
	for a := netip.MustParseAddr("192.168.50.1"); a.Less(netip.MustParseAddr("192.168.50.255")); a = a.Next() {
		if m.leasable(a) {
			n++
		}
	}
	return n
}

// available is how many leasable addresses nobody was promised and none is
// quarantined: while it is positive, a DISCOVER must be answered.
func (m *modelRun) available() int {
	n := m.size()
	for _, p := range m.promise {
		if m.leasable(p.ip) {
			n--
		}
	}
	for ip := range m.quarant {
		if m.leasable(ip) {
			n--
		}
	}
	return n
}

func (m *modelRun) promisedTo(ip netip.Addr) (int, bool) {
	for c, p := range m.promise {
		if p.ip == ip {
			return c, true
		}
	}
	return 0, false
}

func (m *modelRun) randomIP() netip.Addr {
	b := m.next()
	if b%4 == 0 {
		return netip.AddrFrom4([4]byte{192, 168, 50, 200 + b%8})
	}
	return netip.AddrFrom4([4]byte{192, 168, 50, 98 + b%16})
}

func (m *modelRun) advance(d time.Duration) {
	m.h.clock.Advance(d)
	now := m.now()
	for c, p := range m.promise {
		if !p.expires.After(now) {
			delete(m.promise, c)
		}
	}
	for ip, until := range m.quarant {
		if !until.After(now) {
			delete(m.quarant, ip)
		}
	}
}

func (m *modelRun) open() {
	cfg := modelConfigs[m.config]
	m.h.opts.Pools, m.h.opts.Exclude = cfg.pools, cfg.exclude
	m.h.open(m.path)
}

func (m *modelRun) restart(config int) {
	require.NoError(m.t, m.h.db.Close())
	m.config = config
	m.offer = map[int]netip.Addr{} // offers live in memory only
	m.open()
}

func (m *modelRun) failf(format string, args ...any) {
	m.t.Helper()
	m.t.Fatalf(format+"\nsteps:\n  %s", append(args, strings.Join(m.trace, "\n  "))...)
}

// ack records an ACK of ip to c, checking nobody else holds it.
func (m *modelRun) ack(c int, ip netip.Addr) {
	m.t.Helper()
	if other, ok := m.promisedTo(ip); ok && other != identity(c) {
		m.failf("%s ACKed to client %d while client %d holds it", ip, c, other)
	}
	if _, ok := m.quarant[ip]; ok {
		m.failf("quarantined %s ACKed to client %d", ip, c)
	}
	m.promise[identity(c)] = promise{ip: ip, expires: m.now().Add(time.Hour)}
	m.held[identity(c)] = true
}

func (m *modelRun) doStep() {
	op := m.next() % 13
	c := int(m.next()) % modelClients
	id := identity(c)
	switch op {
	case 0, 1, 2: // DISCOVER, sometimes asking for an address
		var requested netip.Addr
		mods := []dhcpv4.Modifier{}
		if m.next()%2 == 0 {
			requested = m.randomIP()
			mods = append(mods, requestIP(requested))
		}
		m.trace = append(m.trace, fmt.Sprintf("DISCOVER client %d requesting %v", c, requested))
		avail := m.available()
		offer := m.packet(dhcpv4.MessageTypeDiscover, c, mods...)
		if offer == nil {
			if avail > 0 {
				m.failf("DISCOVER from client %d unanswered with %d addresses available (%s)", c, avail, m.dropped.last)
			}
			return
		}
		ip := addr(offer.YourIPAddr)
		m.trace[len(m.trace)-1] += " -> " + ip.String()
		if other, ok := m.promisedTo(ip); ok && other != id {
			m.failf("%s offered to client %d while client %d holds it", ip, c, other)
		}
		if _, ok := m.quarant[ip]; ok {
			m.failf("quarantined %s offered", ip)
		}
		if p, ok := m.promise[id]; ok && m.leasable(p.ip) && p.ip != ip {
			m.failf("client %d holds %s but was offered %s", c, p.ip, ip)
		}
		if requested.IsValid() && !m.held[id] && m.leasable(requested) && m.free(requested) && ip != requested {
			m.failf("client %d asked for free %s and was offered %s", c, requested, ip)
		}
		m.offer[id] = ip
		m.held[id] = true // the server remembers it: its previous address outranks option 50
		if p, ok := m.promise[id]; ok && p.ip != ip {
			delete(m.promise, id) // a client in INIT has given its lease up
		}
	case 3, 4: // REQUEST in SELECTING
		ip, ok := m.offer[id]
		if !ok || m.next()%8 == 0 {
			ip = m.randomIP()
		}
		m.trace = append(m.trace, fmt.Sprintf("REQUEST selecting client %d for %s", c, ip))
		reply := m.packet(dhcpv4.MessageTypeRequest, c, requestIP(ip),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(serverAddr.AsSlice()))))
		m.requestReply(c, ip, reply)
	case 5: // REQUEST in INIT-REBOOT
		ip := m.randomIP()
		if p, ok := m.promise[id]; ok && m.next()%2 == 0 {
			ip = p.ip
		}
		m.trace = append(m.trace, fmt.Sprintf("REQUEST init-reboot client %d for %s", c, ip))
		reply := m.packet(dhcpv4.MessageTypeRequest, c, requestIP(ip))
		m.requestReply(c, ip, reply)
	case 6, 7: // REQUEST in RENEWING or REBINDING
		ip := m.randomIP()
		p, promised := m.promise[id]
		if promised && m.next()%4 != 0 {
			ip = p.ip
		}
		m.trace = append(m.trace, fmt.Sprintf("REQUEST renewing client %d for %s", c, ip))
		reply := m.packet(dhcpv4.MessageTypeRequest, c, dhcpv4.WithClientIP(net.IP(ip.AsSlice())))
		if promised && p.ip == ip {
			switch {
			case reply == nil:
				m.failf("renewal of a held lease unanswered")
			case m.leasable(ip) && reply.MessageType() != dhcpv4.MessageTypeAck:
				m.failf("renewal of held leasable %s refused: %s", ip, reply.MessageType())
			case !m.leasable(ip) && reply.MessageType() != dhcpv4.MessageTypeNak:
				m.failf("renewal of %s outside the configuration answered %s", ip, reply.MessageType())
			}
		}
		m.requestReply(c, ip, reply)
	case 8: // RELEASE
		p, ok := m.promise[id]
		if !ok {
			p.ip = m.randomIP()
		}
		m.trace = append(m.trace, fmt.Sprintf("RELEASE client %d of %s", c, p.ip))
		m.packet(dhcpv4.MessageTypeRelease, c, dhcpv4.WithClientIP(net.IP(p.ip.AsSlice())))
		if ok {
			delete(m.promise, id)
		}
	case 9: // DECLINE of a held address
		p, ok := m.promise[id]
		if !ok {
			return
		}
		m.trace = append(m.trace, fmt.Sprintf("DECLINE client %d of %s", c, p.ip))
		m.packet(dhcpv4.MessageTypeDecline, c, requestIP(p.ip))
		delete(m.promise, id)
		if m.h.opts.Server.Masked().Contains(p.ip) {
			m.quarant[p.ip] = m.now().Add(DefaultDeclineProbation)
		}
	case 10: // the clock jumps
		d := []time.Duration{time.Second, 20 * time.Second, 31 * time.Second, 10 * time.Minute, 61 * time.Minute}[m.next()%5]
		m.trace = append(m.trace, fmt.Sprintf("clock +%s", d))
		m.advance(d)
	case 12: // INFORM: options only, and no lease changes hands
		m.trace = append(m.trace, fmt.Sprintf("INFORM client %d", c))
		before := m.h.db.Stats()
		reply := m.packet(dhcpv4.MessageTypeInform, c, dhcpv4.WithClientIP(net.IPv4(192, 168, 50, 77)))
		if reply == nil || !reply.YourIPAddr.IsUnspecified() || reply.Options.Has(dhcpv4.OptionIPAddressLeaseTime) {
			m.failf("INFORM must get options without an address or lease time: %v", reply)
		}
		if after := m.h.db.Stats(); after != before {
			m.failf("INFORM changed the pool: %+v -> %+v", before, after)
		}
	case 11: // a restart or a live edit, sometimes of the configuration
		config := int(m.next()) % len(modelConfigs)
		if m.next()%2 == 0 {
			m.trace = append(m.trace, fmt.Sprintf("live edit to %q", modelConfigs[config].name))
			m.config = config
			m.h.opts.Pools, m.h.opts.Exclude = modelConfigs[config].pools, modelConfigs[config].exclude
			if err := m.h.db.Reconfigure(m.h.opts); err != nil {
				m.failf("live edit: %v", err)
			}
			return
		}
		m.trace = append(m.trace, fmt.Sprintf("restart with %q", modelConfigs[config].name))
		m.restart(config)
	}
}

// free reports whether the model knows ip to be untouched: not promised,
// quarantined, nor offered to anyone.
func (m *modelRun) free(ip netip.Addr) bool {
	if _, ok := m.promisedTo(ip); ok {
		return false
	}
	if _, ok := m.quarant[ip]; ok {
		return false
	}
	for _, o := range m.offer {
		if o == ip {
			return false
		}
	}
	return true
}

func (m *modelRun) requestReply(c int, ip netip.Addr, reply *dhcpv4.DHCPv4) {
	m.t.Helper()
	if reply == nil {
		m.trace[len(m.trace)-1] += " -> silence"
		return
	}
	m.trace[len(m.trace)-1] += " -> " + reply.MessageType().String()
	if reply.MessageType() != dhcpv4.MessageTypeAck {
		return
	}
	if got := addr(reply.YourIPAddr); got != ip {
		m.failf("REQUEST for %s ACKed %s", ip, got)
	}
	if !m.leasable(ip) {
		m.failf("%s ACKed though the configuration does not lease it", ip)
	}
	m.ack(c, ip)
	delete(m.offer, identity(c))
}

// check compares the plugin with the model and with itself.
func (m *modelRun) check() {
	m.t.Helper()
	db := m.h.db
	db.mu.Lock()
	a := db.alloc
	a.expire(db.now())
	if err := a.audit(); err != nil {
		db.mu.Unlock()
		m.failf("%v", err)
	}
	stats := a.stats()
	db.mu.Unlock()
	if stats.Size != int64(m.size()) || stats.Used+stats.Free+stats.Quarantined != stats.Size || stats.Free < 0 {
		m.failf("stats %+v do not add up to the pool size %d", stats, m.size())
	}

	stored := m.h.stored()
	db.mu.Lock()
	defer db.mu.Unlock()
	for c, p := range m.promise {
		e := a.byIP[p.ip]
		if e == nil || e.State != StateBound || e.ClientID != clientKey(c) {
			m.failf("client %d was ACKed %s but the server does not hold it for it (%+v)", c, p.ip, e)
		}
		if row, ok := stored[p.ip]; !ok || row.State != StateBound || row.ClientID != clientKey(c) || row.Expires.Before(p.expires.Truncate(time.Second)) {
			m.failf("client %d's ACKed lease on %s is not durable: %+v", c, p.ip, row)
		}
	}
}

// clientKey is the lease key the plugin files model client c under.
func clientKey(c int) string {
	req, _ := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(modelMAC(c))}, clientMods(c)...)...)
	db := &LeaseDB{}
	db.policy.Store(&policy{})
	who, _ := db.clientOf(req)
	return who.id
}

// finish lets everything lapse and checks that the whole pool can be leased again.
func (m *modelRun) finish() {
	m.advance(3 * time.Hour)
	m.check()
	size := m.size()
	seen := map[netip.Addr]bool{}
	for i := range size {
		mac := net.HardwareAddr{0x02, 0, 0x5e, 0x30, 0, byte(i)}
		offer := m.h.handle(packet(m.t, dhcpv4.MessageTypeDiscover, mac))
		if offer == nil {
			m.failf("after everything lapsed, client %d of %d got no offer", i+1, size)
		}
		ip := addr(offer.YourIPAddr)
		ack := m.h.handle(packet(m.t, dhcpv4.MessageTypeRequest, mac, requestIP(ip),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(serverAddr.AsSlice())))))
		if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck || seen[ip] {
			m.failf("after everything lapsed, %s could not be leased to client %d", ip, i+1)
		}
		seen[ip] = true
	}
}

func runModel(t *testing.T, ops []byte) {
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	m := &modelRun{
		t: t, ops: ops, path: filepath.Join(t.TempDir(), "leases.db"),
		promise: map[int]promise{}, offer: map[int]netip.Addr{}, quarant: map[netip.Addr]time.Time{}, held: map[int]bool{},
	}
	m.dropped = &lastDrop{}
	m.h = &harness{t: t, clock: clock, opts: Options{Server: serverPrefix, LeaseTime: time.Hour, Now: clock.Now, Observer: m.dropped}}
	m.open()
	for m.step < len(m.ops) {
		m.doStep()
		m.check()
	}
	m.finish()
}

func TestAllocatorAgainstModel(t *testing.T) {
	seeds := 200
	if testing.Short() {
		seeds = 20
	}
	for seed := range seeds {
		r := rand.New(rand.NewPCG(uint64(seed), 7))
		ops := make([]byte, 600)
		for i := range ops {
			ops[i] = byte(r.UintN(256))
		}
		t.Run(fmt.Sprintf("seed%d", seed), func(t *testing.T) { runModel(t, ops) })
	}
}

// FuzzAllocatorModel lets the fuzzer choose the steps; its corpus is in
// testdata/fuzz/FuzzAllocatorModel.
func FuzzAllocatorModel(f *testing.F) {
	f.Add([]byte{0, 3, 3, 3, 0, 4, 9, 4, 10, 4, 11, 1, 0, 5})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 2000 {
			return
		}
		runModel(t, ops)
	})
}

// lastDrop remembers why the plugin last stayed silent.
type lastDrop struct {
	nopObserver
	last string
}

func (d *lastDrop) Dropped(reason string) { d.last = reason }
