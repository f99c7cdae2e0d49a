// Package kubevirt tells hyperdhcpd which KubeVirt virtual machine a MAC
// address belongs to. It keeps an index of the VirtualMachineInstances on
// the Server's network, fed by an informer, and implements leasedb's
// Resolver from it: the lease of a VM's interface is keyed by the VM's
// identity (namespace, name, interface), not by its MAC or client
// identifier, so it survives restarts, migrations and MAC changes.
package kubevirt

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"k8s.io/apimachinery/pkg/types"
	kubevirtv1 "kubevirt.io/api/core/v1"

	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

// PinAnnotationPrefix, followed by an interface name, pins that interface
// of a VM to an address: hyperdhcp.io/ip.default: 192.168.50.20. It is read
// from the VirtualMachine and from the VMI; the VMI's wins.
const PinAnnotationPrefix = "hyperdhcp.io/ip."

// Network names the Multus NetworkAttachmentDefinition the Server serves.
type Network struct {
	Namespace, Name string
}

// nic is one interface of one VM on the served network.
type nic struct {
	identity leasedb.Identity
	macs     []string
	refusal  string // why a pin annotation was not taken
}

// Index maps the MACs of VM interfaces on one network to their VMs. It is
// safe for concurrent use: the informer writes, packets read.
type Index struct {
	network Network

	mu    sync.RWMutex
	objs  map[types.NamespacedName]*kubevirtv1.VirtualMachineInstance
	vmis  map[types.NamespacedName][]nic // what each VMI contributed, to take it out again
	vmPin map[types.NamespacedName]map[string]string
	byMAC map[string]leasedb.Identity
	pins  map[netip.Addr]string // pinned address -> identity key
	// refused are pins that could not be taken, by identity key, with why.
	refused map[string]string
}

// NewIndex returns an empty index for network.
func NewIndex(network Network) *Index {
	return &Index{
		network: network,
		objs:    map[types.NamespacedName]*kubevirtv1.VirtualMachineInstance{},
		vmis:    map[types.NamespacedName][]nic{},
		vmPin:   map[types.NamespacedName]map[string]string{},
		byMAC:   map[string]leasedb.Identity{},
		pins:    map[netip.Addr]string{},
		refused: map[string]string{},
	}
}

// Key is the lease key of a VM's interface.
func Key(namespace, name, iface string) string { return "vm:" + namespace + "/" + name + "/" + iface }

// Resolve implements leasedb.Resolver.
func (x *Index) Resolve(mac net.HardwareAddr) (leasedb.Identity, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	id, ok := x.byMAC[mac.String()]
	return id, ok
}

// PinnedBy implements leasedb.Resolver.
func (x *Index) PinnedBy(ip netip.Addr) (string, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	key, ok := x.pins[ip]
	return key, ok
}

// Refused returns why the pin of the identity key was not taken, if it was not.
func (x *Index) Refused(key string) (string, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	why, ok := x.refused[key]
	return why, ok
}

// Len is the number of MACs indexed.
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.byMAC)
}

// SetVMI adds or replaces what vmi says about its interfaces on the network.
// The index keeps vmi: the caller must not change it afterwards. It returns
// the pins it refused, by identity key.
func (x *Index) SetVMI(vmi *kubevirtv1.VirtualMachineInstance) map[string]string {
	name := types.NamespacedName{Namespace: vmi.Namespace, Name: vmi.Name}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.objs[name] = vmi
	return x.reindex(name)
}

// VMI returns the indexed VMI namespace/name, as the cache stripped it.
func (x *Index) VMI(namespace, name string) (*kubevirtv1.VirtualMachineInstance, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	vmi, ok := x.objs[types.NamespacedName{Namespace: namespace, Name: name}]
	return vmi, ok
}

// DeleteVMI forgets a VMI.
func (x *Index) DeleteVMI(namespace, name string) {
	key := types.NamespacedName{Namespace: namespace, Name: name}
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.objs, key)
	x.remove(key)
}

// SetVMPins records the pin annotations of a VirtualMachine, which apply to
// its VMI's interfaces that have none of their own. It returns the pins it
// refused, by identity key.
func (x *Index) SetVMPins(namespace, name string, annotations map[string]string) map[string]string {
	pins := pinAnnotations(annotations)
	key := types.NamespacedName{Namespace: namespace, Name: name}
	x.mu.Lock()
	defer x.mu.Unlock()
	if len(pins) == 0 {
		delete(x.vmPin, key)
	} else {
		x.vmPin[key] = pins
	}
	return x.reindex(key)
}

