package render

import (
	"encoding/json"
	"fmt"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/api/validation/path"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/hyperdhcp/hyperdhcp/apis/config"
	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
)

// first is the only replica of a Server without highAvailability.
func first(server *hyperdhcpv1beta1.Server) Replica { return Replicas(server)[0] }

func testServer() *hyperdhcpv1beta1.Server {
	s := &hyperdhcpv1beta1.Server{
		ObjectMeta: metav1.ObjectMeta{Name: "lab", Namespace: "vms", Generation: 3},
		Spec: hyperdhcpv1beta1.ServerSpec{
			NetworkAttachment: hyperdhcpv1beta1.NetworkAttachment{Name: "lab-bridge", Namespace: "networks"},
			ServerIP:          "192.168.50.2/24",
			Pools:             []hyperdhcpv1beta1.AddressRange{{Start: "192.168.50.100", End: "192.168.50.199"}},
			Image:             "",
		},
	}
	hyperdhcpv1beta1.SetDefaults(&s.Spec)
	return s
}

func TestConfigIsValidAndNamesItsServer(t *testing.T) {
	cm, hash, err := ConfigMap(testServer(), first(testServer()))
	require.NoError(t, err)
	require.Len(t, hash, 16)
	cfg, err := config.Parse([]byte(cm.Data[ConfigKey]), "configmap")
	require.NoError(t, err)
	cfg.SetDefaults()
	require.NoError(t, cfg.Validate())
	assert.Equal(t, "net1", cfg.Interface)
	assert.Equal(t, DataDir+"/leases.db", cfg.LeaseDatabase)
	assert.Equal(t, &config.Kubernetes{ServerName: "lab", ServerNamespace: "vms", ServerGeneration: 3, ConfigMap: Name(testServer()),
		StatusInterval: cfg.Kubernetes.StatusInterval, SyncTimeout: cfg.Kubernetes.SyncTimeout, VMDeletionGrace: cfg.Kubernetes.VMDeletionGrace}, cfg.Kubernetes)
	assert.Nil(t, Config(testServer(), first(testServer())).Server.Storage, "the lease volume is the pod's business, not hyperdhcpd's")
}

// TestConfigHashFollowsOnlyTheRestartOnlySpec: the hash on the pod template
// changes, and so rolls the pod, only for an edit hyperdhcpd cannot apply
// live; the ConfigMap itself changes for every edit.
func TestConfigHashFollowsOnlyTheRestartOnlySpec(t *testing.T) {
	beforeCM, before, err := ConfigMap(testServer(), first(testServer()))
	require.NoError(t, err)
	live := map[string]func(*hyperdhcpv1beta1.ServerSpec){
		"router":  func(s *hyperdhcpv1beta1.ServerSpec) { s.Router = "192.168.50.1" },
		"dns":     func(s *hyperdhcpv1beta1.ServerSpec) { s.DNS = []hyperdhcpv1beta1.IPv4Address{"192.168.50.53"} },
		"pools":   func(s *hyperdhcpv1beta1.ServerSpec) { s.Pools[0].End = "192.168.50.150" },
		"exclude": func(s *hyperdhcpv1beta1.ServerSpec) { s.Exclude = []hyperdhcpv1beta1.IPv4Address{"192.168.50.120"} },
		"reservations": func(s *hyperdhcpv1beta1.ServerSpec) {
			s.Reservations = []hyperdhcpv1beta1.Reservation{{MAC: "02:00:5e:00:00:01", IP: "192.168.50.20"}}
		},
		"leaseTime": func(s *hyperdhcpv1beta1.ServerSpec) { s.LeaseTime = &metav1.Duration{Duration: 2 * time.Hour} },
		"kubevirt":  func(s *hyperdhcpv1beta1.ServerSpec) { s.KubeVirt.Namespaces = []string{"vms", "more-vms"} },
		"options": func(s *hyperdhcpv1beta1.ServerSpec) {
			s.Options = []hyperdhcpv1beta1.DHCPOption{{Code: 252, Value: "http://wpad/"}}
		},
		"pod only": func(s *hyperdhcpv1beta1.ServerSpec) { s.NodeSelector = map[string]string{"zone": "a"} },
	}
	for name, edit := range live {
		server := testServer()
		edit(&server.Spec)
		server.Generation++
		cm, hash, err := ConfigMap(server, first(server))
		require.NoError(t, err)
		assert.Equal(t, before, hash, "%s: applied live, the pod stays", name)
		if name != "pod only" {
			assert.NotEqual(t, beforeCM.Data, cm.Data, "%s: the ConfigMap carries the edit", name)
		}
	}
	restart := map[string]func(*hyperdhcpv1beta1.ServerSpec){
		"serverIP":          func(s *hyperdhcpv1beta1.ServerSpec) { s.ServerIP = "192.168.50.3/24" },
		"networkAttachment": func(s *hyperdhcpv1beta1.ServerSpec) { s.NetworkAttachment.Interface = "net2" },
		"conflictDetection": func(s *hyperdhcpv1beta1.ServerSpec) { s.ConflictDetection.Enabled = new(false) },
	}
	for name, edit := range restart {
		server := testServer()
		edit(&server.Spec)
		_, hash, err := ConfigMap(server, first(server))
		require.NoError(t, err)
		assert.NotEqual(t, before, hash, "%s: takes a restart, the pod rolls", name)
	}
}

