// Package consent decides where a Server's hyperdhcpd may read VMs.
//
// A Server may always serve the VMs of its own namespace. Whoever may
// create a Server does not thereby speak for other namespaces: another
// namespace is served only when it consents, through the annotation
// Annotation on its Namespace object, which is cluster-scoped and so out
// of reach of the namespace's own users (a RoleBinding to admin or edit
// does not let them edit it), as Gateway API's ReferenceGrant lets the
// referred-to side decide. Serving every namespace is the operator
// administrator's decision alone (the operator's --allow-all-namespaces).
//
// Everything here is pure: the caller looks the Namespaces up.
package consent

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
)

// Annotation on a Namespace lists the Servers of other namespaces that may
// serve its VMs: comma-separated <namespace>/<server>, where <server> may
// be AnyServer, for example "netops/lab, netops/*".
const Annotation = "hyperdhcp.io/allow-servers"

// AnyServer as the server part of an entry allows every Server of that
// namespace.
const AnyServer = "*"

// Entry is one Server (or, with Name AnyServer, every Server of Namespace)
// that a Namespace lets serve its VMs.
type Entry struct {
	Namespace string
	Name      string
}

// Allows tells whether entry names the Server namespace/name.
func (e Entry) Allows(namespace, name string) bool {
	return e.Namespace == namespace && (e.Name == AnyServer || e.Name == name)
}

// Parse reads the annotation's value. Spaces around entries are ignored,
// and so are empty entries (a trailing comma). It returns the well-formed
// entries even when others are malformed; err names each malformed one.
// A wildcard namespace ("*/lab") is malformed: consent names who is
// trusted.
func Parse(value string) ([]Entry, error) {
	var (
		entries []Entry
		errs    []error
	)
	for field := range strings.SplitSeq(value, ",") {
		field = strings.TrimSpace(field)
		if field == "" {
			continue
		}
		namespace, name, ok := strings.Cut(field, "/")
		namespace, name = strings.TrimSpace(namespace), strings.TrimSpace(name)
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("%q is not <namespace>/<server>", field))
		case len(validation.IsDNS1123Label(namespace)) > 0:
			errs = append(errs, fmt.Errorf("%q: %q is not a namespace name", field, namespace))
		case name != AnyServer && len(validation.IsDNS1123Subdomain(name)) > 0:
			errs = append(errs, fmt.Errorf("%q: %q is neither a Server name nor %q", field, name, AnyServer))
		default:
			entries = append(entries, Entry{Namespace: namespace, Name: name})
		}
	}
	return entries, errors.Join(errs...)
}

// Allows tells whether a Namespace with these annotations lets the Server
// namespace/name read its VMs; err describes malformed entries of the
// annotation (the well-formed ones still count).
func Allows(annotations map[string]string, namespace, name string) (bool, error) {
	value, ok := annotations[Annotation]
	if !ok {
		return false, nil
	}
	entries, err := Parse(value)
	return slices.ContainsFunc(entries, func(e Entry) bool { return e.Allows(namespace, name) }), err
}

// Grant is where a Server's hyperdhcpd may read VMs, and what it asked for
// in vain.
type Grant struct {
	// Namespaces get a RoleBinding of the VM reader ClusterRole, sorted.
	Namespaces []string
	// Cluster: one ClusterRoleBinding instead (allNamespaces, allowed).
	Cluster bool
	// Refused lists the namespaces asked for that have not consented
	// (or do not exist), sorted.
	Refused []string
	// AllNamespacesRefused: allNamespaces was asked for and the operator
	// does not allow it; the Server's own namespace is granted instead.
	AllNamespacesRefused bool
	// Malformed describes malformed entries of the annotations read.
	Malformed []string
}

// Decide grants server what it asks for in spec.kubevirt: its own
// namespace always, another namespace when annotations(namespace) (nil for
// a missing Namespace) consents, every namespace only with
// allowAllNamespaces. Nothing when KubeVirt support is off.
func Decide(server *hyperdhcpv1beta1.Server, annotations func(namespace string) map[string]string, allowAllNamespaces bool) Grant {
	var g Grant
	if kv := server.Spec.KubeVirt; kv != nil && kv.Enabled != nil && !*kv.Enabled {
		return g
	}
	namespaces := server.KubeVirtNamespaces()
	if namespaces == nil { // allNamespaces
		if allowAllNamespaces {
			g.Cluster = true
			return g
		}
		g.AllNamespacesRefused = true
		namespaces = []string{server.Namespace}
	}
	for _, ns := range slices.Sorted(slices.Values(namespaces)) {
		if ns == server.Namespace {
			g.Namespaces = append(g.Namespaces, ns)
			continue
		}
		ok, err := Allows(annotations(ns), server.Namespace, server.Name)
		if err != nil {
			g.Malformed = append(g.Malformed, fmt.Sprintf("namespace %s: annotation %s: %v", ns, Annotation, strings.ReplaceAll(err.Error(), "\n", "; ")))
		}
		if ok {
			g.Namespaces = append(g.Namespaces, ns)
		} else {
			g.Refused = append(g.Refused, ns)
		}
	}
	g.Namespaces, g.Refused = slices.Compact(g.Namespaces), slices.Compact(g.Refused)
	return g
}

// Foreign tells whether g grants anything outside the Server's namespace.
func (g Grant) Foreign(serverNamespace string) bool {
	return g.Cluster || slices.ContainsFunc(g.Namespaces, func(ns string) bool { return ns != serverNamespace })
}
