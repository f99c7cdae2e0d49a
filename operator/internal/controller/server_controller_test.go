package controller

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	coordinationv1 "k8s.io/api/coordination/v1"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/operator/internal/render"
)

const (
	timeout  = 20 * time.Second
	interval = 100 * time.Millisecond
)

// newNamespace makes a namespace with the NetworkAttachmentDefinition
// "lab-bridge" that newServer's Servers join.
func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "op-"}}
	require.NoError(t, admin.Create(t.Context(), ns))
	createNetworkAttachment(t, ns.Name, "lab-bridge")
	return ns.Name
}

func createNetworkAttachment(t testing.TB, namespace, name string) {
	t.Helper()
	nad := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
		"metadata": map[string]any{"name": name, "namespace": namespace},
		"spec":     map[string]any{"config": `{"cniVersion":"0.3.1","type":"bridge","bridge":"br-lab"}`},
	}}
	require.NoError(t, admin.Create(context.Background(), nad))
}

func newServer(t *testing.T, namespace, name string, mutate func(*hyperdhcpv1beta1.ServerSpec)) *hyperdhcpv1beta1.Server {
	t.Helper()
	server := &hyperdhcpv1beta1.Server{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: hyperdhcpv1beta1.ServerSpec{
			NetworkAttachment: hyperdhcpv1beta1.NetworkAttachment{Name: "lab-bridge"},
			ServerIP:          "192.168.50.2/24",
			Pools:             []hyperdhcpv1beta1.AddressRange{{Start: "192.168.50.100", End: "192.168.50.199"}},
		},
	}
	if mutate != nil {
		mutate(&server.Spec)
	}
	require.NoError(t, admin.Create(t.Context(), server))
	return server
}

// updateServer applies mutate to the latest version of server.
func updateServer(t *testing.T, server *hyperdhcpv1beta1.Server, mutate func(*hyperdhcpv1beta1.ServerSpec)) {
	t.Helper()
	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := admin.Get(t.Context(), client.ObjectKeyFromObject(server), server); err != nil {
			return err
		}
		mutate(&server.Spec)
		return admin.Update(t.Context(), server)
	}))
}

// eventually fetches obj until check passes.
func eventually(t *testing.T, obj client.Object, key types.NamespacedName, check func() bool, msg string) {
	t.Helper()
	require.Eventually(t, func() bool {
		return admin.Get(context.Background(), key, obj) == nil && check()
	}, timeout, interval, msg)
}

func key(namespace, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: namespace, Name: name}
}

func ownedBy(obj client.Object, server *hyperdhcpv1beta1.Server) bool {
	ref := metav1.GetControllerOf(obj)
	return ref != nil && ref.Kind == "Server" && ref.Name == server.Name && ref.UID == server.UID
}

func TestServerBecomesItsChildren(t *testing.T) {
	ns, other := newNamespace(t), newNamespace(t)
	setConsent(t, other, ns+"/lab")
	server := newServer(t, ns, "lab", func(s *hyperdhcpv1beta1.ServerSpec) {
		s.KubeVirt = &hyperdhcpv1beta1.KubeVirtSpec{Namespaces: []string{ns, other}}
		s.Router = "192.168.50.1"
	})
	name := render.Name(server)

	d := &appsv1.Deployment{}
	eventually(t, d, key(ns, name), func() bool { return true }, "Deployment created")
	assert.True(t, ownedBy(d, server))
	pod := d.Spec.Template
	assert.Equal(t, testImage, pod.Spec.Containers[0].Image)
	assert.JSONEq(t, `[{"name":"lab-bridge","namespace":"`+ns+`","interface":"net1","ips":["192.168.50.2/24"]}]`,
		pod.Annotations[render.NetworksAnnotation])
	assert.NotEmpty(t, pod.Annotations[render.ConfigHashAnnotation])
	assert.Equal(t, appsv1.RecreateDeploymentStrategyType, d.Spec.Strategy.Type)

	for _, obj := range []client.Object{&corev1.ServiceAccount{}, &rbacv1.Role{}, &rbacv1.RoleBinding{}, &corev1.ConfigMap{}} {
		eventually(t, obj, key(ns, name), func() bool { return true }, "child created")
		assert.True(t, ownedBy(obj, server), "%T is owned by the Server", obj)
	}
	pvc := &corev1.PersistentVolumeClaim{}
	eventually(t, pvc, key(ns, render.PVCName(server)), func() bool { return true }, "PVC created")
	assert.True(t, ownedBy(pvc, server))
	assert.Nil(t, pvc.Spec.StorageClassName, "the cluster's default class")

	foreign := &rbacv1.RoleBinding{}
	eventually(t, foreign, key(other, render.ForeignName(server)), func() bool { return true }, "VM reader binding in the other namespace")
	assert.Equal(t, render.VMReaderClusterRole, foreign.RoleRef.Name)

	// The rendered configuration is exactly what hyperdhcpd accepts.
	cm := &corev1.ConfigMap{}
	require.NoError(t, admin.Get(t.Context(), key(ns, name), cm))
	path := filepath.Join(t.TempDir(), render.ConfigKey)
	require.NoError(t, os.WriteFile(path, []byte(cm.Data[render.ConfigKey]), 0o600))
	out, err := exec.Command(hyperdhcpd, "check", "--config", path).CombinedOutput()
	require.NoError(t, err, "hyperdhcpd check refused the rendered config: %s", out)

	// Without a kubelet the Deployment never becomes available.
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		ready := meta.FindStatusCondition(server.Status.Conditions, hyperdhcpv1beta1.ConditionReady)
		return server.Status.ObservedGeneration == server.Generation && ready != nil &&
			ready.Reason == hyperdhcpv1beta1.ReasonDeploymentUnavailable
	}, "status reports the Deployment unavailable")
	assert.Contains(t, server.Finalizers, Finalizer)
}

