package leasedb

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// faultyStore wraps a store: it can fail every Apply, delay each one, and
// records what each Apply made durable.
type faultyStore struct {
	Store
	fail      atomic.Bool
	probeFail atomic.Bool // only the Probe fails
	// unreplicated: each batch is written, and said to be written without
	// the replica (ErrUnreplicated).
	unreplicated atomic.Bool
	delay        func() time.Duration
	mu           sync.Mutex
	durable      map[netip.Addr]Lease // rows as the store has them after each successful Apply
	commits      atomic.Int64         // successful Applies
}

func (s *faultyStore) Apply(ctx context.Context, changes []Change) error {
	if s.delay != nil {
		time.Sleep(s.delay())
	}
	if s.fail.Load() {
		return errors.New("disk full")
	}
	if err := s.Store.Apply(ctx, changes); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range changes {
		if c.Delete {
			delete(s.durable, c.Lease.IP)
		} else {
			s.durable[c.Lease.IP] = c.Lease
		}
	}
	s.commits.Add(1)
	if s.unreplicated.Load() {
		return fmt.Errorf("the standby is away: %w", ErrUnreplicated)
	}
	return nil
}

// Probe fails while either switch is on: a store can take a batch that
// writes nothing and still refuse real writes.
func (s *faultyStore) Probe(context.Context) error {
	if s.fail.Load() || s.probeFail.Load() {
		return errors.New("disk full")
	}
	return nil
}

func (s *faultyStore) row(ip netip.Addr) (Lease, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.durable[ip]
	return l, ok
}

func newFaultyHarness(t *testing.T, mutate func(*Options)) (*harness, *faultyStore) {
	t.Helper()
	inner, err := OpenSQLite(":memory:")
	require.NoError(t, err)
	store := &faultyStore{Store: inner, durable: map[netip.Addr]Lease{}}
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	opts := Options{Server: serverPrefix, Pools: []Range{pool("192.168.50.100", "192.168.50.109")}, Now: clock.Now, Store: store}
	if mutate != nil {
		mutate(&opts)
	}
	db, err := New(context.Background(), opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return &harness{t: t, db: db, store: store, clock: clock, opts: opts}, store
}

func selectingRequest(t *testing.T, hw net.HardwareAddr, ip net.IP) *dhcpv4.DHCPv4 {
	return packet(t, dhcpv4.MessageTypeRequest, hw, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(serverAddr.AsSlice()))))
}

func TestEveryACKedLeaseIsDurableBeforeTheReply(t *testing.T) {
	h, store := newFaultyHarness(t, func(o *Options) {
		o.Pools = []Range{pool("192.168.50.10", "192.168.50.250")}
	})
	store.delay = func() time.Duration { return time.Duration(rand.IntN(3)) * time.Millisecond }
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() {
			hw := net.HardwareAddr{0x02, 0, 0, 0, byte(i >> 8), byte(i)}
			offer := h.discover(hw)
			if !assert.NotNil(t, offer) {
				return
			}
			ack := h.handle(selectingRequest(t, hw, offer.YourIPAddr))
			if !assert.NotNil(t, ack) {
				return
			}
			// The reply exists: the lease it grants must already be in the store.
			row, ok := store.row(addr(ack.YourIPAddr))
			assert.True(t, ok && row.State == StateBound && row.MAC.String() == hw.String(),
				"%s was ACKed before it was durable", ack.YourIPAddr)
		})
	}
	wg.Wait()
}

func TestFailedCommitLeavesNoUnacknowledgedBoundLease(t *testing.T) {
	h, store := newFaultyHarness(t, nil)
	bound := h.dora(mac(1))
	offer := h.discover(mac(2))
	require.NotNil(t, offer)

	store.fail.Store(true)
	assert.Nil(t, h.handle(selectingRequest(t, mac(2), offer.YourIPAddr)), "no ACK without a commit")
	renewal := packet(t, dhcpv4.MessageTypeRequest, mac(1), dhcpv4.WithClientIP(net.IP(bound.AsSlice())))
	assert.Nil(t, h.handle(renewal), "no ACK of a renewal without a commit")

	h.db.mu.Lock()
	pending, renewed := h.db.alloc.byIP[addr(offer.YourIPAddr)], h.db.alloc.byIP[bound]
	pendingState, renewedState, renewedExpiry := pending.State, renewed.State, renewed.Expires
	h.db.mu.Unlock()
	assert.Equal(t, StateOffered, pendingState, "the failed REQUEST leaves the offer as it was")
	assert.Equal(t, StateBound, renewedState, "the failed renewal leaves the lease as it was")
	assert.Equal(t, h.clock.Now().Add(time.Hour), renewedExpiry)

	// When the disk recovers, the retried log leaves the store agreeing with
	// memory: no bound row for the client that was never ACKed.
	store.fail.Store(false)
	require.Eventually(t, func() bool {
		_, ok := store.row(addr(offer.YourIPAddr))
		return h.db.StorageError() == nil && (!ok || h.stored()[addr(offer.YourIPAddr)].State != StateBound)
	}, 5*time.Second, 20*time.Millisecond, "the background retry clears the fault")
	require.NotNil(t, h.handle(selectingRequest(t, mac(2), offer.YourIPAddr)), "service resumes by itself")
}

