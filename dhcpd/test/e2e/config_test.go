package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestBadConfigExitsBeforeBinding runs `hyperdhcpd serve` on broken
// configurations: each exits non-zero naming the field, and the lease
// database is never created.
func TestBadConfigExitsBeforeBinding(t *testing.T) {
	base := `server:
  networkAttachment: {name: lab, interface: lo}
  serverIP: 192.168.50.2/24
  pools: [{start: 192.168.50.100, end: 192.168.50.199}]
`
	cases := []struct {
		name, config, message string
	}{
		{"unparsable", "server: [", "parse config"},
		{"unknown field", base + "colour: blue\n", `unknown field "colour"`},
		{"malformed server IP", "server:\n  networkAttachment: {name: lab, interface: lo}\n  serverIP: 192.168.50.300/24\n  pools: [{start: 192.168.50.100, end: 192.168.50.199}]\n", "server.serverIP"},
		{"pool outside the subnet", "server:\n  networkAttachment: {name: lab, interface: lo}\n  serverIP: 192.168.50.2/24\n  pools: [{start: 192.168.60.100, end: 192.168.60.199}]\n", "server.pools[0].start"},
		{"reserved address also excluded", base + "  exclude: [192.168.50.150]\n" + "  reservations: [{mac: 02:00:5e:10:00:01, ip: 192.168.50.150}]\n", "server.reservations[0].ip"},
		{"lease time too short", base + "  leaseTime: 10s\n", "server.leaseTime"},
		{"unknown interface", "server:\n  networkAttachment: {name: lab, interface: nosuchif0}\n  serverIP: 192.168.50.2/24\n  pools: [{start: 192.168.50.100, end: 192.168.50.199}]\n", `interface: no network interface named "nosuchif0"`},
		{"bad port", base + "port: 70000\n", "port"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := filepath.Join(dir, "hyperdhcpd.yaml")
			db := filepath.Join(dir, "leases.db")
			require.NoError(t, os.WriteFile(cfg, []byte(tc.config+"leaseDatabase: "+db+"\nmetricsAddress: \"0\"\n"), 0o600))
			out, err := exec.Command(hyperdhcpd, "serve", "--config", cfg).CombinedOutput()
			var exit *exec.ExitError
			require.ErrorAs(t, err, &exit, "hyperdhcpd accepted it: %s", out)
			assert.NotZero(t, exit.ExitCode())
			assert.Contains(t, string(out), tc.message)
			assert.NoFileExists(t, db, "the lease database must not be touched")

			checkOut, err := exec.Command(hyperdhcpd, "check", "--config", cfg).CombinedOutput()
			if tc.name != "unknown interface" { // check validates the file, not this machine
				assert.Error(t, err, "check accepted it: %s", checkOut)
			}
		})
	}
}

// TestCheckPrintsTheEffectiveConfig shows the defaults and the environment
// overriding the file.
func TestCheckPrintsTheEffectiveConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, ".hyperdhcp.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte(`server:
  networkAttachment: {name: lab}
  serverIP: 192.168.50.2/24
  pools: [{start: 192.168.50.100, end: 192.168.50.199}]
port: 6767
`), 0o600))
	cmd := exec.Command(hyperdhcpd, "check") // the default file in the working directory
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HYPERDHCPD_PORT=1067")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "port: 1067", "the environment overrides the file")
	assert.Contains(t, string(out), "interface: net1", "defaults are applied")
	assert.Contains(t, string(out), "leaseTime: 1h0m0s")

	cmd = exec.Command(hyperdhcpd, "check")
	cmd.Dir = t.TempDir()
	out, err = cmd.CombinedOutput()
	assert.Error(t, err)
	assert.Contains(t, string(out), "no configuration")
}
