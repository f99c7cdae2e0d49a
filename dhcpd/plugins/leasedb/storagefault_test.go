package leasedb

import (
	"context"
	"database/sql"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/mattn/go-sqlite3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestFullDatabaseReportsOnlyTheCause fills a real SQLite database (its
// page limit stands in for a full disk) until a write fails: the error
// names the file and the cause, without the second error a rollback of a
// transaction SQLite already ended would add; the database still holds
// every lease committed before, and takes writes again once it has room.
func TestFullDatabaseReportsOnlyTheCause(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	store, err := OpenSQLite(path)
	require.NoError(t, err)
	defer store.Close()
	var pages int
	require.NoError(t, store.db.QueryRow("PRAGMA page_count").Scan(&pages))
	_, err = store.db.Exec("PRAGMA max_page_count = " + strconv.Itoa(pages+2))
	require.NoError(t, err)

	committed := 0
	var failure error
	for i := 0; i < 10000 && failure == nil; i++ {
		ip := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		lease := Lease{IP: ip, ClientID: "client-with-a-long-identifier-" + ip.String(), MAC: net.HardwareAddr{2, 0, 0, 0, byte(i >> 8), byte(i)},
			Hostname: "a-host-name-that-takes-room-" + ip.String(), State: StateBound, Expires: time.Now().Add(time.Hour)}
		if failure = store.Apply(context.Background(), []Change{{Lease: lease}}); failure == nil {
			committed++
		}
	}
	require.Error(t, failure, "the page limit was reached")
	assert.Contains(t, failure.Error(), path, "the error names the database")
	assert.Contains(t, failure.Error(), "full")
	assert.NotContains(t, failure.Error(), "already been committed or rolled back")
	assert.NotContains(t, failure.Error(), "no transaction is active")

	leases, err := store.Load(context.Background())
	require.NoError(t, err)
	assert.Len(t, leases, committed, "every committed lease is still there, the failed one is not")

	_, err = store.db.Exec("PRAGMA max_page_count = 1000000")
	require.NoError(t, err)
	require.NoError(t, store.Apply(context.Background(), []Change{{Lease: Lease{IP: netip.MustParseAddr("10.1.0.1"), State: StateBound, Expires: time.Now()}}}),
		"writes succeed again once there is room")
}

// failingCommits is an SQLite driver whose COMMIT fails while its switch
// is on (a commit hook turns it into a rollback), as a full disk makes the
// WAL append at COMMIT fail.
var failingCommits = func() *atomic.Bool {
	fail := &atomic.Bool{}
	sql.Register("sqlite3-failing-commits", &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error {
		c.RegisterCommitHook(func() int {
			if fail.Load() {
				return 1
			}
			return 0
		})
		return configureConnection(c)
	}})
	return fail
}()

// TestFailedCommitIsNotRolledBackTwice: a transaction whose COMMIT fails
// has ended; the error is the commit's, not joined with the "transaction
// has already been committed or rolled back" of a second rollback, and
// the next transaction works.
func TestFailedCommitIsNotRolledBackTwice(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	store, err := openSQLite("sqlite3-failing-commits", path)
	require.NoError(t, err)
	defer store.Close()
	lease := Lease{IP: netip.MustParseAddr("10.0.0.1"), ClientID: "c", State: StateBound, Expires: time.Now().Add(time.Hour)}

	failingCommits.Store(true)
	err = store.Apply(context.Background(), []Change{{Lease: lease}})
	failingCommits.Store(false)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "commit leases to "+path)
	assert.NotContains(t, err.Error(), "already been committed or rolled back")
	assert.NotContains(t, err.Error(), "no transaction is active")
	leases, err := store.Load(context.Background())
	require.NoError(t, err)
	assert.Empty(t, leases, "the failed commit wrote nothing")

	require.NoError(t, store.Apply(context.Background(), []Change{{Lease: lease}}))
	leases, err = store.Load(context.Background())
	require.NoError(t, err)
	assert.Len(t, leases, 1)
}

// storageEvents records what a LeaseDB reports about its storage.
type storageEvents struct {
	nopObserver
	mu        sync.Mutex
	available []bool
	faults    []error
}

func (s *storageEvents) StorageAvailable(available bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.available = append(s.available, available)
}

func (s *storageEvents) fault(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, err)
}