func TestReadyWhenTheDeploymentIsAvailable(t *testing.T) {
	ns := newNamespace(t)
	server := newServer(t, ns, "lab", nil)
	d := &appsv1.Deployment{}
	eventually(t, d, key(ns, render.Name(server)), func() bool { return true }, "Deployment created")
	// Play the deployment controller: one available replica.
	markAvailable(t, d)
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		return meta.IsStatusConditionTrue(server.Status.Conditions, hyperdhcpv1beta1.ConditionReady) &&
			meta.IsStatusConditionFalse(server.Status.Conditions, hyperdhcpv1beta1.ConditionProgressing)
	}, "Ready once the Deployment is available")

	out, err := kubectl("get", "servers", "-n", ns)
	require.NoError(t, err, out)
	assert.Regexp(t, `lab\s+lab-bridge\s+192.168.50.2/24\s+\S*\s+\S*\s+1\s+\S*\s+True`, out, "printer columns")
}

// TestOnlyRestartOnlyEditsRollThePod: an edit hyperdhcpd applies live
// changes the ConfigMap, not the pod template; an edit of serverIP changes
// both, so the pod rolls.
// markAvailable reports d's pod available, as the Deployment controller
// would (envtest runs none); the operator may be writing d meanwhile.
func markAvailable(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := admin.Get(t.Context(), client.ObjectKeyFromObject(d), d); err != nil {
			return err
		}
		d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
		return admin.Status().Update(t.Context(), d)
	}))
}

func TestOnlyRestartOnlyEditsRollThePod(t *testing.T) {
	ns := newNamespace(t)
	server := newServer(t, ns, "lab", nil)
	name := render.Name(server)
	d := &appsv1.Deployment{}
	eventually(t, d, key(ns, name), func() bool { return true }, "Deployment created")
	hash := d.Spec.Template.Annotations[render.ConfigHashAnnotation]

	updateServer(t, server, func(s *hyperdhcpv1beta1.ServerSpec) { s.DNS = []hyperdhcpv1beta1.IPv4Address{"192.168.50.53"} })
	cm := &corev1.ConfigMap{}
	eventually(t, cm, key(ns, name), func() bool { return strings.Contains(cm.Data[render.ConfigKey], "192.168.50.53") }, "ConfigMap updated")
	require.NoError(t, admin.Get(t.Context(), key(ns, name), d))
	assert.Equal(t, hash, d.Spec.Template.Annotations[render.ConfigHashAnnotation], "a DNS edit is applied live: the pod stays")

	updateServer(t, server, func(s *hyperdhcpv1beta1.ServerSpec) { s.ServerIP = "192.168.50.3/24" })
	eventually(t, d, key(ns, name), func() bool { return d.Spec.Template.Annotations[render.ConfigHashAnnotation] != hash },
		"an edit of serverIP changes the pod template's config hash, so the pod rolls")
}