func TestDeployment(t *testing.T) {
	server := testServer()
	server.Spec.NodeSelector = map[string]string{"zone": "a"}
	server.Spec.Tolerations = []hyperdhcpv1beta1.Toleration{{Key: "infra", Operator: "Exists", Effect: "NoSchedule"}}
	server.Spec.Resources = &hyperdhcpv1beta1.ResourceRequirements{Limits: map[string]resource.Quantity{"memory": resource.MustParse("128Mi")}}
	d, err := Deployment(server, first(server), "example/hyperdhcpd:v1", "abc")
	require.NoError(t, err)

	assert.Equal(t, "hyperdhcpd-lab", d.Name)
	assert.Equal(t, int32(1), *d.Spec.Replicas)
	assert.Equal(t, appsv1.RecreateDeploymentStrategyType, d.Spec.Strategy.Type)
	pod := d.Spec.Template
	assert.Equal(t, "abc", pod.Annotations[ConfigHashAnnotation])
	var networks []map[string]any
	require.NoError(t, json.Unmarshal([]byte(pod.Annotations[NetworksAnnotation]), &networks))
	assert.Equal(t, []map[string]any{{"name": "lab-bridge", "namespace": "networks", "interface": "net1", "ips": []any{"192.168.50.2/24"}}}, networks)

	c := pod.Spec.Containers[0]
	assert.Equal(t, "example/hyperdhcpd:v1", c.Image)
	assert.Equal(t, []string{"serve", "--config", "/etc/hyperdhcp/hyperdhcpd.yaml", "--log-format", "json"}, c.Args)
	assert.Equal(t, "/healthz", c.LivenessProbe.HTTPGet.Path)
	assert.Equal(t, "/readyz", c.ReadinessProbe.HTTPGet.Path)
	sc := c.SecurityContext
	assert.False(t, *sc.Privileged)
	assert.False(t, *sc.AllowPrivilegeEscalation)
	assert.True(t, *sc.ReadOnlyRootFilesystem)
	assert.Equal(t, []corev1.Capability{"ALL"}, sc.Capabilities.Drop)
	assert.Equal(t, []corev1.Capability{"NET_BIND_SERVICE", "NET_RAW"}, sc.Capabilities.Add, "conflict detection (on by default) needs NET_RAW")
	psc := pod.Spec.SecurityContext
	assert.Equal(t, corev1.SeccompProfileTypeRuntimeDefault, psc.SeccompProfile.Type)
	assert.Equal(t, new(false), psc.RunAsNonRoot, "only root gets added capabilities: Kubernetes sets no ambient ones")
	assert.Equal(t, new(int64(0)), psc.RunAsUser)
	assert.Equal(t, new(int64(65532)), psc.FSGroup)
	assert.Equal(t, resource.MustParse("128Mi"), c.Resources.Limits[corev1.ResourceMemory])
	assert.Equal(t, map[string]string{"zone": "a"}, pod.Spec.NodeSelector)
	assert.Equal(t, corev1.TolerationOpExists, pod.Spec.Tolerations[0].Operator)
	assert.Equal(t, "hyperdhcpd-lab", pod.Spec.ServiceAccountName)
	assert.Equal(t, "hyperdhcpd-lab-leases", pod.Spec.Volumes[1].PersistentVolumeClaim.ClaimName)

	server.Spec.Image = "mirror.example/hyperdhcpd:v2"
	d, err = Deployment(server, first(server), "example/hyperdhcpd:v1", "abc")
	require.NoError(t, err)
	assert.Equal(t, "mirror.example/hyperdhcpd:v2", d.Spec.Template.Spec.Containers[0].Image, "the Server's image wins")
}

