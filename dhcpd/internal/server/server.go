// Package server is hyperdhcpd's DHCPv4 packet loop. It drives a CoreDHCP
// plugin chain from a receive loop of its own, because CoreDHCP's server
// drops DECLINE before any plugin sees it, starts one unbounded goroutine per
// packet and cannot be shut down cleanly.
package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coredhcp/coredhcp/handler"
	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/hyperdhcp/hyperdhcp/dhcpd/internal/probe"
)

const (
	maxPacket = 1500
	readBatch = 32
	// heartbeat is how often the receive loop proves it is alive when no
	// packet comes to do it.
	heartbeat = time.Second
	// durableTimeout bounds the wait for a batch's leases to be written.
	durableTimeout = 10 * time.Second
)

// Deferrer is the allocating plugin's side that lets the server answer
// without waiting (leasedb.Deferred): REQUESTs without waiting for each
// lease to be written, their replies sent after one durable write for many;
// OFFERs held for a probe of the address.
type Deferrer interface {
	// Durable waits until the leases granted by the replies to reqs are
	// written and sets sendable[i] to whether the reply to reqs[i] may go
	// out.
	Durable(ctx context.Context, reqs []*dhcpv4.DHCPv4, sendable []bool)
	// ProbeFirst returns the address the OFFER to req grants when it must
	// be probed before the OFFER is sent.
	ProbeFirst(req *dhcpv4.DHCPv4) (netip.Addr, bool)
	// Conflict takes back the OFFER of ip to req: the host at mac uses it.
	Conflict(req *dhcpv4.DHCPv4, ip netip.Addr, mac net.HardwareAddr)
}

// Prober finds out whether an address is in use on the network (probe.Prober).
type Prober interface {
	Probe(ip netip.Addr, since time.Time, done func(probe.Result))
}

// Options are the server's collaborators besides its chain.
type Options struct {
	// Durable, when set, lets the server answer without waiting; without
	// it the chain's replies are sent as soon as the chain returns.
	Durable Deferrer
	// Prober, when set with Durable, probes the addresses Durable names
	// before their OFFERs go out (conflict detection).
	Prober Prober
	// OnConflict, when set, is told of each address found in use.
	OnConflict func(ip netip.Addr, mac net.HardwareAddr)
}

// maxProbes bounds the addresses probed for one DISCOVER; the client
// retries if all of them are in use.
const maxProbes = 3

// Server answers DHCPv4 packets from conn with a plugin chain.
//
// One goroutine does everything, the way Kea and dnsmasq do: it reads the
// packets waiting (many per system call), runs the chain on each, sends
// the replies that grant nothing durable (OFFER, NAK, the ACK to an
// INFORM), makes the leases of the batch's ACKs durable with one commit and
// sends those ACKs; then it reads again. Under load a read batch grows
// while the commit runs, so one fsync covers more ACKs. There is no
// hand-off to another goroutine per packet: on a small VM the wake-ups and
// context switches of one cost more CPU than answering the packet
// (measured for issue 15). An OFFER held for a probe is sent from the
// prober's goroutine when the probe ends, so a probe never holds the loop.
// A plugin or a disk that stops stops the loop; Check sees that.
type Server struct {
	conn net.PacketConn
	// chainMu is read-held while the chain answers a packet and write-held
	// by Reconfigure, so a packet is answered wholly by one configuration.
	chainMu sync.RWMutex
	chain   []handler.Handler4
	opts    Options
	metrics *Metrics
	log     *slog.Logger
	// sock is the socket Serve took over, for replies sent when a probe
	// ends; nil until Serve starts and after it ends. sockMu keeps it from
	// being closed under such a reply.
	sockMu sync.RWMutex
	sock   *socket
	// Unix nanoseconds of the last turn of the receive loop, for Check.
	receiverBeat atomic.Int64
}

