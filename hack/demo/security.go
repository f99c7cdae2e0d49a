package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// applySecurityContext does what a container runtime does with the pod's
// security context: the pod's sysctls in its network namespace, the lease
// volume and the service account token group-owned by fsGroup, and the
// user, groups, bounding capabilities and read-only root that the start
// script applies (returned as its environment).
func (d *demo) applySecurityContext(p *pod, podNS string) ([]string, error) {
	podSecurity := p.deployment.Spec.Template.Spec.SecurityContext
	container := p.container.SecurityContext
	if podSecurity == nil || podSecurity.RunAsUser == nil || podSecurity.RunAsGroup == nil || podSecurity.FSGroup == nil || container == nil {
		return nil, errors.New("the Deployment's pod has no user, group or fsGroup to run as")
	}
	for _, s := range podSecurity.Sysctls {
		if out, err := exec.Command("ip", "netns", "exec", podNS, "sysctl", "-qw", s.Name+"="+s.Value).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("sysctl %s=%s: %w: %s", s.Name, s.Value, err, out)
		}
	}
	fsGroup := int(*podSecurity.FSGroup)
	// The non-root user must reach the binary and the volumes under the
	// demo's private temporary directory.
	if err := os.Chmod(d.dir, 0o755); err != nil {
		return nil, err
	}
	if err := filepath.WalkDir(d.leases, func(path string, entry os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		mode := os.FileMode(0o664)
		if entry.IsDir() {
			mode = 0o775 | os.ModeSetgid
		}
		return errors.Join(os.Chown(path, 0, fsGroup), os.Chmod(path, mode))
	}); err != nil {
		return nil, fmt.Errorf("fsGroup on the lease volume: %w", err)
	}
	tokens, err := filepath.Glob(filepath.Join(d.dir, "pod", "serviceaccount", "*"))
	if err != nil {
		return nil, err
	}
	for _, file := range tokens {
		if err := errors.Join(os.Chown(file, 0, fsGroup), os.Chmod(file, 0o640)); err != nil {
			return nil, fmt.Errorf("fsGroup on the service account token: %w", err)
		}
	}
	bounding := []string{"-all"}
	if container.Capabilities != nil {
		for _, c := range container.Capabilities.Add {
			bounding = append(bounding, "+"+strings.ToLower(string(c)))
		}
	}
	readOnlyRoot := container.ReadOnlyRootFilesystem != nil && *container.ReadOnlyRootFilesystem
	return []string{
		"RUN_AS_USER=" + strconv.FormatInt(*podSecurity.RunAsUser, 10),
		"RUN_AS_GROUP=" + strconv.FormatInt(*podSecurity.RunAsGroup, 10),
		"FS_GROUP=" + strconv.Itoa(fsGroup),
		"BOUNDING_SET=" + strings.Join(bounding, ","),
		"READ_ONLY_ROOT=" + strconv.FormatBool(readOnlyRoot),
	}, nil
}

// processCredentials reads a process's real user ID and effective
// capabilities ("none" when empty) from /proc.
func processCredentials(pid int) (uid, capabilities string, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "", "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		key, value, _ := strings.Cut(line, ":")
		fields := strings.Fields(value)
		switch {
		case key == "Uid" && len(fields) > 0:
			uid = fields[0]
		case key == "CapEff" && len(fields) > 0:
			capabilities = fields[0]
			if mask, err := strconv.ParseUint(capabilities, 16, 64); err == nil {
				capabilities = capabilityNames(mask)
			}
		}
	}
	if uid == "" || capabilities == "" {
		return "", "", fmt.Errorf("/proc/%d/status has no Uid or CapEff", pid)
	}
	return uid, capabilities, nil
}

// capabilityNames names the capabilities a demo pod may have; others by
// number. "none" for an empty set.
func capabilityNames(mask uint64) string {
	known := map[int]string{10: "net_bind_service", 13: "net_raw"}
	var names []string
	for bit := range 64 {
		if mask&(1<<bit) == 0 {
			continue
		}
		if name, ok := known[bit]; ok {
			names = append(names, name)
		} else {
			names = append(names, "cap_"+strconv.Itoa(bit))
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ",")
}

func sysctls(list []corev1.Sysctl) string {
	parts := make([]string, len(list))
	for i, s := range list {
		parts[i] = s.Name + "=" + s.Value
	}
	return strings.Join(parts, " ")
}
