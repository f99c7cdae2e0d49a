// Command coredhcp is stock CoreDHCP with hyperdhcpd's leasedb and
// extraopts plugins registered beside CoreDHCP's own, as a CoreDHCP user
// would build it. The e2e tests run it to prove that the plugins work in
// CoreDHCP's server, from CoreDHCP's own configuration file.
package main

import (
	"flag"
	"log"

	"github.com/coredhcp/coredhcp/config"
	"github.com/coredhcp/coredhcp/plugins"
	"github.com/coredhcp/coredhcp/plugins/dns"
	"github.com/coredhcp/coredhcp/plugins/netmask"
	"github.com/coredhcp/coredhcp/plugins/router"
	"github.com/coredhcp/coredhcp/plugins/serverid"
	"github.com/coredhcp/coredhcp/server"

	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/extraopts"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

func main() {
	conf := flag.String("conf", "config.yml", "CoreDHCP configuration file")
	flag.Parse()
	for _, p := range []*plugins.Plugin{&serverid.Plugin, &netmask.Plugin, &router.Plugin, &dns.Plugin, &leasedb.Plugin, &extraopts.Plugin} {
		if err := plugins.RegisterPlugin(p); err != nil {
			log.Fatalf("register plugin %s: %v", p.Name, err)
		}
	}
	cfg, err := config.Load(*conf)
	if err != nil {
		log.Fatalf("load %s: %v", *conf, err)
	}
	srv, err := server.Start(cfg)
	if err != nil {
		log.Fatal(err)
	}
	if err := srv.Wait(); err != nil {
		log.Fatal(err)
	}
}
