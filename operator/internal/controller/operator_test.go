package controller

import (
	"context"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/operator/internal/render"
)

// settled waits until the operator has written a status for server's
// current generation.
func settled(t *testing.T, server *hyperdhcpv1beta1.Server) {
	t.Helper()
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		return server.Status.ObservedGeneration == server.Generation && len(server.Status.Conditions) == 3
	}, "status for the current generation")
}

// The manager's cache holds what the operator made, not every ConfigMap in
// the cluster.
func TestCacheHoldsOnlyOwnedObjects(t *testing.T) {
	ns := newNamespace(t)
	unrelated := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "unrelated", Namespace: ns}}
	require.NoError(t, admin.Create(t.Context(), unrelated))
	server := newServer(t, ns, "lab", nil)

	// Watch events arrive in resourceVersion order: once the Server's
	// ConfigMap, created later, is in the cache, the unrelated one would be.
	require.Eventually(t, func() bool {
		return mgr.GetCache().Get(context.Background(), key(ns, render.Name(server)), &corev1.ConfigMap{}) == nil
	}, timeout, interval, "the Server's ConfigMap reaches the cache")
	err := mgr.GetCache().Get(t.Context(), client.ObjectKeyFromObject(unrelated), &corev1.ConfigMap{})
	assert.True(t, apierrors.IsNotFound(err), "an unrelated ConfigMap is not cached: %v", err)

	// Namespaces are, unlabelled: their consent annotation is read there.
	assert.NoError(t, mgr.GetCache().Get(t.Context(), key("", ns), &corev1.Namespace{}), "Namespaces are cached")
}

// The finalizer guards only what owner references cannot reach: objects
// outside the Server's namespace.
func TestFinalizerOnlyForForeignObjects(t *testing.T) {
	ns, other := newNamespace(t), newNamespace(t)
	setConsent(t, other, ns+"/lab")
	server := newServer(t, ns, "lab", nil) // VMs of its own namespace only
	settled(t, server)
	assert.NotContains(t, server.Finalizers, Finalizer, "nothing outside its namespace")

	updateServer(t, server, func(s *hyperdhcpv1beta1.ServerSpec) {
		s.KubeVirt.Namespaces = []string{ns, other}
	})
	eventually(t, &rbacv1.RoleBinding{}, key(other, render.ForeignName(server)), func() bool { return true }, "foreign binding")
	require.NoError(t, admin.Get(t.Context(), client.ObjectKeyFromObject(server), server))
	assert.Contains(t, server.Finalizers, Finalizer, "added before the foreign binding")

	updateServer(t, server, func(s *hyperdhcpv1beta1.ServerSpec) { s.KubeVirt.Namespaces = nil })
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		return !slices.Contains(server.Finalizers, Finalizer)
	}, "finalizer removed once nothing is left outside the namespace")
	err := admin.Get(t.Context(), key(other, render.ForeignName(server)), &rbacv1.RoleBinding{})
	assert.True(t, apierrors.IsNotFound(err), "the foreign binding went first")
}

// A failing phase does not hide the others' errors, and phases that do not
// depend on it still run.
func TestPhaseErrorsAreAggregated(t *testing.T) {
	ns := newNamespace(t)
	const serverName = "agg"
	name := "hyperdhcpd-" + serverName
	labels := map[string]string{render.ServerLabel: serverName, render.ServerNamespaceLabel: ns}
	// RBAC fails: a binding of that name to another role (roleRef is immutable).
	require.NoError(t, admin.Create(t.Context(), &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "view"},
	}))
	// ConfigMap fails: one of that name already has another controller.
	require.NoError(t, admin.Create(t.Context(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{
		Name: name, Namespace: ns, Labels: labels,
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "ConfigMap", Name: "someone", UID: types.UID("a1b2"), Controller: new(true)}},
	}}))

	server := newServer(t, ns, serverName, nil)
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		c := meta.FindStatusCondition(server.Status.Conditions, hyperdhcpv1beta1.ConditionDegraded)
		return c != nil && c.Reason == hyperdhcpv1beta1.ReasonReconcileFailed && c.Status == metav1.ConditionTrue
	}, "Degraded")
	c := meta.FindStatusCondition(server.Status.Conditions, hyperdhcpv1beta1.ConditionDegraded)
	assert.Contains(t, c.Message, "RBAC")
	assert.Contains(t, c.Message, "ConfigMap")

	eventually(t, &corev1.PersistentVolumeClaim{}, key(ns, render.PVCName(server)), func() bool { return true },
		"the PVC phase runs after failed phases")
	err := admin.Get(t.Context(), key(ns, name), &appsv1.Deployment{})
	assert.True(t, apierrors.IsNotFound(err), "no pod on a configuration that was not written")
}

