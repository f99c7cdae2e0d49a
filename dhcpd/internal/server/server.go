// Package server is hyperdhcpd's DHCPv4 packet loop. It drives a CoreDHCP
// plugin chain from a receive loop of its own, because CoreDHCP's server
// drops DECLINE before any plugin sees it, starts one unbounded goroutine per
// packet and cannot be shut down cleanly.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coredhcp/coredhcp/handler"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/net/ipv4"
)

const (
	// workers bounds concurrency; enough that many handlers wait on one
	// group commit together, so batches grow with load.
	workers = 128
	// queueLength bounds memory under a flood; beyond it packets are dropped
	// (and counted) instead of queued without end.
	queueLength = 4096
	maxPacket   = 1500
	readBatch   = 32
	// heartbeat is how often the receive loop proves it and the workers
	// are alive, when no packet comes to do it.
	heartbeat = time.Second
)

// Server answers DHCPv4 packets from conn with a plugin chain.
type Server struct {
	conn    net.PacketConn
	chain   []handler.Handler4
	metrics *Metrics
	log     *slog.Logger
	buffers sync.Pool
	// Unix nanoseconds of the last turn of the receive loop and of the last
	// heartbeat a worker took from the queue, for Check.
	receiverBeat, workerBeat atomic.Int64
}

// New returns a server; Serve starts it.
func New(conn net.PacketConn, chain []handler.Handler4, metrics *Metrics, log *slog.Logger) *Server {
	s := &Server{
		conn:    conn,
		chain:   chain,
		metrics: metrics,
		log:     log,
		buffers: sync.Pool{New: func() any { return new([maxPacket]byte) }},
	}
	now := time.Now().UnixNano()
	s.receiverBeat.Store(now)
	s.workerBeat.Store(now)
	return s
}

// packet is a datagram to answer; one without a buffer is a heartbeat.
type packet struct {
	buf      *[maxPacket]byte
	n        int
	received time.Time
}

// Check reports whether the receive loop and the workers are turning: a
// worker stuck for good (a deadlock in a plugin) stops the heartbeats, and
// so does a receive loop that no longer runs.
func (s *Server) Check(now time.Time, timeout time.Duration) error {
	if since := now.Sub(time.Unix(0, s.receiverBeat.Load())); since > timeout {
		return fmt.Errorf("the receive loop has not run for %s", since.Round(time.Second))
	}
	if since := now.Sub(time.Unix(0, s.workerBeat.Load())); since > timeout {
		return fmt.Errorf("no worker has taken a packet for %s", since.Round(time.Second))
	}
	return nil
}

// Serve reads and answers packets until ctx ends, then waits for the packets
// in hand to be answered.
func (s *Server) Serve(ctx context.Context) error {
	queue := make(chan packet, queueLength)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for p := range queue {
				if p.buf == nil {
					s.workerBeat.Store(time.Now().UnixNano())
					continue
				}
				// A full queue keeps heartbeats out; packets taken count too
				// (when taken, not when received: a backlog is not a hang).
				s.workerBeat.Store(time.Now().UnixNano())
				s.answer(p)
			}
		})
	}
	stop := context.AfterFunc(ctx, func() { _ = s.conn.SetReadDeadline(time.Now()) })
	defer stop()

	err := s.receive(ctx, queue)
	close(queue)
	wg.Wait()
	return err
}