func (s *storageEvents) seen() ([]bool, []error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]bool(nil), s.available...), append([]error(nil), s.faults...)
}

// TestStorageFaultIsOneEpisode: many REQUESTs against a failing store make
// one fault report (metric, callback, readiness error), not one per packet
// or per retry, and one recovery report when writes succeed again.
func TestStorageFaultIsOneEpisode(t *testing.T) {
	events := &storageEvents{}
	h, store := newFaultyHarness(t, func(o *Options) {
		o.Observer, o.OnStorageFault = events, events.fault
	})
	store.fail.Store(true)
	for i := range byte(5) {
		offer := h.discover(mac(i + 1))
		require.NotNil(t, offer)
		assert.Nil(t, h.handle(selectingRequest(t, mac(i+1), offer.YourIPAddr)), "no ACK without a commit")
	}
	require.Error(t, h.db.StorageError(), "readiness sees the fault")
	assert.Contains(t, h.db.StorageError().Error(), "disk full")
	available, faults := events.seen()
	assert.Equal(t, []bool{false}, available, "one fault report for the whole episode")
	require.Len(t, faults, 1)
	assert.EqualError(t, faults[0], "disk full")

	store.fail.Store(false)
	require.Eventually(t, func() bool { return h.db.StorageError() == nil }, 5*time.Second, 20*time.Millisecond,
		"the retried writes succeed by themselves")
	available, faults = events.seen()
	assert.Equal(t, []bool{false, true}, available, "one recovery report")
	require.Len(t, faults, 2)
	assert.NoError(t, faults[1])
	offer := h.discover(mac(9))
	require.NotNil(t, offer)
	assert.Equal(t, dhcpv4.MessageTypeAck, h.handle(selectingRequest(t, mac(9), offer.YourIPAddr)).MessageType())
}

// TestWALStaysBoundedUnderSustainedWrites commits thousands of batches
// back to back, as a busy server does, with the background checkpointer
// running beside them: the write-ahead log must not grow without end (it
// did: a checkpoint beside a busy writer never catches up).
func TestWALStaysBoundedUnderSustainedWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	store, err := OpenSQLite(path)
	require.NoError(t, err)
	c := newCommitter(store, func(int, time.Duration, error) {}, nil)
	defer func() { c.close(); store.Close() }()
	stop := make(chan struct{})
	defer close(stop)
	go func() { // the background checkpointer's work, as often as it can
		for {
			select {
			case <-stop:
				return
			default:
				_, _, _ = store.Checkpoint(context.Background())
			}
		}
	}()
	for i := range 4000 {
		ip := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		ticket := c.append([]Change{{Lease: Lease{IP: ip, ClientID: "c-" + ip.String(), State: StateBound, Expires: time.Now().Add(time.Hour)}}})
		require.NoError(t, c.wait(context.Background(), ticket))
	}
	assert.LessOrEqual(t, store.WALSize(), int64(4<<20), "the WAL is restarted, and cut back to journal_size_limit")
	leases, err := store.Load(context.Background())
	require.NoError(t, err)
	assert.Len(t, leases, 4000)
}

// TestRecoveryNeedsARealWrite: during a fault a batch that writes nothing
// (a reverted offer's delete) succeeds even on a full disk; the fault
// clears only when the probe write does.
func TestRecoveryNeedsARealWrite(t *testing.T) {
	events := &storageEvents{}
	h, store := newFaultyHarness(t, func(o *Options) { o.Observer = events })
	store.fail.Store(true)
	offer := h.discover(mac(1))
	require.NotNil(t, offer)
	assert.Nil(t, h.handle(selectingRequest(t, mac(1), offer.YourIPAddr)))
	require.Error(t, h.db.StorageError())

	store.probeFail.Store(true)
	store.fail.Store(false) // batches succeed, real writes still fail
	time.Sleep(2500 * time.Millisecond)
	assert.Error(t, h.db.StorageError(), "still failing: only the probe proves the storage")
	available, _ := events.seen()
	assert.Equal(t, []bool{false}, available)

	store.probeFail.Store(false)
	require.Eventually(t, func() bool { return h.db.StorageError() == nil }, 5*time.Second, 20*time.Millisecond)
	available, _ = events.seen()
	assert.Equal(t, []bool{false, true}, available)
}
