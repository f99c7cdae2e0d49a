package ha

import (
	"context"
	"crypto/x509"
	"log/slog"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"

	"github.com/hyperdhcp/hyperdhcp/dhcpd/internal/testenv"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

// pairCerts writes a CA and one certificate it signed, as the operator
// gives the pair; foreign is a certificate of another CA.
func pairCerts(t *testing.T) (files, foreign TLSFiles) {
	t.Helper()
	dir := t.TempDir()
	pair, err := testenv.WritePairCerts(dir, "pair")
	require.NoError(t, err)
	other, err := testenv.WritePairCerts(dir, "foreign")
	require.NoError(t, err)
	return TLSFiles(pair), TLSFiles(other)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

type replicaUnderTest struct {
	*Replica
	election *Election
	store    *leasedb.SQLiteStore
	addr     string
	stop     context.CancelFunc
}

func lease(ip string, client byte) leasedb.Change {
	mac := net.HardwareAddr{2, 0, 0x5e, 0, 0, client}
	return leasedb.Change{Lease: leasedb.Lease{IP: netip.MustParseAddr(ip), ClientID: "hw:" + mac.String(), MAC: mac,
		State: leasedb.StateBound, Expires: time.Now().Add(time.Hour).Truncate(time.Second)}}
}

func stored(t *testing.T, s leasedb.Store) map[string]string {
	t.Helper()
	rows, err := s.Load(context.Background())
	require.NoError(t, err)
	out := map[string]string{}
	for _, r := range rows {
		out[r.IP.String()] = r.ClientID
	}
	return out
}

// TestPairFailsOverWithoutLosingAnAcknowledgedLease runs two replicas with
// real SQLite databases, mutual TLS and a real API server's Lease: the
// standby catches up and stands; every batch the active applied is in the
// standby's database; when the active stops, the standby takes the Lease
// within a Lease duration and a retry; the former active can no longer
// apply anything, and the new active refuses its old epoch.
func TestPairFailsOverWithoutLosingAnAcknowledgedLease(t *testing.T) {
	env, cfg, err := testenv.Start()
	require.NoError(t, err)
	t.Cleanup(func() { _ = env.Stop() })
	files, foreign := pairCerts(t)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	addrs := []string{freeAddr(t), freeAddr(t)}

	start := func(i int) *replicaUnderTest {
		store, err := leasedb.OpenSQLite(filepath.Join(t.TempDir(), "leases.db"))
		require.NoError(t, err)
		t.Cleanup(func() { store.Close() })
		identity := []string{"lab-0", "lab-1"}[i]
		election, err := NewElection(cfg, "default", "hyperdhcpd-lab", identity, log.With("replica", identity))
		require.NoError(t, err)
		replica, err := NewReplica(store, election, "https://"+addrs[1-i], files, log.With("replica", identity))
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		require.NoError(t, replica.Listen(ctx, addrs[i], files))
		election.OnStartedLeading = func(epoch int64, inSync bool) { replica.Activate(epoch, inSync) }
		go election.Run(ctx, func() bool {
			if replica.InSync() {
				return true
			}
			ok, _ := election.MayStand(ctx, i == 0)
			return ok
		})
		go replica.Heartbeat(ctx)
		return &replicaUnderTest{Replica: replica, election: election, store: store, addr: addrs[i], stop: cancel}
	}
	a := start(0)
	require.Eventually(t, func() bool { return a.election.Fresh(time.Now()) }, 15*time.Second, 50*time.Millisecond, "the first replica takes the new Lease")
	b := start(1)
	require.Eventually(t, b.InSync, 10*time.Second, 50*time.Millisecond, "the standby catches up from the active")
	require.Eventually(t, a.InSync, 5*time.Second, 50*time.Millisecond, "the active's next heartbeat finds it in sync")
	assert.False(t, b.election.Fresh(time.Now()))

	ctx := context.Background()
	require.NoError(t, a.Apply(ctx, []leasedb.Change{lease("192.168.50.100", 1), lease("192.168.50.101", 2)}))
	require.NoError(t, a.Apply(ctx, []leasedb.Change{lease("192.168.50.102", 3)}))
	assert.True(t, a.Replicating())
	assert.Equal(t, stored(t, a.store), stored(t, b.store), "an applied batch is in both databases")
	assert.Len(t, stored(t, b.store), 3)

	// A certificate of another CA is refused by both ends: a stranger does
	// not trust the pair's certificate, and the pair does not take the
	// stranger's even from a client that trusts the pair's CA.
	stranger, err := NewReplica(a.store, a.election, "https://"+b.addr, foreign, log)
	require.NoError(t, err)
	var unknownAuthority x509.UnknownAuthorityError
	assert.ErrorAs(t, stranger.send(ctx, batch{Epoch: a.election.Epoch(), Seq: 3}), &unknownAuthority)
	impostor, err := NewReplica(a.store, a.election, "https://"+b.addr, TLSFiles{CA: files.CA, Cert: foreign.Cert, Key: foreign.Key}, log)
	require.NoError(t, err)
	err = impostor.send(ctx, batch{Epoch: a.election.Epoch(), Seq: 3})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "bad certificate", "the standby's TLS refuses a certificate of another CA")

	// The active stops (as if killed): its Lease runs out, the standby takes it.
	oldEpoch := a.election.Epoch()
	stopped := time.Now()
	a.stop()
	require.Eventually(t, func() bool { return b.election.Fresh(time.Now()) && b.activated.Load() == b.election.Epoch() },
		LeaseDuration+3*RetryPeriod+2*time.Second, 20*time.Millisecond, "the standby takes over (and is activated in its epoch)")
	t.Logf("takeover %s after the active stopped", time.Since(stopped).Round(time.Millisecond))
	assert.Greater(t, b.election.Epoch(), oldEpoch)
	assert.ErrorIs(t, a.Apply(ctx, []leasedb.Change{lease("192.168.50.103", 4)}), ErrNotActive, "a former active acknowledges nothing")

	// The former active's epoch is fenced off by the new active.
	err = a.send(ctx, batch{Epoch: oldEpoch, Seq: 4, Changes: []leasedb.Change{lease("192.168.50.104", 5)}})
	assert.ErrorIs(t, err, ErrFenced)
	assert.NotContains(t, stored(t, b.store), "192.168.50.104")

	// Alone (the other replica is gone), the new active marks the Lease
	// before its first write, and writes, saying it wrote without the
	// standby.
	assert.False(t, b.Replicating())
	assert.ErrorIs(t, b.Apply(ctx, []leasedb.Change{lease("192.168.50.105", 6)}), leasedb.ErrUnreplicated)
	assert.Contains(t, stored(t, b.store), "192.168.50.105")
	leases, err := coordinationv1client.NewForConfig(cfg)
	require.NoError(t, err)
	l, err := leases.Leases("default").Get(ctx, "hyperdhcpd-lab", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, "false", l.Labels[InSyncLabel], "the Lease says the standby is not in sync")
	assert.EqualValues(t, b.election.Epoch(), *l.Spec.LeaseTransitions, "the epoch is the Lease's transition count")
	assert.Equal(t, "lab-1", *l.Spec.HolderIdentity)

	// Stopped, the active gives the Lease up: the record ends a second
	// later and still names it.
	b.stop()
	require.Eventually(t, func() bool { return !b.election.leading.Load() }, 5*time.Second, 20*time.Millisecond)
	released, err := b.election.Release(ctx)
	require.NoError(t, err)
	assert.True(t, released)
	l, err = leases.Leases("default").Get(ctx, "hyperdhcpd-lab", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, "lab-1", *l.Spec.HolderIdentity)
	assert.EqualValues(t, 1, *l.Spec.LeaseDurationSeconds)
	assert.Equal(t, "false", l.Labels[InSyncLabel], "the label stays")
}

// TestStandbyRefusesAnOlderEpoch: a standby that has seen epoch 5 refuses
// a batch of epoch 4 (409), which the sender takes as fenced; it writes
// nothing of it.
func TestStandbyRefusesAnOlderEpoch(t *testing.T) {
	store, err := leasedb.OpenSQLite(filepath.Join(t.TempDir(), "leases.db"))
	require.NoError(t, err)
	defer store.Close()
	standby := &Replica{local: store, election: &Election{}, log: slog.Default(), epoch: 5, stream: 1, seq: 7, synced: true}
	peer := httptest.NewServer(standby)
	defer peer.Close()
	former := &Replica{election: &Election{}, peerURL: peer.URL, client: peer.Client(), log: slog.Default()}
	err = former.send(context.Background(), batch{Epoch: 4, Stream: 9, Seq: 1, Changes: []leasedb.Change{lease("192.168.50.100", 1)}})
	assert.ErrorIs(t, err, ErrFenced)
	assert.Empty(t, stored(t, store))
}
