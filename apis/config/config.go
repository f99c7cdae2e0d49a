// Package config is hyperdhcpd's configuration file format. Its heart is a
// Server spec from the hyperdhcp.io API, so the operator renders a Server
// into this file without translation and both validate it the same way.
package config

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
)

// Defaults of the daemon settings.
const (
	DefaultFile             = ".hyperdhcp.yaml"
	DefaultPort             = 67
	DefaultLeaseDatabase    = "/var/lib/hyperdhcp/leases.db"
	DefaultMetricsAddress   = ":8067"
	DefaultLogLevel         = "info"
	DefaultOfferHold        = 30 * time.Second
	DefaultDeclineProbation = 10 * time.Minute
	DefaultStatusInterval   = 10 * time.Second
	DefaultSyncTimeout      = 30 * time.Second
	DefaultVMDeletionGrace  = 5 * time.Minute
	// DefaultMaxClientLeadTime caps the leases a replica of a pair grants
	// without its standby (the failover draft's MCLT).
	DefaultMaxClientLeadTime = 2 * time.Minute
)

// Config is the content of hyperdhcpd's configuration file.
type Config struct {
	// Server is the DHCP service: the spec of a hyperdhcp.io Server.
	Server hyperdhcpv1beta1.ServerSpec `json:"server"`

	// Interface is the network interface to serve on. Defaults to
	// server.networkAttachment.interface, the name Multus gives it in the pod.
	Interface string `json:"interface,omitempty"`

	// Port is the UDP port to listen on. Defaults to 67.
	Port int `json:"port,omitempty"`

	// LeaseDatabase is the SQLite lease database file.
	LeaseDatabase string `json:"leaseDatabase,omitempty"`

	// MetricsAddress serves /metrics, /healthz and /readyz; "0" turns it off.
	MetricsAddress string `json:"metricsAddress,omitempty"`

	// LogLevel is debug, info, warn or error.
	LogLevel string `json:"logLevel,omitempty"`

	// OfferHold is how long an offered address stays reserved for the client.
	OfferHold *metav1.Duration `json:"offerHold,omitempty"`

	// DeclineProbation is how long an address a client declined is quarantined.
	DeclineProbation *metav1.Duration `json:"declineProbation,omitempty"`

	// Kubernetes connects hyperdhcpd to the API server to report its pool
	// usage in its Server's status. Unset outside a cluster.
	Kubernetes *Kubernetes `json:"kubernetes,omitempty"`

	// HighAvailability makes hyperdhcpd one replica of a hot-standby pair
	// (docs/design/ha.md). It needs kubernetes: a Lease there decides which
	// replica is active.
	HighAvailability *HighAvailability `json:"highAvailability,omitempty"`
}

// HighAvailability is this replica's place in the pair.
type HighAvailability struct {
	// Replica names this replica: its identity in the Lease.
	Replica string `json:"replica"`
	// Lease is the name of the coordination.k8s.io Lease (in the Server's
	// namespace) the replicas stand for.
	Lease string `json:"lease"`
	// Listen is where this replica serves replication (host:port).
	Listen string `json:"listen"`
	// Peer is the other replica's replication endpoint (https://host:port).
	Peer string `json:"peer"`
	// Bootstrap lets this replica take a Lease nobody has held without
	// catching up first: the replica that has the Server's database when
	// the pair is made. The other must never answer first.
	Bootstrap bool `json:"bootstrap,omitempty"`
	// MaxClientLeadTime caps the leases the active grants while its standby
	// does not have them, and so bounds how long a replica that takes over
	// from such an active answers renewals only.
	MaxClientLeadTime *metav1.Duration `json:"maxClientLeadTime,omitempty"`
	// CA, Cert and Key are PEM files: the pair's CA and the certificate
	// both replicas present; a peer without one of the CA's is refused.
	CA   string `json:"ca"`
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

// Kubernetes says which Server hyperdhcpd serves and how to reach the API.
type Kubernetes struct {
	// ServerName and ServerNamespace name the Server whose status.pool
	// hyperdhcpd keeps up to date.
	ServerName      string `json:"serverName"`
	ServerNamespace string `json:"serverNamespace"`

	// Kubeconfig is a kubeconfig file; empty means the in-cluster service account.
	Kubeconfig string `json:"kubeconfig,omitempty"`

	// StatusInterval is the least time between two status updates. Defaults to 10s.
	StatusInterval *metav1.Duration `json:"statusInterval,omitempty"`

	// SyncTimeout bounds the wait for the first list of KubeVirt objects at
	// start; without it hyperdhcpd serves the VMs its lease database knows.
	// Defaults to 30s.
	SyncTimeout *metav1.Duration `json:"syncTimeout,omitempty"`

	// VMDeletionGrace is how long a deleted VirtualMachine's leases are
	// kept before its addresses are free again, so that a delete and
	// recreate keeps them. Defaults to 5m.
	VMDeletionGrace *metav1.Duration `json:"vmDeletionGrace,omitempty"`

	// ServerGeneration is the metadata.generation of the Server this file
	// was rendered from: hyperdhcpd reports it as status.served.generation.
	ServerGeneration int64 `json:"serverGeneration,omitempty"`

	// ConfigMap names the ConfigMap (in ServerNamespace) this file is
	// mounted from, under the key ConfigMapKey. hyperdhcpd watches it to
	// apply edits within a second instead of when the kubelet refreshes
	// the file. Empty: only the file is watched.
	ConfigMap string `json:"configMap,omitempty"`
}

// ConfigMapKey is the key of the configuration in its ConfigMap.
const ConfigMapKey = "hyperdhcpd.yaml"

// Load reads and decodes the file at path (see Parse); it neither defaults
// nor validates, so that flag overrides can come first.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes a configuration; unknown fields are errors, so a misspelt
// key cannot silently fall back to a default. It neither defaults nor
// validates: callers apply flag overrides, then SetDefaults, then Validate.
func Parse(data []byte, source string) (*Config, error) {
	var cfg Config
	if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
		return nil, fmt.Errorf("parse config %s: %w", source, err)
	}
	return &cfg, nil
}