// receive reads packets into queue until the connection fails or ctx ends.
// It takes up to readBatch packets per system call (recvmmsg), which under
// load saves most of the receive syscalls.
func (s *Server) receive(ctx context.Context, queue chan<- packet) error {
	conn := ipv4.NewPacketConn(s.conn)
	msgs := make([]ipv4.Message, readBatch)
	bufs := make([]*[maxPacket]byte, readBatch)
	defer func() {
		for _, b := range bufs {
			if b != nil {
				s.buffers.Put(b)
			}
		}
	}()
	for ctx.Err() == nil {
		for i := range msgs {
			if bufs[i] == nil {
				bufs[i] = s.buffers.Get().(*[maxPacket]byte)
				msgs[i].Buffers = [][]byte{bufs[i][:]}
			}
		}
		if err := s.conn.SetReadDeadline(time.Now().Add(heartbeat)); err != nil {
			return fmt.Errorf("set read deadline: %w", err)
		}
		n, err := conn.ReadBatch(msgs, 0)
		received := time.Now()
		if last := s.receiverBeat.Load(); received.UnixNano()-last >= int64(heartbeat) {
			s.receiverBeat.Store(received.UnixNano())
			select {
			case queue <- packet{}:
			default: // a full queue: the workers will show whether they are stuck
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			return fmt.Errorf("read DHCP packets: %w", err)
		}
		for i := range n {
			select {
			case queue <- packet{buf: bufs[i], n: msgs[i].N, received: received}:
				bufs[i] = nil // the worker returns it to the pool
			default:
				s.metrics.Dropped(DropQueueFull)
			}
		}
	}
	return nil
}

func (s *Server) answer(p packet) {
	reply, dest := s.Handle(p.buf[:p.n])
	s.buffers.Put(p.buf)
	if reply == nil {
		return
	}
	if _, err := s.conn.WriteTo(reply.ToBytes(), dest); err != nil {
		s.metrics.Dropped(DropSendFailed)
		s.log.Warn("send reply", "to", dest, "error", err)
		return
	}
	s.metrics.sent.WithLabelValues(reply.MessageType().String()).Inc()
	s.metrics.handleDuration.Observe(time.Since(p.received).Seconds())
}

// Handle parses one packet, runs the chain and returns the reply with its
// destination, or nil when nothing is to be sent. Malformed input is counted
// and dropped; a panicking plugin loses that packet, never the server.
func (s *Server) Handle(data []byte) (reply *dhcpv4.DHCPv4, dest *net.UDPAddr) {
	defer func() {
		if r := recover(); r != nil {
			s.metrics.Dropped(DropHandlerPanic)
			s.log.Error("plugin panicked; packet dropped", "panic", r)
			reply, dest = nil, nil
		}
	}()
	req, err := dhcpv4.FromBytes(data)
	if err != nil {
		s.metrics.Dropped(DropMalformed)
		s.log.Debug("malformed packet", "error", err)
		return nil, nil
	}
	if req.OpCode != dhcpv4.OpcodeBootRequest {
		s.metrics.Dropped(DropNotARequest)
		return nil, nil
	}
	msgType := req.MessageType()
	s.metrics.received.WithLabelValues(msgType.String()).Inc()
	if len(req.ClientHWAddr) != 6 {
		// Hardware types other than Ethernet do not occur on a Multus network.
		s.metrics.Dropped(DropMalformed)
		return nil, nil
	}

	resp, err := dhcpv4.NewReplyFromRequest(req)
	if err != nil {
		s.metrics.Dropped(DropMalformed)
		return nil, nil
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
		return nil, nil
	}
	if s.log.Enabled(context.Background(), slog.LevelDebug) { // spare the formatting on the hot path
		s.log.Debug("packet", "type", msgType, "mac", req.ClientHWAddr.String(), "xid", req.TransactionID)
	}

	for _, h := range s.chain {
		var stop bool
		if resp, stop = h(req, resp); stop {
			break
		}
	}
	if resp == nil || msgType == dhcpv4.MessageTypeRelease || msgType == dhcpv4.MessageTypeDecline {
		return nil, nil
	}
	return resp, replyDestination(req, resp)
}

// replyDestination follows RFC 2131 section 4.1. Where the RFC asks for a
// unicast to an address the client does not have yet, we broadcast instead
// (which the RFC allows), so the server needs no raw socket (CAP_NET_RAW).
func replyDestination(req, resp *dhcpv4.DHCPv4) *net.UDPAddr {
	switch {
	case !req.GatewayIPAddr.IsUnspecified():
		return &net.UDPAddr{IP: req.GatewayIPAddr, Port: dhcpv4.ServerPort}
	case resp.MessageType() == dhcpv4.MessageTypeNak:
		return &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}
	case !req.ClientIPAddr.IsUnspecified():
		return &net.UDPAddr{IP: req.ClientIPAddr, Port: dhcpv4.ClientPort}
	default:
		return &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}
	}
}
