package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// hook records what dhclient was told and applies only the address: a stock
// dhclient-script would rewrite this host's /etc/resolv.conf.
const hook = `#!/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
case "$reason" in
BOUND|RENEW|REBOOT)
	ip addr replace "$new_ip_address/$new_subnet_mask" dev "$interface"
	env > "%s.partial" && mv "%s.partial" "%s" ;;
esac
exit 0
`

func (d *demo) runClients(ctx context.Context) error {
	node := d.id + "-node"
	for i, v := range append(slices.Clone(vms), stranger) {
		ns := fmt.Sprintf("%s-%s", d.id, v.name)
		if err := d.addNetns(ns); err != nil {
			return err
		}
		port := fmt.Sprintf("vm%d", i+1)
		if err := d.ip("-n", node, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns); err != nil {
			return err
		}
		if err := d.ip("-n", node, "link", "set", port, "master", "br-lab", "up"); err != nil {
			return err
		}
		if err := d.ip("-n", ns, "link", "set", "eth0", "address", v.mac, "up"); err != nil {
			return err
		}
		dir := filepath.Join(d.dir, "clients", v.name)
		for _, sub := range []string{"run", "state"} {
			if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
				return err
			}
		}
		result := filepath.Join(dir, "lease.env")
		if err := os.WriteFile(filepath.Join(dir, "hook.sh"), []byte(fmt.Sprintf(hook, result, result, result)), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), nil, 0o644); err != nil {
			return err
		}
		// A private mount namespace: /run, dhclient's state and resolv.conf
		// are this client's own files.
		script := `set -e
mount --bind "$1/run" /run
[ -d /var/lib/dhcp ] && mount --bind "$1/state" /var/lib/dhcp
mount --bind "$1/resolv.conf" /etc/resolv.conf
exec dhclient -4 -d -v -sf "$1/hook.sh" -pf "$1/run/dhclient.pid" -lf "$1/state/dhclient.leases" eth0`
		if _, err := d.start(v.name+".log", nil, "ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
			"sh", "-c", script, "sh", dir); err != nil {
			return err
		}
	}
	for _, v := range vms {
		result := filepath.Join(d.dir, "clients", v.name, "lease.env")
		if err := waitFor(ctx, func() bool { _, err := os.Stat(result); return err == nil }); err != nil {
			return fmt.Errorf("%s got no lease: %w", v.name, err)
		}
		data, err := os.ReadFile(result)
		if err != nil {
			return err
		}
		env := map[string]string{}
		for _, line := range strings.Split(string(data), "\n") {
			if k, val, ok := strings.Cut(line, "="); ok {
				env[k] = strings.Trim(val, "'")
			}
		}
		kind := "from the pool"
		if v.pinned != "" {
			kind = "pinned"
		}
		d.detail("%s %s: %s (%s) hostname=%s router=%s dns=%s domain=%s lease=%ss",
			v.name, v.mac, env["new_ip_address"], kind, or(env["new_host_name"], "-"), env["new_routers"],
			env["new_domain_name_servers"], env["new_domain_name"], env["new_dhcp_lease_time"])
	}
	// The stranger asked as long as the VMs took to be answered, and then some.
	time.Sleep(3 * time.Second)
	if _, err := os.Stat(filepath.Join(d.dir, "clients", stranger.name, "lease.env")); err == nil {
		return fmt.Errorf("%s, a MAC of no VM, got a lease", stranger.name)
	}
	d.detail("%s %s: no answer (its MAC belongs to no VM on this network)", stranger.name, stranger.mac)
	return nil
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