// TestServedGenerationDrivesProgressingAndRefusalsDegrade: while hyperdhcpd
// reports an older generation than the spec's, Progressing says it is
// applying; a generation it refused makes the Server Degraded (SpecRefused)
// with a Warning Event, cleared once it serves a later one.
func TestServedGenerationDrivesProgressingAndRefusalsDegrade(t *testing.T) {
	ns := newNamespace(t)
	server := newServer(t, ns, "lab", nil)
	name := render.Name(server)
	d := &appsv1.Deployment{}
	eventually(t, d, key(ns, name), func() bool { return true }, "Deployment created")
	markAvailable(t, d)
	report := func(served hyperdhcpv1beta1.ServedStatus) {
		t.Helper()
		data, err := json.Marshal(map[string]any{"status": map[string]any{"served": served}})
		require.NoError(t, err)
		require.NoError(t, admin.Status().Patch(t.Context(), server, client.RawPatch(types.MergePatchType, data), client.FieldOwner("hyperdhcpd")))
	}
	report(hyperdhcpv1beta1.ServedStatus{Generation: 1, Since: metav1.Now()})
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		return meta.IsStatusConditionFalse(server.Status.Conditions, hyperdhcpv1beta1.ConditionProgressing)
	}, "generation 1 served: not progressing")

	updateServer(t, server, func(s *hyperdhcpv1beta1.ServerSpec) { s.DNS = []hyperdhcpv1beta1.IPv4Address{"192.168.50.53"} })
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		c := meta.FindStatusCondition(server.Status.Conditions, hyperdhcpv1beta1.ConditionProgressing)
		return c != nil && c.Status == metav1.ConditionTrue && c.Reason == hyperdhcpv1beta1.ReasonApplying
	}, "Progressing=True, Applying, until hyperdhcpd serves generation 2")

	report(hyperdhcpv1beta1.ServedStatus{Generation: 1, Since: metav1.Now(), RefusedGeneration: 2, RefusedMessage: "leasedb: pools overlap"})
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		c := meta.FindStatusCondition(server.Status.Conditions, hyperdhcpv1beta1.ConditionDegraded)
		return c != nil && c.Status == metav1.ConditionTrue && c.Reason == hyperdhcpv1beta1.ReasonSpecRefused &&
			strings.Contains(c.Message, "refused generation 2 of the spec and serves generation 1: leasedb: pools overlap")
	}, "Degraded=True, SpecRefused")
	assert.True(t, meta.IsStatusConditionTrue(server.Status.Conditions, hyperdhcpv1beta1.ConditionReady), "generation 1 still serves")
	require.Eventually(t, func() bool {
		var events eventsv1.EventList
		require.NoError(t, admin.List(context.Background(), &events, client.InNamespace(ns)))
		for _, e := range events.Items {
			if e.Regarding.Name == server.Name && e.Reason == hyperdhcpv1beta1.ReasonSpecRefused && e.Type == corev1.EventTypeWarning {
				return true
			}
		}
		return false
	}, timeout, interval, "a Warning Event")

	report(hyperdhcpv1beta1.ServedStatus{Generation: 2, Since: metav1.Now()})
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		return meta.IsStatusConditionFalse(server.Status.Conditions, hyperdhcpv1beta1.ConditionDegraded) &&
			meta.IsStatusConditionFalse(server.Status.Conditions, hyperdhcpv1beta1.ConditionProgressing)
	}, "serving generation 2: neither degraded nor progressing")

	// An invalid edit is not rendered; Ready still follows the pod that
	// serves the spec before it.
	updateServer(t, server, func(s *hyperdhcpv1beta1.ServerSpec) {
		s.Pools = append(s.Pools, hyperdhcpv1beta1.AddressRange{Start: s.Pools[0].Start, End: s.Pools[0].Start})
	})
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		c := meta.FindStatusCondition(server.Status.Conditions, hyperdhcpv1beta1.ConditionDegraded)
		return c != nil && c.Reason == hyperdhcpv1beta1.ReasonInvalidSpec && strings.Contains(c.Message, "keeps serving generation 2") &&
			meta.IsStatusConditionTrue(server.Status.Conditions, hyperdhcpv1beta1.ConditionReady)
	}, "Degraded=True, InvalidSpec, naming the generation served; Ready stays")
	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := admin.Get(t.Context(), client.ObjectKeyFromObject(d), d); err != nil {
			return err
		}
		d.Status.AvailableReplicas, d.Status.ReadyReplicas = 0, 0
		return admin.Status().Update(t.Context(), d)
	}))
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		return meta.IsStatusConditionFalse(server.Status.Conditions, hyperdhcpv1beta1.ConditionReady)
	}, "the pod went away: Ready=False, even with the spec invalid")
}

func TestDriftIsRepaired(t *testing.T) {
	ns := newNamespace(t)
	server := newServer(t, ns, "lab", nil)
	name := render.Name(server)
	d := &appsv1.Deployment{}
	eventually(t, d, key(ns, name), func() bool { return true }, "Deployment created")

	rendered := d.Spec.Template.Spec.DeepCopy()

	// An edit is put back, anywhere in the pod template, also in fields the
	// operator leaves to their defaults.
	d.Spec.Replicas = new(int32(3))
	c := &d.Spec.Template.Spec.Containers[0]
	c.Image = "evil.example/other:latest"
	c.Args = append(c.Args, "--debug")
	c.Env = append(c.Env, corev1.EnvVar{Name: "HYPERDHCPD_PORT", Value: "6767"})
	c.SecurityContext.Capabilities.Add = append(c.SecurityContext.Capabilities.Add, "NET_ADMIN")
	d.Spec.Template.Spec.HostPID = true
	d.Spec.Template.Spec.SecurityContext.RunAsUser = new(int64(1000))
	require.NoError(t, admin.Update(t.Context(), d))
	eventually(t, d, key(ns, name), func() bool {
		return *d.Spec.Replicas == 1 && apiequality.Semantic.DeepEqual(*rendered, d.Spec.Template.Spec)
	}, "Deployment restored")

	// A child that lost the label the operator's cache selects is still
	// found (not created twice) and gets the label back.
	sa := &corev1.ServiceAccount{}
	require.NoError(t, admin.Get(t.Context(), key(ns, name), sa))
	delete(sa.Labels, render.ServerLabel)
	sa.AutomountServiceAccountToken = new(false)
	require.NoError(t, admin.Update(t.Context(), sa))
	eventually(t, sa, key(ns, name), func() bool {
		return sa.Labels[render.ServerLabel] == server.Name && *sa.AutomountServiceAccountToken
	}, "ServiceAccount restored")

	// A deleted child comes back.
	cm := &corev1.ConfigMap{}
	require.NoError(t, admin.Get(t.Context(), key(ns, name), cm))
	oldUID := cm.UID
	require.NoError(t, admin.Delete(t.Context(), cm))
	eventually(t, cm, key(ns, name), func() bool { return cm.UID != oldUID }, "ConfigMap recreated")

	role := &rbacv1.Role{}
	require.NoError(t, admin.Get(t.Context(), key(ns, name), role))
	role.Rules = append(role.Rules, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}})
	require.NoError(t, admin.Update(t.Context(), role))
	eventually(t, role, key(ns, name), func() bool { return len(role.Rules) == 4 }, "an added permission is taken away")
}

