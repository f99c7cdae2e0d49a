// Command hyperdhcp-operator reconciles hyperdhcp.io Servers.
package main

import (
	"os"

	"github.com/hyperdhcp/hyperdhcp/operator/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args))
}
