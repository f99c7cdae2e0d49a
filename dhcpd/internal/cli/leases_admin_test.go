package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

// run runs hyperdhcpd with args and stdin, and returns stdout, stderr and
// the error Main would print.
func run(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	t.Setenv("HYPERDHCPD_LEASE_DATABASE", "")
	var out, errOut bytes.Buffer
	app := App()
	app.Writer, app.ErrWriter, app.Reader = &out, &errOut, strings.NewReader(stdin)
	err = app.RunContext(context.Background(), append([]string{"hyperdhcpd"}, args...))
	return out.String(), errOut.String(), err
}

// writeDatabase writes n leases to a new database at path.
func writeDatabase(t *testing.T, path string, n int) {
	t.Helper()
	store, err := leasedb.OpenSQLite(path)
	require.NoError(t, err)
	var changes []leasedb.Change
	for i := range n {
		mac := net.HardwareAddr{2, 0, 0x5e, 0x50, byte(i >> 8), byte(i)}
		changes = append(changes, leasedb.Change{Lease: leasedb.Lease{
			IP: netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), ClientID: "hw:" + mac.String(), MAC: mac,
			Hostname: fmt.Sprintf("vm-%d", i), State: leasedb.StateBound, Expires: time.Now().Add(time.Hour),
		}})
	}
	changes = append(changes, leasedb.Change{Lease: leasedb.Lease{IP: netip.MustParseAddr("10.2.0.1"), State: leasedb.StateFree, Expires: time.Unix(1e9, 0)}})
	require.NoError(t, store.Apply(context.Background(), changes))
	require.NoError(t, store.Close())
}

func files(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestCheckExportImport(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "leases.db")
	writeDatabase(t, path, 300)
	before := files(t, dir)

	out, _, err := run(t, "", "leases", "check", "--lease-database", path)
	require.NoError(t, err)
	assert.Equal(t, path+": ok, 301 leases\n", out)

	export, stderr, err := run(t, "", "leases", "export", "--lease-database", path)
	require.NoError(t, err)
	assert.Contains(t, stderr, "exported 301 leases from "+path)
	var records []map[string]any
	require.NoError(t, json.Unmarshal([]byte(export), &records))
	require.Len(t, records, 301)
	assert.Equal(t, map[string]any{"ip": "10.2.0.1", "mac": "", "clientID": "", "state": "free", "expires": "2001-09-09T01:46:40Z"}, records[300],
		"the stored state, not how list shows it")
	assert.Equal(t, before, files(t, dir), "check and export create no file beside the database")

	_, _, err = run(t, "", "leases", "list", "--lease-database", path)
	require.NoError(t, err)
	assert.Equal(t, before, files(t, dir), "nor does list")

	newPath := filepath.Join(t.TempDir(), "new.db")
	out, _, err = run(t, export, "leases", "import", "--lease-database", newPath, "-")
	require.NoError(t, err)
	assert.Equal(t, "imported 301 leases into "+newPath+"\n", out)
	out, _, err = run(t, "", "leases", "check", "--lease-database", newPath)
	require.NoError(t, err)
	assert.Equal(t, newPath+": ok, 301 leases\n", out)
	again, _, err := run(t, "", "leases", "export", "--lease-database", newPath)
	require.NoError(t, err)
	assert.Equal(t, export, again, "the import holds what was exported")

	_, _, err = run(t, export, "leases", "import", "--lease-database", newPath, "-")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "lease database "+newPath+" already holds 301 leases")
}

func TestImportIntoAnEmptyDatabaseFromAFile(t *testing.T) {
	dir := t.TempDir()
	exportPath := filepath.Join(dir, "export.json")
	require.NoError(t, os.WriteFile(exportPath, []byte(`[{"ip": "192.168.50.100", "mac": "02:00:5e:00:00:01", "clientID": "c", "hostname": "vm", "state": "declined", "expires": "2030-01-02T03:04:05Z"}]`), 0o600))
	path := filepath.Join(dir, "leases.db")
	store, err := leasedb.OpenSQLite(path) // a server started on it once
	require.NoError(t, err)
	require.NoError(t, store.Close())
	out, _, err := run(t, "", "leases", "import", "--lease-database", path, exportPath)
	require.NoError(t, err)
	assert.Equal(t, "imported 1 leases into "+path+"\n", out)
	out, _, err = run(t, "", "leases", "show", "-o", "json", "--lease-database", path, "192.168.50.100")
	require.NoError(t, err)
	assert.Contains(t, out, `"state": "declined"`)
	assert.Contains(t, out, `"expires": "2030-01-02T03:04:05Z"`)
}