func TestInvalidSpecIsReported(t *testing.T) {
	ns := newNamespace(t)
	// CEL cannot see overlapping pools; Validate can.
	server := newServer(t, ns, "overlap", func(s *hyperdhcpv1beta1.ServerSpec) {
		s.Pools = append(s.Pools, hyperdhcpv1beta1.AddressRange{Start: "192.168.50.150", End: "192.168.50.220"})
	})
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		c := meta.FindStatusCondition(server.Status.Conditions, hyperdhcpv1beta1.ConditionReady)
		return c != nil && c.Status == metav1.ConditionFalse && c.Reason == hyperdhcpv1beta1.ReasonInvalidSpec
	}, "Ready=False, InvalidSpec")
	c := meta.FindStatusCondition(server.Status.Conditions, hyperdhcpv1beta1.ConditionReady)
	assert.Contains(t, c.Message, "overlaps pool 0")
	assert.True(t, meta.IsStatusConditionTrue(server.Status.Conditions, hyperdhcpv1beta1.ConditionDegraded))

	require.Eventually(t, func() bool {
		var events eventsv1.EventList
		if err := admin.List(context.Background(), &events, client.InNamespace(ns)); err != nil {
			return false
		}
		for _, e := range events.Items {
			if e.Regarding.Name == server.Name && e.Reason == hyperdhcpv1beta1.ReasonInvalidSpec && e.Type == corev1.EventTypeWarning {
				return true
			}
		}
		return false
	}, timeout, interval, "a Warning Event")

	d := &appsv1.Deployment{}
	err := admin.Get(t.Context(), key(ns, render.Name(server)), d)
	assert.True(t, apierrors.IsNotFound(err), "nothing is deployed for an invalid spec")
}

// TestNoOpResyncWritesNothing reconciles a settled Server again and checks
// that no object changed.
func TestNoOpResyncWritesNothing(t *testing.T) {
	ns, other := newNamespace(t), newNamespace(t)
	setConsent(t, other, ns+"/*")
	server := newServer(t, ns, "lab", func(s *hyperdhcpv1beta1.ServerSpec) {
		s.KubeVirt = &hyperdhcpv1beta1.KubeVirtSpec{Namespaces: []string{ns, other}}
	})
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		return server.Status.ObservedGeneration == server.Generation && len(server.Status.Conditions) == 3
	}, "settled")

	versions := func() map[string]string {
		out := map[string]string{}
		objs := map[string]client.Object{
			"server": &hyperdhcpv1beta1.Server{}, "sa": &corev1.ServiceAccount{}, "role": &rbacv1.Role{},
			"rb": &rbacv1.RoleBinding{}, "cm": &corev1.ConfigMap{}, "pvc": &corev1.PersistentVolumeClaim{}, "deploy": &appsv1.Deployment{},
		}
		for kind, obj := range objs {
			k := key(ns, render.Name(server))
			switch kind {
			case "server":
				k = client.ObjectKeyFromObject(server)
			case "pvc":
				k = key(ns, render.PVCName(server))
			}
			require.NoError(t, admin.Get(t.Context(), k, obj))
			out[kind] = obj.GetResourceVersion()
		}
		foreign := &rbacv1.RoleBinding{}
		require.NoError(t, admin.Get(t.Context(), key(other, render.ForeignName(server)), foreign))
		out["foreign"] = foreign.ResourceVersion
		return out
	}
	// Let the manager's reconciles of the create events run out first.
	var before map[string]string
	require.Eventually(t, func() bool {
		first := versions()
		time.Sleep(time.Second)
		before = versions()
		return assert.ObjectsAreEqual(first, before)
	}, timeout, interval)

	direct := &ServerReconciler{Client: operator, Recorder: reconciler.Recorder, Image: testImage}
	for range 3 {
		_, err := direct.Reconcile(t.Context(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(server)})
		require.NoError(t, err)
	}
	assert.Equal(t, before, versions(), "a no-op reconcile must not write")
}

