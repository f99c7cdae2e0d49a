package leasedb

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
)

// addressPool tracks which addresses of one range are unavailable (held,
// excluded or reserved) in a bitmap. It hands out addresses next-fit: the
// search starts after the last address it gave out, so a freed address
// rests for a while and its previous client is likely to get it back.
type addressPool struct {
	Range
	first  uint32 // the range's first address as a number, for bitmap offsets
	size   int
	taken  int
	words  []uint64
	cursor int
}

func newAddressPool(r Range) (*addressPool, error) {
	if !r.First.Is4() || !r.Last.Is4() || r.Last.Less(r.First) {
		return nil, fmt.Errorf("pool %s-%s is not an IPv4 range from low to high", r.First, r.Last)
	}
	first, last := addrNumber(r.First), addrNumber(r.Last)
	size := int(last-first) + 1
	return &addressPool{Range: r, first: first, size: size, words: make([]uint64, (size+63)/64)}, nil
}

// addrNumber is the address as a 32-bit number: the bitmap's index space.
func addrNumber(a netip.Addr) uint32 {
	four := a.As4()
	return binary.BigEndian.Uint32(four[:])
}

func (p *addressPool) index(a netip.Addr) int { return int(addrNumber(a) - p.first) }

func (p *addressPool) addrAt(i int) netip.Addr {
	var four [4]byte
	binary.BigEndian.PutUint32(four[:], p.first+uint32(i))
	return netip.AddrFrom4(four)
}

func (p *addressPool) isTaken(a netip.Addr) bool {
	i := p.index(a)
	return p.words[i/64]&(1<<(i%64)) != 0
}

// take marks a (which must be in the range) as unavailable; false when it
// already was.
func (p *addressPool) take(a netip.Addr) bool {
	i := p.index(a)
	if p.words[i/64]&(1<<(i%64)) != 0 {
		return false
	}
	p.words[i/64] |= 1 << (i % 64)
	p.taken++
	return true
}

// free marks a as available; false when it already was.
func (p *addressPool) free(a netip.Addr) bool {
	i := p.index(a)
	if p.words[i/64]&(1<<(i%64)) == 0 {
		return false
	}
	p.words[i/64] &^= 1 << (i % 64)
	p.taken--
	return true
}

// nextFree returns the next available address after the last one it
// returned, without taking it.
func (p *addressPool) nextFree() (netip.Addr, bool) {
	if p.taken == p.size {
		return netip.Addr{}, false
	}
	i, ok := p.scan(p.cursor, p.size)
	if !ok {
		i, _ = p.scan(0, p.cursor) // taken < size: there is one before the cursor
	}
	p.cursor = (i + 1) % p.size
	return p.addrAt(i), true
}

// scan finds the first clear bit in [from, to).
func (p *addressPool) scan(from, to int) (int, bool) {
	for from < to {
		w := ^p.words[from/64] >> (from % 64) // free bits from `from` on
		if w != 0 {
			if i := from + bits.TrailingZeros64(w); i < to {
				return i, true
			}
			return 0, false
		}
		from = (from/64 + 1) * 64
	}
	return 0, false
}
