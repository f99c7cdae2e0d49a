package test

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
)

// validSpec is a Server spec that every rule accepts; each refusal case
// changes one thing about it.
func validSpec() hyperdhcpv1beta1.ServerSpec {
	return hyperdhcpv1beta1.ServerSpec{
		NetworkAttachment: hyperdhcpv1beta1.NetworkAttachment{Name: "lab-bridge"},
		ServerIP:          "192.168.50.2/24",
		Pools:             []hyperdhcpv1beta1.AddressRange{{Start: "192.168.50.100", End: "192.168.50.199"}},
		Router:            "192.168.50.1",
	}
}

func newServer(namespace string, spec hyperdhcpv1beta1.ServerSpec) *hyperdhcpv1beta1.Server {
	return &hyperdhcpv1beta1.Server{
		TypeMeta:   metav1.TypeMeta{APIVersion: hyperdhcpv1beta1.GroupVersion.String(), Kind: "Server"},
		ObjectMeta: metav1.ObjectMeta{GenerateName: "server-", Namespace: namespace},
		Spec:       spec,
	}
}

func TestCRDRefusesInvalidServers(t *testing.T) {
	ctx := t.Context()
	namespace := createNamespace(ctx, t)

	cases := []struct {
		name    string
		mutate  func(*hyperdhcpv1beta1.ServerSpec)
		raw     func(spec map[string]any) // for values the Go types cannot hold
		server  string                    // the Server's name, if not generated
		message string
	}{
		{
			// The operator's child names and labels derive from it and must fit 63.
			name:    "name too long for the names derived from it",
			server:  strings.Repeat("n", hyperdhcpv1beta1.MaxServerNameLength+1),
			message: "a Server's name must be at most 42 characters",
		},
		{
			name:    "malformed server IP",
			mutate:  func(s *hyperdhcpv1beta1.ServerSpec) { s.ServerIP = "192.168.50.300/24" },
			message: "must be an IPv4 address with a prefix length",
		},
		{
			name:    "server IP without prefix length",
			mutate:  func(s *hyperdhcpv1beta1.ServerSpec) { s.ServerIP = "192.168.50.2" },
			message: "must be an IPv4 address with a prefix length",
		},
		{
			name:    "IPv6 server IP",
			mutate:  func(s *hyperdhcpv1beta1.ServerSpec) { s.ServerIP = "fd00::2/64" },
			message: "must be an IPv4 address with a prefix length",
		},
		{
			name:    "subnet too small to serve",
			mutate:  func(s *hyperdhcpv1beta1.ServerSpec) { s.ServerIP = "192.168.50.2/31" },
			message: "prefix length must be between /8 and /30",
		},
		{
			name:    "malformed pool address",
			mutate:  func(s *hyperdhcpv1beta1.ServerSpec) { s.Pools[0].End = "192.168.50.1999" },
			message: "must be an IPv4 address such as",
		},
		{
			name:    "no pool",
			mutate:  func(s *hyperdhcpv1beta1.ServerSpec) { s.Pools = []hyperdhcpv1beta1.AddressRange{} },
			message: "should have at least 1 items",
		},
		{
			name:    "pool outside the subnet",
			mutate:  func(s *hyperdhcpv1beta1.ServerSpec) { s.Pools[0].End = "192.168.51.10" },
			message: "every pool must lie inside the subnet of serverIP",
		},
		{
			name: "server IP inside a pool",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.Pools = append(s.Pools, hyperdhcpv1beta1.AddressRange{Start: "192.168.50.2", End: "192.168.50.20"})
			},
			message: "serverIP must not lie inside a pool",
		},
		{
			name: "standby address without prefix length",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.HighAvailability = &hyperdhcpv1beta1.HighAvailabilitySpec{StandbyServerIP: "192.168.50.3"}
			},
			message: "must be an IPv4 address with a prefix length",
		},
		{
			name: "pool start after end",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.Pools[0] = hyperdhcpv1beta1.AddressRange{Start: "192.168.50.199", End: "192.168.50.100"}
			},
			message: "a pool's start must not come after its end",
		},
		{
			name:    "excluded address outside the subnet",
			mutate:  func(s *hyperdhcpv1beta1.ServerSpec) { s.Exclude = []hyperdhcpv1beta1.IPv4Address{"10.0.0.1"} },
			message: "every excluded address must lie inside the subnet",
		},
		{
			name:    "router outside the subnet",
			mutate:  func(s *hyperdhcpv1beta1.ServerSpec) { s.Router = "10.0.0.1" },
			message: "router must lie inside the subnet of serverIP",
		},
		{
			name:    "unknown way to identify clients",
			mutate:  func(s *hyperdhcpv1beta1.ServerSpec) { s.IdentifyClientsBy = "Hostname" },
			message: `supported values: "ClientID", "MAC"`,
		},
		{
			name:    "lease time too short",
			mutate:  func(s *hyperdhcpv1beta1.ServerSpec) { s.LeaseTime = &metav1.Duration{Duration: 30 * time.Second} },
			message: "leaseTime must be a duration between 1m and 8760h",
		},
		{
			name:    "lease time not a duration",
			raw:     func(spec map[string]any) { spec["leaseTime"] = "one day" },
			message: "leaseTime must be a duration between 1m and 8760h",
		},
		{
			name: "probe timeout too long",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.ConflictDetection = &hyperdhcpv1beta1.ConflictDetectionSpec{Timeout: &metav1.Duration{Duration: 5 * time.Second}}
			},
			message: "timeout must be a duration between 10ms and 2s",
		},
		{
			name:    "probe timeout not a duration",
			raw:     func(spec map[string]any) { spec["conflictDetection"] = map[string]any{"timeout": "fast"} },
			message: "timeout must be a duration between 10ms and 2s",
		},
		{
			name: "too many DNS servers",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				for range 9 {
					s.DNS = append(s.DNS, "192.168.50.53")
				}
			},
			message: "must have at most 8 items",
		},
		{
			name:    "MTU below the minimum",
			mutate:  func(s *hyperdhcpv1beta1.ServerSpec) { s.MTU = new(int32(50)) },
			message: "should be greater than or equal to 68",
		},
		{
			name: "static route gateway off-link",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.StaticRoutes = []hyperdhcpv1beta1.StaticRoute{{Destination: "10.30.0.0/16", Gateway: "10.0.0.1"}}
			},
			message: "every static route gateway must lie inside the subnet",
		},
		{
			name:    "option code zero",
			mutate:  func(s *hyperdhcpv1beta1.ServerSpec) { s.Options = []hyperdhcpv1beta1.DHCPOption{{Code: 0, Value: "x"}} },
			message: "option code must be between 1 and 254",
		},
		{
			name: "option code 255",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.Options = []hyperdhcpv1beta1.DHCPOption{{Code: 255, Value: "x"}}
			},
			message: "option code must be between 1 and 254",
		},
		{
			name: "option code with a dedicated field",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.Options = []hyperdhcpv1beta1.DHCPOption{{Code: 3, Type: hyperdhcpv1beta1.DHCPOptionIPv4, Value: "192.168.50.1"}}
			},
			message: "use the dedicated Server field instead",
		},
		{
			name: "malformed hex option",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.Options = []hyperdhcpv1beta1.DHCPOption{{Code: 224, Type: hyperdhcpv1beta1.DHCPOptionHex, Value: "abc"}}
			},
			message: "a Hex option value must be an even number of hex digits",
		},
		{
			name: "UInt8 option out of range",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.Options = []hyperdhcpv1beta1.DHCPOption{{Code: 46, Type: hyperdhcpv1beta1.DHCPOptionUInt8, Value: "300"}}
			},
			message: "must be a decimal number that fits its size",
		},
		{
			name: "two options with one code",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.Options = []hyperdhcpv1beta1.DHCPOption{{Code: 252, Value: "a"}, {Code: 252, Value: "b"}}
			},
			message: "Duplicate value",
		},
		{
			name: "malformed reservation MAC",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.Reservations = []hyperdhcpv1beta1.Reservation{{MAC: "02:00:5e:10:00", IP: "192.168.50.10"}}
			},
			message: "must be a MAC address such as",
		},
		{
			name: "reservation outside the subnet",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.Reservations = []hyperdhcpv1beta1.Reservation{{MAC: "02:00:5e:10:00:01", IP: "192.168.60.10"}}
			},
			message: "every reservation must lie inside the subnet of serverIP",
		},
		{
			name: "reservation of the server's address",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.Reservations = []hyperdhcpv1beta1.Reservation{{MAC: "02:00:5e:10:00:01", IP: "192.168.50.2"}}
			},
			message: "a reservation must not use the server's own address",
		},
		{
			name: "two reservations for one MAC written differently",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.Reservations = []hyperdhcpv1beta1.Reservation{
					{MAC: "02:00:5e:10:00:0a", IP: "192.168.50.10"},
					{MAC: "02-00-5E-10-00-0A", IP: "192.168.50.11"},
				}
			},
			message: "each MAC address may have only one reservation",
		},
		{
			name: "one address reserved twice",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.Reservations = []hyperdhcpv1beta1.Reservation{
					{MAC: "02:00:5e:10:00:0a", IP: "192.168.50.10"},
					{MAC: "02:00:5e:10:00:0b", IP: "192.168.50.10"},
				}
			},
			message: "each address may be reserved only once",
		},
		{
			name: "reservation host name not a DNS label",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.Reservations = []hyperdhcpv1beta1.Reservation{{MAC: "02:00:5e:10:00:01", IP: "192.168.50.10", Hostname: "Web_1"}}
			},
			message: "hostname must be one lower-case DNS label",
		},
		{
			name:    "interface name with a space",
			mutate:  func(s *hyperdhcpv1beta1.ServerSpec) { s.NetworkAttachment.Interface = "net 1" },
			message: "interface must be a Linux interface name",
		},
		{
			name:    "missing network attachment name",
			mutate:  func(s *hyperdhcpv1beta1.ServerSpec) { s.NetworkAttachment.Name = "" },
			message: "spec.networkAttachment.name",
		},
		{
			name:    "domain name with an underscore",
			mutate:  func(s *hyperdhcpv1beta1.ServerSpec) { s.DomainName = "lab_net.example" },
			message: "must be a lower-case DNS name",
		},
		{
			name: "all namespaces and a namespace list",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.KubeVirt = &hyperdhcpv1beta1.KubeVirtSpec{AllNamespaces: true, Namespaces: []string{"vms"}}
			},
			message: "set either allNamespaces or namespaces, not both",
		},
	}
	require.GreaterOrEqual(t, len(cases), 15)

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec := validSpec()
			if tc.mutate != nil {
				tc.mutate(&spec)
				// The same spec in a hyperdhcpd config file must be refused too.
				assert.Error(t, hyperdhcpv1beta1.ValidateSpec(&spec, nil).ToAggregate(), "Validate() accepted it")
			}
			server := newServer(namespace, spec)
			if tc.server != "" {
				server.Name, server.GenerateName = tc.server, ""
				assert.Error(t, server.Validate(), "Validate() accepted it")
			}
			obj := toUnstructured(t, server)
			if tc.raw != nil {
				tc.raw(obj.Object["spec"].(map[string]any))
			}
			err := k8sClient.Create(ctx, obj)
			require.Error(t, err, "the API server accepted an invalid Server")
			assert.True(t, apierrors.IsInvalid(err), "want an Invalid error, got %v", err)
			assert.Contains(t, err.Error(), tc.message)
		})
	}
}

