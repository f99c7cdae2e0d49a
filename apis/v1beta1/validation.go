package v1beta1

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Limits shared by the CEL rules in server_types.go and Validate.
const (
	MinLeaseTime    = time.Minute
	MaxLeaseTime    = 8760 * time.Hour
	MinProbeTimeout = 10 * time.Millisecond
	MaxProbeTimeout = 2 * time.Second
	minPrefixLength = 8
	maxPrefixLength = 30
	maxBootFileLen  = 127
)

// MaxServerNameLength bounds a Server's name (the CRD's rule on
// metadata.name says the same). The operator derives its children's names
// from it, the longest being "hyperdhcpd-<name>-vm-reader" (21 characters
// around the name), and puts the name in label values: both must fit 63.
const MaxServerNameLength = 42

// ReservedOptionCodes are DHCP option codes that a DHCPOption may not set:
// hyperdhcpd derives them from dedicated fields or from the protocol itself,
// or only clients and relays send them.
var ReservedOptionCodes = []int32{1, 3, 6, 15, 26, 42, 50, 51, 52, 53, 54, 55, 57, 58, 59, 61, 67, 82, 119, 121}

var (
	interfaceNamePattern = regexp.MustCompile(`^[a-zA-Z0-9_.-]{1,15}$`)
	hexPattern           = regexp.MustCompile(`^([0-9a-fA-F]{2})+$`)
)

// Validate checks a Server's spec completely. The CRD's CEL rules refuse most
// mistakes at the API server already; Validate repeats them and adds what CEL
// cannot express (overlapping pools, network and broadcast addresses), so
// that the operator and hyperdhcpd, which reads the same spec from a file,
// apply exactly one definition of a valid Server.
func (s *Server) Validate() error {
	var errs field.ErrorList
	if len(s.Name) > MaxServerNameLength {
		errs = append(errs, field.TooLong(field.NewPath("metadata", "name"), s.Name, MaxServerNameLength))
	}
	errs = append(errs, ValidateSpec(&s.Spec, field.NewPath("spec"))...)
	return errs.ToAggregate()
}

// ValidateSpec returns every problem of spec, each with the path of the
// field at fault below fldPath.
func ValidateSpec(spec *ServerSpec, fldPath *field.Path) field.ErrorList {
	var errs field.ErrorList
	errs = append(errs, validateListLengths(spec, fldPath)...)
	errs = append(errs, validateAttachment(&spec.NetworkAttachment, fldPath.Child("networkAttachment"))...)

	subnet, subnetErrs := validateServerIP(spec.ServerIP, fldPath.Child("serverIP"))
	errs = append(errs, subnetErrs...)
	// Without a subnet the remaining checks would only repeat one root cause.
	v := specValidator{subnet: subnet, hasSubnet: len(subnetErrs) == 0}

	errs = append(errs, v.pools(spec.Pools, fldPath.Child("pools"))...)
	for i, a := range spec.Exclude {
		errs = append(errs, v.onLinkAddress(a, fldPath.Child("exclude").Index(i))...)
	}
	if c := spec.ConflictDetection; c != nil && c.Timeout != nil {
		if d := c.Timeout.Duration; d < MinProbeTimeout || d > MaxProbeTimeout {
			errs = append(errs, field.Invalid(fldPath.Child("conflictDetection", "timeout"), c.Timeout.String(),
				fmt.Sprintf("must be between %s and %s", MinProbeTimeout, MaxProbeTimeout)))
		}
	}
	if spec.LeaseTime != nil {
		if d := spec.LeaseTime.Duration; d < MinLeaseTime || d > MaxLeaseTime {
			errs = append(errs, field.Invalid(fldPath.Child("leaseTime"), spec.LeaseTime.String(),
				fmt.Sprintf("must be between %s and %s", MinLeaseTime, MaxLeaseTime)))
		}
	}
	if spec.Router != "" {
		errs = append(errs, v.onLinkAddress(spec.Router, fldPath.Child("router"))...)
	}
	switch spec.IdentifyClientsBy {
	case "", IdentifyByClientID, IdentifyByMAC:
	default:
		errs = append(errs, field.NotSupported(fldPath.Child("identifyClientsBy"), spec.IdentifyClientsBy,
			[]ClientIdentity{IdentifyByClientID, IdentifyByMAC}))
	}
	for i, a := range spec.DNS {
		errs = append(errs, validateIPv4(a, fldPath.Child("dns").Index(i))...)
	}
	if spec.DomainName != "" {
		errs = append(errs, validateDNSName(spec.DomainName, fldPath.Child("domainName"))...)
	}
	for i, d := range spec.DomainSearch {
		errs = append(errs, validateDNSName(d, fldPath.Child("domainSearch").Index(i))...)
	}
	for i, a := range spec.NTP {
		errs = append(errs, validateIPv4(a, fldPath.Child("ntp").Index(i))...)
	}
	if spec.MTU != nil && (*spec.MTU < 68 || *spec.MTU > 65535) {
		errs = append(errs, field.Invalid(fldPath.Child("mtu"), *spec.MTU, "must be between 68 and 65535"))
	}
	for i, r := range spec.StaticRoutes {
		errs = append(errs, v.staticRoute(r, fldPath.Child("staticRoutes").Index(i))...)
	}
	if len(spec.BootFile) > maxBootFileLen {
		errs = append(errs, field.TooLong(fldPath.Child("bootFile"), spec.BootFile, maxBootFileLen))
	}
	if spec.NextServer != "" {
		errs = append(errs, validateIPv4(spec.NextServer, fldPath.Child("nextServer"))...)
	}
	errs = append(errs, validateOptions(spec.Options, fldPath.Child("options"))...)
	errs = append(errs, v.reservations(spec, fldPath.Child("reservations"))...)
	if spec.KubeVirt != nil {
		errs = append(errs, validateKubeVirt(spec.KubeVirt, fldPath.Child("kubevirt"))...)
	}
	if spec.HighAvailability != nil {
		errs = append(errs, v.standby(spec, fldPath.Child("highAvailability", "standbyServerIP"))...)
	}
	if spec.Storage != nil && spec.Storage.Size != nil && spec.Storage.Size.Sign() <= 0 {
		errs = append(errs, field.Invalid(fldPath.Child("storage", "size"), spec.Storage.Size.String(), "must be positive"))
	}
	return errs
}

