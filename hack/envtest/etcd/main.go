// Command etcd is a build shim: it compiles etcd from its Go module for
// envtest, because envtest's usual release-tarball download is unavailable offline.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
