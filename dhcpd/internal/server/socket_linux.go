package server

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// socket is the server's UDP socket taken out of Go's network poller and
// read with a blocking recvmmsg: a packet wakes the serving thread itself,
// where the poller would wake a thread blocked in epoll_wait to hand the
// serving goroutine to, and wake the runtime's monitor thread on every
// system call after an idle moment. On a 2-core VM that churn was half the
// context switches per exchange (issue 15).
type socket struct {
	// mu keeps shutdown from reaching a descriptor close has released
	// (and the kernel may have given to another file).
	mu     sync.Mutex
	closed bool
	fd     int
	hdrs   []mmsghdr
	iovs   []unix.Iovec
	names  []unix.RawSockaddrInet4
}

// receiveBuffer is the socket receive buffer hyperdhcpd asks for.
const receiveBuffer = 4 << 20

// mmsghdr is struct mmsghdr of recvmmsg(2) and sendmmsg(2).
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32 // Go pads the struct as C does, on every architecture
}

// takeOver returns conn's socket outside Go's poller and closes conn: the
// duplicate refers to the same socket, and closing conn removes it from
// the poller, which would otherwise still be woken by every packet. A
// receive returns at least every timeout, so the caller can notice that it
// should stop.
func takeOver(conn net.PacketConn, timeout time.Duration) (*socket, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("%T has no file descriptor", conn)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("socket of %s: %w", conn.LocalAddr(), err)
	}
	fd := -1
	var dupErr error
	if err := rc.Control(func(f uintptr) { fd, dupErr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, fmt.Errorf("socket of %s: %w", conn.LocalAddr(), err)
	}
	if dupErr != nil {
		return nil, fmt.Errorf("duplicate the socket of %s: %w", conn.LocalAddr(), dupErr)
	}
	_ = conn.Close()
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := errors.Join(unix.SetNonblock(fd, false), unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv),
		// The queue that absorbs a stall of the loop (a slow commit): the
		// kernel grants at most net.core.rmem_max, doubled, which is twice
		// its default.
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, receiveBuffer)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("make the DHCP socket blocking: %w", err)
	}
	return &socket{
		fd:    fd,
		hdrs:  make([]mmsghdr, readBatch),
		iovs:  make([]unix.Iovec, readBatch),
		names: make([]unix.RawSockaddrInet4, readBatch),
	}, nil
}

// receive waits for at least one packet and reads as many as are waiting,
// up to len(bufs); sizes[i] is the length of the packet in bufs[i]. It
// returns 0 packets when the timeout passes or after shutdown.
func (s *socket) receive(bufs [][]byte, sizes []int) (int, error) {
	for i, b := range bufs {
		s.iovs[i] = unix.Iovec{Base: &b[0]}
		s.iovs[i].SetLen(len(b))
		s.hdrs[i] = mmsghdr{hdr: unix.Msghdr{Iov: &s.iovs[i]}}
		s.hdrs[i].hdr.SetIovlen(1)
	}
	for {
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&s.hdrs[0])),
			uintptr(len(bufs)), unix.MSG_WAITFORONE, 0, 0)
		switch errno {
		case 0:
			for i := range int(n) {
				sizes[i] = int(s.hdrs[i].n)
			}
			return int(n), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, nil
		default:
			return 0, fmt.Errorf("recvmmsg: %w", errno)
		}
	}
}

// send sends each packet to its address with as few system calls as the
// kernel takes; it returns how many went out and the error that stopped
// the packet after them.
func (s *socket) send(packets [][]byte, to []netip.AddrPort) (int, error) {
	for i, p := range packets {
		s.names[i] = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: to[i].Addr().As4()}
		port := (*[2]byte)(unsafe.Pointer(&s.names[i].Port))
		port[0], port[1] = byte(to[i].Port()>>8), byte(to[i].Port())
		s.iovs[i] = unix.Iovec{Base: &p[0]}
		s.iovs[i].SetLen(len(p))
		s.hdrs[i] = mmsghdr{hdr: unix.Msghdr{Name: (*byte)(unsafe.Pointer(&s.names[i])), Namelen: unix.SizeofSockaddrInet4, Iov: &s.iovs[i]}}
		s.hdrs[i].hdr.SetIovlen(1)
	}
	sent := 0
	for sent < len(packets) {
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&s.hdrs[sent])),
			uintptr(len(packets)-sent), 0, 0, 0)
		switch errno {
		case 0:
			sent += int(n)
		case unix.EINTR:
		default:
			return sent, fmt.Errorf("sendmmsg: %w", errno)
		}
	}
	return sent, nil
}

// sendOne sends one packet; unlike send, it may run beside the other
// methods.
func (s *socket) sendOne(packet []byte, to netip.AddrPort) error {
	for {
		err := unix.Sendto(s.fd, packet, 0, &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()})
		if err != unix.EINTR {
			return err
		}
	}
}

// shutdown wakes a receive in progress.
func (s *socket) shutdown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		_ = unix.Shutdown(s.fd, unix.SHUT_RD)
	}
}

func (s *socket) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return unix.Close(s.fd)
}