func TestDeletingTheServerRemovesForeignBindings(t *testing.T) {
	ns, other := newNamespace(t), newNamespace(t)
	setConsent(t, other, ns+"/lab")
	server := newServer(t, ns, "lab", func(s *hyperdhcpv1beta1.ServerSpec) {
		s.KubeVirt = &hyperdhcpv1beta1.KubeVirtSpec{Namespaces: []string{other}}
	})
	foreign := &rbacv1.RoleBinding{}
	eventually(t, foreign, key(other, render.ForeignName(server)), func() bool { return true }, "foreign binding created")

	// Narrowing the namespaces prunes the binding.
	updateServer(t, server, func(s *hyperdhcpv1beta1.ServerSpec) { s.KubeVirt.Namespaces = nil })
	require.Eventually(t, func() bool {
		return apierrors.IsNotFound(admin.Get(context.Background(), key(other, render.ForeignName(server)), foreign))
	}, timeout, interval, "binding of a namespace no longer served is removed")

	updateServer(t, server, func(s *hyperdhcpv1beta1.ServerSpec) { s.KubeVirt.Namespaces = []string{other} })
	eventually(t, foreign, key(other, render.ForeignName(server)), func() bool { return true }, "foreign binding created again")

	require.NoError(t, admin.Delete(t.Context(), server))
	require.Eventually(t, func() bool {
		return apierrors.IsNotFound(admin.Get(context.Background(), key(other, render.ForeignName(server)), foreign)) &&
			apierrors.IsNotFound(admin.Get(context.Background(), client.ObjectKeyFromObject(server), server))
	}, timeout, interval, "the finalizer cleans up RBAC outside the namespace, then lets the Server go")
}

// TestHyperdhcpdRBACIsMinimal asks the API server what hyperdhcpd's
// ServiceAccount may do.
func TestHyperdhcpdRBACIsMinimal(t *testing.T) {
	ns, other, unrelated := newNamespace(t), newNamespace(t), newNamespace(t)
	setConsent(t, other, ns+"/lab")
	server := newServer(t, ns, "lab", func(s *hyperdhcpv1beta1.ServerSpec) {
		s.KubeVirt = &hyperdhcpv1beta1.KubeVirtSpec{Namespaces: []string{ns, other}}
	})
	newServer(t, ns, "neighbour", nil)
	eventually(t, &rbacv1.RoleBinding{}, key(other, render.ForeignName(server)), func() bool { return true }, "RBAC in place")
	eventually(t, &rbacv1.RoleBinding{}, key(ns, render.Name(server)), func() bool { return true }, "RBAC in place")
	user := "system:serviceaccount:" + ns + ":" + render.Name(server)

	cases := []struct {
		attrs authorizationv1.ResourceAttributes
		want  bool
	}{
		{authorizationv1.ResourceAttributes{Namespace: ns, Verb: "list", Group: "kubevirt.io", Resource: "virtualmachineinstances"}, true},
		{authorizationv1.ResourceAttributes{Namespace: other, Verb: "watch", Group: "kubevirt.io", Resource: "virtualmachines"}, true},
		{authorizationv1.ResourceAttributes{Namespace: ns, Verb: "patch", Group: "hyperdhcp.io", Resource: "servers", Subresource: "status", Name: "lab"}, true},
		{authorizationv1.ResourceAttributes{Namespace: ns, Verb: "create", Group: "events.k8s.io", Resource: "events"}, true},
		{authorizationv1.ResourceAttributes{Namespace: unrelated, Verb: "list", Group: "kubevirt.io", Resource: "virtualmachineinstances"}, false},
		{authorizationv1.ResourceAttributes{Namespace: ns, Verb: "patch", Group: "hyperdhcp.io", Resource: "servers", Subresource: "status", Name: "neighbour"}, false},
		{authorizationv1.ResourceAttributes{Namespace: ns, Verb: "update", Group: "hyperdhcp.io", Resource: "servers", Name: "lab"}, false},
		{authorizationv1.ResourceAttributes{Namespace: ns, Verb: "get", Resource: "secrets"}, false},
		{authorizationv1.ResourceAttributes{Namespace: ns, Verb: "create", Resource: "pods"}, false},
		{authorizationv1.ResourceAttributes{Namespace: ns, Verb: "update", Group: "kubevirt.io", Resource: "virtualmachineinstances"}, false},
	}
	for _, tc := range cases {
		review := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns}, ResourceAttributes: &tc.attrs,
		}}
		require.NoError(t, admin.Create(t.Context(), review))
		assert.Equal(t, tc.want, review.Status.Allowed, "%s %s/%s %s in %s", tc.attrs.Verb, tc.attrs.Resource, tc.attrs.Subresource, tc.attrs.Name, tc.attrs.Namespace)
	}
}

func TestKustomizeInstallAppliesToAnAPIServer(t *testing.T) {
	root := filepath.Join("..", "..", "..")
	out, err := exec.Command("kubectl", "kustomize", filepath.Join(root, "deploy", "default")).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "namespace: hyperdhcp-system")
	assert.Contains(t, string(out), "--leader-elect")

	out2, err := kubectl("apply", "--dry-run=server", "-k", filepath.Join(root, "deploy", "default"))
	require.NoError(t, err, out2)
	assert.Contains(t, out2, "deployment.apps/hyperdhcp-operator created (server dry run)")
	assert.Contains(t, out2, "clusterrole.rbac.authorization.k8s.io/hyperdhcp-vm-reader")
}

