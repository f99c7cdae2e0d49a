package leasedb

import (
	"fmt"
	"net"
	"net/netip"
	"time"
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
