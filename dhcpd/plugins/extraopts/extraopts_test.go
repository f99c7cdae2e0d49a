package extraopts

import (
	"net"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func handle(t *testing.T, args []string, requested ...dhcpv4.OptionCode) *dhcpv4.DHCPv4 {
	t.Helper()
	h, err := setup4(args...)
	require.NoError(t, err)
	req, err := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover), dhcpv4.WithRequestedOptions(requested...))
	require.NoError(t, err)
	resp, err := dhcpv4.NewReplyFromRequest(req)
	require.NoError(t, err)
	out, stop := h(req, resp)
	assert.False(t, stop, "extraopts only decorates")
	return out
}

func TestOptionsAreAdded(t *testing.T) {
	args := []string{"domain=lab.example", "ntp=10.0.0.123", "bootfile=pxelinux.0", "nextserver=10.0.0.10", "option=252:7770"}
	resp := handle(t, args, dhcpv4.OptionNTPServers, dhcpv4.OptionBootfileName)
	assert.Equal(t, "lab.example", resp.DomainName())
	assert.Equal(t, []net.IP{net.IPv4(10, 0, 0, 123).To4()}, resp.NTPServers())
	assert.Equal(t, "pxelinux.0", resp.BootFileName)
	assert.Equal(t, "pxelinux.0", resp.BootFileNameOption())
	assert.Equal(t, "10.0.0.10", resp.ServerIPAddr.String())
	assert.Equal(t, []byte{0x77, 0x70}, resp.GetOneOption(dhcpv4.GenericOptionCode(252)))
}

func TestRequestedOnlyOptionsWaitToBeAsked(t *testing.T) {
	resp := handle(t, []string{"ntp=10.0.0.123", "bootfile=pxelinux.0"}, dhcpv4.OptionSubnetMask)
	assert.False(t, resp.Options.Has(dhcpv4.OptionNTPServers))
	assert.False(t, resp.Options.Has(dhcpv4.OptionBootfileName))
	assert.Equal(t, "pxelinux.0", resp.BootFileName, "the BOOTP file field is always set")

	// No parameter request list at all means "send everything" (RFC 2131 3.5).
	resp = handle(t, []string{"ntp=10.0.0.123"})
	assert.True(t, resp.Options.Has(dhcpv4.OptionNTPServers))
}

func TestBadArguments(t *testing.T) {
	for _, bad := range [][]string{{"domain"}, {"ntp=x"}, {"nextserver=1.2.3"}, {"option=300:00"}, {"option=252:zz"}, {"option=252"}, {"color=red"}} {
		_, err := setup4(bad...)
		assert.Error(t, err, "%v", bad)
	}
}