// TestReleaseManifestsApply: the one-file install a release publishes
// (make release-manifests) applies server-side to an API server and holds
// the CRD, the operator's RBAC and its Deployment with the release images.
func TestReleaseManifestsApply(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", "..", ".."))
	require.NoError(t, err)
	const operatorImage, dhcpdImage = "registry.example/hyperdhcp-operator:v9.9.9", "registry.example/hyperdhcpd:v9.9.9"
	dir := t.TempDir()
	make := exec.Command("make", "-s", "-C", root, "release-manifests", "RELEASE_DIR="+dir, "IMG="+operatorImage, "HYPERDHCPD_IMG="+dhcpdImage)
	out, err := make.CombinedOutput()
	require.NoError(t, err, "make release-manifests: %s", out)

	applied, err := kubectl("apply", "--server-side", "-f", filepath.Join(dir, "install.yaml"))
	require.NoError(t, err, applied)
	assert.Contains(t, applied, "customresourcedefinition.apiextensions.k8s.io/servers.hyperdhcp.io serverside-applied")

	deployment := &appsv1.Deployment{}
	require.NoError(t, admin.Get(t.Context(), types.NamespacedName{Namespace: "hyperdhcp-system", Name: "hyperdhcp-operator"}, deployment))
	container := deployment.Spec.Template.Spec.Containers[0]
	assert.Equal(t, operatorImage, container.Image)
	assert.Contains(t, container.Env, corev1.EnvVar{Name: "HYPERDHCP_OPERATOR_HYPERDHCPD_IMAGE", Value: dhcpdImage})
	role := &rbacv1.ClusterRole{}
	require.NoError(t, admin.Get(t.Context(), types.NamespacedName{Name: "hyperdhcp-operator"}, role))
	assert.NotEmpty(t, role.Rules)
	binding := &rbacv1.ClusterRoleBinding{}
	require.NoError(t, admin.Get(t.Context(), types.NamespacedName{Name: "hyperdhcp-operator"}, binding), "the ClusterRoleBinding")
	assert.Equal(t, "hyperdhcp-operator", binding.RoleRef.Name)
	assert.Equal(t, deployment.Spec.Template.Spec.ServiceAccountName, binding.Subjects[0].Name)
}

// TestLeaseStorageFaultDegradesTheServer: hyperdhcpd reports failing lease
// writes in status.leaseStorage; the operator makes that Degraded with
// reason LeaseStorageUnavailable and a Warning Event, and clears both (with
// a Normal Event) when hyperdhcpd reports writes succeeding again.
func TestLeaseStorageFaultDegradesTheServer(t *testing.T) {
	ns := newNamespace(t)
	server := newServer(t, ns, "lab", nil)
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool { return len(server.Status.Conditions) == 3 }, "settled")

	report := func(available bool, message string) {
		t.Helper()
		data, err := json.Marshal(map[string]any{"status": map[string]any{"leaseStorage": hyperdhcpv1beta1.LeaseStorageStatus{
			Available: available, Message: message, Since: metav1.Now(),
		}}})
		require.NoError(t, err)
		require.NoError(t, admin.Status().Patch(t.Context(), server, client.RawPatch(types.MergePatchType, data), client.FieldOwner("hyperdhcpd")))
	}
	event := func(reason, eventType string) bool {
		var events eventsv1.EventList
		if err := admin.List(context.Background(), &events, client.InNamespace(ns)); err != nil {
			return false
		}
		for _, e := range events.Items {
			if e.Regarding.Name == server.Name && e.Reason == reason && e.Type == eventType {
				return true
			}
		}
		return false
	}

	report(false, "commit leases to /var/lib/hyperdhcp/leases.db: database or disk is full")
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		c := meta.FindStatusCondition(server.Status.Conditions, hyperdhcpv1beta1.ConditionDegraded)
		return c != nil && c.Status == metav1.ConditionTrue && c.Reason == hyperdhcpv1beta1.ReasonLeaseStorageUnavailable
	}, "Degraded=True, LeaseStorageUnavailable")
	assert.Contains(t, meta.FindStatusCondition(server.Status.Conditions, hyperdhcpv1beta1.ConditionDegraded).Message, "database or disk is full")
	require.Eventually(t, func() bool { return event(hyperdhcpv1beta1.ReasonLeaseStorageUnavailable, corev1.EventTypeWarning) },
		timeout, interval, "a Warning Event")

	report(true, "")
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		return meta.IsStatusConditionFalse(server.Status.Conditions, hyperdhcpv1beta1.ConditionDegraded)
	}, "Degraded=False once writes succeed")
	require.Eventually(t, func() bool { return event("LeaseStorageAvailable", corev1.EventTypeNormal) }, timeout, interval, "a Normal Event")
	assert.True(t, server.Status.LeaseStorage.Available, "the operator leaves hyperdhcpd's report alone")
}

// TestOperatorLeavesThePoolAlone: status.pool belongs to hyperdhcpd; the
// operator's status writes never remove or change it.
func TestOperatorLeavesThePoolAlone(t *testing.T) {
	ns := newNamespace(t)
	server := newServer(t, ns, "lab", nil)
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool { return len(server.Status.Conditions) == 3 }, "settled")

	pool := &hyperdhcpv1beta1.PoolStatus{Size: 100, Used: 42, Free: 58}
	patch := client.RawPatch(types.MergePatchType, []byte(`{"status":{"pool":{"size":100,"used":42,"free":58}}}`))
	require.NoError(t, admin.Status().Patch(t.Context(), server, patch, client.FieldOwner("hyperdhcpd")))

	updateServer(t, server, func(s *hyperdhcpv1beta1.ServerSpec) { s.Router = "192.168.50.1" })
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		return server.Status.ObservedGeneration == server.Generation
	}, "the operator reconciled the edit")
	assert.Equal(t, pool, server.Status.Pool)
}