// SetDefaults fills unset settings, the Server spec's included.
func (c *Config) SetDefaults() {
	hyperdhcpv1beta1.SetDefaults(&c.Server)
	c.Interface = cmp.Or(c.Interface, c.Server.NetworkAttachment.Interface)
	c.Port = cmp.Or(c.Port, DefaultPort)
	c.LeaseDatabase = cmp.Or(c.LeaseDatabase, DefaultLeaseDatabase)
	c.MetricsAddress = cmp.Or(c.MetricsAddress, DefaultMetricsAddress)
	c.LogLevel = cmp.Or(c.LogLevel, DefaultLogLevel)
	if c.OfferHold == nil {
		c.OfferHold = &metav1.Duration{Duration: DefaultOfferHold}
	}
	if c.DeclineProbation == nil {
		c.DeclineProbation = &metav1.Duration{Duration: DefaultDeclineProbation}
	}
	if c.Kubernetes != nil && c.Kubernetes.StatusInterval == nil {
		c.Kubernetes.StatusInterval = &metav1.Duration{Duration: DefaultStatusInterval}
	}
	if c.Kubernetes != nil && c.Kubernetes.SyncTimeout == nil {
		c.Kubernetes.SyncTimeout = &metav1.Duration{Duration: DefaultSyncTimeout}
	}
	if c.Kubernetes != nil && c.Kubernetes.VMDeletionGrace == nil {
		c.Kubernetes.VMDeletionGrace = &metav1.Duration{Duration: DefaultVMDeletionGrace}
	}
	if c.HighAvailability != nil && c.HighAvailability.MaxClientLeadTime == nil {
		c.HighAvailability.MaxClientLeadTime = &metav1.Duration{Duration: DefaultMaxClientLeadTime}
	}
}