// TestDeploymentWithoutConflictDetection: without probing no feature needs
// NET_RAW, and hyperdhcpd runs as the non-root user.
func TestDeploymentWithoutConflictDetection(t *testing.T) {
	server := testServer()
	server.Spec.ConflictDetection = &hyperdhcpv1beta1.ConflictDetectionSpec{Enabled: new(false)}
	d, err := Deployment(server, first(server), "example/hyperdhcpd:v1", "abc")
	require.NoError(t, err)
	pod := d.Spec.Template
	sc := pod.Spec.Containers[0].SecurityContext
	assert.False(t, *sc.AllowPrivilegeEscalation)
	assert.True(t, *sc.ReadOnlyRootFilesystem)
	assert.Equal(t, []corev1.Capability{"ALL"}, sc.Capabilities.Drop)
	assert.Equal(t, []corev1.Capability{"NET_BIND_SERVICE"}, sc.Capabilities.Add, "no other feature needs NET_RAW")
	psc := pod.Spec.SecurityContext
	assert.Equal(t, corev1.SeccompProfileTypeRuntimeDefault, psc.SeccompProfile.Type)
	assert.Equal(t, new(true), psc.RunAsNonRoot)
	assert.Equal(t, new(int64(65532)), psc.RunAsUser)
	assert.Equal(t, new(int64(65532)), psc.RunAsGroup)
	assert.Equal(t, new(int64(65532)), psc.FSGroup, "the lease volume is writable by the non-root user")
	assert.Contains(t, psc.Sysctls, corev1.Sysctl{Name: "net.ipv4.ip_unprivileged_port_start", Value: "67"},
		"a non-root process gets no added capability without ambient capabilities: port 67 must be unprivileged")
}

func TestNetworksAnnotationDefaultsToTheServersNamespace(t *testing.T) {
	server := testServer()
	server.Spec.NetworkAttachment.Namespace = ""
	value, err := NetworksAnnotationValue(server, first(server))
	require.NoError(t, err)
	assert.JSONEq(t, `[{"name":"lab-bridge","namespace":"vms","interface":"net1","ips":["192.168.50.2/24"]}]`, value)
}

func TestPVC(t *testing.T) {
	pvc := PVC(testServer(), first(testServer()))
	assert.Nil(t, pvc.Spec.StorageClassName, "no class: the cluster default")
	assert.Equal(t, resource.MustParse("64Mi"), pvc.Spec.Resources.Requests[corev1.ResourceStorage])
	assert.Equal(t, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, pvc.Spec.AccessModes)

	server := testServer()
	server.Spec.Storage = &hyperdhcpv1beta1.StorageSpec{StorageClassName: "fast", Size: new(resource.MustParse("1Gi"))}
	pvc = PVC(server, first(server))
	assert.Equal(t, "fast", *pvc.Spec.StorageClassName)
	assert.Equal(t, resource.MustParse("1Gi"), pvc.Spec.Resources.Requests[corev1.ResourceStorage])
}

func TestRBAC(t *testing.T) {
	server := testServer()
	role := StatusRole(server)
	for _, rule := range role.Rules {
		if rule.APIGroups[0] == "hyperdhcp.io" {
			assert.Equal(t, []string{"lab"}, rule.ResourceNames, "only its own Server")
		}
		assert.NotContains(t, rule.Resources, "secrets")
	}

	// Which namespaces is package consent's decision; these are the shapes.
	cases := []struct {
		name       string
		namespaces []string
		cluster    bool
		want       []string // namespace/name of each RoleBinding
	}{
		{"own namespace", []string{"vms"}, false, []string{"vms/hyperdhcpd-lab-vm-reader"}},
		{"other namespaces", []string{"vms", "ci", "ci"}, false, []string{"ci/hyperdhcpd:vms:lab", "vms/hyperdhcpd-lab-vm-reader"}},
		{"all namespaces", nil, true, nil},
		{"none", nil, false, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bindings, cluster := VMReaderBindings(server, tc.namespaces, tc.cluster)
			var got []string
			for _, b := range bindings {
				got = append(got, b.Namespace+"/"+b.Name)
				assert.Equal(t, VMReaderClusterRole, b.RoleRef.Name)
				assert.Equal(t, subjects(server), b.Subjects)
			}
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.cluster, cluster != nil)
			if cluster != nil {
				assert.Equal(t, "hyperdhcpd:vms:lab", cluster.Name)
				assert.Equal(t, VMReaderClusterRole, cluster.RoleRef.Name)
			}
		})
	}
}