// validateListLengths mirrors the CRD's MaxItems markers, which bound the
// cost of the CEL rules and the size of the rendered configuration.
func validateListLengths(spec *ServerSpec, fldPath *field.Path) field.ErrorList {
	var errs field.ErrorList
	check := func(path *field.Path, n, limit int) {
		if n > limit {
			errs = append(errs, field.TooMany(path, n, limit))
		}
	}
	check(fldPath.Child("pools"), len(spec.Pools), 16)
	check(fldPath.Child("exclude"), len(spec.Exclude), 256)
	check(fldPath.Child("dns"), len(spec.DNS), 8)
	check(fldPath.Child("domainSearch"), len(spec.DomainSearch), 8)
	check(fldPath.Child("ntp"), len(spec.NTP), 8)
	check(fldPath.Child("staticRoutes"), len(spec.StaticRoutes), 32)
	check(fldPath.Child("options"), len(spec.Options), 32)
	check(fldPath.Child("reservations"), len(spec.Reservations), 256)
	check(fldPath.Child("tolerations"), len(spec.Tolerations), 32)
	if spec.KubeVirt != nil {
		check(fldPath.Child("kubevirt", "namespaces"), len(spec.KubeVirt.Namespaces), 64)
	}
	return errs
}

func validateAttachment(a *NetworkAttachment, fldPath *field.Path) field.ErrorList {
	var errs field.ErrorList
	if a.Name == "" {
		errs = append(errs, field.Required(fldPath.Child("name"), "the NetworkAttachmentDefinition to join"))
	}
	if a.Namespace != "" {
		for _, msg := range validation.IsDNS1123Label(a.Namespace) {
			errs = append(errs, field.Invalid(fldPath.Child("namespace"), a.Namespace, msg))
		}
	}
	if a.Interface != "" && !interfaceNamePattern.MatchString(a.Interface) {
		errs = append(errs, field.Invalid(fldPath.Child("interface"), a.Interface,
			"must be a Linux interface name: at most 15 letters, digits, '.', '_' or '-'"))
	}
	return errs
}