func TestPanicInsideTheLeaseLockDoesNotLockOutOtherPackets(t *testing.T) {
	var panicking atomic.Bool
	h, _ := newFaultyHarness(t, nil)
	clock := h.db.now
	h.db.now = func() time.Time {
		if panicking.Load() {
			panic("clock exploded")
		}
		return clock()
	}
	panicking.Store(true)
	assert.Panics(t, func() { h.discover(mac(1)) })
	panicking.Store(false)

	done := make(chan struct{})
	go func() {
		defer close(done)
		h.dora(mac(2))
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the next packet waits forever on the lease lock")
	}
	assert.NoError(t, h.db.Check(time.Second))
}

func TestCheckReportsAHeldLock(t *testing.T) {
	h, _ := newFaultyHarness(t, nil)
	h.db.mu.Lock()
	err := h.db.Check(50 * time.Millisecond)
	h.db.mu.Unlock()
	assert.ErrorContains(t, err, "lease lock")
}

func TestRelayedPackets(t *testing.T) {
	h, _ := newFaultyHarness(t, nil)
	ours := dhcpv4.WithGatewayIP(net.IPv4(192, 168, 50, 1))
	foreign := dhcpv4.WithGatewayIP(net.IPv4(10, 1, 2, 1))

	assert.Nil(t, h.discover(mac(1), foreign), "a relay on another subnet is not served from this pool")
	require.NotNil(t, h.discover(mac(1), ours))

	nak := h.handle(packet(t, dhcpv4.MessageTypeRequest, mac(1), ours, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 0, 0, 1)))))
	require.NotNil(t, nak)
	assert.Equal(t, dhcpv4.MessageTypeNak, nak.MessageType())
	assert.True(t, nak.IsBroadcast(), "a relayed NAK asks the relay to broadcast (RFC 2131 4.3.2)")

	direct := h.handle(packet(t, dhcpv4.MessageTypeRequest, mac(1), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 0, 0, 1)))))
	require.NotNil(t, direct)
	assert.False(t, direct.IsBroadcast())
}

func TestReleaseAndDeclineForAnotherServerAreIgnored(t *testing.T) {
	h, store := newFaultyHarness(t, nil)
	ip := h.dora(mac(1))
	other := dhcpv4.WithOption(dhcpv4.OptServerIdentifier(otherServer))
	h.handle(packet(t, dhcpv4.MessageTypeRelease, mac(1), other, dhcpv4.WithClientIP(net.IP(ip.AsSlice()))))
	h.handle(packet(t, dhcpv4.MessageTypeDecline, mac(1), other, requestIP(ip)))
	row, _ := store.row(ip)
	assert.Equal(t, StateBound, row.State)
	assert.Equal(t, int64(1), h.db.Stats().Used)

	ours := dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(serverAddr.AsSlice())))
	h.handle(packet(t, dhcpv4.MessageTypeRelease, mac(1), ours, dhcpv4.WithClientIP(net.IP(ip.AsSlice()))))
	assert.Equal(t, int64(0), h.db.Stats().Used)
}

func TestIdentifyByMAC(t *testing.T) {
	h, _ := newFaultyHarness(t, func(o *Options) { o.IdentifyByMAC = true })
	a := h.dora(mac(1), dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte{0xff, 1})))
	b := h.dora(mac(1), dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte{0xff, 2})))
	assert.Equal(t, a, b, "keyed by MAC, a changed client identifier is the same client")
	c := h.dora(mac(2), dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte{0xff, 1})))
	assert.NotEqual(t, a, c, "keyed by MAC, one client identifier on two MACs is two clients")
}