// New returns a server; Serve starts it.
func New(conn net.PacketConn, chain []handler.Handler4, opts Options, metrics *Metrics, log *slog.Logger) *Server {
	s := &Server{
		conn:    conn,
		chain:   chain,
		opts:    opts,
		metrics: metrics,
		log:     log,
	}
	s.receiverBeat.Store(time.Now().UnixNano())
	return s
}

// Reconfigure swaps in the chain apply returns, between two packets: apply
// runs while no packet is being answered, so it can also reconfigure what
// the chain's plugins share (the lease allocator). When apply fails, the
// old chain stays.
func (s *Server) Reconfigure(apply func() ([]handler.Handler4, error)) error {
	s.chainMu.Lock()
	defer s.chainMu.Unlock()
	chain, err := apply()
	if err != nil {
		return err
	}
	s.chain = chain
	return nil
}

// reply is an answer on its way out.
type reply struct {
	req     *dhcpv4.DHCPv4
	msgType dhcpv4.MessageType
	data    []byte
	to      netip.AddrPort
}

// Check reports whether the receive loop is turning: a plugin stuck for
// good (a deadlock) or a write that never ends stops it.
func (s *Server) Check(now time.Time, timeout time.Duration) error {
	if since := now.Sub(time.Unix(0, s.receiverBeat.Load())); since > timeout {
		return fmt.Errorf("the receive loop has not run for %s", since.Round(time.Second))
	}
	return nil
}

// Serve reads and answers packets until the socket fails or ctx ends. It
// takes conn over (see takeOver), reads up to readBatch packets per system
// call (recvmmsg) and sends the replies to them with as few (sendmmsg).
func (s *Server) Serve(ctx context.Context) error {
	sock, err := takeOver(s.conn, heartbeat)
	if err != nil {
		return err
	}
	s.sockMu.Lock()
	s.sock = sock
	s.sockMu.Unlock()
	defer func() {
		s.sockMu.Lock()
		s.sock = nil
		s.sockMu.Unlock()
		sock.close()
	}()
	stop := context.AfterFunc(ctx, sock.shutdown)
	defer stop()
	bufs := make([][]byte, readBatch)
	for i := range bufs {
		bufs[i] = make([]byte, maxPacket)
	}
	var (
		sizes      = make([]int, readBatch)
		now, later []reply
		reqs       []*dhcpv4.DHCPv4
		sendable   []bool
	)
	for ctx.Err() == nil {
		n, err := sock.receive(bufs, sizes)
		received := time.Now()
		s.receiverBeat.Store(received.UnixNano())
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read DHCP packets: %w", err)
		}
		now, later, reqs = now[:0], later[:0], reqs[:0]
		for i := range n {
			req := s.parse(bufs[i][:sizes[i]])
			if req == nil {
				continue
			}
			resp, dest := s.handle(req)
			if resp == nil {
				continue
			}
			r := reply{req: req, msgType: resp.MessageType(), data: resp.ToBytes(), to: dest}
			switch {
			case s.opts.Durable == nil:
				now = append(now, r)
			case r.msgType == dhcpv4.MessageTypeAck && req.MessageType() == dhcpv4.MessageTypeRequest:
				later = append(later, r)
				reqs = append(reqs, req)
			case r.msgType == dhcpv4.MessageTypeOffer && s.probeFirst(r, received, received, 1):
			default:
				now = append(now, r)
			}
		}
		// The OFFERs and NAKs go out before the commit, not after it.
		s.sendBatch(sock, now, received)
		if len(later) == 0 {
			continue
		}
		sendable = slices.Grow(sendable[:0], len(reqs))[:len(reqs)]
		// Not cancelled with ctx: the ACKs in hand at shutdown are finished.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), durableTimeout)
		s.opts.Durable.Durable(ctx, reqs, sendable)
		cancel()
		acks := later[:0]
		for i, r := range later {
			if sendable[i] {
				acks = append(acks, r)
			}
		}
		s.sendBatch(sock, acks, received)
	}
	return nil
}

