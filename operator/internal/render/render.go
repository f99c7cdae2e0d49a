// Package render builds the objects a Server becomes. Every function is
// pure: it takes the Server (and what the caller looked up) and returns the
// desired object, so the shapes are unit-tested without a cluster.
package render

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/hyperdhcp/hyperdhcp/apis/config"
	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
)

// Where things live in the hyperdhcpd pod, and the keys the operator uses.
const (
	ConfigKey   = config.ConfigMapKey
	ConfigDir   = "/etc/hyperdhcp"
	DataDir     = "/var/lib/hyperdhcp"
	MetricsPort = 8067
	// ReplicationPort serves the pair's replication (high availability);
	// PairDir holds the pair's CA, certificate and key.
	ReplicationPort = 8068
	PairDir         = "/etc/hyperdhcp/pair"
	// RunAsID is the non-root user and group hyperdhcpd runs as (distroless's
	// "nonroot"); the lease volume is group-owned by it through fsGroup.
	RunAsID              = 65532
	ConfigHashAnnotation = "hyperdhcp.io/config-hash"
	NetworksAnnotation   = "k8s.v1.cni.cncf.io/networks"
	// VMReaderClusterRole is the ClusterRole (deploy/rbac) that lets
	// hyperdhcpd read VirtualMachineInstances and VirtualMachines; the
	// operator binds it in each namespace a Server serves.
	VMReaderClusterRole = "hyperdhcp-vm-reader"
	// ServerLabel and ServerNamespaceLabel mark objects made for a Server,
	// including those outside its namespace that no owner reference can hold.
	ServerLabel          = "hyperdhcp.io/server"
	ServerNamespaceLabel = "hyperdhcp.io/server-namespace"
	containerName        = "hyperdhcpd"
)

// Name is the name of every namespaced object made for server.
func Name(server *hyperdhcpv1beta1.Server) string { return "hyperdhcpd-" + server.Name }

// PVCName is the lease database's PersistentVolumeClaim.
func PVCName(server *hyperdhcpv1beta1.Server) string { return Name(server) + "-leases" }

// Replica is one hyperdhcpd of a Server: the only one, or one of the
// hot-standby pair. Replica 0 has the Server's names (Name, PVCName), so
// turning high availability on adds replica 1 beside the running one.
type Replica struct {
	Index    int
	ServerIP hyperdhcpv1beta1.IPv4Prefix
}

// Replicas are the hyperdhcpds of server.
func Replicas(server *hyperdhcpv1beta1.Server) []Replica {
	replicas := []Replica{{Index: 0, ServerIP: server.Spec.ServerIP}}
	if ha := server.Spec.HighAvailability; ha != nil {
		replicas = append(replicas, Replica{Index: 1, ServerIP: ha.StandbyServerIP})
	}
	return replicas
}

// ReplicaName names replica r's ConfigMap, Deployment and Service, and is
// its identity in the pair's Lease.
func ReplicaName(server *hyperdhcpv1beta1.Server, r Replica) string {
	if r.Index == 0 {
		return Name(server)
	}
	return fmt.Sprintf("%s-%d", Name(server), r.Index)
}

// ReplicaPVCName is replica r's lease database.
func ReplicaPVCName(server *hyperdhcpv1beta1.Server, r Replica) string {
	return ReplicaName(server, r) + "-leases"
}

// PairSecretName holds the pair's CA, certificate and key.
func PairSecretName(server *hyperdhcpv1beta1.Server) string { return Name(server) + "-pair" }

// ForeignName names objects outside the Server's namespace (RBAC names, any
// path segment), which must tell Servers of different namespaces apart.
// ':' occurs in neither namespace nor Server names, so namespace "a-b" with
// Server "c" and namespace "a" with Server "b-c" get different names, and
// no name made inside a namespace ("hyperdhcpd-...") can equal one.
func ForeignName(server *hyperdhcpv1beta1.Server) string {
	return "hyperdhcpd:" + server.Namespace + ":" + server.Name
}

// SelectorLabels select the hyperdhcpd pod of server.
func SelectorLabels(server *hyperdhcpv1beta1.Server) map[string]string {
	return map[string]string{
		"app.kubernetes.io/name":     "hyperdhcpd",
		"app.kubernetes.io/instance": server.Name,
	}
}

// ReplicaSelectorLabels select replica r's pod; replica 0's are
// SelectorLabels, and no replica's selector matches another's pod.
func ReplicaSelectorLabels(server *hyperdhcpv1beta1.Server, r Replica) map[string]string {
	labels := SelectorLabels(server)
	if r.Index > 0 {
		labels["app.kubernetes.io/instance"] = fmt.Sprintf("%s-%d", server.Name, r.Index)
	}
	return labels
}

