package leasedb

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/coredhcp/coredhcp/plugins/allocators/bitmap"
)

// State is where a lease is in its life.
type State int

// The states of a lease. Offered leases live in memory only: an OFFER holds
// an address briefly without committing it.
const (
	// StateOffered: the address was offered and is held for offerHold.
	StateOffered State = iota
	// StateBound: the client was ACKed; the address is its until Expires.
	StateBound
	// StateDeclined: a client reported the address in use (DECLINE); it is
	// quarantined until Expires.
	StateDeclined
	// StateFree: released or expired. The row remembers which client had the
	// address so that a returning client gets it back while it is still free.
	StateFree
)

var stateNames = map[State]string{StateOffered: "offered", StateBound: "bound", StateDeclined: "declined", StateFree: "free"}

func (s State) String() string { return stateNames[s] }

func parseState(s string) (State, error) {
	for state, name := range stateNames {
		if name == s {
			return state, nil
		}
	}
	return 0, fmt.Errorf("unknown lease state %q", s)
}

// Lease is one address's record.
type Lease struct {
	IP       netip.Addr
	ClientID string // see clientID()
	MAC      net.HardwareAddr
	Hostname string
	State    State
	Expires  time.Time
}

// held reports whether the lease keeps its address from other clients.
func (l *Lease) held() bool { return l.State != StateFree }

// Range is an inclusive range of addresses.
type Range struct {
	First, Last netip.Addr
}

func (r Range) contains(a netip.Addr) bool { return !a.Less(r.First) && !r.Last.Less(a) }

// addressPool tracks which addresses of one range are taken, in a bitmap.
type addressPool struct {
	Range
	alloc *bitmap.IPv4Allocator
	size  int64
}

func newAddressPool(r Range) (*addressPool, error) {
	alloc, err := bitmap.NewIPv4Allocator(net.IP(r.First.AsSlice()), net.IP(r.Last.AsSlice()))
	if err != nil {
		return nil, fmt.Errorf("pool %s-%s: %w", r.First, r.Last, err)
	}
	p := &addressPool{Range: r, alloc: alloc}
	for a := r.First; a.IsValid() && r.contains(a); a = a.Next() {
		p.size++
	}
	return p, nil
}

// take marks a as used; false when it already was.
func (p *addressPool) take(a netip.Addr) bool {
	got, err := p.alloc.Allocate(net.IPNet{IP: net.IP(a.AsSlice())})
	if err != nil {
		return false
	}
	if gotAddr, _ := netip.AddrFromSlice(got.IP.To4()); gotAddr != a {
		_ = p.alloc.Free(got) // the allocator fell back to another address: give it back
		return false
	}
	return true
}

// takeAny marks some free address as used.
func (p *addressPool) takeAny() (netip.Addr, bool) {
	got, err := p.alloc.Allocate(net.IPNet{IP: net.IP(p.First.AsSlice())})
	if err != nil {
		return netip.Addr{}, false
	}
	a, _ := netip.AddrFromSlice(got.IP.To4())
	return a, true
}

func (p *addressPool) free(a netip.Addr) {
	_ = p.alloc.Free(net.IPNet{IP: net.IP(a.AsSlice())}) // a double free only means it was already free
}
