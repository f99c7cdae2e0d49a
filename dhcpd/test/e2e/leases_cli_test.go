package e2e

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