// Labels go on every object made for server.
func Labels(server *hyperdhcpv1beta1.Server) map[string]string {
	labels := SelectorLabels(server)
	labels["app.kubernetes.io/managed-by"] = "hyperdhcp-operator"
	labels[ServerLabel] = server.Name
	labels[ServerNamespaceLabel] = server.Namespace
	return labels
}

func meta(server *hyperdhcpv1beta1.Server, name, namespace string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: Labels(server)}
}

// Config is the hyperdhcpd configuration for server's replica r.
func Config(server *hyperdhcpv1beta1.Server, r Replica) *config.Config {
	cfg := &config.Config{
		Server:         *server.Spec.DeepCopy(),
		LeaseDatabase:  DataDir + "/leases.db",
		MetricsAddress: fmt.Sprintf(":%d", MetricsPort),
		Kubernetes: &config.Kubernetes{
			ServerName:       server.Name,
			ServerNamespace:  server.Namespace,
			ServerGeneration: server.Generation,
			ConfigMap:        ReplicaName(server, r),
		},
	}
	cfg.Server.ServerIP = r.ServerIP
	if replicas := Replicas(server); len(replicas) > 1 {
		peer := replicas[1-r.Index]
		cfg.HighAvailability = &config.HighAvailability{
			Replica: ReplicaName(server, r),
			Lease:   Name(server),
			// HYPERDHCPD_HA_LISTEN narrows this to the pod IP (Deployment).
			Listen: fmt.Sprintf(":%d", ReplicationPort),
			Peer:   fmt.Sprintf("https://%s.%s.svc:%d", ReplicaName(server, peer), server.Namespace, ReplicationPort),
			// Replica 0 has the Server's database (from before the pair, or
			// empty with the Server): only it may answer first.
			Bootstrap: r.Index == 0,
			CA:        PairDir + "/ca.crt", Cert: PairDir + "/tls.crt", Key: PairDir + "/tls.key",
		}
	}
	cfg.SetDefaults()
	// The pod-level settings are the operator's business, not hyperdhcpd's;
	// cleared after defaulting, which would bring storage back.
	cfg.Server.Image, cfg.Server.Resources, cfg.Server.NodeSelector, cfg.Server.Tolerations = "", nil, nil, nil
	cfg.Server.Storage, cfg.Server.HighAvailability = nil, nil
	return cfg
}

// WatchOnly returns a copy of server whose kubevirt settings name only the
// namespaces hyperdhcpd was granted (all of them when cluster is true), so
// that it watches nothing it may not read: a watch of a namespace that has
// not consented would be Forbidden and keep hyperdhcpd degraded.
func WatchOnly(server *hyperdhcpv1beta1.Server, namespaces []string, cluster bool) *hyperdhcpv1beta1.Server {
	out := server.DeepCopy()
	if out.Spec.KubeVirt == nil {
		return out
	}
	out.Spec.KubeVirt.AllNamespaces = cluster
	if cluster {
		out.Spec.KubeVirt.Namespaces = nil
	} else {
		out.Spec.KubeVirt.Namespaces = slices.Clone(namespaces)
	}
	return out
}

// ConfigMap holds the rendered configuration. The hash of its restart-only
// settings (config.RestartOnly) goes on the pod template, so that only an
// edit hyperdhcpd cannot apply live rolls the pod; hyperdhcpd watches the
// ConfigMap for the others.
func ConfigMap(server *hyperdhcpv1beta1.Server, r Replica) (*corev1.ConfigMap, string, error) {
	cfg := Config(server, r)
	data, err := cfg.Marshal()
	if err != nil {
		return nil, "", err
	}
	restartOnly, err := cfg.RestartOnly().Marshal()
	if err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(restartOnly)
	return &corev1.ConfigMap{
		ObjectMeta: meta(server, ReplicaName(server, r), server.Namespace),
		Data:       map[string]string{ConfigKey: string(data)},
	}, hex.EncodeToString(sum[:8]), nil
}

// ServiceAccount is hyperdhcpd's identity.
func ServiceAccount(server *hyperdhcpv1beta1.Server) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{
		ObjectMeta:                   meta(server, Name(server), server.Namespace),
		AutomountServiceAccountToken: new(true), // hyperdhcpd reports status and reads VMs
	}
}

