package v1beta1

import (
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The CEL rules below use Kubernetes' IP and CIDR libraries (isIP, ip, isCIDR,
// cidr). CEL has no ordering on IP values, so where a rule needs "a <= b" it
// turns a dotted quad into an integer with split/int; every such rule is
// guarded by isIP so it only runs on well-formed IPv4 strings.

// IPv4Address is a dotted-quad IPv4 address such as 192.168.50.10.
// +kubebuilder:validation:MaxLength=15
// +kubebuilder:validation:XValidation:rule="isIP(self) && ip(self).family() == 4",message="must be an IPv4 address such as 192.168.50.10"
type IPv4Address string

// IPv4Prefix is an IPv4 address with a prefix length, such as 192.168.50.0/24.
// +kubebuilder:validation:MaxLength=18
// +kubebuilder:validation:XValidation:rule="isCIDR(self) && cidr(self).ip().family() == 4",message="must be an IPv4 address with a prefix length, such as 192.168.50.0/24"
type IPv4Prefix string

// MACAddress is an Ethernet hardware address such as 02:00:5e:10:00:01
// (upper case and dashes are accepted too).
// +kubebuilder:validation:MaxLength=17
// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$')",message="must be a MAC address such as 02:00:5e:10:00:01"
type MACAddress string

// DNSName is a host or domain name (RFC 1123 subdomain).
// +kubebuilder:validation:MaxLength=253
// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="must be a lower-case DNS name such as example.internal"
type DNSName string

// Server describes one DHCPv4 service on a Multus secondary network. The
// operator turns it into a hyperdhcpd Deployment with its configuration,
// lease database and least-privileged RBAC.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=dhcps,categories=hyperdhcp
// +kubebuilder:printcolumn:name="Network",type=string,JSONPath=`.spec.networkAttachment.name`
// +kubebuilder:printcolumn:name="Server IP",type=string,JSONPath=`.spec.serverIP`
// +kubebuilder:printcolumn:name="Used",type=integer,JSONPath=`.status.pool.used`
// +kubebuilder:printcolumn:name="Free",type=integer,JSONPath=`.status.pool.free`
// +kubebuilder:printcolumn:name="Generation",type=integer,JSONPath=`.metadata.generation`
// +kubebuilder:printcolumn:name="Served",type=integer,JSONPath=`.status.served.generation`
// +kubebuilder:printcolumn:name="Active",type=string,JSONPath=`.status.highAvailability.active`,priority=10
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=10
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name.size() <= 42",message="a Server's name must be at most 42 characters: the operator derives child names and labels from it"
type Server struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired DHCP service.
	// +required
	Spec ServerSpec `json:"spec"`

	// status is what the operator and hyperdhcpd observed.
	// +optional
	Status ServerStatus `json:"status,omitempty"`
}

