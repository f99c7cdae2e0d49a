package server

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"

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

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/extraopts"
)

// CoreDHCP's stock plugins keep their settings in package variables (and
// some append on every setup), so their chain can be built once per process.
var stockChainBuilt sync.Mutex

// step is one plugin of the chain with the arguments it is set up with.
type step struct {
	plugin plugins.Plugin
	args   []string
}

// BuildChain returns the plugin chain for spec, in the order the plugins
// must run: server_id first (every reply carries option 54), then the
// allocating plugin, which decides whether to answer at all, then the
// option plugins, which only decorate replies that will be sent.
//
// It may be called once per process; a second call returns an error.
func BuildChain(spec *hyperdhcpv1beta1.ServerSpec, allocate handler.Handler4) ([]handler.Handler4, error) {
	if !stockChainBuilt.TryLock() {
		return nil, fmt.Errorf("the plugin chain was already built in this process")
	}
	server, err := netip.ParsePrefix(string(spec.ServerIP))
	if err != nil {
		return nil, fmt.Errorf("server IP: %w", err)
	}

	before := []step{{serverid.Plugin, []string{server.Addr().String()}}}
	after := []step{{netmask.Plugin, []string{net.IP(net.CIDRMask(server.Bits(), 32)).String()}}}
	if spec.Router != "" {
		after = append(after, step{router.Plugin, []string{string(spec.Router)}})
	}
	if len(spec.DNS) > 0 {
		after = append(after, step{dns.Plugin, stringsOf(spec.DNS)})
	}
	if spec.MTU != nil {
		after = append(after, step{mtu.Plugin, []string{fmt.Sprint(*spec.MTU)}})
	}
	if len(spec.DomainSearch) > 0 {
		after = append(after, step{searchdomains.Plugin, stringsOf(spec.DomainSearch)})
	}
	if len(spec.StaticRoutes) > 0 {
		var routes []string
		if spec.Router != "" && !slices.ContainsFunc(spec.StaticRoutes, isDefaultRoute) {
			// A client that takes option 121 ignores option 3 (RFC 3442):
			// without this route it would have no default gateway.
			routes = append(routes, "0.0.0.0/0,"+string(spec.Router))
		}
		for _, r := range spec.StaticRoutes {
			routes = append(routes, string(r.Destination)+","+string(r.Gateway))
		}
		after = append(after, step{staticroute.Plugin, routes})
	}

	var chain []handler.Handler4
	for _, s := range before {
		h, err := s.plugin.Setup4(s.args...)
		if err != nil {
			return nil, fmt.Errorf("set up plugin %s: %w", s.plugin.Name, err)
		}
		chain = append(chain, h)
	}
	chain = append(chain, allocate)
	for _, s := range after {
		h, err := s.plugin.Setup4(s.args...)
		if err != nil {
			return nil, fmt.Errorf("set up plugin %s: %w", s.plugin.Name, err)
		}
		chain = append(chain, h)
	}
	extra, err := extraOptions(spec)
	if err != nil {
		return nil, err
	}
	return append(chain, extra.Handler4), nil
}

func extraOptions(spec *hyperdhcpv1beta1.ServerSpec) (*extraopts.Extra, error) {
	opts := extraopts.Options{DomainName: string(spec.DomainName), BootFile: spec.BootFile}
	for _, a := range spec.NTP {
		addr, err := hyperdhcpv1beta1.ParseIPv4(a)
		if err != nil {
			return nil, fmt.Errorf("ntp: %w", err)
		}
		opts.NTP = append(opts.NTP, addr)
	}
	if spec.NextServer != "" {
		addr, err := hyperdhcpv1beta1.ParseIPv4(spec.NextServer)
		if err != nil {
			return nil, fmt.Errorf("nextServer: %w", err)
		}
		opts.NextServer = addr
	}
	for _, o := range spec.Options {
		value, err := o.Encode()
		if err != nil {
			return nil, fmt.Errorf("option %d: %w", o.Code, err)
		}
		opts.Raw = append(opts.Raw, dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(o.Code), value))
	}
	return extraopts.New(opts), nil
}

func isDefaultRoute(r hyperdhcpv1beta1.StaticRoute) bool {
	p, err := netip.ParsePrefix(string(r.Destination))
	return err == nil && p.Bits() == 0
}

func stringsOf[S ~string](in []S) []string {
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = string(s)
	}
	return out
}
