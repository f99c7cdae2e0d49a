// Package probe finds out whether something on a network segment already
// uses an IPv4 address, before a DHCP server offers it (RFC 2131 section
// 2.2): it broadcasts an ARP probe (RFC 5227: sender address 0.0.0.0, so no
// neighbour cache learns anything from it) and waits a while for a host to
// claim the address. ARP and not ICMP echo: every IPv4 host on the segment
// answers ARP for its addresses, and a guest's firewall that drops pings
// does not hide it.
package probe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Result is what a probe found.
type Result struct {
	// InUse is true when a host answered for the address (or announced it).
	InUse bool
	// MAC is the answering host's hardware address when InUse.
	MAC net.HardwareAddr
	// Err is set when the probe could not be sent; the address is then
	// neither known to be free nor in use.
	Err error
}

// freshFor is how long an address that nobody claimed counts as free
// without another probe: long enough to cover the client's REQUEST and a
// retransmitted DISCOVER, short enough that a host configured since is
// found.
const freshFor = 10 * time.Second

// timerSlack is how much earlier than its timeout a probe ends: the
// OFFER it holds then leaves within the timeout of the DISCOVER, wake-up
// and send included, rather than a millisecond or two after it.
const timerSlack = 2*time.Millisecond + tick

// Prober probes addresses on one interface. Many probes run at once; each
// caller is told once, on the prober's goroutine or at once from its cache.
type Prober struct {
	// fdMu keeps sends and the shutdown from reaching a descriptor Run has
	// closed (and the kernel may have given to another file).
	fdMu    sync.RWMutex
	closed  bool
	fd      int
	ifindex int
	hwaddr  net.HardwareAddr
	timeout time.Duration
	now     func() time.Time

	mu       sync.Mutex
	inflight map[netip.Addr]*probe
	queue    []*probe // in the order they time out: one timeout for all
	free     map[netip.Addr]time.Time
	// freeOrder lists free results in the order they lapse (one freshFor
	// for all), so they are forgotten without scanning free.
	freeOrder []freeUntil
	wake      chan struct{}
}

type freeUntil struct {
	addr  netip.Addr
	until time.Time
}

type probe struct {
	addr     netip.Addr
	sent     time.Time
	deadline time.Time
	waiters  []func(Result)
}

// Open opens an ARP socket on the interface named iface (it needs
// CAP_NET_RAW) for probes that wait timeout for an answer.
func Open(iface string, timeout time.Duration) (*Prober, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("conflict detection: %w", err)
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("conflict detection: interface %s has no Ethernet address", iface)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
	if err != nil {
		return nil, fmt.Errorf("conflict detection: open an ARP socket (needs CAP_NET_RAW): %w", err)
	}
	// The receive timeout lets the reader notice that it should stop.
	tv := unix.NsecToTimeval(int64(time.Second))
	if err := errors.Join(
		unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifi.Index}),
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv),
		// Our own probes would otherwise come back to the reader, one
		// wake-up each (Linux 4.20 and later).
		unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1),
	); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("conflict detection: ARP socket on %s: %w", iface, err)
	}
	return &Prober{
		fd:       fd,
		ifindex:  ifi.Index,
		hwaddr:   ifi.HardwareAddr,
		timeout:  timeout,
		now:      time.Now,
		inflight: make(map[netip.Addr]*probe),
		free:     make(map[netip.Addr]time.Time),
		wake:     make(chan struct{}, 1),
	}, nil
}

// Run reads ARP packets and ends probes until ctx ends; it closes the
// socket when it returns.
func (p *Prober) Run(ctx context.Context) {
	defer func() {
		p.fdMu.Lock()
		p.closed = true
		unix.Close(p.fd)
		p.fdMu.Unlock()
	}()
	stop := context.AfterFunc(ctx, func() {
		p.fdMu.RLock()
		defer p.fdMu.RUnlock()
		if !p.closed {
			_ = unix.Shutdown(p.fd, unix.SHUT_RD)
		}
	})
	defer stop()
	go p.expire(ctx)
	buf := make([]byte, 1500)
	for ctx.Err() == nil {
		n, _, err := unix.Recvfrom(p.fd, buf, 0)
		if err != nil || n == 0 {
			continue // timeout, interruption or shutdown: check ctx
		}
		if sender, addr, ok := parseARP(buf[:n]); ok {
			p.claimed(addr, sender)
		}
	}
}

