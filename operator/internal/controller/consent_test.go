package controller

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/operator/internal/consent"
	"github.com/hyperdhcp/hyperdhcp/operator/internal/render"
)

// setConsent sets namespace's consent annotation to value; "" removes it.
func setConsent(t *testing.T, namespace, value string) {
	t.Helper()
	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		ns := &corev1.Namespace{}
		if err := admin.Get(t.Context(), key("", namespace), ns); err != nil {
			return err
		}
		if value == "" {
			delete(ns.Annotations, consent.Annotation)
		} else {
			metav1.SetMetaDataAnnotation(&ns.ObjectMeta, consent.Annotation, value)
		}
		return admin.Update(t.Context(), ns)
	}))
}

// mayListVMIs asks the API server whether server's hyperdhcpd may list the
// VirtualMachineInstances of namespace.
func mayListVMIs(t *testing.T, server *hyperdhcpv1beta1.Server, namespace string) bool {
	t.Helper()
	review := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:   "system:serviceaccount:" + server.Namespace + ":" + render.Name(server),
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + server.Namespace},
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: namespace, Verb: "list", Group: "kubevirt.io", Resource: "virtualmachineinstances",
		},
	}}
	require.NoError(t, admin.Create(t.Context(), review))
	return review.Status.Allowed
}

// degradedBy waits until server is Degraded for reason, and returns the
// condition.
func degradedBy(t *testing.T, server *hyperdhcpv1beta1.Server, reason string) *metav1.Condition {
	t.Helper()
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		c := meta.FindStatusCondition(server.Status.Conditions, hyperdhcpv1beta1.ConditionDegraded)
		return c != nil && c.Status == metav1.ConditionTrue && c.Reason == reason
	}, "Degraded: "+reason)
	return meta.FindStatusCondition(server.Status.Conditions, hyperdhcpv1beta1.ConditionDegraded)
}

// warningEvent waits for a Warning Event about server with reason whose
// note contains text.
func warningEvent(t *testing.T, server *hyperdhcpv1beta1.Server, reason, text string) {
	t.Helper()
	require.Eventually(t, func() bool {
		var events eventsv1.EventList
		if err := admin.List(context.Background(), &events, client.InNamespace(server.Namespace)); err != nil {
			return false
		}
		for _, e := range events.Items {
			if e.Regarding.Name == server.Name && e.Regarding.UID == server.UID && e.Type == corev1.EventTypeWarning &&
				e.Reason == reason && strings.Contains(e.Note, text) {
				return true
			}
		}
		return false
	}, timeout, interval, "a Warning Event %s naming %s", reason, text)
}

func bindingGone(t *testing.T, namespace, name string) bool {
	err := admin.Get(context.Background(), key(namespace, name), &rbacv1.RoleBinding{})
	return apierrors.IsNotFound(err)
}

// TestOtherNamespaceNeedsConsent: whoever writes a Server speaks for its
// own namespace only. Another namespace's VMs are read only once that
// Namespace's annotation consents, and no longer once it withdraws.
func TestOtherNamespaceNeedsConsent(t *testing.T) {
	ns, other, third := newNamespace(t), newNamespace(t), newNamespace(t)
	setConsent(t, third, "someone-else/lab") // consents, but not to this Server
	server := newServer(t, ns, "lab", func(s *hyperdhcpv1beta1.ServerSpec) {
		s.KubeVirt = &hyperdhcpv1beta1.KubeVirtSpec{Namespaces: []string{ns, other, third}}
	})
	foreign := render.ForeignName(server)

	c := degradedBy(t, server, hyperdhcpv1beta1.ReasonNamespaceConsentMissing)
	assert.Contains(t, c.Message, other)
	assert.Contains(t, c.Message, third)
	assert.NotContains(t, c.Message, ns+",", "its own namespace needs no consent")
	assert.Contains(t, c.Message, consent.Annotation)
	warningEvent(t, server, hyperdhcpv1beta1.ReasonNamespaceConsentMissing, other)
	generation := server.Generation

	// Its own namespace is served all the same.
	eventually(t, &rbacv1.RoleBinding{}, key(ns, render.Name(server)+"-vm-reader"), func() bool { return true }, "own namespace bound")
	assert.True(t, mayListVMIs(t, server, ns), "own namespace")
	assert.True(t, bindingGone(t, other, foreign), "no binding without consent")
	assert.True(t, bindingGone(t, third, foreign), "no binding on another Server's consent")
	assert.False(t, mayListVMIs(t, server, other), "no access without consent")
	assert.False(t, mayListVMIs(t, server, third), "no access on another Server's consent")

	// Consent, and no Server edit: the Namespace watch brings it in.
	setConsent(t, other, "ops/x, "+ns+"/lab")
	eventually(t, &rbacv1.RoleBinding{}, key(other, foreign), func() bool { return true }, "bound once the namespace consents")
	assert.True(t, mayListVMIs(t, server, other), "access with consent")
	// The binding is made before the status is written: wait for the message.
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		c := meta.FindStatusCondition(server.Status.Conditions, hyperdhcpv1beta1.ConditionDegraded)
		return c != nil && c.Reason == hyperdhcpv1beta1.ReasonNamespaceConsentMissing && !strings.Contains(c.Message, other)
	}, "only the namespace still without consent")
	assert.Contains(t, meta.FindStatusCondition(server.Status.Conditions, hyperdhcpv1beta1.ConditionDegraded).Message, third)

	setConsent(t, third, ns+"/*")
	eventually(t, &rbacv1.RoleBinding{}, key(third, foreign), func() bool { return true }, "bound on consent to every Server of the namespace")
	eventually(t, server, client.ObjectKeyFromObject(server), func() bool {
		return meta.IsStatusConditionFalse(server.Status.Conditions, hyperdhcpv1beta1.ConditionDegraded)
	}, "no longer Degraded once every namespace consents")
	assert.Equal(t, generation, server.Generation, "the Server was never edited")
	assert.Contains(t, server.Finalizers, Finalizer, "bindings outside its namespace")

	// Withdrawn consent removes the binding.
	setConsent(t, other, "")
	require.Eventually(t, func() bool { return bindingGone(t, other, foreign) }, timeout, interval, "unbound once consent is withdrawn")
	assert.False(t, mayListVMIs(t, server, other), "no access once consent is withdrawn")
	c = degradedBy(t, server, hyperdhcpv1beta1.ReasonNamespaceConsentMissing)
	assert.Contains(t, c.Message, other)
	assert.True(t, mayListVMIs(t, server, third), "the other consent stands")
}

