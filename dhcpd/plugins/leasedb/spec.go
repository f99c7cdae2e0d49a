package leasedb

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
)

// OptionsFromSpec turns a Server spec into options; the caller adds the
// store and the daemon settings.
func OptionsFromSpec(spec *hyperdhcpv1beta1.ServerSpec) (Options, error) {
	var opts Options
	var err error
	if opts.Server, err = netip.ParsePrefix(string(spec.ServerIP)); err != nil {
		return opts, fmt.Errorf("serverIP: %w", err)
	}
	for _, p := range spec.Pools {
		first, err1 := hyperdhcpv1beta1.ParseIPv4(p.Start)
		last, err2 := hyperdhcpv1beta1.ParseIPv4(p.End)
		if err := errors.Join(err1, err2); err != nil {
			return opts, fmt.Errorf("pools: %w", err)
		}
		opts.Pools = append(opts.Pools, Range{First: first, Last: last})
	}
	for _, e := range spec.Exclude {
		a, err := hyperdhcpv1beta1.ParseIPv4(e)
		if err != nil {
			return opts, fmt.Errorf("exclude: %w", err)
		}
		opts.Exclude = append(opts.Exclude, a)
	}
	for _, r := range spec.Reservations {
		mac, err := hyperdhcpv1beta1.ParseMAC(r.MAC)
		if err != nil {
			return opts, fmt.Errorf("reservations: %w", err)
		}
		ip, err := hyperdhcpv1beta1.ParseIPv4(r.IP)
		if err != nil {
			return opts, fmt.Errorf("reservations: %w", err)
		}
		opts.Reservations = append(opts.Reservations, Reservation{MAC: mac, IP: ip, Hostname: r.Hostname})
	}
	if spec.LeaseTime != nil {
		opts.LeaseTime = spec.LeaseTime.Duration
	}
	// The router and the static route gateways are hosts on the link:
	// leasing their addresses would break the network for everyone.
	gateways := []hyperdhcpv1beta1.IPv4Address{spec.Router}
	for _, r := range spec.StaticRoutes {
		gateways = append(gateways, r.Gateway)
	}
	for _, g := range gateways {
		if a, err := hyperdhcpv1beta1.ParseIPv4(g); err == nil && !slices.Contains(opts.Exclude, a) {
			opts.Exclude = append(opts.Exclude, a)
		}
	}
	opts.IdentifyByMAC = spec.IdentifyClientsBy == hyperdhcpv1beta1.IdentifyByMAC
	return opts, nil
}

// LockDatabase takes an exclusive lock beside the lease database, so that
// two servers (SO_REUSEPORT lets both bind) can never share one database.
func LockDatabase(path string) (unlock func(), err error) {
	// The directory is not created: in a pod it is the lease volume, and a
	// database made on the container's own filesystem when the volume is
	// missing would lose every lease at the next restart.
	dir := filepath.Dir(path)
	info, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("lease database directory %s does not exist (is the lease volume mounted?)", dir)
	case err != nil:
		return nil, fmt.Errorf("lease database directory %s: %w", dir, err)
	case !info.IsDir():
		return nil, fmt.Errorf("lease database directory %s is not a directory", dir)
	}
	if err := unix.Access(dir, unix.W_OK); err != nil {
		return nil, fmt.Errorf("lease database directory %s is not writable (%w): leases could not be stored", dir, err)
	}
	lockPath := path + ".lock"
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", lockPath, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("lease database %s is in use by another hyperdhcpd (lock %s): %w", path, lockPath, err)
	}
	return func() { f.Close() }, nil
}
