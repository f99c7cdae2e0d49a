package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/hyperdhcp/hyperdhcp/apis/config"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

// TestLeasesCommands reads a lease database with `hyperdhcpd leases`.
func TestLeasesCommands(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	store, err := leasedb.OpenSQLite(path)
	require.NoError(t, err)
	mac := net.HardwareAddr{2, 0, 0x5e, 0x60, 0, 1}
	expires := time.Now().Add(time.Hour).Truncate(time.Second)
	require.NoError(t, store.Apply(context.Background(), []leasedb.Change{
		{Lease: leasedb.Lease{IP: netip.MustParseAddr("192.168.50.100"), ClientID: "hw:" + mac.String(), MAC: mac, Hostname: "vm-1", State: leasedb.StateBound, Expires: expires}},
		{Lease: leasedb.Lease{IP: netip.MustParseAddr("192.168.50.101"), State: leasedb.StateDeclined, Expires: time.Now().Add(-time.Minute)}},
	}))
	require.NoError(t, store.Close())

	out, err := exec.Command(hyperdhcpd, "leases", "list", "--lease-database", path).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Regexp(t, `IP\s+MAC\s+HOSTNAME\s+STATE\s+EXPIRES\s+CLIENT ID`, string(out))
	assert.Regexp(t, `192\.168\.50\.100\s+02:00:5e:60:00:01\s+vm-1\s+bound`, string(out))
	assert.Regexp(t, `192\.168\.50\.101\s+-\s+-\s+expired`, string(out), "a quarantine that ended shows as expired")

	out, err = exec.Command(hyperdhcpd, "leases", "show", "-o", "json", "--lease-database", path, "02-00-5E-60-00-01").CombinedOutput()
	require.NoError(t, err, "%s", out)
	var records []map[string]any
	require.NoError(t, json.Unmarshal(out, &records), "%s", out)
	require.Len(t, records, 1)
	assert.Equal(t, "192.168.50.100", records[0]["ip"])
	assert.Equal(t, "vm-1", records[0]["hostname"])
	assert.Equal(t, "bound", records[0]["state"])

	out, err = exec.Command(hyperdhcpd, "leases", "show", "--lease-database", path, "192.168.50.7").CombinedOutput()
	assert.Error(t, err)
	assert.Contains(t, string(out), "no lease for 192.168.50.7")
}