// TestConsentProblemsAggregate: the consent problem does not hide a more
// severe one, nor the other way round.
func TestConsentProblemsAggregate(t *testing.T) {
	ns, other := newNamespace(t), newNamespace(t)
	server := newServer(t, ns, "lab", func(s *hyperdhcpv1beta1.ServerSpec) {
		s.NetworkAttachment.Name = "missing"
		s.KubeVirt = &hyperdhcpv1beta1.KubeVirtSpec{Namespaces: []string{other}}
	})
	c := degradedBy(t, server, hyperdhcpv1beta1.ReasonNetworkAttachmentNotFound)
	assert.Contains(t, c.Message, ns+"/missing")
	assert.Contains(t, c.Message, other, "the namespace without consent is named too")

	createNetworkAttachment(t, ns, "missing")
	c = degradedBy(t, server, hyperdhcpv1beta1.ReasonNamespaceConsentMissing)
	assert.NotContains(t, c.Message, "NetworkAttachmentDefinition")
}

// TestAllNamespacesNeedsTheOperatorsFlag: a cluster-wide grant is the
// operator administrator's decision, never a Server writer's.
func TestAllNamespacesNeedsTheOperatorsFlag(t *testing.T) {
	ns, unrelated := newNamespace(t), newNamespace(t)
	server := newServer(t, ns, "all", func(s *hyperdhcpv1beta1.ServerSpec) {
		s.KubeVirt = &hyperdhcpv1beta1.KubeVirtSpec{AllNamespaces: true}
	})
	c := degradedBy(t, server, hyperdhcpv1beta1.ReasonAllNamespacesNotAllowed)
	assert.Contains(t, c.Message, "--allow-all-namespaces")
	warningEvent(t, server, hyperdhcpv1beta1.ReasonAllNamespacesNotAllowed, "--allow-all-namespaces")
	eventually(t, &rbacv1.RoleBinding{}, key(ns, render.Name(server)+"-vm-reader"), func() bool { return true }, "own namespace bound instead")
	err := admin.Get(t.Context(), key("", render.ForeignName(server)), &rbacv1.ClusterRoleBinding{})
	assert.True(t, apierrors.IsNotFound(err), "no ClusterRoleBinding without the flag: %v", err)
	assert.True(t, mayListVMIs(t, server, ns))
	assert.False(t, mayListVMIs(t, server, unrelated))
	assert.NotContains(t, server.Finalizers, Finalizer, "nothing outside its namespace")

	// An operator started with --allow-all-namespaces, for the Servers
	// labelled allowAllLabel.
	selector, err := labels.Parse(allowAllLabel)
	require.NoError(t, err)
	allowing, _, err := newManager(selector, true)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- allowing.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done)
	})

	permitted := &hyperdhcpv1beta1.Server{
		ObjectMeta: metav1.ObjectMeta{Name: "permitted", Namespace: ns, Labels: map[string]string{allowAllLabel: "true"}},
		Spec: hyperdhcpv1beta1.ServerSpec{
			NetworkAttachment: hyperdhcpv1beta1.NetworkAttachment{Name: "lab-bridge"},
			ServerIP:          "192.168.50.2/24",
			Pools:             []hyperdhcpv1beta1.AddressRange{{Start: "192.168.50.100", End: "192.168.50.199"}},
			KubeVirt:          &hyperdhcpv1beta1.KubeVirtSpec{AllNamespaces: true},
		},
	}
	require.NoError(t, admin.Create(t.Context(), permitted))
	crb := &rbacv1.ClusterRoleBinding{}
	eventually(t, crb, key("", render.ForeignName(permitted)), func() bool { return true }, "a ClusterRoleBinding with the flag")
	assert.Equal(t, render.VMReaderClusterRole, crb.RoleRef.Name)
	assert.True(t, mayListVMIs(t, permitted, unrelated), "every namespace with the flag")

	require.NoError(t, admin.Delete(t.Context(), permitted))
	require.Eventually(t, func() bool {
		return apierrors.IsNotFound(admin.Get(context.Background(), key("", render.ForeignName(permitted)), crb)) &&
			apierrors.IsNotFound(admin.Get(context.Background(), client.ObjectKeyFromObject(permitted), permitted))
	}, timeout, interval, "the finalizer removes the ClusterRoleBinding, then lets the Server go")
}
