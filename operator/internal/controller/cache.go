package controller

import (
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/operator/internal/render"
)

// CacheOptions are the manager's cache options: Servers matching
// serverSelector (nil: every Server), and of each kind the operator makes
// only the objects it made, which all carry render.ServerLabel (but every
// Namespace, for its consent annotation). Without
// the selector the operator would hold every ConfigMap, Deployment and
// RoleBinding of the cluster in memory.
func CacheOptions(serverSelector labels.Selector) cache.Options {
	made, err := labels.NewRequirement(render.ServerLabel, selection.Exists, nil)
	if err != nil {
		panic(err) // a constant, valid label key
	}
	owned := cache.ByObject{Label: labels.NewSelector().Add(*made)}
	byObject := map[client.Object]cache.ByObject{
		&corev1.ServiceAccount{}:        owned,
		&corev1.ConfigMap{}:             owned,
		&corev1.PersistentVolumeClaim{}: owned,
		&appsv1.Deployment{}:            owned,
		&rbacv1.Role{}:                  owned,
		&rbacv1.RoleBinding{}:           owned,
		&rbacv1.ClusterRoleBinding{}:    owned,
		// Every Namespace, unlabelled: the operator reads their consent
		// annotation (package consent), set by cluster admins, who do not
		// label them for the operator. Namespaces are few and small.
		&corev1.Namespace{}: {},
	}
	if serverSelector != nil {
		byObject[&hyperdhcpv1beta1.Server{}] = cache.ByObject{Label: serverSelector}
	}
	return cache.Options{ByObject: byObject}
}
