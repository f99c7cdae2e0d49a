// Package extraopts adds the DHCP options of a Server spec that CoreDHCP has
// no stock plugin for: the domain name (15), NTP servers (42), PXE boot
// (the file and siaddr fields, option 67) and the spec's raw options.
//
// As a CoreDHCP plugin it takes whitespace-separated key=value arguments:
//
//	domain=NAME          option 15
//	ntp=IP               option 42, when requested; repeatable
//	bootfile=NAME        the BOOTP file field, and option 67 when requested
//	nextserver=IP        siaddr: the TFTP server for bootfile
//	option=CODE:HEX      a raw option sent to every client; repeatable
//
// Place it after leasedb: it only decorates replies that are sent.
package extraopts

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/coredhcp/coredhcp/handler"
	"github.com/coredhcp/coredhcp/plugins"
	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Plugin registers extraopts for CoreDHCP configuration files.
var Plugin = plugins.Plugin{
	Name:   "extraopts",
	Setup4: setup4,
}

// Options is what the plugin adds.
type Options struct {
	DomainName string
	NTP        []netip.Addr
	BootFile   string
	NextServer netip.Addr
	Raw        []dhcpv4.Option
}

// Extra holds the options to add; its Handler4 is the plugin's handler.
type Extra struct {
	opts Options
	ntp  []net.IP
}

// New returns the plugin state for opts.
func New(opts Options) *Extra {
	e := &Extra{opts: opts}
	for _, a := range opts.NTP {
		e.ntp = append(e.ntp, net.IP(a.AsSlice()))
	}
	return e
}

// Handler4 decorates an OFFER or ACK.
func (e *Extra) Handler4(req, resp *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
	if e.opts.DomainName != "" {
		resp.UpdateOption(dhcpv4.OptDomainName(e.opts.DomainName))
	}
	if len(e.ntp) > 0 && req.IsOptionRequested(dhcpv4.OptionNTPServers) {
		resp.UpdateOption(dhcpv4.OptNTPServers(e.ntp...))
	}
	if e.opts.BootFile != "" {
		resp.BootFileName = e.opts.BootFile
		if req.IsOptionRequested(dhcpv4.OptionBootfileName) {
			resp.UpdateOption(dhcpv4.OptBootFileName(e.opts.BootFile))
		}
	}
	if e.opts.NextServer.IsValid() {
		resp.ServerIPAddr = net.IP(e.opts.NextServer.AsSlice())
	}
	for _, o := range e.opts.Raw {
		resp.UpdateOption(o)
	}
	return resp, false
}

func setup4(args ...string) (handler.Handler4, error) {
	var opts Options
	for _, arg := range args {
		key, value, ok := strings.Cut(arg, "=")
		if !ok {
			return nil, fmt.Errorf("extraopts: argument %q is not key=value", arg)
		}
		var err error
		switch key {
		case "domain":
			opts.DomainName = value
		case "ntp":
			var a netip.Addr
			a, err = netip.ParseAddr(value)
			opts.NTP = append(opts.NTP, a)
		case "bootfile":
			opts.BootFile = value
		case "nextserver":
			opts.NextServer, err = netip.ParseAddr(value)
		case "option":
			code, payload, found := strings.Cut(value, ":")
			var n uint64
			var data []byte
			if !found {
				err = fmt.Errorf("want CODE:HEX")
			} else if n, err = strconv.ParseUint(code, 10, 8); err == nil {
				data, err = hex.DecodeString(payload)
			}
			opts.Raw = append(opts.Raw, dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(n), data))
		default:
			err = fmt.Errorf("unknown key")
		}
		if err != nil {
			return nil, fmt.Errorf("extraopts: argument %q: %w", arg, err)
		}
	}
	return New(opts).Handler4, nil
}