// The rendered Deployment survives a trip through YAML unchanged, as it
// does through the API server (no field that only Go can hold).
func TestDeploymentRoundTripsThroughYAML(t *testing.T) {
	d, err := Deployment(testServer(), first(testServer()), "img", "h")
	require.NoError(t, err)
	data, err := yaml.Marshal(d)
	require.NoError(t, err)
	var back appsv1.Deployment
	require.NoError(t, yaml.UnmarshalStrict(data, &back))
	assert.Equal(t, d.Spec, back.Spec)
}

// hyperdhcpd's HTTP endpoints listen on the pod's cluster-network address
// only, never on the VM network: the address comes from the downward API.
func TestMetricsListenOnThePodIP(t *testing.T) {
	d, err := Deployment(testServer(), first(testServer()), "img", "h")
	require.NoError(t, err)
	c := d.Spec.Template.Spec.Containers[0]
	require.Len(t, c.Env, 2)
	podIP := c.Env[0] // first: $(POD_IP) only expands variables defined before it
	assert.Equal(t, "POD_IP", podIP.Name)
	require.NotNil(t, podIP.ValueFrom)
	require.NotNil(t, podIP.ValueFrom.FieldRef)
	assert.Equal(t, "status.podIP", podIP.ValueFrom.FieldRef.FieldPath)
	assert.Equal(t, corev1.EnvVar{Name: "HYPERDHCPD_METRICS_ADDRESS", Value: "$(POD_IP):8067"}, c.Env[1])
	// Probes name no host: the kubelet sends them to the pod IP.
	assert.Empty(t, c.LivenessProbe.HTTPGet.Host)
	assert.Empty(t, c.ReadinessProbe.HTTPGet.Host)
}

// Every name and label value derived from the longest Server name the API
// accepts fits its 63-character limit.
func TestChildNamesFit(t *testing.T) {
	server := testServer()
	server.Name = strings.Repeat("n", hyperdhcpv1beta1.MaxServerNameLength)
	server.Namespace = strings.Repeat("s", 63)
	server.Spec.KubeVirt = &hyperdhcpv1beta1.KubeVirtSpec{Namespaces: []string{server.Namespace, "other"}}

	names := []string{Name(server), PVCName(server)}
	bindings, _ := VMReaderBindings(server, server.Spec.KubeVirt.Namespaces, false)
	var labels []map[string]string
	for _, b := range bindings {
		if b.Namespace == server.Namespace {
			names = append(names, b.Name) // foreign names are RBAC names, not DNS labels
		}
		labels = append(labels, b.Labels)
	}
	d, err := Deployment(server, first(server), "img", "h")
	require.NoError(t, err)
	labels = append(labels, d.Labels, d.Spec.Template.Labels)
	for _, name := range names {
		assert.Empty(t, validation.IsDNS1123Label(name), name)
	}
	for _, set := range labels {
		for k, v := range set {
			assert.Empty(t, validation.IsValidLabelValue(v), "%s=%s", k, v)
		}
	}
}

// Objects outside the Server's namespace must name it unambiguously: no two
// Servers share one, and none equals a name made inside a namespace.
func TestForeignNamesDoNotCollide(t *testing.T) {
	server := func(namespace, name string) *hyperdhcpv1beta1.Server {
		s := testServer()
		s.Namespace, s.Name = namespace, name
		return s
	}
	assert.NotEqual(t, ForeignName(server("a-b", "c")), ForeignName(server("a", "b-c")))
	// Server names may hold dots (DNS subdomains), namespaces may not.
	assert.NotEqual(t, ForeignName(server("a", "b.c")), ForeignName(server("a.b", "c")))
	// A foreign RoleBinding lands in a namespace with Servers of its own.
	assert.NotEqual(t, ForeignName(server("a", "b")), Name(server("other", "a-b")))
	assert.NotEqual(t, ForeignName(server("a", "b")), Name(server("other", "a.b")))
	assert.Empty(t, path.IsValidPathSegmentName(ForeignName(server("a", "b.c"))), "a valid RBAC object name")
}