// probeFirst starts the probe of the address OFFER r grants, when it needs
// one, and tells whether it did; the OFFER goes out when the probe ends,
// at most the probe timeout after since. attempt counts the addresses
// probed for this DISCOVER.
func (s *Server) probeFirst(r reply, received, since time.Time, attempt int) bool {
	if s.opts.Prober == nil {
		return false
	}
	ip, ok := s.opts.Durable.ProbeFirst(r.req)
	if !ok {
		return false
	}
	s.opts.Prober.Probe(ip, since, func(res probe.Result) { s.probed(r, ip, res, received, attempt) })
	return true
}

// probed ends the probe of ip for OFFER r: the OFFER goes out if nothing
// else uses ip; otherwise ip is taken back and the chain asked again for
// another address, which is probed in turn.
func (s *Server) probed(r reply, ip netip.Addr, res probe.Result, received time.Time, attempt int) {
	switch {
	case res.Err != nil:
		// Offered as without conflict detection: a lost probe must not
		// stop service. Counted; the log line is the prober's.
		s.metrics.probes.WithLabelValues("error").Inc()
	case !res.InUse || slices.Equal(res.MAC, r.req.ClientHWAddr):
		// Nobody answered, or the client itself did: it is its address.
		s.metrics.probes.WithLabelValues("free").Inc()
	default:
		s.metrics.probes.WithLabelValues("in_use").Inc()
		s.metrics.conflicts.Inc()
		s.opts.Durable.Conflict(r.req, ip, res.MAC)
		if s.opts.OnConflict != nil {
			s.opts.OnConflict(ip, res.MAC)
		}
		if attempt >= maxProbes {
			s.metrics.Dropped(DropAddressesInUse)
			return
		}
		resp, dest := s.handle(r.req)
		if resp == nil {
			return
		}
		next := reply{req: r.req, msgType: resp.MessageType(), data: resp.ToBytes(), to: dest}
		// The next address gets a whole timeout of its own.
		if next.msgType == dhcpv4.MessageTypeOffer && s.probeFirst(next, received, time.Now(), attempt+1) {
			return
		}
		r = next
	}
	s.sockMu.RLock()
	defer s.sockMu.RUnlock()
	if s.sock != nil {
		s.sendOne(s.sock, r, received)
	}
}

// sendOne sends one reply from any goroutine.
func (s *Server) sendOne(sock *socket, r reply, received time.Time) {
	if err := sock.sendOne(r.data, r.to); err != nil {
		s.metrics.Dropped(DropSendFailed)
		s.log.Warn("send reply", "to", r.to, "error", err)
		return
	}
	s.metrics.sent.WithLabelValues(r.msgType.String()).Inc()
	s.metrics.handleDuration.Observe(time.Since(received).Seconds())
}

// sendBatch sends replies with as few system calls as the kernel allows.
func (s *Server) sendBatch(sock *socket, replies []reply, received time.Time) {
	var (
		packets [readBatch][]byte
		to      [readBatch]netip.AddrPort
	)
	for len(replies) > 0 {
		chunk := replies[:min(len(replies), readBatch)]
		for i, r := range chunk {
			packets[i], to[i] = r.data, r.to
		}
		n, err := sock.send(packets[:len(chunk)], to[:len(chunk)])
		for _, r := range chunk[:n] {
			s.metrics.sent.WithLabelValues(r.msgType.String()).Inc()
			s.metrics.handleDuration.Observe(time.Since(received).Seconds())
		}
		replies = replies[n:]
		if err != nil && len(replies) > 0 {
			// The first unsent reply is the one that failed: count it and
			// go on with the rest.
			s.metrics.Dropped(DropSendFailed)
			s.log.Warn("send reply", "to", replies[0].to, "error", err)
			replies = replies[1:]
		}
	}
}

// Handle parses one packet, runs the chain and returns the reply with its
// destination, or nil when nothing is to be sent. Malformed input is counted
// and dropped; a panicking plugin loses that packet, never the server.
func (s *Server) Handle(data []byte) (reply *dhcpv4.DHCPv4, dest netip.AddrPort) {
	req := s.parse(data)
	if req == nil {
		return nil, netip.AddrPort{}
	}
	return s.handle(req)
}