// StatusRole lets hyperdhcpd read its own Server and patch its status,
// read its own ConfigMaps, record Events and, for a pair, hold its Lease;
// nothing else.
func StatusRole(server *hyperdhcpv1beta1.Server) *rbacv1.Role {
	role := &rbacv1.Role{
		ObjectMeta: meta(server, Name(server), server.Namespace),
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{hyperdhcpv1beta1.GroupVersion.Group}, Resources: []string{"servers"}, ResourceNames: []string{server.Name}, Verbs: []string{"get"}},
			{APIGroups: []string{hyperdhcpv1beta1.GroupVersion.Group}, Resources: []string{"servers/status"}, ResourceNames: []string{server.Name}, Verbs: []string{"get", "patch"}},
			// Its own configuration, to apply edits live: a list and watch
			// by metadata.name are authorised by resourceNames.
			{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: replicaNames(server), Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"", "events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		},
	}
	if server.Spec.HighAvailability != nil {
		// The pair's election: the operator makes the Lease, so its name
		// can bound both verbs.
		role.Rules = append(role.Rules, rbacv1.PolicyRule{APIGroups: []string{coordinationv1.GroupName}, Resources: []string{"leases"},
			ResourceNames: []string{Name(server)}, Verbs: []string{"get", "update"}})
	}
	return role
}

func subjects(server *hyperdhcpv1beta1.Server) []rbacv1.Subject {
	return []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: Name(server), Namespace: server.Namespace}}
}

func replicaNames(server *hyperdhcpv1beta1.Server) []string {
	var names []string
	for _, r := range Replicas(server) {
		names = append(names, ReplicaName(server, r))
	}
	return names
}

// StatusRoleBinding binds StatusRole to hyperdhcpd's ServiceAccount.
func StatusRoleBinding(server *hyperdhcpv1beta1.Server) *rbacv1.RoleBinding {
	return &rbacv1.RoleBinding{
		ObjectMeta: meta(server, Name(server), server.Namespace),
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: Name(server)},
		Subjects:   subjects(server),
	}
}

// VMReaderBindings grant hyperdhcpd read access to VMs where the operator
// decided it may read them (package consent): a RoleBinding in each of
// namespaces, or one ClusterRoleBinding when cluster is true.
func VMReaderBindings(server *hyperdhcpv1beta1.Server, namespaces []string, cluster bool) ([]*rbacv1.RoleBinding, *rbacv1.ClusterRoleBinding) {
	roleRef := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: VMReaderClusterRole}
	if cluster {
		return nil, &rbacv1.ClusterRoleBinding{
			ObjectMeta: meta(server, ForeignName(server), ""),
			RoleRef:    roleRef,
			Subjects:   subjects(server),
		}
	}
	var bindings []*rbacv1.RoleBinding
	for _, ns := range slices.Compact(slices.Sorted(slices.Values(namespaces))) {
		name := Name(server) + "-vm-reader" // beside StatusRoleBinding
		if ns != server.Namespace {
			name = ForeignName(server)
		}
		bindings = append(bindings, &rbacv1.RoleBinding{
			ObjectMeta: meta(server, name, ns),
			RoleRef:    roleRef,
			Subjects:   subjects(server),
		})
	}
	return bindings, nil
}

// PVC holds the lease database.
func PVC(server *hyperdhcpv1beta1.Server, r Replica) *corev1.PersistentVolumeClaim {
	size := resource.MustParse(hyperdhcpv1beta1.DefaultStorageSize)
	var class *string
	if st := server.Spec.Storage; st != nil {
		if st.Size != nil {
			size = st.Size.DeepCopy()
		}
		if st.StorageClassName != "" {
			class = new(st.StorageClassName)
		}
	}
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: meta(server, ReplicaPVCName(server, r), server.Namespace),
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: class, // nil: the cluster's default class
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size}},
		},
	}
}

// networkSelection is one entry of the Multus networks annotation.
type networkSelection struct {
	Name      string   `json:"name"`
	Namespace string   `json:"namespace"`
	Interface string   `json:"interface"`
	IPs       []string `json:"ips"`
}

// NetworksAnnotationValue attaches the pod to the Server's network with the
// server's own address.
func NetworksAnnotationValue(server *hyperdhcpv1beta1.Server, r Replica) (string, error) {
	iface := server.Spec.NetworkAttachment.Interface
	if iface == "" {
		iface = hyperdhcpv1beta1.DefaultInterface
	}
	data, err := json.Marshal([]networkSelection{{
		Name:      server.Spec.NetworkAttachment.Name,
		Namespace: server.AttachmentNamespace(),
		Interface: iface,
		IPs:       []string{string(r.ServerIP)},
	}})
	if err != nil {
		return "", fmt.Errorf("encode %s annotation: %w", NetworksAnnotation, err)
	}
	return string(data), nil
}

