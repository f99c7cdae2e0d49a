package v1beta1

import (
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Defaults of the optional fields. The CRD's +kubebuilder:default markers
// apply the same values at the API server; SetDefaults applies them to specs
// that never pass through it (a hyperdhcpd config file).
const (
	DefaultLeaseTime   = time.Hour
	DefaultInterface   = "net1"
	DefaultStorageSize = "64Mi"
	DefaultOptionType  = DHCPOptionText
	// DefaultProbeTimeout is long enough for an ARP reply from a loaded
	// guest on the same segment (well under a millisecond when idle) and
	// short next to a DHCP client's first retransmission (4 s, RFC 2131
	// 4.1).
	DefaultProbeTimeout = 200 * time.Millisecond
)

// SetDefaults fills every unset optional field of spec with its default.
func SetDefaults(spec *ServerSpec) {
	if spec.NetworkAttachment.Interface == "" {
		spec.NetworkAttachment.Interface = DefaultInterface
	}
	if spec.LeaseTime == nil {
		spec.LeaseTime = &metav1.Duration{Duration: DefaultLeaseTime}
	}
	for i := range spec.Options {
		if spec.Options[i].Type == "" {
			spec.Options[i].Type = DefaultOptionType
		}
	}
	if spec.IdentifyClientsBy == "" {
		spec.IdentifyClientsBy = IdentifyByClientID
	}
	if spec.KubeVirt == nil {
		spec.KubeVirt = &KubeVirtSpec{}
	}
	if spec.KubeVirt.Enabled == nil {
		spec.KubeVirt.Enabled = new(true)
	}
	if spec.KubeVirt.OnlyKnownVMs == nil {
		spec.KubeVirt.OnlyKnownVMs = new(true)
	}
	if spec.ConflictDetection == nil {
		spec.ConflictDetection = &ConflictDetectionSpec{}
	}
	if spec.ConflictDetection.Enabled == nil {
		spec.ConflictDetection.Enabled = new(true)
	}
	if spec.ConflictDetection.Timeout == nil {
		spec.ConflictDetection.Timeout = &metav1.Duration{Duration: DefaultProbeTimeout}
	}
	if spec.Storage == nil {
		spec.Storage = &StorageSpec{}
	}
	if spec.Storage.Size == nil {
		size := resource.MustParse(DefaultStorageSize)
		spec.Storage.Size = &size
	}
}

// AttachmentNamespace is the namespace of the NetworkAttachmentDefinition:
// the one named in the spec, else the Server's own.
func (s *Server) AttachmentNamespace() string {
	if s.Spec.NetworkAttachment.Namespace != "" {
		return s.Spec.NetworkAttachment.Namespace
	}
	return s.Namespace
}

// KubeVirtNamespaces lists the namespaces whose VMs the server serves; nil
// means every namespace.
func (s *Server) KubeVirtNamespaces() []string {
	kv := s.Spec.KubeVirt
	switch {
	case kv != nil && kv.AllNamespaces:
		return nil
	case kv != nil && len(kv.Namespaces) > 0:
		return kv.Namespaces
	default:
		return []string{s.Namespace}
	}
}
