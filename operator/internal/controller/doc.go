// Package controller reconciles Servers into hyperdhcpd deployments.
//
// The operator's own RBAC is generated from the markers here and in
// server_controller.go into deploy/rbac by `make manifests`.
package controller

// +kubebuilder:rbac:groups=hyperdhcp.io,resources=servers,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=hyperdhcp.io,resources=servers/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=hyperdhcp.io,resources=servers/finalizers,verbs=update
// +kubebuilder:rbac:groups="";events.k8s.io,resources=events,verbs=create;patch
