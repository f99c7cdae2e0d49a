package leasedb

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
)

func TestOptionsFromSpecNeverLeaseTheGateways(t *testing.T) {
	spec := hyperdhcpv1beta1.ServerSpec{
		ServerIP:     "192.168.50.2/24",
		Pools:        []hyperdhcpv1beta1.AddressRange{{Start: "192.168.50.1", End: "192.168.50.99"}},
		Router:       "192.168.50.1",
		StaticRoutes: []hyperdhcpv1beta1.StaticRoute{{Destination: "10.0.0.0/8", Gateway: "192.168.50.9"}},
		Exclude:      []hyperdhcpv1beta1.IPv4Address{"192.168.50.9"},
	}
	opts, err := OptionsFromSpec(&spec)
	require.NoError(t, err)
	assert.ElementsMatch(t, []netip.Addr{netip.MustParseAddr("192.168.50.1"), netip.MustParseAddr("192.168.50.9")}, opts.Exclude)
	assert.False(t, opts.IdentifyByMAC, "the client identifier keys leases by default")

	spec.IdentifyClientsBy = hyperdhcpv1beta1.IdentifyByMAC
	opts, err = OptionsFromSpec(&spec)
	require.NoError(t, err)
	assert.True(t, opts.IdentifyByMAC)
}