// Validate returns every problem, each naming its field.
func (c *Config) Validate() error {
	errs := hyperdhcpv1beta1.ValidateSpec(&c.Server, field.NewPath("server"))
	if c.Port < 1 || c.Port > 65535 {
		errs = append(errs, field.Invalid(field.NewPath("port"), c.Port, "must be between 1 and 65535"))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, field.NotSupported(field.NewPath("logLevel"), c.LogLevel, []string{"debug", "info", "warn", "error"}))
	}
	if c.LeaseDatabase == "" {
		errs = append(errs, field.Required(field.NewPath("leaseDatabase"), "a file for the leases"))
	}
	if c.OfferHold != nil && (c.OfferHold.Duration < time.Second || c.OfferHold.Duration > 10*time.Minute) {
		errs = append(errs, field.Invalid(field.NewPath("offerHold"), c.OfferHold.String(), "must be between 1s and 10m"))
	}
	if c.DeclineProbation != nil && c.DeclineProbation.Duration < time.Second {
		errs = append(errs, field.Invalid(field.NewPath("declineProbation"), c.DeclineProbation.String(), "must be at least 1s"))
	}
	if k := c.Kubernetes; k != nil {
		path := field.NewPath("kubernetes")
		if k.ServerName == "" {
			errs = append(errs, field.Required(path.Child("serverName"), "the Server whose status to update"))
		}
		if k.ServerNamespace == "" {
			errs = append(errs, field.Required(path.Child("serverNamespace"), "the namespace of that Server"))
		}
		if k.StatusInterval != nil && k.StatusInterval.Duration < time.Second {
			errs = append(errs, field.Invalid(path.Child("statusInterval"), k.StatusInterval.String(), "must be at least 1s"))
		}
	}
	if ha := c.HighAvailability; ha != nil {
		path := field.NewPath("highAvailability")
		if c.Kubernetes == nil {
			errs = append(errs, field.Required(field.NewPath("kubernetes"), "high availability elects the active replica with a Lease"))
		}
		for _, f := range []struct{ name, value string }{{"replica", ha.Replica}, {"lease", ha.Lease}, {"listen", ha.Listen},
			{"peer", ha.Peer}, {"ca", ha.CA}, {"cert", ha.Cert}, {"key", ha.Key}} {
			if f.value == "" {
				errs = append(errs, field.Required(path.Child(f.name), "needed for high availability"))
			}
		}
		if t := ha.MaxClientLeadTime; t != nil && t.Duration < time.Second {
			errs = append(errs, field.Invalid(path.Child("maxClientLeadTime"), t.String(), "must be at least 1s"))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid config: %w", errs.ToAggregate())
	}
	return nil
}

// Generation is the Server generation the configuration was rendered
// from; 0 outside Kubernetes.
func (c *Config) Generation() int64 {
	if c.Kubernetes == nil {
		return 0
	}
	return c.Kubernetes.ServerGeneration
}

// RestartOnly returns a copy of c without the settings hyperdhcpd applies
// while it runs: what is left takes a restart to change. The operator
// hashes it into the pod template, so that only such an edit rolls the pod.
//
// Live are the Server spec's pools, exclusions, reservations, lease time,
// client identity, KubeVirt settings and every option sent to clients.
// Restart-only are the server's address and network, conflict detection
// (it changes the pod's capabilities), and every daemon setting.
func (c *Config) RestartOnly() *Config {
	out := *c
	spec := c.Server.DeepCopy()
	spec.Pools, spec.Exclude, spec.Reservations, spec.LeaseTime = nil, nil, nil, nil
	spec.IdentifyClientsBy, spec.KubeVirt = "", nil
	spec.Router, spec.DNS, spec.DomainName, spec.DomainSearch, spec.NTP, spec.MTU = "", nil, "", nil, nil, nil
	spec.StaticRoutes, spec.BootFile, spec.NextServer, spec.Options = nil, "", "", nil
	out.Server = *spec
	if c.Kubernetes != nil {
		k := *c.Kubernetes
		k.ServerGeneration = 0
		out.Kubernetes = &k
	}
	return &out
}

// RestartFields names the settings that differ between c and next and take
// a restart to change (see RestartOnly), such as "server.serverIP" or
// "port"; nil when next can be applied live.
func (c *Config) RestartFields(next *Config) ([]string, error) {
	before, err := fieldsOf(c.RestartOnly())
	if err != nil {
		return nil, err
	}
	after, err := fieldsOf(next.RestartOnly())
	if err != nil {
		return nil, err
	}
	var changed []string
	for name, value := range after {
		if !bytes.Equal(before[name], value) {
			changed = append(changed, name)
		}
	}
	for name := range before {
		if _, ok := after[name]; !ok {
			changed = append(changed, name)
		}
	}
	slices.Sort(changed)
	return changed, nil
}

// fieldsOf flattens c's JSON form one level into the server spec and the
// kubernetes settings: "port", "server.serverIP", "kubernetes.kubeconfig".
func fieldsOf(c *Config) (map[string]json.RawMessage, error) {
	data, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("compare configurations: %w", err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("compare configurations: %w", err)
	}
	fields := map[string]json.RawMessage{}
	for name, value := range top {
		var nested map[string]json.RawMessage
		if (name == "server" || name == "kubernetes") && json.Unmarshal(value, &nested) == nil {
			for sub, v := range nested {
				fields[name+"."+sub] = v
			}
			continue
		}
		fields[name] = value
	}
	return fields, nil
}

// Marshal renders the configuration as YAML.
func (c *Config) Marshal() ([]byte, error) {
	out, err := yaml.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("render config: %w", err)
	}
	return out, nil
}

// ErrNoConfig is returned when no file is named and the default is missing.
var ErrNoConfig = errors.New("no configuration: pass --config FILE or create " + DefaultFile)
