package server

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/coredhcp/coredhcp/handler"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/rfc1035label"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/extraopts"
)

// BuildChain returns the plugin chain for spec, in the order the steps
// must run: the server identifier first (every reply carries option 54),
// then the allocating plugin, which decides whether to answer at all, then
// the options, which only decorate replies that will be sent.
//
// The options are a pure function of spec held by the chain, not CoreDHCP's
// stock option plugins, whose settings are package variables: a chain can
// be built again for an edited spec and swapped in while the old one still
// answers (Server.Reconfigure). The steps do what the stock plugins
// serverid, netmask, router, dns, mtu, searchdomains and staticroute do.
func BuildChain(spec *hyperdhcpv1beta1.ServerSpec, allocate handler.Handler4) ([]handler.Handler4, error) {
	opts, err := replyOptionsFor(spec)
	if err != nil {
		return nil, err
	}
	return []handler.Handler4{opts.identify, allocate, opts.decorate}, nil
}

// replyOptions are the options of one spec that every answer carries.
type replyOptions struct {
	serverID net.IP
	netmask  net.IPMask
	router   []net.IP
	dns      []net.IP
	mtu      []byte
	search   *rfc1035label.Labels
	routes   dhcpv4.Routes
	extra    *extraopts.Extra
}

func replyOptionsFor(spec *hyperdhcpv1beta1.ServerSpec) (*replyOptions, error) {
	server, err := netip.ParsePrefix(string(spec.ServerIP))
	if err != nil || !server.Addr().Is4() {
		return nil, fmt.Errorf("serverIP %q: not an IPv4 address with a prefix length", spec.ServerIP)
	}
	o := &replyOptions{
		serverID: net.IP(server.Addr().AsSlice()),
		netmask:  net.CIDRMask(server.Bits(), 32),
	}
	if spec.Router != "" {
		router, err := hyperdhcpv1beta1.ParseIPv4(spec.Router)
		if err != nil {
			return nil, fmt.Errorf("router: %w", err)
		}
		o.router = []net.IP{net.IP(router.AsSlice())}
	}
	for _, s := range spec.DNS {
		a, err := hyperdhcpv1beta1.ParseIPv4(s)
		if err != nil {
			return nil, fmt.Errorf("dns: %w", err)
		}
		o.dns = append(o.dns, net.IP(a.AsSlice()))
	}
	if spec.MTU != nil {
		o.mtu = dhcpv4.Uint16(*spec.MTU).ToBytes()
	}
	if len(spec.DomainSearch) > 0 {
		o.search = &rfc1035label.Labels{Labels: stringsOf(spec.DomainSearch)}
	}
	if len(spec.StaticRoutes) > 0 {
		if len(o.router) > 0 && !slices.ContainsFunc(spec.StaticRoutes, isDefaultRoute) {
			// A client that takes option 121 ignores option 3 (RFC 3442):
			// without this route it would have no default gateway.
			o.routes = append(o.routes, &dhcpv4.Route{Dest: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, Router: o.router[0]})
		}
		for _, r := range spec.StaticRoutes {
			dest, err := netip.ParsePrefix(string(r.Destination))
			if err != nil || !dest.Addr().Is4() {
				return nil, fmt.Errorf("staticRoutes: destination %q is not an IPv4 prefix", r.Destination)
			}
			gateway, err := hyperdhcpv1beta1.ParseIPv4(r.Gateway)
			if err != nil {
				return nil, fmt.Errorf("staticRoutes: gateway: %w", err)
			}
			dest = dest.Masked()
			o.routes = append(o.routes, &dhcpv4.Route{
				Dest:   &net.IPNet{IP: net.IP(dest.Addr().AsSlice()), Mask: net.CIDRMask(dest.Bits(), 32)},
				Router: net.IP(gateway.AsSlice()),
			})
		}
	}
	if o.extra, err = extraOptions(spec); err != nil {
		return nil, err
	}
	return o, nil
}

// identify sets the server identifier (option 54 and siaddr), and drops a
// request addressed (siaddr) to another server.
func (o *replyOptions) identify(req, resp *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
	if req.ServerIPAddr != nil && !req.ServerIPAddr.IsUnspecified() && !req.ServerIPAddr.Equal(o.serverID) {
		return nil, true
	}
	resp.ServerIPAddr = slices.Clone(o.serverID)
	resp.UpdateOption(dhcpv4.OptServerIdentifier(o.serverID))
	return resp, false
}

// decorate adds the options of an OFFER or ACK; DNS servers, the MTU and
// the spec's extra options only when the client asks for them, the way
// the stock plugins did.
func (o *replyOptions) decorate(req, resp *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
	resp.UpdateOption(dhcpv4.OptSubnetMask(o.netmask))
	if len(o.router) > 0 {
		resp.UpdateOption(dhcpv4.OptRouter(o.router...))
	}
	if len(o.dns) > 0 && req.IsOptionRequested(dhcpv4.OptionDomainNameServer) {
		resp.UpdateOption(dhcpv4.OptDNS(o.dns...))
	}
	if o.mtu != nil && req.IsOptionRequested(dhcpv4.OptionInterfaceMTU) {
		resp.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionInterfaceMTU, o.mtu))
	}
	if o.search != nil {
		resp.UpdateOption(dhcpv4.OptDomainSearch(o.search))
	}
	if len(o.routes) > 0 {
		resp.UpdateOption(dhcpv4.Option{Code: dhcpv4.OptionClasslessStaticRoute, Value: o.routes})
	}
	return o.extra.Handler4(req, resp)
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