// validateServerIP returns the server's address with the subnet's length.
func validateServerIP(s IPv4Prefix, fldPath *field.Path) (netip.Prefix, field.ErrorList) {
	p, err := netip.ParsePrefix(string(s))
	if err != nil || !p.Addr().Is4() {
		return p, field.ErrorList{field.Invalid(fldPath, s, "must be an IPv4 address with a prefix length, such as 192.168.50.2/24")}
	}
	if p.Bits() < minPrefixLength || p.Bits() > maxPrefixLength {
		return p, field.ErrorList{field.Invalid(fldPath, s,
			fmt.Sprintf("prefix length must be between /%d and /%d", minPrefixLength, maxPrefixLength))}
	}
	if a := p.Addr(); a == p.Masked().Addr() || a == BroadcastAddress(p) {
		return p, field.ErrorList{field.Invalid(fldPath, s, "must not be the subnet's network or broadcast address")}
	}
	return p, nil
}

func validateIPv4(s IPv4Address, fldPath *field.Path) field.ErrorList {
	if _, err := ParseIPv4(s); err != nil {
		return field.ErrorList{field.Invalid(fldPath, s, "must be an IPv4 address such as 192.168.50.10")}
	}
	return nil
}

func validateDNSName(s DNSName, fldPath *field.Path) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range validation.IsDNS1123Subdomain(string(s)) {
		errs = append(errs, field.Invalid(fldPath, s, msg))
	}
	return errs
}

// specValidator checks addresses against the subnet once it is known.
type specValidator struct {
	subnet    netip.Prefix
	hasSubnet bool
}

// standby checks the second replica's address: another host address of
// the subnet, with the same prefix length, that no pool or reservation holds.
func (v specValidator) standby(spec *ServerSpec, fldPath *field.Path) field.ErrorList {
	s := spec.HighAvailability.StandbyServerIP
	p, errs := validateServerIP(s, fldPath)
	if len(errs) > 0 || !v.hasSubnet {
		return errs
	}
	switch a := p.Addr(); {
	case p.Bits() != v.subnet.Bits() || !v.subnet.Contains(a):
		return field.ErrorList{field.Invalid(fldPath, s, fmt.Sprintf("must be an address of the subnet %s with the same prefix length", v.subnet.Masked()))}
	case a == v.subnet.Addr():
		return field.ErrorList{field.Invalid(fldPath, s, "must differ from serverIP")}
	}
	for _, pool := range spec.Pools {
		first, err1 := ParseIPv4(pool.Start)
		last, err2 := ParseIPv4(pool.End)
		if err1 == nil && err2 == nil && !p.Addr().Less(first) && !last.Less(p.Addr()) {
			return field.ErrorList{field.Invalid(fldPath, s, "must not lie inside a pool: the standby would hand out its own address")}
		}
	}
	for _, r := range spec.Reservations {
		if ip, err := ParseIPv4(r.IP); err == nil && ip == p.Addr() {
			return field.ErrorList{field.Invalid(fldPath, s, "is reserved for "+string(r.MAC))}
		}
	}
	return nil
}

// onLinkAddress checks that s is a usable host address of the subnet.
func (v specValidator) onLinkAddress(s IPv4Address, fldPath *field.Path) field.ErrorList {
	a, err := ParseIPv4(s)
	if err != nil {
		return field.ErrorList{field.Invalid(fldPath, s, "must be an IPv4 address such as 192.168.50.10")}
	}
	if !v.hasSubnet {
		return nil
	}
	if !v.subnet.Contains(a) {
		return field.ErrorList{field.Invalid(fldPath, s, fmt.Sprintf("must lie inside the subnet %s", v.subnet.Masked()))}
	}
	if a == v.subnet.Masked().Addr() || a == BroadcastAddress(v.subnet) {
		return field.ErrorList{field.Invalid(fldPath, s, "must not be the subnet's network or broadcast address")}
	}
	return nil
}

