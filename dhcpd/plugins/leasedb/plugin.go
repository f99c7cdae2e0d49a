package leasedb

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/coredhcp/coredhcp/handler"
	"github.com/coredhcp/coredhcp/plugins"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
)

// Plugin registers leasedb for CoreDHCP configuration files, so a stock
// CoreDHCP server can use it in place of its range plugin:
//
//   - leasedb: database=/var/lib/coredhcp/leases.db server=192.168.50.2/24 pool=192.168.50.100-192.168.50.199
//
// The arguments are those of the package comment. They are checked as
// hyperdhcpd checks a Server, and the database is locked the same way, so
// two servers cannot share it.
var Plugin = plugins.Plugin{
	Name:   "leasedb",
	Setup4: setup4,
}

// pluginAttachment stands in for the Multus network a Server names, which
// a CoreDHCP configuration does not have.
const pluginAttachment = "coredhcp"

func setup4(args ...string) (handler.Handler4, error) {
	spec, path, err := parseArgs(args)
	if err != nil {
		return nil, err
	}
	opts, err := OptionsFromSpec(spec)
	if err != nil {
		return nil, fmt.Errorf("leasedb: %w", err)
	}
	// CoreDHCP never tears a plugin down: the lock and the store live as
	// long as the process.
	if _, err := LockDatabase(path); err != nil {
		return nil, fmt.Errorf("leasedb: %w", err)
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

// parseArgs reads the key=value arguments documented in the package
// comment into a Server spec, defaults it and validates it.
func parseArgs(args []string) (*hyperdhcpv1beta1.ServerSpec, string, error) {
	spec := &hyperdhcpv1beta1.ServerSpec{NetworkAttachment: hyperdhcpv1beta1.NetworkAttachment{Name: pluginAttachment}}
	var path string
	for _, arg := range args {
		key, value, ok := strings.Cut(arg, "=")
		if !ok {
			return nil, "", fmt.Errorf("leasedb: argument %q is not key=value", arg)
		}
		var err error
		switch key {
		case "database":
			path = value
		case "server":
			spec.ServerIP = hyperdhcpv1beta1.IPv4Prefix(value)
		case "pool":
			first, last, found := strings.Cut(value, "-")
			if !found {
				err = fmt.Errorf("want FIRST-LAST")
			}
			spec.Pools = append(spec.Pools, hyperdhcpv1beta1.AddressRange{
				Start: hyperdhcpv1beta1.IPv4Address(first), End: hyperdhcpv1beta1.IPv4Address(last)})
		case "exclude":
			spec.Exclude = append(spec.Exclude, hyperdhcpv1beta1.IPv4Address(value))
		case "reserve":
			parts := strings.Split(value, ",")
			if len(parts) < 2 || len(parts) > 3 {
				err = fmt.Errorf("want MAC,IP[,HOSTNAME]")
				break
			}
			r := hyperdhcpv1beta1.Reservation{MAC: hyperdhcpv1beta1.MACAddress(parts[0]), IP: hyperdhcpv1beta1.IPv4Address(parts[1])}
			if len(parts) == 3 {
				r.Hostname = parts[2]
			}
			spec.Reservations = append(spec.Reservations, r)
		case "lease":
			var d time.Duration
			d, err = time.ParseDuration(value)
			spec.LeaseTime = &metav1.Duration{Duration: d}
		case "identify":
			switch value {
			case "client-id":
				spec.IdentifyClientsBy = hyperdhcpv1beta1.IdentifyByClientID
			case "mac":
				spec.IdentifyClientsBy = hyperdhcpv1beta1.IdentifyByMAC
			default:
				err = fmt.Errorf("want client-id or mac")
			}
		default:
			err = fmt.Errorf("unknown key")
		}
		if err != nil {
			return nil, "", fmt.Errorf("leasedb: argument %q: %w", arg, err)
		}
	}
	if path == "" {
		return nil, "", fmt.Errorf("leasedb: database=PATH is required")
	}
	hyperdhcpv1beta1.SetDefaults(spec)
	if errs := hyperdhcpv1beta1.ValidateSpec(spec, field.NewPath("leasedb")); len(errs) > 0 {
		return nil, "", fmt.Errorf("leasedb: invalid arguments: %w", errs.ToAggregate())
	}
	return spec, path, nil
}