// TestPairIsRenderedAndRemoved: a Server with highAvailability gets two
// replicas (each its Deployment, ConfigMap, lease volume and Service), the
// pair's Secret (a CA and a certificate it signed) and its Lease; with
// one replica down the Server is Ready but Degraded; without
// highAvailability the second replica goes, its lease volume stays.
func TestPairIsRenderedAndRemoved(t *testing.T) {
	ns := newNamespace(t)
	server := newServer(t, ns, "lab", func(s *hyperdhcpv1beta1.ServerSpec) {
		s.HighAvailability = &hyperdhcpv1beta1.HighAvailabilitySpec{StandbyServerIP: "192.168.50.3/24"}
	})
	name := render.Name(server)
	deployments := [2]*appsv1.Deployment{{}, {}}
	for i, n := range []string{name, name + "-1"} {
		eventually(t, deployments[i], key(ns, n), func() bool { return true }, "Deployment "+n)
		require.NoError(t, admin.Get(t.Context(), key(ns, n), &corev1.ConfigMap{}))
		svc := &corev1.Service{}
		require.NoError(t, admin.Get(t.Context(), key(ns, n), svc))
		assert.True(t, svc.Spec.PublishNotReadyAddresses, "a standby catches up through its Service before it is ready")
		require.NoError(t, admin.Get(t.Context(), key(ns, n+"-leases"), &corev1.PersistentVolumeClaim{}))
	}
	require.NoError(t, admin.Get(t.Context(), key(ns, name), &coordinationv1.Lease{}))
	secret := &corev1.Secret{}
	require.NoError(t, admin.Get(t.Context(), key(ns, render.PairSecretName(server)), secret))
	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(secret.Data["ca.crt"]))
	block, _ := pem.Decode(secret.Data[corev1.TLSCertKey])
	require.NotNil(t, block)
	leaf, err := x509.ParseCertificate(block.Bytes)
	require.NoError(t, err)
	_, err = leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	require.NoError(t, err, "the pair's certificate is signed by its CA")
	_, err = tls.X509KeyPair(secret.Data[corev1.TLSCertKey], secret.Data[corev1.TLSPrivateKeyKey])
	require.NoError(t, err)

	markAvailable(t, deployments[0])
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		c := meta.FindStatusCondition(server.Status.Conditions, hyperdhcpv1beta1.ConditionDegraded)
		return meta.IsStatusConditionTrue(server.Status.Conditions, hyperdhcpv1beta1.ConditionReady) &&
			c != nil && c.Status == metav1.ConditionTrue && c.Reason == hyperdhcpv1beta1.ReasonReplicaUnavailable
	}, "one replica serves: Ready, and Degraded for want of the other")
	markAvailable(t, deployments[1])
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		return meta.IsStatusConditionFalse(server.Status.Conditions, hyperdhcpv1beta1.ConditionDegraded)
	}, "both replicas serve")

	updateServer(t, server, func(s *hyperdhcpv1beta1.ServerSpec) { s.HighAvailability = nil })
	require.Eventually(t, func() bool {
		return apierrors.IsNotFound(admin.Get(t.Context(), key(ns, name+"-1"), &appsv1.Deployment{})) &&
			apierrors.IsNotFound(admin.Get(t.Context(), key(ns, render.PairSecretName(server)), &corev1.Secret{})) &&
			apierrors.IsNotFound(admin.Get(t.Context(), key(ns, name), &coordinationv1.Lease{}))
	}, timeout, interval, "the second replica and the pair's objects go")
	pvc := &corev1.PersistentVolumeClaim{}
	require.NoError(t, admin.Get(t.Context(), key(ns, name+"-1-leases"), pvc), "its lease volume stays")
	assert.Nil(t, pvc.DeletionTimestamp, "and is not being deleted")
}

