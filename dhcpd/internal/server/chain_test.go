package server

import (
	"fmt"
	"net"
	"sync"
	"testing"

	"github.com/coredhcp/coredhcp/handler"
	"github.com/coredhcp/coredhcp/plugins"
	"github.com/coredhcp/coredhcp/plugins/dns"
	"github.com/coredhcp/coredhcp/plugins/mtu"
	"github.com/coredhcp/coredhcp/plugins/netmask"
	"github.com/coredhcp/coredhcp/plugins/router"
	"github.com/coredhcp/coredhcp/plugins/searchdomains"
	"github.com/coredhcp/coredhcp/plugins/serverid"
	"github.com/coredhcp/coredhcp/plugins/staticroute"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/utils/ptr"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
)

var (
	stockOnce  sync.Once
	stockSteps []handler.Handler4
	stockErr   error
)

// stockChain sets CoreDHCP's stock plugins up for the spec of
// TestChainAnswersLikeTheStockPlugins, once per process (they append to
// package variables), with allocate after serverid.
func stockChain(t *testing.T, allocate handler.Handler4) []handler.Handler4 {
	stockOnce.Do(func() {
		for _, s := range []struct {
			plugin plugins.Plugin
			args   []string
		}{
			{serverid.Plugin, []string{"192.168.50.2"}},
			{netmask.Plugin, []string{"255.255.255.0"}},
			{router.Plugin, []string{"192.168.50.1"}},
			{dns.Plugin, []string{"192.168.50.53", "9.9.9.9"}},
			{mtu.Plugin, []string{"1450"}},
			{searchdomains.Plugin, []string{"lab.example", "example"}},
			{staticroute.Plugin, []string{"0.0.0.0/0,192.168.50.1", "10.20.0.0/16,192.168.50.254"}},
		} {
			h, err := s.plugin.Setup4(s.args...)
			if err != nil {
				stockErr = fmt.Errorf("%s: %w", s.plugin.Name, err)
				return
			}
			stockSteps = append(stockSteps, h)
		}
	})
	require.NoError(t, stockErr)
	chain := []handler.Handler4{stockSteps[0], allocate}
	return append(chain, stockSteps[1:]...)
}

// TestChainAnswersLikeTheStockPlugins builds the chain's options for a spec
// that sets every one of them and the chain CoreDHCP's stock plugins made
// before (they can be set up once per process, so once here), and requires
// byte-identical replies.
func TestChainAnswersLikeTheStockPlugins(t *testing.T) {
	spec := hyperdhcpv1beta1.ServerSpec{
		ServerIP:     "192.168.50.2/24",
		Router:       "192.168.50.1",
		DNS:          []hyperdhcpv1beta1.IPv4Address{"192.168.50.53", "9.9.9.9"},
		MTU:          ptr.To[int32](1450),
		DomainSearch: []hyperdhcpv1beta1.DNSName{"lab.example", "example"},
		DomainName:   "lab.example",
		NTP:          []hyperdhcpv1beta1.IPv4Address{"192.168.50.123"},
		StaticRoutes: []hyperdhcpv1beta1.StaticRoute{{Destination: "10.20.0.0/16", Gateway: "192.168.50.254"}},
		BootFile:     "pxelinux.0",
		NextServer:   "192.168.50.69",
		Options:      []hyperdhcpv1beta1.DHCPOption{{Code: 252, Type: "Text", Value: "http://wpad/wpad.dat"}},
	}
	allocate := func(_, resp *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
		resp.YourIPAddr = net.IPv4(192, 168, 50, 100)
		return resp, false
	}
	ours, err := BuildChain(&spec, allocate)
	require.NoError(t, err)

	stock := stockChain(t, allocate)
	extra, err := extraOptions(&spec)
	require.NoError(t, err)
	stock = append(stock, extra.Handler4)

	run := func(chain []handler.Handler4, req *dhcpv4.DHCPv4) []byte {
		resp, err := dhcpv4.NewReplyFromRequest(req, dhcpv4.WithMessageType(dhcpv4.MessageTypeOffer))
		require.NoError(t, err)
		for _, h := range chain {
			var stop bool
			if resp, stop = h(req, resp); stop {
				break
			}
		}
		if resp == nil {
			return nil
		}
		return resp.ToBytes()
	}
	mac := net.HardwareAddr{2, 0, 0x5e, 0, 0, 1}
	asking, err := dhcpv4.NewDiscovery(mac, dhcpv4.WithRequestedOptions(dhcpv4.OptionDomainNameServer,
		dhcpv4.OptionInterfaceMTU, dhcpv4.OptionNTPServers, dhcpv4.OptionBootfileName, dhcpv4.OptionClasslessStaticRoute))
	require.NoError(t, err)
	silent, err := dhcpv4.NewDiscovery(mac)
	require.NoError(t, err)
	silent.Options.Del(dhcpv4.OptionParameterRequestList)
	otherServer, err := dhcpv4.NewDiscovery(mac)
	require.NoError(t, err)
	otherServer.ServerIPAddr = net.IPv4(192, 168, 50, 3)

	for name, req := range map[string]*dhcpv4.DHCPv4{"asks for every option": asking, "asks for none": silent, "to another server": otherServer} {
		assert.Equal(t, run(stock, req), run(ours, req), name)
	}
	assert.Nil(t, run(ours, otherServer), "a request to another server's siaddr is dropped")
}
