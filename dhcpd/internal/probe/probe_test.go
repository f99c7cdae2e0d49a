package probe

import (
	"net"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
)

func arp(op uint16, sender net.HardwareAddr, senderIP, targetIP netip.Addr) []byte {
	b := []byte{0, 1, 8, 0, 6, 4, byte(op >> 8), byte(op)}
	b = append(b, sender...)
	s, t := senderIP.As4(), targetIP.As4()
	b = append(b, s[:]...)
	b = append(b, make([]byte, 6)...)
	return append(b, t[:]...)
}

func TestParseARPFindsWhoClaimsAnAddress(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0x5e, 0, 0, 9}
	ip, ours := netip.MustParseAddr("192.168.50.100"), netip.MustParseAddr("192.168.50.2")
	for _, tc := range []struct {
		name   string
		packet []byte
		claims bool
	}{
		{"a reply", arp(2, mac, ip, netip.IPv4Unspecified()), true},
		{"a request from the address's holder", arp(1, mac, ip, ours), true},
		{"a gratuitous announcement", arp(1, mac, ip, ip), true},
		{"a probe (sender 0.0.0.0) claims nothing", arp(1, mac, netip.IPv4Unspecified(), ip), false},
		{"truncated", arp(2, mac, ip, ours)[:20], false},
		{"not an ARP operation we know", arp(9, mac, ip, ours), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sender, addr, ok := parseARP(tc.packet)
			assert.Equal(t, tc.claims, ok)
			if tc.claims {
				assert.Equal(t, mac, sender)
				assert.Equal(t, ip, addr)
			}
		})
	}
}
