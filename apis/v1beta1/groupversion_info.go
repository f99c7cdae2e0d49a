// Package v1beta1 contains the hyperdhcp.io/v1beta1 API: the Server resource,
// which describes one DHCPv4 service on a Multus secondary network.
//
// The package depends on k8s.io/apimachinery only, so other projects can
// import it without pulling in client-go or controller-runtime.
//
// +kubebuilder:object:generate=true
// +groupName=hyperdhcp.io
package v1beta1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is the group and version of every type in this package.
var GroupVersion = schema.GroupVersion{Group: "hyperdhcp.io", Version: "v1beta1"}

var (
	// SchemeBuilder registers this package's types with a runtime.Scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme adds this package's types to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(GroupVersion, &Server{}, &ServerList{})
	metav1.AddToGroupVersion(scheme, GroupVersion)
	return nil
}