func TestConfigWatchesOnlyGrantedNamespaces(t *testing.T) {
	server := testServer()
	server.Spec.KubeVirt.Namespaces = []string{"vms", "team-a", "team-b"}
	cfg := Config(WatchOnly(server, []string{"team-a", "vms"}, false), first(server))
	assert.Equal(t, []string{"team-a", "vms"}, cfg.Server.KubeVirt.Namespaces, "team-b has not consented")
	assert.Equal(t, []string{"vms", "team-a", "team-b"}, server.Spec.KubeVirt.Namespaces, "the Server itself is not changed")

	server.Spec.KubeVirt.AllNamespaces, server.Spec.KubeVirt.Namespaces = true, nil
	cfg = Config(WatchOnly(server, []string{"vms"}, false), first(server))
	assert.False(t, cfg.Server.KubeVirt.AllNamespaces, "allNamespaces not allowed: only the granted namespace")
	assert.Equal(t, []string{"vms"}, cfg.Server.KubeVirt.Namespaces)
	cfg = Config(WatchOnly(server, nil, true), first(server))
	assert.True(t, cfg.Server.KubeVirt.AllNamespaces)
}

// TestPairRendersTwoReplicas: with highAvailability, replica 0 keeps the
// Server's names and replica 1 gets its own; their selectors never match
// each other's pods; they never share a node; each serves its own address
// and names the other as its peer; both mount the pair's Secret, and the
// Role lets hyperdhcpd hold only the pair's Lease.
func TestPairRendersTwoReplicas(t *testing.T) {
	server := testServer()
	server.Spec.HighAvailability = &hyperdhcpv1beta1.HighAvailabilitySpec{StandbyServerIP: "192.168.50.3/24"}
	replicas := Replicas(server)
	require.Len(t, replicas, 2)

	var deployments [2]*appsv1.Deployment
	for i, r := range replicas {
		d, err := Deployment(server, r, "img", "h")
		require.NoError(t, err)
		deployments[i] = d
		cfg := Config(server, r)
		require.NoError(t, cfg.Validate(), "replica %d's configuration", i)
		assert.Equal(t, r.ServerIP, cfg.Server.ServerIP)
		assert.Nil(t, cfg.Server.HighAvailability, "the pair's shape is the operator's business")
		require.NotNil(t, cfg.HighAvailability)
		peer := replicas[1-i]
		assert.Equal(t, "https://"+ReplicaName(server, peer)+".vms.svc:8068", cfg.HighAvailability.Peer)
		assert.Equal(t, Name(server), cfg.HighAvailability.Lease)
		assert.Equal(t, ReplicaName(server, r), cfg.HighAvailability.Replica)
		assert.Equal(t, i == 0, cfg.HighAvailability.Bootstrap, "only replica 0 may answer first")
		assert.Contains(t, d.Spec.Template.Annotations[NetworksAnnotation], `"ips":["`+string(r.ServerIP)+`"]`)
		assert.Equal(t, ReplicaPVCName(server, r), d.Spec.Template.Spec.Volumes[1].PersistentVolumeClaim.ClaimName)
		assert.Contains(t, d.Spec.Template.Spec.Containers[0].Env, corev1.EnvVar{Name: "HYPERDHCPD_HA_LISTEN", Value: "$(POD_IP):8068"})
		require.NotNil(t, d.Spec.Template.Spec.Affinity)
		terms := d.Spec.Template.Spec.Affinity.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution
		require.Len(t, terms, 1)
		assert.Equal(t, corev1.LabelHostname, terms[0].TopologyKey)
		svc := Service(server, r)
		assert.Equal(t, d.Spec.Selector.MatchLabels, svc.Spec.Selector)
		assert.True(t, svc.Spec.PublishNotReadyAddresses, "a standby catches up through it before it is ready")
	}
	assert.Equal(t, Name(server), deployments[0].Name, "replica 0 keeps the names a single server has")
	assert.Equal(t, Name(server)+"-1", deployments[1].Name)
	for i := range 2 {
		own, other := deployments[i], deployments[1-i]
		selector, err := metav1.LabelSelectorAsSelector(own.Spec.Selector)
		require.NoError(t, err)
		assert.False(t, selector.Matches(labels.Set(other.Spec.Template.Labels)), "replica %d's selector must not match the other's pod", i)
		anti, err := metav1.LabelSelectorAsSelector(own.Spec.Template.Spec.Affinity.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution[0].LabelSelector)
		require.NoError(t, err)
		assert.True(t, anti.Matches(labels.Set(other.Spec.Template.Labels)), "anti-affinity keeps replica %d off the other's node", i)
	}
	role := StatusRole(server)
	assert.Contains(t, role.Rules, rbacv1.PolicyRule{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"},
		ResourceNames: []string{Name(server)}, Verbs: []string{"get", "update"}})
	assert.NotContains(t, fmt.Sprint(StatusRole(testServer()).Rules), "leases", "a single server holds no Lease")
}
