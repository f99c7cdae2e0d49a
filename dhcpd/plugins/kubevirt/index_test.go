package kubevirt

import (
	"net"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubevirtv1 "kubevirt.io/api/core/v1"

	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

var lab = Network{Namespace: "vms", Name: "lab-bridge"}

// vmi builds a VMI with a pod network and one Multus interface per
// networkName, named net1, net2, ...
func vmi(namespace, name string, networkNames ...string) *kubevirtv1.VirtualMachineInstance {
	v := &kubevirtv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	v.Spec.Networks = []kubevirtv1.Network{{Name: "default", NetworkSource: kubevirtv1.NetworkSource{Pod: &kubevirtv1.PodNetwork{}}}}
	v.Spec.Domain.Devices.Interfaces = []kubevirtv1.Interface{{Name: "default", MacAddress: "02:00:00:00:00:ff"}}
	for i, nn := range networkNames {
		iface := "net" + string(rune('1'+i))
		v.Spec.Networks = append(v.Spec.Networks, kubevirtv1.Network{Name: iface,
			NetworkSource: kubevirtv1.NetworkSource{Multus: &kubevirtv1.MultusNetwork{NetworkName: nn}}})
		v.Spec.Domain.Devices.Interfaces = append(v.Spec.Domain.Devices.Interfaces, kubevirtv1.Interface{Name: iface})
	}
	return v
}

func mac(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }

func TestIndexFindsOnlyInterfacesOnTheServedNetwork(t *testing.T) {
	x := NewIndex(lab)
	v := vmi("vms", "Web_1", "lab-bridge", "other-net", "vms/lab-bridge")
	v.Spec.Domain.Devices.Interfaces[1].MacAddress = "02:00:5E:00:00:01"
	v.Status.Interfaces = []kubevirtv1.VirtualMachineInstanceNetworkInterface{
		{Name: "net2", MAC: "02:00:5e:00:00:02"}, // on another network
		{Name: "net3", MAC: "02:00:5e:00:00:03"}, // chosen by KubeVirt, only in the status
	}
	x.SetVMI(v)
	id, ok := x.Resolve(mac("02:00:5e:00:00:01"))
	require.True(t, ok, "networkName in the VMI's namespace")
	assert.Equal(t, leasedb.Identity{Key: "vm:vms/Web_1/net1", Hostname: "web-1"}, id)
	id, ok = x.Resolve(mac("02:00:5e:00:00:03"))
	require.True(t, ok, "namespace/name and a MAC from the status")
	assert.Equal(t, "vm:vms/Web_1/net3", id.Key)
	_, ok = x.Resolve(mac("02:00:5e:00:00:02"))
	assert.False(t, ok, "another network")
	_, ok = x.Resolve(mac("02:00:00:00:00:ff"))
	assert.False(t, ok, "the pod network")

	x.SetVMI(vmi("other", "db", "lab-bridge"))
	x.DeleteVMI("vms", "Web_1")
	assert.Equal(t, 0, x.Len(), "a VMI of another namespace naming lab-bridge means its own namespace's network")
}

func TestIndexFollowsAMACChangeAndKeepsTheIdentity(t *testing.T) {
	x := NewIndex(lab)
	v := vmi("vms", "web", "lab-bridge")
	v.Spec.Domain.Devices.Interfaces[1].MacAddress = "02:00:5e:00:00:01"
	x.SetVMI(v)
	v = v.DeepCopy()
	v.Spec.Domain.Devices.Interfaces[1].MacAddress = "02:00:5e:00:00:09"
	x.SetVMI(v)
	_, old := x.Resolve(mac("02:00:5e:00:00:01"))
	assert.False(t, old)
	id, ok := x.Resolve(mac("02:00:5e:00:00:09"))
	require.True(t, ok)
	assert.Equal(t, "vm:vms/web/net1", id.Key)
}

func TestPins(t *testing.T) {
	x := NewIndex(lab)
	x.SetVMPins("vms", "web", map[string]string{PinAnnotationPrefix + "net1": "192.168.50.20"})
	web := vmi("vms", "web", "lab-bridge")
	web.Spec.Domain.Devices.Interfaces[1].MacAddress = "02:00:5e:00:00:01"
	x.SetVMI(web)
	id, _ := x.Resolve(mac("02:00:5e:00:00:01"))
	assert.Equal(t, netip.MustParseAddr("192.168.50.20"), id.Pin, "the VM's annotation pins the VMI")
	owner, ok := x.PinnedBy(netip.MustParseAddr("192.168.50.20"))
	assert.True(t, ok)
	assert.Equal(t, "vm:vms/web/net1", owner)

	clash := vmi("vms", "clash", "lab-bridge")
	clash.Annotations = map[string]string{PinAnnotationPrefix + "net1": "192.168.50.20"}
	clash.Spec.Domain.Devices.Interfaces[1].MacAddress = "02:00:5e:00:00:02"
	x.SetVMI(clash)
	id, _ = x.Resolve(mac("02:00:5e:00:00:02"))
	assert.False(t, id.Pin.IsValid(), "a pin another VM holds is refused")
	why, refused := x.Refused("vm:vms/clash/net1")
	assert.True(t, refused)
	assert.Contains(t, why, "pinned to vm:vms/web/net1")

	bad := vmi("vms", "bad", "lab-bridge")
	bad.Annotations = map[string]string{PinAnnotationPrefix + "net1": "not-an-ip"}
	x.SetVMI(bad)
	_, refused = x.Refused("vm:vms/bad/net1")
	assert.True(t, refused)

	x.DeleteVMI("vms", "web")
	_, ok = x.PinnedBy(netip.MustParseAddr("192.168.50.20"))
	assert.False(t, ok, "a deleted VMI releases its pin")
}

func TestHostName(t *testing.T) {
	assert.Equal(t, "web-1", HostName("Web_1"))
	assert.Equal(t, "a-b", HostName("-a.b-"))
	long := ""
	for range 70 {
		long += "a"
	}
	assert.Len(t, HostName(long), 63)
}