func TestImportRefusesInvalidRecords(t *testing.T) {
	for _, tc := range []struct{ name, input, message string }{
		{"bad ip", `[{"ip": "192.168.50.300", "state": "bound", "expires": "2030-01-01T00:00:00Z"}]`, `record 1 (ip "192.168.50.300"): bad address`},
		{"bad mac", `[{"ip": "192.168.50.1", "mac": "zz", "state": "bound", "expires": "2030-01-01T00:00:00Z"}]`, `record 1 (ip "192.168.50.1"): bad MAC "zz"`},
		{"bad state", `[{"ip": "192.168.50.1", "state": "lost", "expires": "2030-01-01T00:00:00Z"}]`, `unknown lease state "lost"`},
		{"list output", `[{"ip": "192.168.50.1", "state": "expired", "expires": "2020-01-01T00:00:00Z"}]`, `state "expired" is how "leases list" shows`},
		{"no expiry", `[{"ip": "192.168.50.1", "state": "free"}]`, "no expires"},
		{"twice", `[{"ip": "192.168.50.1", "state": "free", "expires": "2030-01-01T00:00:00Z"}, {"ip": "192.168.50.1", "state": "bound", "expires": "2030-01-01T00:00:00Z"}]`, "record 2 (ip \"192.168.50.1\"): the address is also in record 1"},
		{"unknown field", `[{"ip": "192.168.50.1", "client_id": "x", "state": "free", "expires": "2030-01-01T00:00:00Z"}]`, `unknown field "client_id"`},
		{"not an array", `{"ip": "192.168.50.1"}`, "want the JSON array"},
		{"null", `null`, "not a JSON array of leases"},
		{"trailing", `[] []`, "more follows"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "leases.db")
			_, _, err := run(t, tc.input, "leases", "import", "--lease-database", path, "-")
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.message)
			assert.NoFileExists(t, path, "nothing is created")
		})
	}
}

func TestImportRefusesWhileServing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	unlock, err := leasedb.LockDatabase(path)
	require.NoError(t, err)
	defer unlock()
	_, _, err = run(t, "[]", "leases", "import", "--lease-database", path, "-")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "is in use by another hyperdhcpd")
}

func TestImportRefusesALeftoverWAL(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	require.NoError(t, os.WriteFile(path+"-wal", []byte("old"), 0o600))
	_, _, err := run(t, "[]", "leases", "import", "--lease-database", path, "-")
	require.Error(t, err)
	assert.Contains(t, err.Error(), path+"-wal is left from a database")
}

func TestCheckAndExportADamagedDatabase(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "leases.db")
	writeDatabase(t, path, 400)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.NoError(t, os.Truncate(path, fi.Size()/2))

	out, _, err := run(t, "", "leases", "check", "--lease-database", path)
	require.Error(t, err)
	assert.Contains(t, out, path+": damaged: ")
	assert.Contains(t, out, "the file is cut short")
	assert.Regexp(t, `: \d+ leases can be read; not read:\n  `, out)
	assert.Contains(t, err.Error(), "lease database "+path+" is damaged and hyperdhcpd does not serve from it")
	assert.Contains(t, err.Error(), "hyperdhcpd leases export --lease-database "+path)
	assert.Contains(t, err.Error(), "hyperdhcpd leases import --lease-database "+path)

	for _, cmd := range []string{"list", "show"} {
		_, _, err = run(t, "", "leases", cmd, "--lease-database", path, "10.1.0.1")
		if cmd == "list" {
			_, _, err = run(t, "", "leases", cmd, "--lease-database", path)
		}
		require.Error(t, err)
		assert.Contains(t, err.Error(), "is damaged")
		assert.Contains(t, err.Error(), "hyperdhcpd leases check --lease-database "+path)
	}

	export, stderr, err := run(t, "", "leases", "export", "--lease-database", path)
	require.NoError(t, err, "part of it can be read")
	assert.Contains(t, stderr, "not exported: ")
	var records []map[string]any
	require.NoError(t, json.Unmarshal([]byte(export), &records))
	assert.NotEmpty(t, records)
	assert.Less(t, len(records), 401)

	newPath := filepath.Join(dir, "new.db")
	out, _, err = run(t, export, "leases", "import", "--lease-database", newPath, "-")
	require.NoError(t, err)
	assert.Equal(t, fmt.Sprintf("imported %d leases into %s\n", len(records), newPath), out)
	out, _, err = run(t, "", "leases", "check", "--lease-database", newPath)
	require.NoError(t, err)
	assert.Equal(t, fmt.Sprintf("%s: ok, %d leases\n", newPath, len(records)), out)

	_, _, err = run(t, export, "leases", "import", "--lease-database", path, "-")
	require.Error(t, err, "never into the damaged database")
	assert.Contains(t, err.Error(), "is damaged")
}

func TestCheckAndExportGarbage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	require.NoError(t, os.WriteFile(path, bytes.Repeat([]byte("garbage!"), 4096), 0o600))
	out, _, err := run(t, "", "leases", "check", "--lease-database", path)
	require.Error(t, err)
	assert.Contains(t, out, path+": damaged: file is not a database")
	assert.Contains(t, err.Error(), "nothing can be read from it")
	export, _, err := run(t, "", "leases", "export", "--lease-database", path)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "nothing can be exported")
	assert.Empty(t, export)
}

func TestCheckMissingDatabase(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "leases.db")
	_, _, err := run(t, "", "leases", "check", "--lease-database", path)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "lease database "+path+" does not exist")
	assert.Empty(t, files(t, dir))
}
