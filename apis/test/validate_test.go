package test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/util/validation/field"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
)

func TestValidateAcceptsValidSpecs(t *testing.T) {
	spec := validSpec()
	assert.Empty(t, hyperdhcpv1beta1.ValidateSpec(&spec, field.NewPath("spec")))

	hyperdhcpv1beta1.SetDefaults(&spec)
	assert.Empty(t, hyperdhcpv1beta1.ValidateSpec(&spec, field.NewPath("spec")), "defaults must be valid")
}

func TestValidateNamesTheFieldAtFault(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*hyperdhcpv1beta1.ServerSpec)
		field  string
	}{
		{"bad server IP", func(s *hyperdhcpv1beta1.ServerSpec) { s.ServerIP = "nope" }, "spec.serverIP"},
		{"pool end outside subnet", func(s *hyperdhcpv1beta1.ServerSpec) { s.Pools[0].End = "192.168.51.1" }, "spec.pools[0].end"},
		{"second pool overlaps", func(s *hyperdhcpv1beta1.ServerSpec) {
			s.Pools = append(s.Pools, hyperdhcpv1beta1.AddressRange{Start: "192.168.50.199", End: "192.168.50.210"})
		}, "spec.pools[1]"},
		{"pool reversed", func(s *hyperdhcpv1beta1.ServerSpec) {
			s.Pools[0] = hyperdhcpv1beta1.AddressRange{Start: "192.168.50.20", End: "192.168.50.10"}
		}, "spec.pools[0]"},
		{"pool is the broadcast address", func(s *hyperdhcpv1beta1.ServerSpec) { s.Pools[0].End = "192.168.50.255" }, "spec.pools[0].end"},
		{"dns not IPv4", func(s *hyperdhcpv1beta1.ServerSpec) { s.DNS = []hyperdhcpv1beta1.IPv4Address{"::1"} }, "spec.dns[0]"},
		{"ntp malformed", func(s *hyperdhcpv1beta1.ServerSpec) { s.NTP = []hyperdhcpv1beta1.IPv4Address{"1.2.3"} }, "spec.ntp[0]"},
		{"boot file too long", func(s *hyperdhcpv1beta1.ServerSpec) {
			s.BootFile = string(make([]byte, 128))
		}, "spec.bootFile"},
		{"IPv4 option value", func(s *hyperdhcpv1beta1.ServerSpec) {
			s.Options = []hyperdhcpv1beta1.DHCPOption{{Code: 150, Type: hyperdhcpv1beta1.DHCPOptionIPv4, Value: "10.0.0.1,x"}}
		}, "spec.options[0].value"},
		{"kubevirt namespace", func(s *hyperdhcpv1beta1.ServerSpec) {
			s.KubeVirt = &hyperdhcpv1beta1.KubeVirtSpec{Namespaces: []string{"Not_A_Namespace"}}
		}, "spec.kubevirt.namespaces[0]"},
		{"attachment namespace", func(s *hyperdhcpv1beta1.ServerSpec) { s.NetworkAttachment.Namespace = "UPPER" }, "spec.networkAttachment.namespace"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec := validSpec()
			tc.mutate(&spec)
			errs := hyperdhcpv1beta1.ValidateSpec(&spec, field.NewPath("spec"))
			require.NotEmpty(t, errs)
			var fields []string
			for _, err := range errs {
				fields = append(fields, err.Field)
			}
			assert.Contains(t, fields, tc.field)
		})
	}
}

func TestDHCPOptionEncode(t *testing.T) {
	cases := []struct {
		option hyperdhcpv1beta1.DHCPOption
		want   []byte
	}{
		{hyperdhcpv1beta1.DHCPOption{Code: 252, Value: "wpad"}, []byte("wpad")},
		{hyperdhcpv1beta1.DHCPOption{Code: 224, Type: hyperdhcpv1beta1.DHCPOptionHex, Value: "0aFF"}, []byte{0x0a, 0xff}},
		{hyperdhcpv1beta1.DHCPOption{Code: 150, Type: hyperdhcpv1beta1.DHCPOptionIPv4, Value: "10.0.0.1,10.0.0.2"}, []byte{10, 0, 0, 1, 10, 0, 0, 2}},
		{hyperdhcpv1beta1.DHCPOption{Code: 46, Type: hyperdhcpv1beta1.DHCPOptionUInt8, Value: "8"}, []byte{8}},
		{hyperdhcpv1beta1.DHCPOption{Code: 57, Type: hyperdhcpv1beta1.DHCPOptionUInt16, Value: "1500"}, []byte{0x05, 0xdc}},
		{hyperdhcpv1beta1.DHCPOption{Code: 2, Type: hyperdhcpv1beta1.DHCPOptionUInt32, Value: "4294967295"}, []byte{0xff, 0xff, 0xff, 0xff}},
		{hyperdhcpv1beta1.DHCPOption{Code: 19, Type: hyperdhcpv1beta1.DHCPOptionBool, Value: "true"}, []byte{1}},
	}
	for _, tc := range cases {
		got, err := tc.option.Encode()
		require.NoError(t, err, "%+v", tc.option)
		assert.Equal(t, tc.want, got, "%+v", tc.option)
	}

	for _, bad := range []hyperdhcpv1beta1.DHCPOption{
		{Code: 1, Type: hyperdhcpv1beta1.DHCPOptionUInt16, Value: "65536"},
		{Code: 1, Type: hyperdhcpv1beta1.DHCPOptionUInt8, Value: "-1"},
		{Code: 1, Type: hyperdhcpv1beta1.DHCPOptionBool, Value: "yes"},
		{Code: 1, Type: hyperdhcpv1beta1.DHCPOptionHex, Value: "0g"},
		{Code: 1, Type: "Float", Value: "1.5"},
	} {
		_, err := bad.Encode()
		assert.Error(t, err, "%+v", bad)
	}
}

func TestBroadcastAddress(t *testing.T) {
	for prefix, want := range map[string]string{
		"192.168.50.2/24": "192.168.50.255",
		"10.20.0.2/16":    "10.20.255.255",
		"10.0.0.1/8":      "10.255.255.255",
		"172.16.5.9/21":   "172.16.7.255",
		"192.168.1.5/30":  "192.168.1.7",
	} {
		got := hyperdhcpv1beta1.BroadcastAddress(netip.MustParsePrefix(prefix))
		assert.Equal(t, netip.MustParseAddr(want), got, prefix)
	}
}

func TestServerHelpers(t *testing.T) {
	server := newServer("vms", validSpec())
	server.Namespace = "vms"
	assert.Equal(t, "vms", server.AttachmentNamespace())
	assert.Equal(t, []string{"vms"}, server.KubeVirtNamespaces())

	server.Spec.NetworkAttachment.Namespace = "networks"
	server.Spec.KubeVirt = &hyperdhcpv1beta1.KubeVirtSpec{Namespaces: []string{"a", "b"}}
	assert.Equal(t, "networks", server.AttachmentNamespace())
	assert.Equal(t, []string{"a", "b"}, server.KubeVirtNamespaces())

	server.Spec.KubeVirt = &hyperdhcpv1beta1.KubeVirtSpec{AllNamespaces: true}
	assert.Nil(t, server.KubeVirtNamespaces())
}