// ServerSpec is the desired DHCP service.
//
// +kubebuilder:validation:XValidation:rule="!isCIDR(self.serverIP) || self.pools.all(p, (!isIP(p.start) || cidr(self.serverIP).containsIP(p.start)) && (!isIP(p.end) || cidr(self.serverIP).containsIP(p.end)))",message="every pool must lie inside the subnet of serverIP",fieldPath=".pools"
// +kubebuilder:validation:XValidation:rule="!isCIDR(self.serverIP) || cidr(self.serverIP).ip().family() != 4 || self.pools.all(p, !isIP(p.start) || !isIP(p.end) || ip(p.start).family() != 4 || ip(p.end).family() != 4 || (int(self.serverIP.split('/')[0].split('.')[0]) * 16777216 + int(self.serverIP.split('/')[0].split('.')[1]) * 65536 + int(self.serverIP.split('/')[0].split('.')[2]) * 256 + int(self.serverIP.split('/')[0].split('.')[3])) < (int(p.start.split('.')[0]) * 16777216 + int(p.start.split('.')[1]) * 65536 + int(p.start.split('.')[2]) * 256 + int(p.start.split('.')[3])) || (int(self.serverIP.split('/')[0].split('.')[0]) * 16777216 + int(self.serverIP.split('/')[0].split('.')[1]) * 65536 + int(self.serverIP.split('/')[0].split('.')[2]) * 256 + int(self.serverIP.split('/')[0].split('.')[3])) > (int(p.end.split('.')[0]) * 16777216 + int(p.end.split('.')[1]) * 65536 + int(p.end.split('.')[2]) * 256 + int(p.end.split('.')[3])))",message="serverIP must not lie inside a pool: the server would hand out its own address",fieldPath=".pools"
// +kubebuilder:validation:XValidation:rule="!isCIDR(self.serverIP) || !has(self.exclude) || self.exclude.all(a, !isIP(a) || cidr(self.serverIP).containsIP(a))",message="every excluded address must lie inside the subnet of serverIP",fieldPath=".exclude"
// +kubebuilder:validation:XValidation:rule="!isCIDR(self.serverIP) || !has(self.router) || !isIP(self.router) || cidr(self.serverIP).containsIP(self.router)",message="router must lie inside the subnet of serverIP: clients can only reach an on-link router",fieldPath=".router"
// +kubebuilder:validation:XValidation:rule="!isCIDR(self.serverIP) || !has(self.staticRoutes) || self.staticRoutes.all(r, !isIP(r.gateway) || cidr(self.serverIP).containsIP(r.gateway))",message="every static route gateway must lie inside the subnet of serverIP",fieldPath=".staticRoutes"
// +kubebuilder:validation:XValidation:rule="!isCIDR(self.serverIP) || !has(self.reservations) || self.reservations.all(r, !isIP(r.ip) || cidr(self.serverIP).containsIP(r.ip))",message="every reservation must lie inside the subnet of serverIP",fieldPath=".reservations"
// +kubebuilder:validation:XValidation:rule="!isCIDR(self.serverIP) || !has(self.reservations) || self.reservations.all(r, r.ip != self.serverIP.split('/')[0])",message="a reservation must not use the server's own address",fieldPath=".reservations"
type ServerSpec struct {
	// networkAttachment names the Multus NetworkAttachmentDefinition the
	// server's pod joins.
	// +required
	NetworkAttachment NetworkAttachment `json:"networkAttachment"`

	// serverIP is the server's own address on the network, with the subnet's
	// prefix length (for example 192.168.50.2/24). It gives the subnet that
	// is served and the server identifier (option 54).
	// +required
	// +kubebuilder:validation:XValidation:rule="!isCIDR(self) || cidr(self).prefixLength() >= 8 && cidr(self).prefixLength() <= 30",message="serverIP's prefix length must be between /8 and /30"
	ServerIP IPv4Prefix `json:"serverIP"`

	// pools are the address ranges leased to clients that have no
	// reservation. Ranges must not overlap.
	// +required
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	Pools []AddressRange `json:"pools"`

	// exclude lists addresses inside the pools that must never be leased
	// (for example a statically configured host).
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +listType=set
	Exclude []IPv4Address `json:"exclude,omitempty"`

	// leaseTime is how long a lease lasts (option 51), for example 30m or 12h.
	// At least 1m. Defaults to 1h.
	// +optional
	// +kubebuilder:default="1h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$') && duration(self) >= duration('1m') && duration(self) <= duration('8760h')",message="leaseTime must be a duration between 1m and 8760h, such as 30m or 12h"
	LeaseTime *metav1.Duration `json:"leaseTime,omitempty"`

	// router is the default gateway offered to clients (option 3). It must lie
	// inside the subnet. An address of a pool that is the router (or a static
	// route's gateway) is never leased. With staticRoutes, the router is also
	// sent as option 121's default route, because clients that understand
	// option 121 ignore option 3 (RFC 3442).
	// +optional
	Router IPv4Address `json:"router,omitempty"`

	// dns lists DNS servers offered to clients (option 6), in order of preference.
	// +optional
	// +kubebuilder:validation:MaxItems=8
	// +listType=atomic
	DNS []IPv4Address `json:"dns,omitempty"`

	// domainName is the client's DNS domain (option 15).
	// +optional
	DomainName DNSName `json:"domainName,omitempty"`

	// domainSearch lists DNS search domains (option 119).
	// +optional
	// +kubebuilder:validation:MaxItems=8
	// +listType=atomic
	DomainSearch []DNSName `json:"domainSearch,omitempty"`

	// ntp lists NTP servers offered to clients (option 42).
	// +optional
	// +kubebuilder:validation:MaxItems=8
	// +listType=atomic
	NTP []IPv4Address `json:"ntp,omitempty"`

	// mtu is the interface MTU offered to clients (option 26).
	// +optional
	// +kubebuilder:validation:Minimum=68
	// +kubebuilder:validation:Maximum=65535
	MTU *int32 `json:"mtu,omitempty"`

	// staticRoutes are classless static routes offered to clients (option 121).
	// Their gateways are never leased from a pool.
	// +optional
	// +kubebuilder:validation:MaxItems=32
	// +listType=atomic
	StaticRoutes []StaticRoute `json:"staticRoutes,omitempty"`

	// bootFile is the PXE boot file name (the BOOTP file field and option 67).
	// +optional
	// +kubebuilder:validation:MaxLength=127
	BootFile string `json:"bootFile,omitempty"`

	// nextServer is the TFTP server that holds bootFile (siaddr).
	// +optional
	NextServer IPv4Address `json:"nextServer,omitempty"`

	// options are further DHCP options sent to every client, for anything that
	// has no field of its own. At most one entry per code.
	// +optional
	// +kubebuilder:validation:MaxItems=32
	// +listType=map
	// +listMapKey=code
	Options []DHCPOption `json:"options,omitempty"`

	// reservations pin an address (and optionally a host name) to a MAC
	// address. A reserved address may lie inside or outside the pools.
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:XValidation:rule="self.all(r, self.exists_one(o, o.mac.lowerAscii().replace('-', ':') == r.mac.lowerAscii().replace('-', ':')))",message="each MAC address may have only one reservation"
	// +kubebuilder:validation:XValidation:rule="self.all(r, self.exists_one(o, o.ip == r.ip))",message="each address may be reserved only once"
	// +listType=atomic
	Reservations []Reservation `json:"reservations,omitempty"`

	// identifyClientsBy says what identifies a client that is not a KubeVirt
	// VM, and so which lease is its: ClientID uses the client identifier
	// (option 61) when the client sends one and the MAC otherwise, as RFC
	// 2131 asks; MAC always uses the hardware address, for guests that send a
	// different client identifier on each boot (Kea: match-client-id false).
	// +optional
	// +kubebuilder:default=ClientID
	IdentifyClientsBy ClientIdentity `json:"identifyClientsBy,omitempty"`

	// kubevirt configures how the server recognises KubeVirt virtual machines.
	// A VM's lease is keyed by the VM (namespace, name, interface), so it keeps
	// its address across restarts, migrations and MAC changes; the VM's name is
	// its host name. The annotation hyperdhcp.io/ip.<interface>: <IPv4> on the
	// VirtualMachine, its template or the VMI pins that interface's address.
	// +optional
	// +kubebuilder:default={}
	KubeVirt *KubeVirtSpec `json:"kubevirt,omitempty"`

	// storage configures the volume that holds the lease database.
	// +optional
	// +kubebuilder:default={}
	Storage *StorageSpec `json:"storage,omitempty"`

	// conflictDetection probes an address on the served network before it
	// is offered (RFC 2131 section 2.2), so an address that a hand-configured
	// guest, a VM restored from a snapshot or an appliance already uses is
	// never handed out. On by default.
	// +optional
	// +kubebuilder:default={}
	ConflictDetection *ConflictDetectionSpec `json:"conflictDetection,omitempty"`

	// highAvailability runs a second hyperdhcpd as a hot standby, with its
	// own lease volume and address, on another node: the active one
	// replicates every lease to it before acknowledging it, and a
	// Kubernetes Lease decides which one answers, so the standby takes over
	// within seconds when the active's node fails (docs/design/ha.md).
	// +optional
	HighAvailability *HighAvailabilitySpec `json:"highAvailability,omitempty"`

	// image overrides the hyperdhcpd container image the operator deploys.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Image string `json:"image,omitempty"`

	// resources are the compute resources of the hyperdhcpd container.
	// +optional
	Resources *ResourceRequirements `json:"resources,omitempty"`

	// nodeSelector constrains the nodes the hyperdhcpd pod may run on.
	// +optional
	// +kubebuilder:validation:MaxProperties=32
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`

	// tolerations let the hyperdhcpd pod run on tainted nodes.
	// +optional
	// +kubebuilder:validation:MaxItems=32
	// +listType=atomic
	Tolerations []Toleration `json:"tolerations,omitempty"`
}

// NetworkAttachment refers to a Multus NetworkAttachmentDefinition.
type NetworkAttachment struct {
	// name of the NetworkAttachmentDefinition.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// namespace of the NetworkAttachmentDefinition. Defaults to the Server's
	// namespace.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Namespace string `json:"namespace,omitempty"`

	// interface is the name of the attachment's interface inside the pod.
	// Defaults to net1.
	// +optional
	// +kubebuilder:default=net1
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=15
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-zA-Z0-9_.-]+$')",message="interface must be a Linux interface name: at most 15 letters, digits, '.', '_' or '-'"
	Interface string `json:"interface,omitempty"`
}

// AddressRange is an inclusive range of IPv4 addresses.
//
// +kubebuilder:validation:XValidation:rule="!isIP(self.start) || !isIP(self.end) || ip(self.start).family() != 4 || ip(self.end).family() != 4 || (int(self.start.split('.')[0]) * 16777216 + int(self.start.split('.')[1]) * 65536 + int(self.start.split('.')[2]) * 256 + int(self.start.split('.')[3])) <= (int(self.end.split('.')[0]) * 16777216 + int(self.end.split('.')[1]) * 65536 + int(self.end.split('.')[2]) * 256 + int(self.end.split('.')[3]))",message="a pool's start must not come after its end"
type AddressRange struct {
	// start is the first address of the range.
	// +required
	Start IPv4Address `json:"start"`

	// end is the last address of the range (inclusive).
	// +required
	End IPv4Address `json:"end"`
}

// StaticRoute is one classless static route (RFC 3442).
type StaticRoute struct {
	// destination is the routed network, for example 10.20.0.0/16.
	// +required
	Destination IPv4Prefix `json:"destination"`

	// gateway is the next hop; it must lie inside the server's subnet.
	// +required
	Gateway IPv4Address `json:"gateway"`
}

// DHCPOptionType says how a DHCPOption's value is encoded on the wire.
// +kubebuilder:validation:Enum=Text;Hex;IPv4;UInt8;UInt16;UInt32;Bool
type DHCPOptionType string

// The encodings of a DHCPOption value.
const (
	// DHCPOptionText sends the value's bytes as they are.
	DHCPOptionText DHCPOptionType = "Text"
	// DHCPOptionHex sends the bytes spelled by an even number of hex digits.
	DHCPOptionHex DHCPOptionType = "Hex"
	// DHCPOptionIPv4 sends a comma-separated list of IPv4 addresses.
	DHCPOptionIPv4 DHCPOptionType = "IPv4"
	// DHCPOptionUInt8 sends one byte.
	DHCPOptionUInt8 DHCPOptionType = "UInt8"
	// DHCPOptionUInt16 sends a big-endian 16-bit number.
	DHCPOptionUInt16 DHCPOptionType = "UInt16"
	// DHCPOptionUInt32 sends a big-endian 32-bit number.
	DHCPOptionUInt32 DHCPOptionType = "UInt32"
	// DHCPOptionBool sends one byte, 1 for true and 0 for false.
	DHCPOptionBool DHCPOptionType = "Bool"
)

// DHCPOption is one raw DHCP option sent to every client.
//
// +kubebuilder:validation:XValidation:rule="!has(self.type) || self.type != 'Hex' || self.value.matches('^([0-9a-fA-F]{2})+$')",message="a Hex option value must be an even number of hex digits, such as 0a0b"
// +kubebuilder:validation:XValidation:rule="!has(self.type) || self.type != 'IPv4' || self.value.split(',').all(a, isIP(a) && ip(a).family() == 4)",message="an IPv4 option value must be a comma-separated list of IPv4 addresses, such as 10.0.0.1,10.0.0.2"
// +kubebuilder:validation:XValidation:rule="!has(self.type) || !(self.type in ['UInt8', 'UInt16', 'UInt32']) || (self.value.matches('^[0-9]{1,10}$') && int(self.value) <= (self.type == 'UInt8' ? 255 : self.type == 'UInt16' ? 65535 : 4294967295))",message="a UInt8, UInt16 or UInt32 option value must be a decimal number that fits its size"
// +kubebuilder:validation:XValidation:rule="!has(self.type) || self.type != 'Bool' || self.value in ['true', 'false']",message="a Bool option value must be true or false"
type DHCPOption struct {
	// code is the option number, 1 to 254. Codes that hyperdhcpd sets itself
	// (subnet mask, router, DNS, domain name, MTU, NTP, lease time, message
	// type, server identifier, renewal times, boot file, domain search,
	// static routes) and client-only codes are refused: use the dedicated
	// fields instead.
	// +required
	// +kubebuilder:validation:XValidation:rule="self >= 1 && self <= 254",message="option code must be between 1 and 254 (0 is padding and 255 marks the end)"
	// +kubebuilder:validation:XValidation:rule="!(self in [1, 3, 6, 15, 26, 42, 50, 51, 52, 53, 54, 55, 57, 58, 59, 61, 67, 82, 119, 121])",message="this option code is set by hyperdhcpd itself or only sent by clients: use the dedicated Server field instead"
	Code int32 `json:"code"`

	// type says how value is encoded. Defaults to Text.
	// +optional
	// +kubebuilder:default=Text
	Type DHCPOptionType `json:"type,omitempty"`

	// value is the option's content, encoded as type says.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=255
	Value string `json:"value"`
}

// Reservation pins an address to a client's MAC address.
type Reservation struct {
	// mac is the client's hardware address.
	// +required
	MAC MACAddress `json:"mac"`

	// ip is the address the client always receives.
	// +required
	IP IPv4Address `json:"ip"`

	// hostname is sent to the client as its host name (option 12).
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="hostname must be one lower-case DNS label such as web-1"
	Hostname string `json:"hostname,omitempty"`
}

// ClientIdentity is what keys a client's lease.
// +kubebuilder:validation:Enum=ClientID;MAC
type ClientIdentity string

// The ways to identify a client.
const (
	IdentifyByClientID ClientIdentity = "ClientID"
	IdentifyByMAC      ClientIdentity = "MAC"
)

// KubeVirtSpec configures how the server recognises KubeVirt virtual machines.
// A VM's lease is keyed by the VM (namespace, name, interface), so it keeps
// its address across restarts, migrations and MAC changes; the VM's name is
// its host name. The annotation hyperdhcp.io/ip.<interface>: <IPv4> on the
// VirtualMachine, its template or the VMI pins that interface's address.
//
// +kubebuilder:validation:XValidation:rule="!(has(self.allNamespaces) && self.allNamespaces && has(self.namespaces) && size(self.namespaces) > 0)",message="set either allNamespaces or namespaces, not both"
type KubeVirtSpec struct {
	// enabled turns VM awareness on: MACs of VirtualMachineInstances on this
	// network get the VM's name as host name and keep their address for the
	// VM's lifetime. Defaults to true.
	// +optional
	// +kubebuilder:default=true
	Enabled *bool `json:"enabled,omitempty"`

	// namespaces lists the namespaces whose VMs this server serves. Empty
	// means the Server's own namespace, which is always served. Another
	// namespace is served only once it consents: its Namespace object
	// carries the annotation hyperdhcp.io/allow-servers, a comma-separated
	// list of <namespace>/<server> naming this Server (or <namespace>/* for
	// every Server of that namespace). Until then the operator grants no
	// access there and the Server is Degraded (NamespaceConsentMissing).
	// +optional
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=63
	// +listType=set
	Namespaces []string `json:"namespaces,omitempty"`

	// allNamespaces serves VMs of every namespace. It needs cluster-wide read
	// access to VirtualMachineInstances, which the operator grants only when
	// it runs with --allow-all-namespaces; otherwise only the Server's own
	// namespace is served and the Server is Degraded
	// (AllNamespacesNotAllowed). Prefer namespaces where possible.
	// +optional
	AllNamespaces bool `json:"allNamespaces,omitempty"`

	// onlyKnownVMs ignores clients whose MAC belongs to no VM on this network.
	// Defaults to true.
	// +optional
	// +kubebuilder:default=true
	OnlyKnownVMs *bool `json:"onlyKnownVMs,omitempty"`
}

// ConflictDetectionSpec configures the probe hyperdhcpd sends before it
// offers an address that is not the client's own: an ARP request on the
// served network (the same L2 segment, so a guest whose firewall drops ICMP
// is still found). An address something answers for is quarantined like a
// declined one and the next free address is probed.
type ConflictDetectionSpec struct {
	// enabled turns probing on. Probing needs the NET_RAW capability (an
	// ARP packet socket), which the operator gives the pod only while this
	// is true. Defaults to true.
	// +optional
	// +kubebuilder:default=true
	Enabled *bool `json:"enabled,omitempty"`

	// timeout is how long an OFFER waits for an answer to its probe: an
	// address nothing claims within it is offered. Between 10ms and 2s;
	// defaults to 200ms.
	// +optional
	// +kubebuilder:default="200ms"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$') && duration(self) >= duration('10ms') && duration(self) <= duration('2s')",message="timeout must be a duration between 10ms and 2s, such as 200ms"
	Timeout *metav1.Duration `json:"timeout,omitempty"`
}

// HighAvailabilitySpec configures the hot-standby pair. That
// standbyServerIP is another address of serverIP's subnet outside the pools
// is checked by Validate (the CEL rules' cost budget is spent).
type HighAvailabilitySpec struct {
	// standbyServerIP is the second replica's own address on the network,
	// with serverIP's prefix length, outside the pools. Each replica sends
	// its own address as the server identifier; a client bound to a failed
	// replica rebinds to the other (RFC 2131 4.4.5).
	// +required
	StandbyServerIP IPv4Prefix `json:"standbyServerIP"`
}

// StorageSpec configures the volume that holds the lease database.
type StorageSpec struct {
	// storageClassName is the StorageClass of the lease database's
	// PersistentVolumeClaim. Empty means the cluster's default class.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	StorageClassName string `json:"storageClassName,omitempty"`

	// size is the requested capacity of the volume. Defaults to 64Mi, which
	// holds far more leases than a /16.
	// +optional
	// +kubebuilder:default="64Mi"
	Size *resource.Quantity `json:"size,omitempty"`
}

// ResourceRequirements mirrors core/v1 ResourceRequirements (limits and
// requests by resource name) so this module needs only apimachinery.
type ResourceRequirements struct {
	// limits are the most the container may use.
	// +optional
	// +kubebuilder:validation:MaxProperties=8
	Limits map[string]resource.Quantity `json:"limits,omitempty"`

	// requests are what the scheduler reserves for the container.
	// +optional
	// +kubebuilder:validation:MaxProperties=8
	Requests map[string]resource.Quantity `json:"requests,omitempty"`
}

// Toleration mirrors core/v1 Toleration so this module needs only apimachinery.
type Toleration struct {
	// key is the taint key the toleration applies to; empty with operator
	// Exists matches every taint.
	// +optional
	// +kubebuilder:validation:MaxLength=316
	Key string `json:"key,omitempty"`

	// operator is Exists or Equal (the default).
	// +optional
	// +kubebuilder:validation:Enum=Exists;Equal
	Operator string `json:"operator,omitempty"`

	// value is the taint value to match when operator is Equal.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Value string `json:"value,omitempty"`

	// effect is the taint effect to match; empty matches every effect.
	// +optional
	// +kubebuilder:validation:Enum=NoSchedule;PreferNoSchedule;NoExecute
	Effect string `json:"effect,omitempty"`

	// tolerationSeconds is how long a NoExecute taint is tolerated.
	// +optional
	TolerationSeconds *int64 `json:"tolerationSeconds,omitempty"`
}

// ServerStatus is what the operator and hyperdhcpd observed.
type ServerStatus struct {
	// observedGeneration is the metadata.generation the conditions describe.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions are Ready, Progressing and Degraded.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// pool counts the addresses of all pools, as hyperdhcpd last reported.
	// +optional
	Pool *PoolStatus `json:"pool,omitempty"`

	// leaseStorage is hyperdhcpd's report on its lease database: whether
	// lease writes succeed. The operator turns a fault into Degraded
	// (reason LeaseStorageUnavailable) and an Event.
	// +optional
	LeaseStorage *LeaseStorageStatus `json:"leaseStorage,omitempty"`

	// served is hyperdhcpd's report of the spec it serves. An edit of a
	// field that applies live is served once served.generation reaches
	// metadata.generation, without a restart; an edit of another field
	// (serverIP, networkAttachment, conflictDetection, storage and the pod's
	// settings) is served by the pod that replaces it.
	// +optional
	Served *ServedStatus `json:"served,omitempty"`

	// highAvailability is the active replica's report on the pair.
	// +optional
	HighAvailability *HighAvailabilityStatus `json:"highAvailability,omitempty"`
}

// HighAvailabilityStatus is the pair as its active replica sees it.
type HighAvailabilityStatus struct {
	// active names the replica that answers (its Deployment's name).
	Active string `json:"active"`
	// epoch is the Lease's transition count when it took over.
	Epoch int64 `json:"epoch"`
	// since is when the active replica took the Lease: the last failover.
	Since metav1.Time `json:"since"`
	// standbyInSync is false while the standby may miss leases (it is
	// away or catching up): a failure of the active now would lose them.
	StandbyInSync bool `json:"standbyInSync"`
	// replicationLagMilliseconds is how long ago the standby last
	// confirmed a batch or heartbeat.
	// +optional
	ReplicationLagMilliseconds int64 `json:"replicationLagMilliseconds,omitempty"`
}

// ServedStatus is the spec generation hyperdhcpd serves, and the last one it
// refused.
type ServedStatus struct {
	// generation is the metadata.generation of the spec hyperdhcpd serves.
	Generation int64 `json:"generation"`
	// since is when hyperdhcpd started serving it.
	Since metav1.Time `json:"since"`
	// refusedGeneration is a newer generation hyperdhcpd could not apply,
	// and refusedMessage says why; both are cleared when a later one is
	// applied. The operator turns a refusal into Degraded (reason
	// SpecRefused) and an Event.
	// +optional
	RefusedGeneration int64 `json:"refusedGeneration,omitempty"`
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	RefusedMessage string `json:"refusedMessage,omitempty"`
}

// LeaseStorageStatus is whether hyperdhcpd can write its lease database.
type LeaseStorageStatus struct {
	// available is false while lease writes fail (disk full, read-only
	// volume, I/O errors): no REQUEST is acknowledged until they succeed.
	Available bool `json:"available"`
	// message is the error of the fault in progress; empty when available.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message,omitempty"`
	// since is when writes last started failing or succeeding.
	Since metav1.Time `json:"since"`
}