// TestValidateCatchesWhatCELCannot covers the rules only Validate() applies:
// the API server accepts these Servers, the operator must report them.
func TestValidateCatchesWhatCELCannot(t *testing.T) {
	ctx := t.Context()
	namespace := createNamespace(ctx, t)

	cases := []struct {
		name    string
		mutate  func(*hyperdhcpv1beta1.ServerSpec)
		message string
	}{
		{
			name: "overlapping pools",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.Pools = append(s.Pools, hyperdhcpv1beta1.AddressRange{Start: "192.168.50.150", End: "192.168.50.220"})
			},
			message: "overlaps pool 0",
		},
		{
			name:    "server IP is the network address",
			mutate:  func(s *hyperdhcpv1beta1.ServerSpec) { s.ServerIP = "192.168.50.0/24" },
			message: "must not be the subnet's network or broadcast address",
		},
		{
			name:    "router is the broadcast address",
			mutate:  func(s *hyperdhcpv1beta1.ServerSpec) { s.Router = "192.168.50.255" },
			message: "must not be the subnet's network or broadcast address",
		},
		{
			name: "static route destination with host bits",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.StaticRoutes = []hyperdhcpv1beta1.StaticRoute{{Destination: "10.30.0.1/16", Gateway: "192.168.50.1"}}
			},
			message: "did you mean 10.30.0.0/16?",
		},
		{
			name: "reserved address also excluded",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.Exclude = []hyperdhcpv1beta1.IPv4Address{"192.168.50.150"}
				s.Reservations = []hyperdhcpv1beta1.Reservation{{MAC: "02:00:5e:10:00:01", IP: "192.168.50.150"}}
			},
			message: "is also listed in exclude",
		},
		{
			name: "standby address in another subnet",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.HighAvailability = &hyperdhcpv1beta1.HighAvailabilitySpec{StandbyServerIP: "192.168.51.3/24"}
			},
			message: "must be an address of the subnet 192.168.50.0/24 with the same prefix length",
		},
		{
			name: "standby address equal to the server's",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.HighAvailability = &hyperdhcpv1beta1.HighAvailabilitySpec{StandbyServerIP: "192.168.50.2/24"}
			},
			message: "must differ from serverIP",
		},
		{
			name: "standby address inside a pool",
			mutate: func(s *hyperdhcpv1beta1.ServerSpec) {
				s.HighAvailability = &hyperdhcpv1beta1.HighAvailabilitySpec{StandbyServerIP: "192.168.50.120/24"}
			},
			message: "must not lie inside a pool",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			server := newServer(namespace, validSpec())
			tc.mutate(&server.Spec)
			require.NoError(t, k8sClient.Create(ctx, server), "the API server should accept this spec")
			err := server.Validate()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.message)
		})
	}
}

