package server

import (
	"net"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// BenchmarkDORA measures the CPU cost of one DISCOVER-OFFER and one
// REQUEST-ACK through parsing, the whole plugin chain and encoding, with the
// lease commit to an in-memory SQLite database; the socket is left out.
func BenchmarkDORA(b *testing.B) {
	srv, _ := fuzzTarget(b)
	serverID := dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(192, 168, 77, 2)))
	var discovers, requests [][]byte
	for i := range 8 { // fewer clients than addresses: each exchange renews a lease
		mac := net.HardwareAddr{2, 0, 0, 0, 1, byte(i)}
		d, _ := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover), dhcpv4.WithHwAddr(mac),
			dhcpv4.WithRequestedOptions(dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer))
		offer, _ := srv.Handle(d.ToBytes())
		if offer == nil {
			b.Fatal("no offer")
		}
		r, _ := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithHwAddr(mac), serverID,
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)))
		discovers, requests = append(discovers, d.ToBytes()), append(requests, r.ToBytes())
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if offer, _ := srv.Handle(discovers[i%8]); offer == nil {
			b.Fatal("no offer")
		}
		if ack, _ := srv.Handle(requests[i%8]); ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
			b.Fatal("no ack")
		}
	}
}
