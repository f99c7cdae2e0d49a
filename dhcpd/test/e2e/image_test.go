package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/hyperdhcp/hyperdhcp/apis/config"
	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

// imageArchives names the OCI archives `make images` writes, by image.
var imageArchives = map[string]string{"hyperdhcpd": "hyperdhcpd.tar", "hyperdhcp-operator": "hyperdhcp-operator.tar"}

// imagesDir is where `make images` put its archives: make test builds
// them first and names the folder in HYPERDHCP_IMAGES; without it the test
// builds them itself (never a skip: an image nobody ran is not tested).
func imagesDir(t *testing.T) string {
	if dir := os.Getenv("HYPERDHCP_IMAGES"); dir != "" {
		return dir
	}
	dir := t.TempDir()
	out, err := exec.Command("make", "-s", "-C", filepath.Join("..", "..", ".."), "images", "IMAGES_DIR="+dir).CombinedOutput()
	require.NoError(t, err, "make images: %s", out)
	return dir
}

// podman runs podman the one way it works on these machines: runc (crun
// refuses a hybrid cgroup layout) and rlimits no higher than this
// process's hard limits (podman's defaults need CAP_SYS_RESOURCE).
func podman(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	var files, procs unix.Rlimit
	require.NoError(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &files))
	require.NoError(t, unix.Getrlimit(unix.RLIMIT_NPROC, &procs))
	if args[0] == "run" {
		args = append([]string{"run",
			"--ulimit", fmt.Sprintf("nofile=%d:%d", min(files.Max, 65536), min(files.Max, 65536)),
			"--ulimit", fmt.Sprintf("nproc=%d:%d", min(procs.Max, 4096), min(procs.Max, 4096)),
		}, args[1:]...)
	}
	return exec.Command("podman", append([]string{"--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"}, args...)...)
}

// loadImage loads an OCI archive into podman's store and returns its name.
func loadImage(t *testing.T, archive string) string {
	t.Helper()
	out, err := podman(t, "load", "--quiet", "--input", archive).CombinedOutput()
	require.NoError(t, err, "podman load %s: %s", archive, out)
	name := regexp.MustCompile(`Loaded image(?:\(s\))?: (\S+)`).FindSubmatch(out)
	require.NotNil(t, name, "podman load printed no image name: %s", out)
	image := string(name[1])
	t.Cleanup(func() { _ = podman(t, "rmi", "--force", image).Run() })
	return image
}

// TestImages checks the images `make images` built: what they declare
// (non-root user, entrypoint, OCI labels), that they hold no shell, that the
// operator's runs, and that hyperdhcpd's serves a real DHCP client in a
// test namespace with its config mounted read-only and its leases on a
// volume, as the operator's Deployment runs it.
func TestImages(t *testing.T) {
	dir := imagesDir(t)
	for image, archive := range imageArchives {
		t.Run("config/"+image, func(t *testing.T) {
			out, err := exec.Command("skopeo", "inspect", "--config", "oci-archive:"+filepath.Join(dir, archive)).Output()
			require.NoError(t, err, "skopeo inspect %s", archive)
			var spec struct {
				Config struct {
					User       string
					Entrypoint []string
					Labels     map[string]string
				} `json:"config"`
			}
			require.NoError(t, json.Unmarshal(out, &spec))
			assert.Equal(t, "65532:65532", spec.Config.User, "runs as the non-root user")
			assert.Equal(t, []string{"/" + image}, spec.Config.Entrypoint)
			for _, label := range []string{"version", "revision", "source"} {
				value := spec.Config.Labels["org.opencontainers.image."+label]
				assert.NotEmpty(t, value, "label %s", label)
				assert.NotEqual(t, "unknown", value, "label %s", label)
			}
		})
	}

	operator := loadImage(t, filepath.Join(dir, imageArchives["hyperdhcp-operator"]))
	dhcpd := loadImage(t, filepath.Join(dir, imageArchives["hyperdhcpd"]))
	t.Run("no shell", func(t *testing.T) {
		for _, image := range []string{operator, dhcpd} {
			out, err := podman(t, "run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", image, "-c", "true").CombinedOutput()
			assert.Error(t, err, "%s has a /bin/sh: %s", image, out)
			assert.Contains(t, string(out), "/bin/sh", "the failure names the missing shell")
		}
	})
	t.Run("operator --version", func(t *testing.T) {
		out, err := podman(t, "run", "--rm", "--network", "none", operator, "--version").CombinedOutput()
		require.NoError(t, err, "%s", out)
		assert.Regexp(t, `hyperdhcp-operator \S+`, string(out))
	})
	// As the operator renders the pod: non-root without conflict
	// detection; root with exactly NET_BIND_SERVICE and NET_RAW with it
	// (Kubernetes gives added capabilities to root only).
	for _, mode := range []struct {
		name    string
		probing bool
		user    string
		caps    []string
	}{
		{"hyperdhcpd serves a client as non-root", false, "", []string{"NET_BIND_SERVICE"}},
		{"hyperdhcpd probes and serves a client as root with NET_RAW", true, "0:65532", []string{"NET_BIND_SERVICE", "NET_RAW"}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			leases := filepath.Join(t.TempDir(), "leases")
			require.NoError(t, os.Mkdir(leases, 0o755))
			// As fsGroup makes the volume: group 65532, group-writable, setgid.
			require.NoError(t, os.Chown(leases, 65532, 65532))
			require.NoError(t, os.Chmod(leases, 0o775|os.ModeSetgid))
			b := newTestBed(t, func(c *config.Config) {
				c.LeaseDatabase = "/var/lib/hyperdhcp/leases.db"
				c.Server.ConflictDetection = &hyperdhcpv1beta1.ConflictDetectionSpec{Enabled: new(mode.probing)}
			})
			b.database = filepath.Join(leases, "leases.db")
			require.NoError(t, os.Chmod(b.config, 0o644), "readable by the image's user, as a ConfigMap volume is")
			args := []string{"run", "--rm", "--name", strings.ReplaceAll(t.Name(), "/", "-"),
				"--network", "ns:/run/netns/" + b.serverNS,
				"--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
				"--volume", b.config + ":/etc/hyperdhcp/hyperdhcpd.yaml:ro",
				"--volume", leases + ":/var/lib/hyperdhcp"}
			for _, c := range mode.caps {
				args = append(args, "--cap-add", c)
			}
			if mode.user != "" {
				args = append(args, "--user", mode.user)
			} else {
				// As the Deployment's pod sysctl does: port 67 without root.
				sh(t, "ip", "netns", "exec", b.serverNS, "sysctl", "-qw", "net.ipv4.ip_unprivileged_port_start=67")
			}
			run := podman(t, append(args, dhcpd, "serve", "--config", "/etc/hyperdhcp/hyperdhcpd.yaml")...)
			b.startServerCommand(run.Path, run.Args[1:]...)
			t.Cleanup(func() { _ = podman(t, "rm", "--force", args[3]).Run() })

			got := (&udhcpc{c: b.addClient("02:00:5e:30:00:01")}).obtain()
			inPool(t, got.IP)
			assert.Equal(t, routerIP, got.Router)
			assert.Equal(t, leasedb.StateBound, b.leases()[mustAddr(t, got.IP)].State, "the lease is on the volume")
			if mode.probing {
				assert.GreaterOrEqual(t, b.metric(`hyperdhcpd_probes_total{result="free"}`), 1.0, "the OFFER was probed")
			}
		})
	}
}