// parse decodes a client's request, or counts why not and returns nil.
func (s *Server) parse(data []byte) *dhcpv4.DHCPv4 {
	req, err := dhcpv4.FromBytes(data)
	if err != nil {
		s.metrics.Dropped(DropMalformed)
		s.log.Debug("malformed packet", "error", err)
		return nil
	}
	if req.OpCode != dhcpv4.OpcodeBootRequest {
		s.metrics.Dropped(DropNotARequest)
		return nil
	}
	s.metrics.received.WithLabelValues(req.MessageType().String()).Inc()
	if len(req.ClientHWAddr) != 6 {
		// Hardware types other than Ethernet do not occur on a Multus network.
		s.metrics.Dropped(DropMalformed)
		return nil
	}
	return req
}

// handle runs the chain on a parsed request.
func (s *Server) handle(req *dhcpv4.DHCPv4) (reply *dhcpv4.DHCPv4, dest netip.AddrPort) {
	defer func() {
		if r := recover(); r != nil {
			s.metrics.Dropped(DropHandlerPanic)
			s.log.Error("plugin panicked; packet dropped", "panic", r)
			reply, dest = nil, netip.AddrPort{}
		}
	}()
	msgType := req.MessageType()
	resp, err := dhcpv4.NewReplyFromRequest(req)
	if err != nil {
		s.metrics.Dropped(DropMalformed)
		return nil, netip.AddrPort{}
	}
	switch msgType {
	case dhcpv4.MessageTypeDiscover:
		resp.UpdateOption(dhcpv4.OptMessageType(dhcpv4.MessageTypeOffer))
	case dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeInform:
		resp.UpdateOption(dhcpv4.OptMessageType(dhcpv4.MessageTypeAck))
	case dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeDecline:
		// No reply is ever sent; the chain records the event.
	default:
		s.metrics.Dropped(DropUnhandledType)
		return nil, netip.AddrPort{}
	}
	if s.log.Enabled(context.Background(), slog.LevelDebug) { // spare the formatting on the hot path
		s.log.Debug("packet", "type", msgType, "mac", req.ClientHWAddr.String(), "xid", req.TransactionID)
	}

	resp = s.runChain(req, resp)
	if resp == nil || msgType == dhcpv4.MessageTypeRelease || msgType == dhcpv4.MessageTypeDecline {
		return nil, netip.AddrPort{}
	}
	return resp, replyDestination(req, resp)
}

// runChain passes req and resp through the chain; the deferred unlock keeps
// a panicking plugin from blocking Reconfigure for good.
func (s *Server) runChain(req, resp *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	s.chainMu.RLock()
	defer s.chainMu.RUnlock()
	for _, h := range s.chain {
		var stop bool
		if resp, stop = h(req, resp); stop {
			break
		}
	}
	return resp
}

// replyDestination follows RFC 2131 section 4.1. Where the RFC asks for a
// unicast to an address the client does not have yet, we broadcast instead
// (which the RFC allows), so the server needs no raw socket (CAP_NET_RAW).
func replyDestination(req, resp *dhcpv4.DHCPv4) netip.AddrPort {
	switch {
	case !req.GatewayIPAddr.IsUnspecified():
		return netip.AddrPortFrom(addrOf(req.GatewayIPAddr), dhcpv4.ServerPort)
	case resp.MessageType() == dhcpv4.MessageTypeNak:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), dhcpv4.ClientPort)
	case !req.ClientIPAddr.IsUnspecified():
		return netip.AddrPortFrom(addrOf(req.ClientIPAddr), dhcpv4.ClientPort)
	default:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), dhcpv4.ClientPort)
	}
}

// addrOf is ip as an IPv4 address; the zero Addr when it is not one.
func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip.To4())
	return a
}