// TestPairRollsTheStandbyFirst: a restart-only edit (the image) rolls the
// standby's pod first; the active's Deployment keeps its pod template, and
// Progressing says why, until the standby's Deployment is rolled out and
// available (its pod is ready once it has caught up); then the active's
// follows.
func TestPairRollsTheStandbyFirst(t *testing.T) {
	ns := newNamespace(t)
	server := newServer(t, ns, "lab", func(s *hyperdhcpv1beta1.ServerSpec) {
		s.HighAvailability = &hyperdhcpv1beta1.HighAvailabilitySpec{StandbyServerIP: "192.168.50.3/24"}
	})
	name := render.Name(server)
	active, standby := &appsv1.Deployment{}, &appsv1.Deployment{}
	eventually(t, active, key(ns, name), func() bool { return true }, "the active's Deployment")
	eventually(t, standby, key(ns, name+"-1"), func() bool { return true }, "the standby's Deployment")
	markAvailable(t, active)
	markAvailable(t, standby)
	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := admin.Get(t.Context(), client.ObjectKeyFromObject(server), server); err != nil {
			return err
		}
		server.Status.HighAvailability = &hyperdhcpv1beta1.HighAvailabilityStatus{Active: name, Epoch: 1, Since: metav1.Now(), StandbyInSync: true}
		return admin.Status().Update(t.Context(), server)
	}))
	image := func(d *appsv1.Deployment) string { return d.Spec.Template.Spec.Containers[0].Image }
	before := image(active)

	updateServer(t, server, func(s *hyperdhcpv1beta1.ServerSpec) { s.Image = "registry.example/hyperdhcpd:next" })
	eventually(t, standby, key(ns, name+"-1"), func() bool { return image(standby) == "registry.example/hyperdhcpd:next" }, "the standby rolls first")
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		c := meta.FindStatusCondition(server.Status.Conditions, hyperdhcpv1beta1.ConditionProgressing)
		return c != nil && c.Status == metav1.ConditionTrue && c.Reason == hyperdhcpv1beta1.ReasonStandbyFirst
	}, "Progressing says the active waits for the standby")
	require.NoError(t, admin.Get(t.Context(), key(ns, name), active))
	assert.Equal(t, before, image(active), "the active keeps its pod while the standby rolls")

	markAvailable(t, standby) // the new pod is ready: it has caught up
	eventually(t, active, key(ns, name), func() bool { return image(active) == "registry.example/hyperdhcpd:next" }, "then the active rolls")

	// An active that serves nobody (its new image crashes, say) is not
	// held: the fix reaches both, though the standby cannot catch up.
	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := admin.Get(t.Context(), client.ObjectKeyFromObject(active), active); err != nil {
			return err
		}
		active.Status = appsv1.DeploymentStatus{ObservedGeneration: active.Generation, Replicas: 1, UpdatedReplicas: 1}
		return admin.Status().Update(t.Context(), active)
	}))
	updateServer(t, server, func(s *hyperdhcpv1beta1.ServerSpec) { s.Image = "registry.example/hyperdhcpd:fix" })
	eventually(t, active, key(ns, name), func() bool { return image(active) == "registry.example/hyperdhcpd:fix" },
		"the unavailable active rolls without waiting for the standby")
}

// TestSingleServerLeavesAServerNamedLikeItsSecondReplica: Server "lab"
// without a pair never deletes objects named as its second replica would
// be ("hyperdhcpd-lab-1") when another Server ("lab-1") owns them.
func TestSingleServerLeavesAServerNamedLikeItsSecondReplica(t *testing.T) {
	ns := newNamespace(t)
	lab := newServer(t, ns, "lab", nil)
	neighbour := newServer(t, ns, "lab-1", func(s *hyperdhcpv1beta1.ServerSpec) {
		s.ServerIP = "192.168.60.2/24"
		s.Pools = []hyperdhcpv1beta1.AddressRange{{Start: "192.168.60.100", End: "192.168.60.199"}}
	})
	d := &appsv1.Deployment{}
	eventually(t, d, key(ns, render.Name(neighbour)), func() bool { return true }, "the neighbour's Deployment")
	uid := d.UID
	updateServer(t, lab, func(s *hyperdhcpv1beta1.ServerSpec) { s.DNS = []hyperdhcpv1beta1.IPv4Address{"192.168.50.53"} })
	cm := &corev1.ConfigMap{}
	eventually(t, cm, key(ns, render.Name(lab)), func() bool { return strings.Contains(cm.Data[render.ConfigKey], "192.168.50.53") }, "lab reconciled")
	require.NoError(t, admin.Get(t.Context(), key(ns, render.Name(neighbour)), d))
	assert.Equal(t, uid, d.UID, "the neighbour's Deployment is untouched")
}

// TestActiveReplicaIsTheLeaseHolderFirst: the replica rolled last is the
// Lease's holder, else the one status names, else replica 0; the other is
// reconciled first.
func TestActiveReplicaIsTheLeaseHolderFirst(t *testing.T) {
	server := &hyperdhcpv1beta1.Server{ObjectMeta: metav1.ObjectMeta{Name: "lab", Namespace: "ns"},
		Spec: hyperdhcpv1beta1.ServerSpec{HighAvailability: &hyperdhcpv1beta1.HighAvailabilitySpec{StandbyServerIP: "192.168.50.3/24"}}}
	replicas := render.Replicas(server)
	first, second := render.ReplicaName(server, replicas[0]), render.ReplicaName(server, replicas[1])
	assert.Equal(t, 0, activeReplica(server, ""), "unknown: replica 0")
	server.Status.HighAvailability = &hyperdhcpv1beta1.HighAvailabilityStatus{Active: second}
	assert.Equal(t, 1, activeReplica(server, ""), "from status")
	assert.Equal(t, 0, activeReplica(server, first), "the Lease holder over a stale status")
	ordered := standbyFirst(replicas, 0)
	assert.Equal(t, []int{1, 0}, []int{ordered[0].Index, ordered[1].Index})
	ordered = standbyFirst(replicas, 1)
	assert.Equal(t, []int{0, 1}, []int{ordered[0].Index, ordered[1].Index})
}