// reindex recomputes what the VMI name contributes and returns the pins it
// refused; with mu held.
func (x *Index) reindex(name types.NamespacedName) map[string]string {
	x.remove(name)
	vmi := x.objs[name]
	if vmi == nil {
		return nil
	}
	nics := x.nicsOf(vmi, x.vmPin[name])
	x.vmis[name] = nics
	x.add(nics)
	var refused map[string]string
	for _, n := range nics {
		if why, ok := x.refused[n.identity.Key]; ok {
			if refused == nil {
				refused = map[string]string{}
			}
			refused[n.identity.Key] = why
		}
	}
	return refused
}

func pinAnnotations(annotations map[string]string) map[string]string {
	pins := map[string]string{}
	for k, v := range annotations {
		if iface, ok := strings.CutPrefix(k, PinAnnotationPrefix); ok {
			pins[iface] = v
		}
	}
	return pins
}

// remove takes out what a VMI contributed; with mu held.
func (x *Index) remove(name types.NamespacedName) {
	for _, n := range x.vmis[name] {
		for _, mac := range n.macs {
			if x.byMAC[mac].Key == n.identity.Key {
				delete(x.byMAC, mac)
			}
		}
		if n.identity.Pin.IsValid() && x.pins[n.identity.Pin] == n.identity.Key {
			delete(x.pins, n.identity.Pin)
		}
		delete(x.refused, n.identity.Key)
	}
	delete(x.vmis, name)
}

// add indexes nics; a pin another VM holds is refused; with mu held.
func (x *Index) add(nics []nic) {
	for i := range nics {
		n := &nics[i]
		if n.refusal != "" {
			x.refused[n.identity.Key] = n.refusal
		}
		if pin := n.identity.Pin; pin.IsValid() {
			if owner, taken := x.pins[pin]; taken && owner != n.identity.Key {
				x.refused[n.identity.Key] = fmt.Sprintf("address %s is pinned to %s already", pin, owner)
				n.identity.Pin = netip.Addr{}
			} else {
				x.pins[pin] = n.identity.Key
			}
		}
		for _, mac := range n.macs {
			x.byMAC[mac] = n.identity
		}
	}
}

// nicsOf reads the interfaces of vmi that are on the network.
func (x *Index) nicsOf(vmi *kubevirtv1.VirtualMachineInstance, vmPins map[string]string) []nic {
	onNetwork := map[string]bool{}
	for _, n := range vmi.Spec.Networks {
		if n.Multus != nil && x.isOurs(vmi.Namespace, n.Multus.NetworkName) {
			onNetwork[n.Name] = true
		}
	}
	if len(onNetwork) == 0 {
		return nil
	}
	pins := pinAnnotations(vmi.Annotations)
	var out []nic
	var names []string // out[i] is interface names[i]
	for _, iface := range vmi.Spec.Domain.Devices.Interfaces {
		if !onNetwork[iface.Name] {
			continue
		}
		id := leasedb.Identity{Key: Key(vmi.Namespace, vmi.Name, iface.Name), Hostname: HostName(vmi.Name)}
		raw, ok := pins[iface.Name]
		if !ok {
			raw, ok = vmPins[iface.Name]
		}
		var refusal string
		if ok {
			if pin, err := netip.ParseAddr(strings.TrimSpace(raw)); err == nil && pin.Is4() {
				id.Pin = pin
			} else {
				refusal = fmt.Sprintf("annotation %s%s: %q is not an IPv4 address", PinAnnotationPrefix, iface.Name, raw)
			}
		}
		n := nic{identity: id, refusal: refusal}
		if mac := normalMAC(iface.MacAddress); mac != "" {
			n.macs = append(n.macs, mac)
		}
		out, names = append(out, n), append(names, iface.Name)
	}
	// The status has the MAC KubeVirt chose when the spec names none.
	for _, st := range vmi.Status.Interfaces {
		if i := slices.Index(names, st.Name); i >= 0 {
			if mac := normalMAC(st.MAC); mac != "" && !slices.Contains(out[i].macs, mac) {
				out[i].macs = append(out[i].macs, mac)
			}
		}
	}
	return out
}

// isOurs reports whether a Multus networkName ("name" in the VMI's
// namespace, or "namespace/name") is the served network.
func (x *Index) isOurs(vmiNamespace, networkName string) bool {
	ns, name, qualified := strings.Cut(networkName, "/")
	if !qualified {
		ns, name = vmiNamespace, networkName
	}
	return ns == x.network.Namespace && name == x.network.Name
}

func normalMAC(s string) string {
	mac, err := net.ParseMAC(strings.TrimSpace(s))
	if err != nil || len(mac) != 6 {
		return ""
	}
	return mac.String()
}

// HostName makes a VM name a valid DNS label for option 12: lower case,
// letters, digits and '-', at most 63 characters, no '-' at either end.
func HostName(name string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	label := b.String()
	if len(label) > 63 {
		label = label[:63]
	}
	return strings.Trim(label, "-")
}