// Deployment runs hyperdhcpd for server with the given image; configHash
// (from ConfigMap) rolls the pod when the configuration changes.
func Deployment(server *hyperdhcpv1beta1.Server, r Replica, image, configHash string) (*appsv1.Deployment, error) {
	networks, err := NetworksAnnotationValue(server, r)
	if err != nil {
		return nil, err
	}
	if server.Spec.Image != "" {
		image = server.Spec.Image
	}
	probe := func(path string) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromString("metrics")}},
			PeriodSeconds: 10, TimeoutSeconds: 2, FailureThreshold: 3,
		}
	}
	container := corev1.Container{
		Name:            containerName,
		Image:           image,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Args:            []string{"serve", "--config", ConfigDir + "/" + ConfigKey, "--log-format", "json"},
		Ports:           []corev1.ContainerPort{{Name: "metrics", ContainerPort: MetricsPort, Protocol: corev1.ProtocolTCP}},
		// /metrics, /healthz and /readyz listen on the pod's cluster-network
		// address only: the configuration's ":8067" would answer every VM on
		// the Multus interface too. hyperdhcpd reads HYPERDHCPD_METRICS_ADDRESS
		// over the file's metricsAddress; the kubelet probes the pod IP.
		Env: []corev1.EnvVar{
			{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "status.podIP"}}},
			{Name: "HYPERDHCPD_METRICS_ADDRESS", Value: fmt.Sprintf("$(POD_IP):%d", MetricsPort)},
		},
		LivenessProbe:  probe("/healthz"),
		ReadinessProbe: probe("/readyz"),
		Resources:      resources(server.Spec.Resources),
		VolumeMounts: []corev1.VolumeMount{
			{Name: "config", MountPath: ConfigDir, ReadOnly: true},
			{Name: "leases", MountPath: DataDir},
		},
		SecurityContext: &corev1.SecurityContext{
			Privileged:               new(false),
			AllowPrivilegeEscalation: new(false),
			ReadOnlyRootFilesystem:   new(true),
			// Per feature: port 67 needs NET_BIND_SERVICE (or the unprivileged
			// port sysctl below, since a non-root process gets no added
			// capability without ambient capabilities); replies to clients
			// without an address are broadcast, which needs no capability;
			// binding the socket to the Multus interface (SO_BINDTODEVICE)
			// needs none on Linux 5.7 and later. Only conflict detection
			// needs NET_RAW (an ARP packet socket).
			Capabilities: &corev1.Capabilities{
				Drop: []corev1.Capability{"ALL"},
				Add:  capabilities(server),
			},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
	volumes := []corev1.Volume{
		{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: ReplicaName(server, r)},
		}}},
		{Name: "leases", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{
			ClaimName: ReplicaPVCName(server, r),
		}}},
	}
	podLabels := ReplicaSelectorLabels(server, r)
	var affinity *corev1.Affinity
	if server.Spec.HighAvailability != nil {
		// Replication listens on the pod's cluster-network address only,
		// like the metrics; the pair authenticates with the Secret's
		// certificate (mutual TLS).
		container.Env = append(container.Env, corev1.EnvVar{Name: "HYPERDHCPD_HA_LISTEN", Value: fmt.Sprintf("$(POD_IP):%d", ReplicationPort)})
		container.Ports = append(container.Ports, corev1.ContainerPort{Name: "replication", ContainerPort: ReplicationPort, Protocol: corev1.ProtocolTCP})
		container.VolumeMounts = append(container.VolumeMounts, corev1.VolumeMount{Name: "pair", MountPath: PairDir, ReadOnly: true})
		volumes = append(volumes, corev1.Volume{Name: "pair", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: PairSecretName(server), DefaultMode: new(int32(0o440)),
		}}})
		// The replicas never share a node: a node's failure must leave one.
		podLabels[ServerLabel] = server.Name
		affinity = &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
				LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{ServerLabel: server.Name, "app.kubernetes.io/name": "hyperdhcpd"}},
				TopologyKey:   corev1.LabelHostname,
			}},
		}}
	}
	return &appsv1.Deployment{
		ObjectMeta: meta(server, ReplicaName(server, r), server.Namespace),
		Spec: appsv1.DeploymentSpec{
			Replicas: new(int32(1)),
			// The lease volume is ReadWriteOnce and two servers must never
			// share a database: the old pod goes before the new one starts.
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType},
			Selector: &metav1.LabelSelector{MatchLabels: ReplicaSelectorLabels(server, r)},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels: podLabels,
					Annotations: map[string]string{
						NetworksAnnotation:   networks,
						ConfigHashAnnotation: configHash,
					},
				},
				Spec: corev1.PodSpec{
					ServiceAccountName: Name(server),
					SecurityContext:    podSecurity(server),
					Containers:         []corev1.Container{container},
					NodeSelector:       maps.Clone(server.Spec.NodeSelector),
					Tolerations:        tolerations(server.Spec.Tolerations),
					Affinity:           affinity,
					Volumes:            volumes,
				},
			},
		},
	}, nil
}