// PoolStatus counts the addresses of a Server's pools.
type PoolStatus struct {
	// size is the number of leasable addresses (pools minus exclusions).
	Size int64 `json:"size"`
	// used is the number of addresses with an active lease.
	Used int64 `json:"used"`
	// free is size minus used.
	Free int64 `json:"free"`
}

// Condition types of a Server.
const (
	// ConditionReady is True when the hyperdhcpd Deployment is available.
	ConditionReady = "Ready"
	// ConditionProgressing is True while a change is being rolled out.
	ConditionProgressing = "Progressing"
	// ConditionDegraded is True when the spec is invalid or the server is failing.
	ConditionDegraded = "Degraded"
)

// Condition reasons of a Server.
const (
	// ReasonAvailable: the Deployment has an available replica.
	ReasonAvailable = "Available"
	// ReasonInvalidSpec: the spec passed the API server but failed Validate().
	ReasonInvalidSpec = "InvalidSpec"
	// ReasonDeploymentUnavailable: the Deployment has no available replica.
	ReasonDeploymentUnavailable = "DeploymentUnavailable"
	// ReasonRollingOut: the Deployment is rolling out a new pod template.
	ReasonRollingOut = "RollingOut"
	// ReasonReconcileFailed: a child object could not be written.
	ReasonReconcileFailed = "ReconcileFailed"
	// ReasonNetworkAttachmentNotFound: the Multus NetworkAttachmentDefinition
	// named in spec.networkAttachment does not exist, so the pod cannot start.
	ReasonNetworkAttachmentNotFound = "NetworkAttachmentNotFound"
	// ReasonNamespaceConsentMissing: kubevirt.namespaces names namespaces
	// that have not consented (annotation hyperdhcp.io/allow-servers on the
	// Namespace), so their VMs are not served.
	ReasonNamespaceConsentMissing = "NamespaceConsentMissing"
	// ReasonAllNamespacesNotAllowed: kubevirt.allNamespaces is set, but the
	// operator runs without --allow-all-namespaces, so only the Server's own
	// namespace is served.
	ReasonAllNamespacesNotAllowed = "AllNamespacesNotAllowed"
	// ReasonLeaseStorageUnavailable: hyperdhcpd cannot write its lease
	// database (status.leaseStorage says why), so it acknowledges no
	// REQUEST; renewals and new clients wait until writes succeed again.
	ReasonLeaseStorageUnavailable = "LeaseStorageUnavailable"
	// ReasonReplicaUnavailable: one replica of a highAvailability pair is
	// not available; the other serves, without failover.
	ReasonReplicaUnavailable = "ReplicaUnavailable"
	// ReasonApplying: hyperdhcpd serves an older generation of the spec than
	// metadata.generation; a live edit usually takes it a second or two.
	ReasonApplying = "Applying"
	// ReasonSpecRefused: hyperdhcpd could not apply a new spec
	// (status.served says why) and serves the one before it.
	ReasonSpecRefused = "SpecRefused"
	// ReasonStandbyFirst: a highAvailability pair rolls its standby first;
	// the active replica's pod follows once the standby's is available,
	// which it is once it has caught up with the active.
	ReasonStandbyFirst = "StandbyFirst"
)

// ServerList is a list of Servers.
//
// +kubebuilder:object:root=true
type ServerList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Server `json:"items"`
}
