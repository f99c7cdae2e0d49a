// Command kube-apiserver is a build shim: it compiles the upstream
// kube-apiserver from the k8s.io/kubernetes Go module, because envtest's usual
// release-tarball download is unavailable offline.
package main

import (
	"os"
	_ "time/tzdata" // Kubernetes' own main embeds tzdata for CronJob time zones.

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