// Service gives replica r of a pair a stable address for replication.
func Service(server *hyperdhcpv1beta1.Server, r Replica) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: meta(server, ReplicaName(server, r), server.Namespace),
		Spec: corev1.ServiceSpec{
			// A standby is ready only once it has caught up, which it does
			// through these addresses.
			PublishNotReadyAddresses: true,
			Selector:                 ReplicaSelectorLabels(server, r),
			Ports: []corev1.ServicePort{{Name: "replication", Port: ReplicationPort, Protocol: corev1.ProtocolTCP,
				TargetPort: intstr.FromString("replication")}},
		},
	}
}

// PairSecret holds the pair's CA and the certificate and key both replicas
// present (keys ca.crt, tls.crt, tls.key), made once by the operator.
func PairSecret(server *hyperdhcpv1beta1.Server, caPEM, certPEM, keyPEM []byte) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: meta(server, PairSecretName(server), server.Namespace),
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{"ca.crt": caPEM, corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM},
	}
}

// Lease is the pair's election object, made empty by the operator so that
// hyperdhcpd needs only get and update of it (create cannot be limited to
// one name).
func Lease(server *hyperdhcpv1beta1.Server) *coordinationv1.Lease {
	return &coordinationv1.Lease{ObjectMeta: meta(server, Name(server), server.Namespace)}
}

func resources(r *hyperdhcpv1beta1.ResourceRequirements) corev1.ResourceRequirements {
	if r == nil {
		return corev1.ResourceRequirements{}
	}
	list := func(in map[string]resource.Quantity) corev1.ResourceList {
		if len(in) == 0 {
			return nil
		}
		out := corev1.ResourceList{}
		for k, v := range in {
			out[corev1.ResourceName(k)] = v.DeepCopy()
		}
		return out
	}
	return corev1.ResourceRequirements{Limits: list(r.Limits), Requests: list(r.Requests)}
}

func tolerations(in []hyperdhcpv1beta1.Toleration) []corev1.Toleration {
	var out []corev1.Toleration
	for _, t := range in {
		out = append(out, corev1.Toleration{
			Key:               t.Key,
			Operator:          corev1.TolerationOperator(t.Operator),
			Value:             t.Value,
			Effect:            corev1.TaintEffect(t.Effect),
			TolerationSeconds: t.TolerationSeconds,
		})
	}
	return out
}

// probing tells whether the Server probes addresses before offering them.
func probing(server *hyperdhcpv1beta1.Server) bool {
	c := server.Spec.ConflictDetection
	return c == nil || c.Enabled == nil || *c.Enabled
}

// capabilities are the ones hyperdhcpd's features need, and no more.
func capabilities(server *hyperdhcpv1beta1.Server) []corev1.Capability {
	if probing(server) {
		return []corev1.Capability{"NET_BIND_SERVICE", "NET_RAW"}
	}
	return []corev1.Capability{"NET_BIND_SERVICE"}
}

// podSecurity runs hyperdhcpd as a non-root user unless conflict detection
// needs NET_RAW: Kubernetes gives added capabilities to root only (it sets
// no ambient capabilities), so with probing on the process is uid 0 with
// exactly NET_BIND_SERVICE and NET_RAW, a read-only root and no privilege
// escalation.
func podSecurity(server *hyperdhcpv1beta1.Server) *corev1.PodSecurityContext {
	sc := &corev1.PodSecurityContext{
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		// The lease volume is made group-writable for this group.
		FSGroup: new(int64(RunAsID)),
	}
	if probing(server) {
		sc.RunAsNonRoot, sc.RunAsUser, sc.RunAsGroup = new(false), new(int64(0)), new(int64(RunAsID))
		return sc
	}
	sc.RunAsNonRoot, sc.RunAsUser, sc.RunAsGroup = new(true), new(int64(RunAsID)), new(int64(RunAsID))
	// Lets the non-root process bind port 67 in the pod's own network
	// namespace: a safe sysctl, allowed by the baseline and restricted Pod
	// Security levels.
	sc.Sysctls = []corev1.Sysctl{{Name: "net.ipv4.ip_unprivileged_port_start", Value: "67"}}
	return sc
}