// TestLeasesCLIRecoversADamagedDatabase damages copies of a database a
// server wrote: `leases check` names each and exits 1, `leases export`
// saves what can be read from those that are partly readable, `leases
// import` loads that into a new database that passes the check and that
// hyperdhcpd serves from, and `hyperdhcpd serve` refuses the damaged
// copies before it binds.
func TestLeasesCLIRecoversADamagedDatabase(t *testing.T) {
	b := newTestBed(t, nil)
	b.startServer()
	clientIP := (&udhcpc{c: b.addClient("02:00:5e:80:00:01")}).obtain().IP
	inPool(t, clientIP)
	b.stopServer(syscall.SIGTERM)
	// Enough leases for the table to span pages, so that damage to some
	// of them leaves others readable.
	store, err := leasedb.OpenSQLite(b.database)
	require.NoError(t, err)
	var changes []leasedb.Change
	for i := range 400 {
		mac := net.HardwareAddr{2, 0, 0x5e, 0x81, byte(i >> 8), byte(i)}
		changes = append(changes, leasedb.Change{Lease: leasedb.Lease{
			IP: netip.AddrFrom4([4]byte{10, 81, byte(i >> 8), byte(i)}), ClientID: "hw:" + mac.String(), MAC: mac,
			Hostname: fmt.Sprintf("old-vm-%d", i), State: leasedb.StateBound, Expires: time.Now().Add(time.Hour),
		}})
	}
	require.NoError(t, store.Apply(context.Background(), changes))
	require.NoError(t, store.Close())

	out, err := exec.Command(hyperdhcpd, "leases", "check", "--lease-database", b.database).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Equal(t, b.database+": ok, 401 leases\n", string(out))
	original := exportLeases(t, b.database)
	require.Len(t, original, 401)

	dir := t.TempDir()
	data, err := os.ReadFile(b.database)
	require.NoError(t, err)
	const page = 4096
	require.GreaterOrEqual(t, len(data)/page, 9, "the table spans pages")
	half := filepath.Join(dir, "half.db")
	require.NoError(t, os.WriteFile(half, data, 0o600))
	require.NoError(t, os.Truncate(half, int64(len(data)/2)))
	middle := filepath.Join(dir, "middle.db")
	garbled := slices.Clone(data)
	pages := len(data) / page
	_, _ = rand.Read(garbled[pages/3*page : 2*pages/3*page])
	require.NoError(t, os.WriteFile(middle, garbled, 0o600))
	garbage := filepath.Join(dir, "garbage.db")
	noise := make([]byte, len(data))
	_, _ = rand.Read(noise)
	require.NoError(t, os.WriteFile(garbage, noise, 0o600))

	for _, damaged := range []string{half, middle, garbage} {
		before := dirState(t, dir)
		out, err := exec.Command(hyperdhcpd, "leases", "check", "--lease-database", damaged).CombinedOutput()
		assert.Equal(t, 1, exitCode(t, err), "check of %s: %s", damaged, out)
		assert.Contains(t, string(out), damaged+": damaged: ")
		assert.Contains(t, string(out), "hyperdhcpd: lease database "+damaged+" is damaged and hyperdhcpd does not serve from it")
		if damaged != garbage {
			assert.Contains(t, string(out), "hyperdhcpd leases export --lease-database "+damaged)
			assert.Contains(t, string(out), "hyperdhcpd leases import --lease-database "+damaged)
		}
		assert.Equal(t, before, dirState(t, dir), "check leaves the files alone")
	}

	cmd := exec.Command(hyperdhcpd, "leases", "export", "--lease-database", garbage)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err = cmd.Output()
	assert.Equal(t, 1, exitCode(t, err), "nothing can be read from garbage: %s", stderr.String())
	assert.Empty(t, out)
	assert.Contains(t, stderr.String(), "file is not a database")

	for _, damaged := range []string{half, middle} {
		before := dirState(t, dir)
		exported := exportLeases(t, damaged)
		assert.Equal(t, before, dirState(t, dir), "export leaves the files alone")
		require.NotEmpty(t, exported, "leases are read from %s", damaged)
		assert.Less(t, len(exported), len(original))
		for ip, r := range exported {
			assert.Equal(t, original[ip], r, "%s exports lease %s as it was written", damaged, ip)
		}

		exportFile := damaged + ".json"
		out, err := exec.Command("sh", "-c", `"$0" leases export --lease-database "$1" > "$2"`, hyperdhcpd, damaged, exportFile).CombinedOutput()
		require.NoError(t, err, "%s", out)
		assert.Contains(t, string(out), "not exported: ", "what could not be read is reported on stderr")
		recovered := filepath.Join(t.TempDir(), "leases.db")
		out, err = exec.Command(hyperdhcpd, "leases", "import", "--lease-database", recovered, exportFile).CombinedOutput()
		require.NoError(t, err, "%s", out)
		assert.Equal(t, fmt.Sprintf("imported %d leases into %s\n", len(exported), recovered), string(out))
		out, err = exec.Command(hyperdhcpd, "leases", "check", "--lease-database", recovered).CombinedOutput()
		require.NoError(t, err, "%s", out)
		assert.Equal(t, fmt.Sprintf("%s: ok, %d leases\n", recovered, len(exported)), string(out))
		out, err = exec.Command(hyperdhcpd, "leases", "import", "--lease-database", recovered, exportFile).CombinedOutput()
		assert.Equal(t, 1, exitCode(t, err), "a second import: %s", out)
		assert.Contains(t, string(out), fmt.Sprintf("lease database %s already holds %d leases", recovered, len(exported)))
	}

	// hyperdhcpd refuses to serve from a damaged file, before it binds.
	for _, damaged := range []string{garbage, middle, half} {
		b.edit(func(c *config.Config) { c.LeaseDatabase = damaged })
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", b.serverNS, hyperdhcpd, "serve", "--config", b.config, "--metrics-address", "0").CombinedOutput()
		timedOut := ctx.Err()
		cancel()
		require.NoError(t, timedOut, "serve on %s did not exit: %s", damaged, out)
		assert.Equal(t, 1, exitCode(t, err), "serve on %s: %s", damaged, out)
		assert.Contains(t, string(out), "lease database "+damaged+" is damaged")
		assert.NotContains(t, string(out), "serving DHCP")
	}

	// The operator's recovery: the damaged database moved aside, its export
	// imported at the configured path, and hyperdhcpd serves from it.
	aside := filepath.Join(dir, "middle.db.damaged")
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if _, err := os.Stat(middle + suffix); err == nil {
			require.NoError(t, os.Rename(middle+suffix, aside+suffix))
		}
	}
	out, err = exec.Command("sh", "-c", `"$0" leases export --lease-database "$1" | "$0" leases import --lease-database "$2" -`, hyperdhcpd, aside, middle).CombinedOutput()
	require.NoError(t, err, "%s", out)
	b.edit(func(c *config.Config) { c.LeaseDatabase = middle })
	b.startServer()
	out, err = exec.Command(hyperdhcpd, "leases", "list", "--lease-database", middle).CombinedOutput()
	require.NoError(t, err, "list while serving: %s", out)
	assert.Contains(t, string(out), "old-vm-0")
	out, err = exec.Command(hyperdhcpd, "leases", "check", "--lease-database", middle).CombinedOutput()
	require.NoError(t, err, "check while serving: %s", out)
	assert.Contains(t, string(out), middle+": ok, ")
	out, err = exec.Command(hyperdhcpd, "leases", "import", "--lease-database", middle, middle+".json").CombinedOutput()
	assert.Equal(t, 1, exitCode(t, err), "import while serving: %s", out)
	assert.Contains(t, string(out), "is in use by another hyperdhcpd")
}

// exportLeases runs `leases export` and returns its records by IP; it
// fails the test unless the export succeeds.
func exportLeases(t *testing.T, path string) map[string]map[string]any {
	t.Helper()
	cmd := exec.Command(hyperdhcpd, "leases", "export", "--lease-database", path)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "export %s: %s", path, stderr.String())
	var records []map[string]any
	require.NoError(t, json.Unmarshal(out, &records), "%s", out)
	byIP := map[string]map[string]any{}
	for _, r := range records {
		ip, _ := r["ip"].(string)
		require.NotContains(t, byIP, ip, "exported twice")
		byIP[ip] = r
	}
	return byIP
}

// exitCode is a command's exit code, or -1 when it did not exit.
func exitCode(t *testing.T, err error) int {
	t.Helper()
	if err == nil {
		return 0
	}
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit)
	return exit.ExitCode()
}

// dirState is each file in dir with a hash of its content.
func dirState(t *testing.T, dir string) map[string][32]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	state := map[string][32]byte{}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		require.NoError(t, err)
		state[e.Name()] = sha256.Sum256(data)
	}
	return state
}
