package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// outlastAPIOutage kills the API server, shows hyperdhcpd noticing it and
// still acknowledging a VM's renewal, then starts the API server again with
// the same arguments (certificates, service account keys and etcd are
// untouched, so every client's credentials stay valid).
func (d *demo) outlastAPIOutage(ctx context.Context) error {
	pid, err := childProcess("kube-apiserver")
	if err != nil {
		return err
	}
	argv, err := procList(pid, "cmdline")
	if err != nil {
		return err
	}
	// Killed, as a crashed or fenced control-plane node goes: a graceful
	// stop would drain the watches for a minute first.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("stop kube-apiserver: %w", err)
	}
	// envtest waits for its child, so the PID goes once the process ended.
	if err := waitFor(ctx, func() bool { _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); return err != nil }); err != nil {
		return fmt.Errorf("kube-apiserver (PID %d) did not stop: %w", pid, err)
	}
	d.detail("kube-apiserver (PID %d) killed", pid)
	noticed, err := d.waitLog(ctx, "hyperdhcpd.log", "cannot reach the API")
	if err != nil {
		return fmt.Errorf("hyperdhcpd did not notice the API outage: %w", err)
	}
	d.detail("hyperdhcpd logged: %s", noticed)

	// dhclient cannot be told to renew now: its restart (INIT-REBOOT) is
	// given a renewal time of 2s, after which it renews as at T1.
	renewing := vms[0]
	if err := d.stopClient(renewing.name); err != nil {
		return err
	}
	dir := filepath.Join(d.dir, "clients", renewing.name)
	config, err := os.ReadFile("/etc/dhcp/dhclient.conf")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	config = append(config, "\nsupersede dhcp-renewal-time 2;\n"...)
	if err := os.WriteFile(filepath.Join(dir, "dhclient.conf"), config, 0o644); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(dir, "lease.env")); err != nil {
		return err
	}
	if err := d.startDhclient(renewing.name, d.netns[renewing.name], "-cf", filepath.Join(dir, "dhclient.conf")); err != nil {
		return err
	}
	env, err := d.waitLease(ctx, renewing.name, "RENEW")
	if err != nil {
		return err
	}
	d.detail("%s renewed (RENEW to %s) during the outage: ACK %s for %ss",
		renewing.name, env["new_dhcp_server_identifier"], env["new_ip_address"], env["new_dhcp_lease_time"])

	// It inherited this process's environment, as the new one does.
	restarted, err := d.start("kube-apiserver.log", nil, argv[0], argv[1:]...)
	if err != nil {
		return fmt.Errorf("start kube-apiserver again: %w", err)
	}
	if err := waitFor(ctx, func() bool {
		return d.k8s.Get(ctx, client.ObjectKey{Name: namespace}, &corev1.Namespace{}) == nil
	}); err != nil {
		return fmt.Errorf("kube-apiserver did not come back: %w", err)
	}
	d.detail("kube-apiserver started again (PID %d)", restarted.Process.Pid)
	back, err := d.waitLog(ctx, "hyperdhcpd.log", "the API answers again")
	if err != nil {
		return fmt.Errorf("hyperdhcpd did not notice the API is back: %w", err)
	}
	d.detail("hyperdhcpd logged: %s", back)
	return nil
}

// waitLog waits for a JSON log line in the named log whose message
// contains text, and returns that message.
func (d *demo) waitLog(ctx context.Context, log, text string) (string, error) {
	var message string
	err := waitFor(ctx, func() bool {
		data, _ := os.ReadFile(d.logPath(log))
		for _, line := range bytes.Split(data, []byte("\n")) {
			var entry struct {
				Msg string `json:"msg"`
			}
			if json.Unmarshal(line, &entry) == nil && strings.Contains(entry.Msg, text) {
				message = entry.Msg
				return true
			}
		}
		return false
	})
	return message, err
}

// childProcess finds this process's child running the named command.
func childProcess(command string) (int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	self := strconv.Itoa(os.Getpid())
	for _, entry := range entries {
		pid, err := strconv.Atoi(entry.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", entry.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at its ")".
		start, end := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
		if start < 0 || end < start {
			continue
		}
		fields := strings.Fields(string(stat[end+1:]))
		if string(stat[start+1:end]) == command && len(fields) > 1 && fields[1] == self {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no %s process started by this one", command)
}

// procList reads a NUL-separated list (such as cmdline) of a process.
func procList(pid int, name string) ([]string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, name))
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00"), nil
}
