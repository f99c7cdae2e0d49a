package leasedb

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/coredhcp/coredhcp/handler"
	"github.com/coredhcp/coredhcp/plugins"
)

// Plugin registers leasedb for CoreDHCP configuration files.
var Plugin = plugins.Plugin{
	Name:   "leasedb",
	Setup4: setup4,
}

func setup4(args ...string) (handler.Handler4, error) {
	opts, path, err := parseArgs(args)
	if err != nil {
		return nil, err
	}
	store, err := OpenSQLite(path)
	if err != nil {
		return nil, err
	}
	opts.Store = store
	db, err := New(context.Background(), opts)
	if err != nil {
		store.Close()
		return nil, err
	}
	return db.Handler4, nil
}

// parseArgs reads the key=value arguments documented in the package comment.
func parseArgs(args []string) (Options, string, error) {
	var opts Options
	var path string
	for _, arg := range args {
		key, value, ok := strings.Cut(arg, "=")
		if !ok {
			return opts, "", fmt.Errorf("leasedb: argument %q is not key=value", arg)
		}
		var err error
		switch key {
		case "database":
			path = value
		case "server":
			opts.Server, err = netip.ParsePrefix(value)
		case "pool":
			first, last, found := strings.Cut(value, "-")
			var r Range
			if !found {
				err = fmt.Errorf("want FIRST-LAST")
			} else if r.First, err = netip.ParseAddr(first); err == nil {
				r.Last, err = netip.ParseAddr(last)
			}
			opts.Pools = append(opts.Pools, r)
		case "exclude":
			var a netip.Addr
			a, err = netip.ParseAddr(value)
			opts.Exclude = append(opts.Exclude, a)
		case "reserve":
			parts := strings.Split(value, ",")
			var r Reservation
			if len(parts) < 2 || len(parts) > 3 {
				err = fmt.Errorf("want MAC,IP[,HOSTNAME]")
			} else if r.MAC, err = net.ParseMAC(parts[0]); err == nil {
				r.IP, err = netip.ParseAddr(parts[1])
			}
			if len(parts) == 3 {
				r.Hostname = parts[2]
			}
			opts.Reservations = append(opts.Reservations, r)
		case "lease":
			opts.LeaseTime, err = time.ParseDuration(value)
		case "identify":
			switch value {
			case "client-id":
				opts.IdentifyByMAC = false
			case "mac":
				opts.IdentifyByMAC = true
			default:
				err = fmt.Errorf("want client-id or mac")
			}
		default:
			err = fmt.Errorf("unknown key")
		}
		if err != nil {
			return opts, "", fmt.Errorf("leasedb: argument %q: %w", arg, err)
		}
	}
	if path == "" {
		return opts, "", fmt.Errorf("leasedb: database=PATH is required")
	}
	return opts, path, nil
}
