package leasedb

import (
	"context"
	"crypto/rand"
	"database/sql"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// writeLeases writes n bound leases to a new database at path and returns
// them by address.
func writeLeases(t *testing.T, path string, n int) map[netip.Addr]Lease {
	t.Helper()
	store, err := OpenSQLite(path)
	require.NoError(t, err)
	want := map[netip.Addr]Lease{}
	var changes []Change
	expires := time.Now().Add(time.Hour).Truncate(time.Second)
	for i := range n {
		mac := net.HardwareAddr{2, 0, 0x5e, 0, byte(i >> 8), byte(i)}
		l := Lease{
			IP:       netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}),
			ClientID: "hw:" + mac.String(),
			MAC:      mac,
			Hostname: fmt.Sprintf("vm-%04d", i),
			State:    StateBound,
			Expires:  expires.Add(time.Duration(i) * time.Second),
		}
		want[l.IP] = l
		changes = append(changes, Change{Lease: l})
	}
	require.NoError(t, store.Apply(context.Background(), changes))
	require.NoError(t, store.Close())
	return want
}

// dirNames lists the files in dir.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// readAll opens path read-only and salvages it.
func readAll(t *testing.T, path string) (checkErr error, leases []Lease, skipped []string, err error) {
	t.Helper()
	store, err := OpenSQLiteReadOnly(path)
	require.NoError(t, err)
	defer store.Close()
	checkErr = store.Check(context.Background())
	leases, skipped, err = store.Salvage(context.Background())
	return checkErr, leases, skipped, err
}

// assertSame checks that each salvaged lease is the one written.
func assertSame(t *testing.T, want map[netip.Addr]Lease, got []Lease) {
	t.Helper()
	seen := map[netip.Addr]bool{}
	for _, l := range got {
		w, ok := want[l.IP]
		require.True(t, ok, "salvaged a lease that was never written: %v", l)
		assert.False(t, seen[l.IP], "salvaged %s twice", l.IP)
		seen[l.IP] = true
		assert.Equal(t, w.MAC, l.MAC)
		assert.Equal(t, w.ClientID, l.ClientID)
		assert.Equal(t, w.Hostname, l.Hostname)
		assert.Equal(t, w.State, l.State)
		assert.Equal(t, w.Expires.Unix(), l.Expires.Unix())
	}
}

func TestReadOnlyGoodDatabase(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "leases#1?.db") // URI characters name this file, not another
	want := writeLeases(t, path, 300)
	before, err := os.ReadFile(path)
	require.NoError(t, err)
	files := dirNames(t, dir)

	checkErr, leases, skipped, err := readAll(t, path)
	require.NoError(t, err)
	require.NoError(t, checkErr)
	assert.Empty(t, skipped)
	assert.Len(t, leases, 300)
	assertSame(t, want, leases)
	assert.True(t, slices.IsSortedFunc(leases, func(a, b Lease) int { return cmpText(a.IP.String(), b.IP.String()) }))

	after, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, before, after, "reading changes nothing")
	assert.Equal(t, files, dirNames(t, dir), "reading leaves no file behind")
}

func cmpText(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func TestReadOnlyReadsALiveDatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	writeLeases(t, path, 10)
	live, err := OpenSQLite(path)
	require.NoError(t, err)
	defer live.Close()
	extra := Lease{IP: netip.MustParseAddr("10.0.9.9"), State: StateDeclined, Expires: time.Now().Add(time.Hour)}
	require.NoError(t, live.Apply(context.Background(), []Change{{Lease: extra}}))

	checkErr, leases, skipped, err := readAll(t, path)
	require.NoError(t, err)
	require.NoError(t, checkErr)
	assert.Empty(t, skipped)
	assert.Len(t, leases, 11, "what the server committed to its WAL is read too")
	require.NoError(t, live.Apply(context.Background(), []Change{{Lease: extra, Delete: true}}), "the server keeps writing")
}

func TestReadOnlyMissingFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "leases.db")
	_, err := OpenSQLiteReadOnly(path)
	require.Error(t, err)
	assert.Contains(t, err.Error(), path)
	assert.Empty(t, dirNames(t, dir), "nothing is created")
}

func TestReadOnlyEmptyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	require.NoError(t, os.WriteFile(path, nil, 0o600))
	checkErr, leases, skipped, err := readAll(t, path)
	require.NoError(t, err)
	require.NoError(t, checkErr)
	assert.Empty(t, leases)
	assert.Empty(t, skipped)
}

