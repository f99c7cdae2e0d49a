// Command hyperdhcpd is HyperDHCP's DHCPv4 server.
package main

import (
	"os"

	"github.com/hyperdhcp/hyperdhcp/dhcpd/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args))
}