func (v specValidator) pools(pools []AddressRange, fldPath *field.Path) field.ErrorList {
	if len(pools) == 0 {
		return field.ErrorList{field.Required(fldPath, "at least one address range to lease from")}
	}
	var errs field.ErrorList
	type span struct {
		index      int
		start, end netip.Addr
	}
	var spans []span
	for i, p := range pools {
		errsBefore := len(errs)
		errs = append(errs, v.onLinkAddress(p.Start, fldPath.Index(i).Child("start"))...)
		errs = append(errs, v.onLinkAddress(p.End, fldPath.Index(i).Child("end"))...)
		if len(errs) > errsBefore {
			continue
		}
		start, end := netip.MustParseAddr(string(p.Start)), netip.MustParseAddr(string(p.End))
		if end.Less(start) {
			errs = append(errs, field.Invalid(fldPath.Index(i), fmt.Sprintf("%s-%s", p.Start, p.End), "start must not come after end"))
			continue
		}
		if server := v.subnet.Addr(); v.hasSubnet && !server.Less(start) && !end.Less(server) {
			errs = append(errs, field.Invalid(fldPath.Index(i), fmt.Sprintf("%s-%s", p.Start, p.End),
				fmt.Sprintf("must not contain the server's own address %s", server)))
		}
		spans = append(spans, span{i, start, end})
	}
	slices.SortFunc(spans, func(a, b span) int { return a.start.Compare(b.start) })
	for i := 1; i < len(spans); i++ {
		if prev, cur := spans[i-1], spans[i]; !prev.end.Less(cur.start) {
			errs = append(errs, field.Invalid(fldPath.Index(cur.index), fmt.Sprintf("%s-%s", cur.start, cur.end),
				fmt.Sprintf("overlaps pool %d (%s-%s)", prev.index, prev.start, prev.end)))
		}
	}
	return errs
}

func (v specValidator) staticRoute(r StaticRoute, fldPath *field.Path) field.ErrorList {
	var errs field.ErrorList
	dst, err := netip.ParsePrefix(string(r.Destination))
	switch {
	case err != nil || !dst.Addr().Is4():
		errs = append(errs, field.Invalid(fldPath.Child("destination"), r.Destination,
			"must be an IPv4 network with a prefix length, such as 10.20.0.0/16"))
	case dst.Masked() != dst:
		errs = append(errs, field.Invalid(fldPath.Child("destination"), r.Destination,
			fmt.Sprintf("must have no host bits set (did you mean %s?)", dst.Masked())))
	}
	return append(errs, v.onLinkAddress(r.Gateway, fldPath.Child("gateway"))...)
}

func (v specValidator) reservations(spec *ServerSpec, fldPath *field.Path) field.ErrorList {
	var errs field.ErrorList
	macs := map[string]int{}
	ips := map[netip.Addr]int{}
	excluded := map[IPv4Address]bool{}
	for _, a := range spec.Exclude {
		excluded[a] = true
	}
	for i, r := range spec.Reservations {
		p := fldPath.Index(i)
		if mac, err := ParseMAC(r.MAC); err != nil {
			errs = append(errs, field.Invalid(p.Child("mac"), r.MAC, "must be a MAC address such as 02:00:5e:10:00:01"))
		} else if first, dup := macs[mac.String()]; dup {
			errs = append(errs, field.Duplicate(p.Child("mac"), fmt.Sprintf("%s (already reserved by reservation %d)", r.MAC, first)))
		} else {
			macs[mac.String()] = i
		}
		if ipErrs := v.onLinkAddress(r.IP, p.Child("ip")); len(ipErrs) > 0 {
			errs = append(errs, ipErrs...)
		} else {
			a := netip.MustParseAddr(string(r.IP))
			switch first, dup := ips[a]; {
			case dup:
				errs = append(errs, field.Duplicate(p.Child("ip"), fmt.Sprintf("%s (already reserved by reservation %d)", r.IP, first)))
			case v.hasSubnet && a == v.subnet.Addr():
				errs = append(errs, field.Invalid(p.Child("ip"), r.IP, "must not be the server's own address"))
			case excluded[r.IP]:
				errs = append(errs, field.Invalid(p.Child("ip"), r.IP, "is also listed in exclude"))
			default:
				ips[a] = i
			}
		}
		if r.Hostname != "" {
			for _, msg := range validation.IsDNS1123Label(r.Hostname) {
				errs = append(errs, field.Invalid(p.Child("hostname"), r.Hostname, msg))
			}
		}
	}
	return errs
}