func TestReadOnlySkipsRowsThatDoNotParse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	want := writeLeases(t, path, 3)
	raw, err := sql.Open("sqlite3", "file:"+path)
	require.NoError(t, err)
	for _, row := range []string{
		`('not-an-ip', '', '', '', 'bound', 0, 0)`,
		`('10.0.5.1', '', 'zz:zz', '', 'bound', 0, 0)`,
		`('10.0.5.2', '', '', '', 'lost', 0, 0)`,
		`('10.0.5.3', '', '', '', 'free', 'soon', 0)`,
		`('10.0.5.4', '', '', '', 'free', 1.5, 0)`,
	} {
		_, err := raw.Exec(`INSERT INTO leases (ip, client_id, mac, hostname, state, expires, updated) VALUES ` + row)
		require.NoError(t, err)
	}
	require.NoError(t, raw.Close())

	checkErr, leases, skipped, err := readAll(t, path)
	require.NoError(t, err)
	assert.NoError(t, checkErr, "the file is sound; only its rows are wrong")
	assert.Len(t, leases, 3)
	assertSame(t, want, leases)
	require.Len(t, skipped, 5)
	assert.Contains(t, skipped[0], `row "10.0.5.1": bad MAC "zz:zz"`)
	assert.Contains(t, skipped[1], `row "10.0.5.2": unknown lease state "lost"`)
	assert.Contains(t, skipped[2], `row "10.0.5.3": expires "soon" is not a Unix time`)
	assert.Contains(t, skipped[3], `row "10.0.5.4": expires "1.5" is not a Unix time`)
	assert.Contains(t, skipped[4], `row "not-an-ip": bad address "not-an-ip"`)

	// The server refuses such a database rather than forget a lease.
	store, err := OpenSQLite(path)
	require.NoError(t, err)
	defer store.Close()
	_, err = store.Load(context.Background())
	assert.Error(t, err)
}

func TestReadOnlyTruncatedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	want := writeLeases(t, path, 400)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.NoError(t, os.Truncate(path, fi.Size()/2))

	checkErr, leases, skipped, err := readAll(t, path)
	require.NoError(t, err)
	require.Error(t, checkErr)
	assert.Contains(t, checkErr.Error(), path+" is damaged")
	assert.Contains(t, checkErr.Error(), "the file is cut short")
	t.Logf("check: %v; salvaged %d; skipped %q", checkErr, len(leases), skipped)
	assert.NotEmpty(t, leases, "the first half of the file still has leases")
	assert.Less(t, len(leases), 400)
	assertSame(t, want, leases)
	require.NotEmpty(t, skipped)
	assert.Contains(t, skipped[len(skipped)-1], "could not be read")

	_, err = OpenSQLite(path)
	assert.ErrorContains(t, err, "is damaged", "the server refuses it")
}

func TestReadOnlyGarbageInTheMiddle(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	want := writeLeases(t, path, 400)
	overwriteMiddle(t, path)

	checkErr, leases, skipped, err := readAll(t, path)
	require.NoError(t, err)
	require.Error(t, checkErr)
	t.Logf("check: %v; salvaged %d; skipped %q", checkErr, len(leases), skipped)
	assert.NotEmpty(t, leases)
	assert.Less(t, len(leases), 400)
	assertSame(t, want, leases)
	require.NotEmpty(t, skipped)
	// Leases on both sides of the damage are read: the scan from the end
	// gets past it.
	last := netip.MustParseAddr("10.0.1.99") // the last key: addresses are compared as text
	assert.True(t, slices.ContainsFunc(leases, func(l Lease) bool { return l.IP == last }), "the last lease is salvaged")
	assert.True(t, slices.ContainsFunc(leases, func(l Lease) bool { return l.IP == netip.MustParseAddr("10.0.0.0") }), "the first lease is salvaged")
}

// overwriteMiddle overwrites the pages in the middle third of a database
// with random bytes.
func overwriteMiddle(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	const page = 4096
	pages := len(data) / page
	require.GreaterOrEqual(t, pages, 6, "the database is too small to damage its middle")
	from, to := pages/3, 2*pages/3
	_, _ = rand.Read(data[from*page : to*page])
	require.NoError(t, os.WriteFile(path, data, 0o600))
}

func TestReadOnlyGarbageFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	garbage := make([]byte, 64<<10)
	_, _ = rand.Read(garbage)
	require.NoError(t, os.WriteFile(path, garbage, 0o600))

	checkErr, leases, skipped, err := readAll(t, path)
	require.Error(t, checkErr)
	assert.Contains(t, checkErr.Error(), path)
	require.Error(t, err, "nothing can be read")
	assert.Contains(t, err.Error(), path)
	assert.Contains(t, err.Error(), "file is not a database")
	assert.Empty(t, leases)
	assert.Empty(t, skipped)
}

func TestReadOnlyOtherDatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "other.db")
	raw, err := sql.Open("sqlite3", "file:"+path)
	require.NoError(t, err)
	_, err = raw.Exec(`CREATE TABLE things (x)`)
	require.NoError(t, err)
	require.NoError(t, raw.Close())
	_, _, _, err = readAll(t, path)
	assert.ErrorContains(t, err, "not a hyperdhcpd lease database")
}

func TestParseLeaseForImport(t *testing.T) {
	for _, s := range []State{StateOffered, StateBound, StateDeclined, StateFree} {
		got, err := ParseState(s.String())
		require.NoError(t, err)
		assert.Equal(t, s, got)
	}
	_, err := ParseState("expired")
	assert.Error(t, err)
	l, err := ParseLease("192.168.50.100", "hw:02:00:5e:00:00:01", "02:00:5e:00:00:01", "vm", "bound", time.Unix(1e9, 0))
	require.NoError(t, err)
	assert.Equal(t, "02:00:5e:00:00:01", l.MAC.String())
	l, err = ParseLease("192.168.50.101", "", "", "", "free", time.Unix(1e9, 0))
	require.NoError(t, err)
	assert.Nil(t, l.MAC, "a lease without a MAC keeps none")
	_, err = ParseLease("192.168.50.300", "", "", "", "free", time.Unix(1e9, 0))
	assert.Error(t, err)
}
