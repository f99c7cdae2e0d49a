// Command demo runs HyperDHCP end to end on this machine (`make demo`): a
// local control plane (envtest's kube-apiserver and etcd as processes), the
// operator, a Server, and hyperdhcpd started exactly as the operator's
// Deployment says, in network namespaces with real DHCP clients.
//
// It runs as root, changes nothing outside the namespaces and temporary
// directory it creates, and removes them on exit (or on Ctrl-C). KEEP=1
// leaves everything running until Ctrl-C.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts := options{keep: os.Getenv("KEEP") == "1", out: os.Stdout}
	if err := run(ctx, opts); err != nil {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(os.Stderr, "demo: interrupted; cleaned up")
			os.Exit(130)
		}
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

type options struct {
	keep bool
	out  io.Writer
}