func TestCRDAppliesDefaults(t *testing.T) {
	ctx := t.Context()
	namespace := createNamespace(ctx, t)

	spec := validSpec()
	spec.Options = []hyperdhcpv1beta1.DHCPOption{{Code: 252, Value: "http://wpad/proxy.pac"}}
	server := newServer(namespace, spec)
	require.NoError(t, k8sClient.Create(ctx, server))

	var stored hyperdhcpv1beta1.Server
	require.NoError(t, k8sClient.Get(ctx, client.ObjectKeyFromObject(server), &stored))

	assert.Equal(t, "net1", stored.Spec.NetworkAttachment.Interface)
	require.NotNil(t, stored.Spec.LeaseTime)
	assert.Equal(t, time.Hour, stored.Spec.LeaseTime.Duration)
	require.NotNil(t, stored.Spec.KubeVirt)
	assert.Equal(t, new(true), stored.Spec.KubeVirt.Enabled)
	assert.Equal(t, new(true), stored.Spec.KubeVirt.OnlyKnownVMs)
	require.NotNil(t, stored.Spec.Storage)
	require.NotNil(t, stored.Spec.Storage.Size)
	assert.Zero(t, stored.Spec.Storage.Size.Cmp(resource.MustParse("64Mi")))
	assert.Equal(t, hyperdhcpv1beta1.DHCPOptionText, stored.Spec.Options[0].Type)

	// The API server's defaults and the Go defaults used for config files agree.
	goDefaulted := spec.DeepCopy()
	hyperdhcpv1beta1.SetDefaults(goDefaulted)
	assert.True(t, apiequality.Semantic.DeepEqual(*goDefaulted, stored.Spec),
		"SetDefaults differs from the CRD defaults:\nGo:  %+v\nAPI: %+v", *goDefaulted, stored.Spec)
}

