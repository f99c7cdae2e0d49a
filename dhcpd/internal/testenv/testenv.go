// Package testenv starts envtest's control plane for the dhcpd module's
// tests, the same way everywhere.
package testenv

import (
	"errors"
	"os"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Start runs kube-apiserver and etcd with the CRDs of crdDirs installed.
func Start(crdDirs ...string) (*envtest.Environment, *rest.Config, error) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		return nil, nil, errors.New("KUBEBUILDER_ASSETS is not set: run `make test`, or export KUBEBUILDER_ASSETS=$(make -s envtest)")
	}
	env := &envtest.Environment{CRDDirectoryPaths: crdDirs, ErrorIfCRDPathMissing: true}
	// kube-apiserver derives its advertise address from the default route;
	// name it so the tests also run on a machine without one.
	env.ControlPlane.GetAPIServer().Configure().
		Set("advertise-address", "127.0.0.1").
		Set("endpoint-reconciler-type", "none")
	cfg, err := env.Start()
	if err != nil {
		// A start that failed half-way (CRDs refused) leaves etcd and
		// kube-apiserver running otherwise.
		_ = env.Stop()
		return nil, nil, err
	}
	return env, cfg, nil
}