func validateOptions(options []DHCPOption, fldPath *field.Path) field.ErrorList {
	var errs field.ErrorList
	seen := map[int32]bool{}
	for i, o := range options {
		p := fldPath.Index(i)
		switch {
		case o.Code < 1 || o.Code > 254:
			errs = append(errs, field.Invalid(p.Child("code"), o.Code, "must be between 1 and 254 (0 is padding and 255 marks the end)"))
		case slices.Contains(ReservedOptionCodes, o.Code):
			errs = append(errs, field.Invalid(p.Child("code"), o.Code,
				"is set by hyperdhcpd itself or only sent by clients: use the dedicated Server field instead"))
		case seen[o.Code]:
			errs = append(errs, field.Duplicate(p.Child("code"), o.Code))
		}
		seen[o.Code] = true
		if _, err := o.Encode(); err != nil {
			errs = append(errs, field.Invalid(p.Child("value"), o.Value, err.Error()))
		}
	}
	return errs
}

func validateKubeVirt(k *KubeVirtSpec, fldPath *field.Path) field.ErrorList {
	var errs field.ErrorList
	if k.AllNamespaces && len(k.Namespaces) > 0 {
		errs = append(errs, field.Forbidden(fldPath.Child("namespaces"), "set either allNamespaces or namespaces, not both"))
	}
	for i, ns := range k.Namespaces {
		for _, msg := range validation.IsDNS1123Label(ns) {
			errs = append(errs, field.Invalid(fldPath.Child("namespaces").Index(i), ns, msg))
		}
	}
	return errs
}

// Encode returns the option's value as it goes on the wire.
func (o DHCPOption) Encode() ([]byte, error) {
	switch cmp.Or(o.Type, DHCPOptionText) {
	case DHCPOptionText:
		if o.Value == "" {
			return nil, fmt.Errorf("must not be empty")
		}
		return []byte(o.Value), nil
	case DHCPOptionHex:
		if !hexPattern.MatchString(o.Value) {
			return nil, fmt.Errorf("must be an even number of hex digits, such as 0a0b")
		}
		out := make([]byte, len(o.Value)/2)
		for i := range out {
			b, _ := strconv.ParseUint(o.Value[2*i:2*i+2], 16, 8) // hexPattern guarantees success
			out[i] = byte(b)
		}
		return out, nil
	case DHCPOptionIPv4:
		var out []byte
		for _, s := range strings.Split(o.Value, ",") {
			a, err := ParseIPv4(IPv4Address(s))
			if err != nil {
				return nil, fmt.Errorf("must be a comma-separated list of IPv4 addresses, such as 10.0.0.1,10.0.0.2")
			}
			out = append(out, a.AsSlice()...)
		}
		return out, nil
	case DHCPOptionUInt8, DHCPOptionUInt16, DHCPOptionUInt32:
		bits := map[DHCPOptionType]int{DHCPOptionUInt8: 8, DHCPOptionUInt16: 16, DHCPOptionUInt32: 32}[o.Type]
		n, err := strconv.ParseUint(o.Value, 10, bits)
		if err != nil {
			return nil, fmt.Errorf("must be a decimal number that fits in %d bits", bits)
		}
		out := make([]byte, bits/8)
		for i := range out {
			out[len(out)-1-i] = byte(n >> (8 * i))
		}
		return out, nil
	case DHCPOptionBool:
		switch o.Value {
		case "true":
			return []byte{1}, nil
		case "false":
			return []byte{0}, nil
		}
		return nil, fmt.Errorf("must be true or false")
	}
	return nil, fmt.Errorf("unknown type %q", o.Type)
}

// ParseIPv4 parses a dotted-quad IPv4 address.
func ParseIPv4(s IPv4Address) (netip.Addr, error) {
	a, err := netip.ParseAddr(string(s))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("parse IPv4 address %q: %w", s, err)
	}
	if !a.Is4() {
		return netip.Addr{}, fmt.Errorf("%q is not an IPv4 address", s)
	}
	return a, nil
}

// ParseMAC parses a 6-byte Ethernet address written with colons or dashes.
func ParseMAC(s MACAddress) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(string(s))
	if err != nil {
		return nil, fmt.Errorf("parse MAC address %q: %w", s, err)
	}
	if len(mac) != 6 {
		return nil, fmt.Errorf("%q is not a 6-byte Ethernet address", s)
	}
	return mac, nil
}

// BroadcastAddress returns the last address of an IPv4 prefix.
func BroadcastAddress(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	mask := net.CIDRMask(p.Bits(), 32)
	for i := range b {
		b[i] |= ^mask[i]
	}
	return netip.AddrFrom4(b)
}