func TestSamplesAreAccepted(t *testing.T) {
	ctx := t.Context()
	namespace := createNamespace(ctx, t)

	paths, err := filepath.Glob(filepath.Join("..", "..", "deploy", "samples", "*.yaml"))
	require.NoError(t, err)
	var servers int
	for _, path := range paths {
		for _, obj := range readObjects(t, path) {
			if obj.GetKind() != "Server" {
				continue
			}
			servers++
			t.Run(filepath.Base(path)+"/"+obj.GetName(), func(t *testing.T) {
				var server hyperdhcpv1beta1.Server
				require.NoError(t, runtime.DefaultUnstructuredConverter.FromUnstructured(obj.Object, &server))
				assert.NoError(t, server.Validate())

				obj.SetNamespace(namespace)
				require.NoError(t, k8sClient.Create(ctx, obj))
			})
		}
	}
	assert.GreaterOrEqual(t, servers, 2, "deploy/samples should hold a minimal and a full Server")
}

func toUnstructured(t *testing.T, server *hyperdhcpv1beta1.Server) *unstructured.Unstructured {
	t.Helper()
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(server)
	require.NoError(t, err)
	return &unstructured.Unstructured{Object: obj}
}

func readObjects(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var objs []*unstructured.Unstructured
	decoder := yaml.NewYAMLOrJSONDecoder(f, 4096)
	for {
		var obj map[string]any
		if err := decoder.Decode(&obj); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err, "decode %s", path)
		}
		if obj != nil {
			objs = append(objs, &unstructured.Unstructured{Object: obj})
		}
	}
	return objs
}