// TestStoreFollowsMemoryUnderConcurrentMoves has clients move between
// addresses, release and rebind concurrently while the store delays each
// write, so commits queue behind each other. Afterwards the store must agree
// with memory: a deletion of one client's old row landing after another
// client's ACKed row for the same address would lose that lease on restart.
func TestStoreFollowsMemoryUnderConcurrentMoves(t *testing.T) {
	h, store := newFaultyHarness(t, func(o *Options) {
		o.Pools = []Range{pool("192.168.50.100", "192.168.50.115")}
	})
	store.delay = func() time.Duration { return time.Duration(rand.IntN(500)) * time.Microsecond }
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for range 150 {
				hw := mac(byte(r.IntN(12)))
				target := net.IPv4(192, 168, 50, byte(100+r.IntN(16)))
				switch r.IntN(4) {
				case 0: // renewing into another free address moves the client
					h.handle(packet(t, dhcpv4.MessageTypeRequest, hw, dhcpv4.WithClientIP(target)))
				case 1:
					h.handle(packet(t, dhcpv4.MessageTypeRelease, hw, dhcpv4.WithClientIP(target)))
				default:
					if offer := h.discover(hw); offer != nil {
						h.handle(selectingRequest(t, hw, offer.YourIPAddr))
					}
				}
			}
		})
	}
	wg.Wait()
	require.NoError(t, h.db.Close())
	h.db.mu.Lock()
	defer h.db.mu.Unlock()
	for ip, e := range h.db.alloc.byIP {
		if e.State != StateBound {
			continue
		}
		row, ok := store.row(ip)
		assert.True(t, ok && row.State == StateBound && row.ClientID == e.ClientID && row.Expires.Equal(e.Expires),
			"%s is bound to %s in memory but stored as %+v", ip, e.ClientID, row)
	}
	for ip, row := range store.durable {
		if e := h.db.alloc.byIP[ip]; row.State == StateBound && (e == nil || e.ClientID != row.ClientID || e.State != StateBound) {
			t.Errorf("%s is stored bound to %s, which memory does not hold", ip, row.ClientID)
		}
	}
}

// naks counts NAK reasons.
type naks struct {
	nopObserver
	mu      sync.Mutex
	reasons []string
}

func (n *naks) Refused(reason string) {
	n.mu.Lock()
	n.reasons = append(n.reasons, reason)
	n.mu.Unlock()
}

func TestNAKsSayWhy(t *testing.T) {
	observer := &naks{}
	h, _ := newFaultyHarness(t, func(o *Options) { o.Observer = observer })
	ip := h.dora(mac(1))
	h.dora(mac(2))
	for _, req := range []*dhcpv4.DHCPv4{
		packet(t, dhcpv4.MessageTypeRequest, mac(1), dhcpv4.WithClientIP(net.IPv4(10, 0, 0, 1))),
		packet(t, dhcpv4.MessageTypeRequest, mac(1), dhcpv4.WithClientIP(net.IPv4(192, 168, 50, 20))),
		packet(t, dhcpv4.MessageTypeRequest, mac(1), dhcpv4.WithClientIP(net.IPv4(192, 168, 50, 101))),
		packet(t, dhcpv4.MessageTypeRequest, mac(1), requestIP(ip.Next().Next())),
	} {
		reply := h.handle(req)
		require.NotNil(t, reply)
		require.Equal(t, dhcpv4.MessageTypeNak, reply.MessageType())
		assert.NotEmpty(t, reply.Message(), "option 56 says why")
	}
	assert.Equal(t, []string{NakNotOnNetwork, NakOutsidePools, NakInUse, NakOtherAddress}, observer.reasons)
}

func TestReservedAddressInAPoolCountsAsUsedWhileHeld(t *testing.T) {
	h, _ := newFaultyHarness(t, func(o *Options) {
		o.Reservations = []Reservation{{MAC: mac(9), IP: netip.MustParseAddr("192.168.50.105")}}
	})
	assert.Equal(t, Stats{Size: 10, Free: 10}, h.db.Stats())
	assert.Equal(t, netip.MustParseAddr("192.168.50.105"), h.dora(mac(9)))
	h.dora(mac(1))
	assert.Equal(t, Stats{Size: 10, Used: 2, Free: 8}, h.db.Stats(), "two clients hold two pool addresses")
	require.NoError(t, h.db.Audit())
}