// Probe finds out whether addr is in use and tells done, once: when a host
// claims it, or when the timeout since the request that asked (since)
// passes without an answer. An address found free moments ago is not
// probed again; a probe of an address already in flight is shared.
func (p *Prober) Probe(addr netip.Addr, since time.Time, done func(Result)) {
	p.mu.Lock()
	now := p.now()
	if until, ok := p.free[addr]; ok {
		if now.Before(until) {
			p.mu.Unlock()
			done(Result{})
			return
		}
		delete(p.free, addr)
	}
	if pr := p.inflight[addr]; pr != nil {
		pr.waiters = append(pr.waiters, done)
		p.mu.Unlock()
		return
	}
	// Go's timers wake up to a millisecond late on an idle process (its
	// poller sleeps in whole milliseconds).
	pr := &probe{addr: addr, sent: now, deadline: since.Add(p.timeout - timerSlack), waiters: []func(Result){done}}
	p.inflight[addr] = pr
	// In deadline order; nearly always at the tail (a retry's deadline can
	// be later than the next batch's first probe).
	i := len(p.queue)
	for i > 0 && p.queue[i-1].deadline.After(pr.deadline) {
		i--
	}
	p.queue = slices.Insert(p.queue, i, pr)
	first := i == 0
	p.mu.Unlock()
	if first {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
	if err := p.send(addr); err != nil {
		p.finish(pr, Result{Err: fmt.Errorf("send ARP probe for %s: %w", addr, err)})
	}
}

// RememberFree records addr as free without a probe, for freshFor: its
// client released it a moment ago.
func (p *Prober) RememberFree(addr netip.Addr) {
	p.mu.Lock()
	p.rememberFree(addr, p.now().Add(freshFor))
	p.mu.Unlock()
}

// claimed ends the probe of addr, if one runs: sender uses it.
func (p *Prober) claimed(addr netip.Addr, sender net.HardwareAddr) {
	if slices.Equal(sender, p.hwaddr) {
		return
	}
	p.mu.Lock()
	delete(p.free, addr) // someone took it up since its probe
	pr := p.inflight[addr]
	p.mu.Unlock()
	if pr != nil {
		p.finish(pr, Result{InUse: true, MAC: slices.Clone(sender)})
	}
}

// finish ends probe pr with r and tells its waiters, unless it ended
// already. A free result counts for freshFor only if the probe had most of
// its time: one that started late in its window (a short timeout, a slow
// batch) proves little.
func (p *Prober) finish(pr *probe, r Result) {
	p.mu.Lock()
	if p.inflight[pr.addr] != pr {
		p.mu.Unlock()
		return
	}
	delete(p.inflight, pr.addr)
	if now := p.now(); !r.InUse && r.Err == nil && now.Sub(pr.sent) >= p.timeout/2 {
		p.rememberFree(pr.addr, now.Add(freshFor))
	}
	p.mu.Unlock()
	for _, w := range pr.waiters {
		w(r)
	}
}

// tick is the shortest time between two rounds of ending probes: under
// load one wake-up ends the probes of a couple of milliseconds, not one
// probe each.
const tick = 2 * time.Millisecond

// expire ends the probes nobody answered, in the order they were sent, and
// forgets free addresses whose time is up.
func (p *Prober) expire(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		p.mu.Lock()
		now := p.now()
		var due []*probe
		for len(p.queue) > 0 && !p.queue[0].deadline.After(now) {
			due = append(due, p.queue[0])
			p.queue = p.queue[1:]
		}
		next := time.Duration(-1)
		if len(p.queue) > 0 {
			next = max(p.queue[0].deadline.Sub(now), tick)
		}
		for len(p.freeOrder) > 0 && now.After(p.freeOrder[0].until) {
			f := p.freeOrder[0]
			p.freeOrder = p.freeOrder[1:]
			if until, ok := p.free[f.addr]; ok && !until.After(f.until) {
				delete(p.free, f.addr)
			}
		}
		p.mu.Unlock()
		for _, pr := range due {
			p.finish(pr, Result{})
		}
		if next >= 0 {
			timer.Reset(next)
		}
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-p.wake:
		}
	}
}

// rememberFree records addr as free until until; with p.mu held.
func (p *Prober) rememberFree(addr netip.Addr, until time.Time) {
	p.free[addr] = until
	p.freeOrder = append(p.freeOrder, freeUntil{addr: addr, until: until})
}

// send broadcasts an ARP probe for addr (RFC 5227 section 2.1.1).
func (p *Prober) send(addr netip.Addr) error {
	var pkt [28]byte
	binary.BigEndian.PutUint16(pkt[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(pkt[2:], 0x0800) // IPv4
	pkt[4], pkt[5] = 6, 4
	binary.BigEndian.PutUint16(pkt[6:], 1) // request
	copy(pkt[8:14], p.hwaddr)
	// sender protocol address 0.0.0.0, target hardware address zero
	target := addr.As4()
	copy(pkt[24:28], target[:])
	to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: p.ifindex, Halen: 6,
		Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
	p.fdMu.RLock()
	defer p.fdMu.RUnlock()
	if p.closed {
		return errors.New("the prober has stopped")
	}
	return unix.Sendto(p.fd, pkt[:], 0, to)
}

// parseARP returns the sender of an ARP packet and the IPv4 address it
// claims: the sender protocol address of a reply or of a request
// (announcements included); ok is false for probes (sender 0.0.0.0) and
// anything that is not Ethernet/IPv4 ARP.
func parseARP(b []byte) (sender net.HardwareAddr, addr netip.Addr, ok bool) {
	if len(b) < 28 || binary.BigEndian.Uint16(b[0:]) != 1 || binary.BigEndian.Uint16(b[2:]) != 0x0800 || b[4] != 6 || b[5] != 4 {
		return nil, netip.Addr{}, false
	}
	if op := binary.BigEndian.Uint16(b[6:]); op != 1 && op != 2 {
		return nil, netip.Addr{}, false
	}
	addr = netip.AddrFrom4([4]byte(b[14:18]))
	if addr.IsUnspecified() {
		return nil, netip.Addr{}, false
	}
	return net.HardwareAddr(b[8:14]), addr, true
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