// TestNetworkAttachmentNotFound: a Server whose NetworkAttachmentDefinition
// does not exist says so, and recovers once it does.
func TestNetworkAttachmentNotFound(t *testing.T) {
	ns := newNamespace(t)
	server := newServer(t, ns, "lab", func(s *hyperdhcpv1beta1.ServerSpec) { s.NetworkAttachment.Name = "missing" })
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		c := meta.FindStatusCondition(server.Status.Conditions, hyperdhcpv1beta1.ConditionDegraded)
		return c != nil && c.Status == metav1.ConditionTrue && c.Reason == hyperdhcpv1beta1.ReasonNetworkAttachmentNotFound
	}, "Degraded: NetworkAttachmentNotFound")
	c := meta.FindStatusCondition(server.Status.Conditions, hyperdhcpv1beta1.ConditionDegraded)
	assert.Contains(t, c.Message, ns+"/missing")
	ready := meta.FindStatusCondition(server.Status.Conditions, hyperdhcpv1beta1.ConditionReady)
	assert.Equal(t, hyperdhcpv1beta1.ReasonNetworkAttachmentNotFound, ready.Reason, "why the pod cannot start")
	eventually(t, &appsv1.Deployment{}, key(ns, render.Name(server)), func() bool { return true },
		"deployed anyway, so the pod starts as soon as the network exists")

	// No Server edit: the operator looks again by itself.
	createNetworkAttachment(t, ns, "missing")
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		c := meta.FindStatusCondition(server.Status.Conditions, hyperdhcpv1beta1.ConditionDegraded)
		return c != nil && c.Status == metav1.ConditionFalse
	}, "no longer Degraded once the NetworkAttachmentDefinition exists")
}

// hidingMapper makes a cluster without Multus: its API group is unknown.
type hidingMapper struct{ meta.RESTMapper }

const multusGroup = "k8s.cni.cncf.io"

func (m hidingMapper) RESTMapping(gk schema.GroupKind, versions ...string) (*meta.RESTMapping, error) {
	if gk.Group == multusGroup {
		return nil, &meta.NoKindMatchError{GroupKind: gk, SearchedVersions: versions}
	}
	return m.RESTMapper.RESTMapping(gk, versions...)
}

func (m hidingMapper) RESTMappings(gk schema.GroupKind, versions ...string) ([]*meta.RESTMapping, error) {
	if gk.Group == multusGroup {
		return nil, &meta.NoKindMatchError{GroupKind: gk, SearchedVersions: versions}
	}
	return m.RESTMapper.RESTMappings(gk, versions...)
}

// Without the NetworkAttachmentDefinition CRD the operator cannot check the
// network and does not fail for it.
func TestNetworkAttachmentCRDMissingIsTolerated(t *testing.T) {
	ns := newNamespace(t)
	c, err := client.New(operatorCfg, client.Options{Scheme: scheme, Mapper: hidingMapper{mgr.GetRESTMapper()}})
	require.NoError(t, err)
	direct := &ServerReconciler{Client: c, Recorder: reconciler.Recorder, Image: testImage}

	// The label keeps the suite's manager away: only direct reconciles it.
	server := &hyperdhcpv1beta1.Server{
		ObjectMeta: metav1.ObjectMeta{Name: "lab", Namespace: ns, Labels: map[string]string{makeRunLabel: "true"}},
		Spec: hyperdhcpv1beta1.ServerSpec{
			NetworkAttachment: hyperdhcpv1beta1.NetworkAttachment{Name: "nowhere"},
			ServerIP:          "192.168.50.2/24",
			Pools:             []hyperdhcpv1beta1.AddressRange{{Start: "192.168.50.100", End: "192.168.50.199"}},
		},
	}
	require.NoError(t, admin.Create(t.Context(), server))
	_, err = direct.Reconcile(t.Context(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(server)})
	require.NoError(t, err)
	require.NoError(t, admin.Get(t.Context(), client.ObjectKeyFromObject(server), server))
	degraded := meta.FindStatusCondition(server.Status.Conditions, hyperdhcpv1beta1.ConditionDegraded)
	require.NotNil(t, degraded)
	assert.Equal(t, metav1.ConditionFalse, degraded.Status, degraded.Message)
	require.NoError(t, admin.Get(t.Context(), key(ns, render.Name(server)), &appsv1.Deployment{}))
}

// The rendered pod passes the restricted Pod Security level, so a Server's
// namespace needs no exemption.
func TestRenderedPodIsAdmittedByRestrictedPodSecurity(t *testing.T) {
	nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "restricted-",
		Labels: map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}}}
	require.NoError(t, admin.Create(t.Context(), nsObj))
	ns := nsObj.Name
	pod := func(name string, probing bool) *corev1.Pod {
		server := &hyperdhcpv1beta1.Server{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: hyperdhcpv1beta1.ServerSpec{
				NetworkAttachment: hyperdhcpv1beta1.NetworkAttachment{Name: "lab-bridge"},
				ServerIP:          "192.168.50.2/24",
				Pools:             []hyperdhcpv1beta1.AddressRange{{Start: "192.168.50.100", End: "192.168.50.199"}},
				ConflictDetection: &hyperdhcpv1beta1.ConflictDetectionSpec{Enabled: new(probing)},
			},
		}
		hyperdhcpv1beta1.SetDefaults(&server.Spec)
		d, err := render.Deployment(server, render.Replicas(server)[0], testImage, "h")
		require.NoError(t, err)
		require.NoError(t, admin.Create(t.Context(), render.ServiceAccount(server)))
		p := &corev1.Pod{ObjectMeta: *d.Spec.Template.ObjectMeta.DeepCopy(), Spec: *d.Spec.Template.Spec.DeepCopy()}
		p.Name, p.Namespace = name, ns
		return p
	}
	assert.NoError(t, admin.Create(t.Context(), pod("lab", false)), "without conflict detection the pod is restricted")
	err := admin.Create(t.Context(), pod("probing", true))
	require.Error(t, err, "NET_RAW and root are beyond restricted (and baseline): the README says so")
	assert.Contains(t, err.Error(), "violates PodSecurity")
}
