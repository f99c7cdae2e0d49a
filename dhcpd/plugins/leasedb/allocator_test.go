package leasedb

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The allocator is table-tested without packets: a client, an event, a
// requested address and a time in; a decision and ordered changes out.

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func newTestAllocator(t *testing.T, mutate func(*Options)) *allocator {
	t.Helper()
	opts := Options{Server: serverPrefix, Pools: []Range{pool("192.168.50.100", "192.168.50.103")}}
	if mutate != nil {
		mutate(&opts)
	}
	a, err := newAllocator(&opts)
	require.NoError(t, err)
	return a
}

func cl(n byte) client { return client{id: "hw:" + mac(n).String(), mac: mac(n)} }

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestAllocatorDecisions(t *testing.T) {
	cases := []struct {
		name string
		// setup brings the allocator to the state the case starts from.
		setup func(a *allocator)
		run   func(a *allocator) (got netip.Addr, decision string)
		want  netip.Addr
		// decision is the verdict or drop reason; "" for an offer.
		decision string
		changes  []Change
	}{
		{
			name: "first DISCOVER gets the first free address, nothing written",
			run: func(a *allocator) (netip.Addr, string) {
				e, why := a.discover(cl(1), netip.Addr{}, t0)
				return addrOfEntry(e), why
			},
			want: ip("192.168.50.100"),
		},
		{
			name: "option 50 names a free address",
			run: func(a *allocator) (netip.Addr, string) {
				e, why := a.discover(cl(1), ip("192.168.50.102"), t0)
				return addrOfEntry(e), why
			},
			want: ip("192.168.50.102"),
		},
		{
			name:  "the previous address outranks option 50",
			setup: func(a *allocator) { bind(a, cl(1), "192.168.50.101"); a.release(cl(1), ip("192.168.50.101"), t0) },
			run: func(a *allocator) (netip.Addr, string) {
				e, why := a.discover(cl(1), ip("192.168.50.103"), t0)
				return addrOfEntry(e), why
			},
			want: ip("192.168.50.101"),
		},
		{
			name: "a full pool takes back the oldest offer",
			setup: func(a *allocator) {
				for n := byte(10); n < 14; n++ {
					a.discover(cl(n), netip.Addr{}, t0.Add(time.Duration(n)*time.Second))
				}
			},
			run: func(a *allocator) (netip.Addr, string) {
				e, why := a.discover(cl(1), netip.Addr{}, t0.Add(time.Minute/4))
				return addrOfEntry(e), why
			},
			want: ip("192.168.50.100"), // client 10's offer, the oldest
		},
		{
			name: "a pool full of leases refuses",
			setup: func(a *allocator) {
				for n := byte(10); n < 14; n++ {
					bind(a, cl(n), "")
				}
			},
			run: func(a *allocator) (netip.Addr, string) {
				e, why := a.discover(cl(1), netip.Addr{}, t0)
				return addrOfEntry(e), why
			},
			decision: DropPoolExhausted,
		},
		{
			name:  "SELECTING the offered address binds it and writes one row",
			setup: func(a *allocator) { a.discover(cl(1), netip.Addr{}, t0) },
			run: func(a *allocator) (netip.Addr, string) {
				al := a.request(cl(1), ip("192.168.50.100"), selecting, t0)
				return addrOfEntry(al.entry), verdictName(al)
			},
			want: ip("192.168.50.100"), decision: "ack",
			changes: []Change{{Lease: Lease{IP: ip("192.168.50.100"), ClientID: cl(1).id, MAC: mac(1), State: StateBound, Expires: t0.Add(DefaultLeaseTime)}}},
		},
		{
			name: "INIT-REBOOT without a record is not answered",
			run: func(a *allocator) (netip.Addr, string) {
				al := a.request(cl(1), ip("192.168.50.100"), initReboot, t0)
				return netip.Addr{}, verdictName(al)
			},
			decision: DropUnknownClient,
		},
		{
			name:  "moving to another address deletes the old row first",
			setup: func(a *allocator) { bind(a, cl(1), "192.168.50.100") },
			run: func(a *allocator) (netip.Addr, string) {
				al := a.request(cl(1), ip("192.168.50.102"), renewing, t0)
				return addrOfEntry(al.entry), verdictName(al)
			},
			want: ip("192.168.50.102"), decision: "ack",
			changes: []Change{
				{Lease: Lease{IP: ip("192.168.50.100"), ClientID: cl(1).id, MAC: mac(1), State: StateBound, Expires: t0.Add(DefaultLeaseTime)}, Delete: true},
				{Lease: Lease{IP: ip("192.168.50.102"), ClientID: cl(1).id, MAC: mac(1), State: StateBound, Expires: t0.Add(DefaultLeaseTime)}},
			},
		},
		{
			name:  "another client's address is refused",
			setup: func(a *allocator) { bind(a, cl(2), "192.168.50.101") },
			run: func(a *allocator) (netip.Addr, string) {
				al := a.request(cl(1), ip("192.168.50.101"), renewing, t0)
				return netip.Addr{}, verdictName(al)
			},
			decision: NakInUse,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := newTestAllocator(t, nil)
			if tc.setup != nil {
				tc.setup(a)
			}
			a.takeLog()
			got, decision := tc.run(a)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.decision, decision)
			assert.Equal(t, tc.changes, a.takeLog())
			assert.NoError(t, a.audit())
		})
	}
}

// bind gives c an address (target, or any) through DISCOVER and SELECTING.
func bind(a *allocator, c client, target string) {
	var requested netip.Addr
	if target != "" {
		requested = ip(target)
	}
	e, _ := a.discover(c, requested, t0)
	a.request(c, e.IP, selecting, t0)
}

func addrOfEntry(e *entry) netip.Addr {
	if e == nil {
		return netip.Addr{}
	}
	return e.IP
}

func verdictName(al allocation) string {
	if al.verdict == ack {
		return "ack"
	}
	return al.reason
}
