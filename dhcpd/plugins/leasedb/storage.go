package leasedb

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/mattn/go-sqlite3"
)

// Store persists leases. The plugin keeps all leases in memory and uses the
// store only to survive restarts, so the interface is just load and apply.
type Store interface {
	// Load returns every stored lease.
	Load(ctx context.Context) ([]Lease, error)
	// Apply writes a batch of changes in one durable transaction. A store
	// that keeps a copy elsewhere returns an error wrapping ErrUnreplicated
	// when the batch is durable here but not there.
	Apply(ctx context.Context, changes []Change) error
	Close() error
}

// ErrUnreplicated says a batch is durable in the local database but not in
// its replica (the standby of a pair is away). The batch counts as written;
// of the ACKs waiting for it only those decided under a lease time cap
// (SetLeaseTimeCap) may go out: a full-length lease the replica does not
// know could outlive a takeover by the replica.
var ErrUnreplicated = errors.New("written without the replica")

// Change is one write to the store: an upsert of a lease row, or its removal.
type Change struct {
	Lease  Lease
	Delete bool
}

// SQLiteStore is a Store in an SQLite database in WAL mode.
type SQLiteStore struct {
	path string
	db   *sql.DB
	// checkpoints has a connection of its own, so a checkpoint never makes
	// a commit wait for the writer's connection; nil in memory.
	checkpoints *sql.DB
}

const schema = `
CREATE TABLE IF NOT EXISTS leases (
	ip        TEXT PRIMARY KEY,
	client_id TEXT NOT NULL,
	mac       TEXT NOT NULL,
	hostname  TEXT NOT NULL,
	state     TEXT NOT NULL,
	expires   INTEGER NOT NULL,
	updated   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS storage_probe (
	id INTEGER PRIMARY KEY,
	at INTEGER NOT NULL
);
`

// uriPath escapes what SQLite's URI filenames give a meaning to: a path with
// '#' or '?' must not name another file (t.TempDir of a fuzz seed has '#').
var uriPath = strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")

// OpenSQLite opens (creating if needed) the lease database at path; ":memory:"
// gives a private in-memory database for tests.
func OpenSQLite(path string) (*SQLiteStore, error) { return openSQLite(driverName, path) }

// driverName is the SQLite driver with hyperdhcpd's per-connection
// settings, so a connection database/sql opens anew has them too.
const driverName = "sqlite3-hyperdhcpd"

func init() {
	sql.Register(driverName, &sqlite3.SQLiteDriver{ConnectHook: configureConnection})
}

// configureConnection sets what SQLite keeps per connection:
// wal_autocheckpoint=0, since SQLite would otherwise checkpoint inside the
// COMMIT that crosses 1,000 WAL pages, on some client's ACK path (the
// committer and the checkpointer do it instead), and a WAL file cut back
// to 4 MiB when it starts over.
func configureConnection(c *sqlite3.SQLiteConn) error {
	_, err := c.Exec("PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = 4194304", nil)
	return err
}

// openSQLite is OpenSQLite with a registered SQLite driver of choice (a
// test's, with hooks).
func openSQLite(driver, path string) (*SQLiteStore, error) {
	// synchronous=FULL: a committed transaction survives power loss, which is
	// what "durable before the ACK" means. WAL keeps that to one fsync per
	// transaction, and group commit makes it one per batch of leases.
	dsn := "file:" + uriPath.Replace(path) + "?_journal_mode=WAL&_synchronous=FULL&_busy_timeout=5000&_txlock=immediate&_stmt_cache_size=8"
	if path == ":memory:" {
		dsn = "file::memory:?_txlock=immediate&_stmt_cache_size=8"
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		return nil, fmt.Errorf("open lease database %s: %w", path, err)
	}
	// One connection: SQLite serialises writers anyway, and ":memory:" is
	// per-connection.
	db.SetMaxOpenConns(1)
	db.SetConnMaxLifetime(0)
	if damaged, err := checkIntegrity(db); err != nil {
		db.Close()
		if !damaged {
			// Not the file's fault (a full or read-only volume, permissions):
			// the salvage procedure would be the wrong advice.
			return nil, fmt.Errorf("open lease database %s: %w", path, err)
		}
		return nil, fmt.Errorf("lease database %s is damaged: %w (hyperdhcpd does not serve from it: see `hyperdhcpd leases check`; "+
			"save what can be read with `hyperdhcpd leases export`, move the file aside with its -wal and -shm files, "+
			"and load the export into a new database with `hyperdhcpd leases import`)", path, err)
	}
	if _, err := db.Exec(schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("create lease table in %s: %w", path, err)
	}
	s := &SQLiteStore{path: path, db: db}
	if path != ":memory:" {
		if s.checkpoints, err = sql.Open(driver, dsn); err != nil {
			db.Close()
			return nil, fmt.Errorf("open lease database %s: %w", path, err)
		}
		s.checkpoints.SetMaxOpenConns(1)
	}
	return s, nil
}

// checkIntegrity runs SQLite's quick_check (every page and index, not
// the slower cross-checks of integrity_check): a damaged file is refused
// before a lease is read from it.
// damaged tells whether the error describes the file's content.
func checkIntegrity(db *sql.DB) (damaged bool, err error) {
	defer func() {
		var sqliteErr sqlite3.Error
		if errors.As(err, &sqliteErr) && (sqliteErr.Code == sqlite3.ErrCorrupt || sqliteErr.Code == sqlite3.ErrNotADB) {
			damaged = true
		}
	}()
	rows, err := db.Query("PRAGMA quick_check")
	if err != nil {
		return false, err
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return false, err
		}
		if line != "ok" && len(problems) < 5 {
			problems = append(problems, line)
		}
	}
	if err := rows.Err(); err != nil {
		return false, err
	}
	if len(problems) > 0 {
		return true, errors.New(strings.Join(problems, "; "))
	}
	return false, nil
}

// Checkpoint copies the WAL into the database file and lets the WAL start
// over (PRAGMA wal_checkpoint(PASSIVE): it never waits for the writer), so
// neither file grows without bound. It returns the WAL's size in pages
// before, and how many were copied.
func (s *SQLiteStore) Checkpoint(ctx context.Context) (walPages, copied int, err error) {
	if s.checkpoints == nil {
		return 0, 0, nil
	}
	var busy int
	if err := s.checkpoints.QueryRowContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &walPages, &copied); err != nil {
		return 0, 0, fmt.Errorf("checkpoint %s: %w", s.path, err)
	}
	if busy != 0 {
		return walPages, copied, fmt.Errorf("checkpoint %s: busy", s.path)
	}
	return walPages, copied, nil
}

// Probe writes one row of its own in a transaction: a write that always
// reaches the disk, which tells whether the store takes writes again.
func (s *SQLiteStore) Probe(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `INSERT INTO storage_probe (id, at) VALUES (1, ?)
		ON CONFLICT (id) DO UPDATE SET at = excluded.at`, time.Now().UnixNano()); err != nil {
		return fmt.Errorf("probe writes to %s: %w", s.path, err)
	}
	return nil
}

// RestartWAL checkpoints on the writer's own connection, between its
// transactions: with no write racing it, the checkpoint copies every frame,
// so the next transaction starts the WAL over from its beginning and the
// file stops growing (a checkpoint beside a busy writer never catches up).
// The file keeps its size up to journal_size_limit and is written over,
// which also spares each commit's fdatasync the file-size update.
func (s *SQLiteStore) RestartWAL(ctx context.Context) error {
	if s.checkpoints == nil {
		return nil
	}
	var busy, walPages, copied int
	if err := s.db.QueryRowContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &walPages, &copied); err != nil {
		return fmt.Errorf("checkpoint %s: %w", s.path, err)
	}
	// SQLite reports a checkpoint it could not finish in its result, not
	// as an error: the WAL would not start over.
	if busy != 0 || copied != walPages {
		return fmt.Errorf("checkpoint %s: %d of %d WAL pages copied (busy %d)", s.path, copied, walPages, busy)
	}
	return nil
}

// WALSize is the size of the database's write-ahead log file, 0 when it
// has none.
func (s *SQLiteStore) WALSize() int64 {
	if s.checkpoints == nil {
		return 0
	}
	info, err := os.Stat(s.path + "-wal")
	if err != nil {
		return 0
	}
	return info.Size()
}

// Load implements Store.
func (s *SQLiteStore) Load(ctx context.Context) ([]Lease, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT ip, client_id, mac, hostname, state, expires FROM leases`)
	if err != nil {
		return nil, fmt.Errorf("read leases from %s: %w", s.path, err)
	}
	defer rows.Close()
	var leases []Lease
	for rows.Next() {
		var ip, mac, state string
		var l Lease
		var expires int64
		if err := rows.Scan(&ip, &l.ClientID, &mac, &l.Hostname, &state, &expires); err != nil {
			return nil, fmt.Errorf("read lease row: %w", err)
		}
		if l.IP, err = netip.ParseAddr(ip); err != nil {
			return nil, fmt.Errorf("lease row with bad address %q: %w", ip, err)
		}
		if mac != "" {
			if l.MAC, err = net.ParseMAC(mac); err != nil {
				return nil, fmt.Errorf("lease %s has a bad MAC %q: %w", ip, mac, err)
			}
		}
		if l.State, err = parseState(state); err != nil {
			return nil, fmt.Errorf("lease %s: %w", ip, err)
		}
		l.Expires = time.Unix(expires, 0)
		leases = append(leases, l)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read leases: %w", err)
	}
	return leases, nil
}

// Lease row statements; the connection keeps them prepared
// (_stmt_cache_size in the DSN).
const (
	upsertLease = `INSERT INTO leases (ip, client_id, mac, hostname, state, expires, updated)
		VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (ip) DO UPDATE SET client_id = excluded.client_id, mac = excluded.mac,
			hostname = excluded.hostname, state = excluded.state, expires = excluded.expires, updated = excluded.updated`
	deleteLease = `DELETE FROM leases WHERE ip = ?`
)

// Apply implements Store. It drives the SQLite connection itself rather
// than through a database/sql Tx, which starts a goroutine per transaction
// to watch its context: waking and ending that goroutine cost more CPU on
// a small VM than the transaction's statements (issue 15).
func (s *SQLiteStore) Apply(ctx context.Context, changes []Change) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("begin lease transaction in %s: %w", s.path, err)
	}
	defer conn.Close()
	return conn.Raw(func(driverConn any) error {
		c, ok := driverConn.(*sqlite3.SQLiteConn)
		if !ok {
			return fmt.Errorf("lease database %s: unexpected driver connection %T", s.path, driverConn)
		}
		return s.apply(c, changes)
	})
}

// apply writes changes in one transaction on c. The context given to the
// driver has no Done channel, which keeps each statement to one cgo call
// (with one, the driver runs every statement on a goroutine of its own).
func (s *SQLiteStore) apply(c *sqlite3.SQLiteConn, changes []Change) (err error) {
	ctx := context.Background()
	if _, err := c.ExecContext(ctx, "BEGIN IMMEDIATE", nil); err != nil {
		return fmt.Errorf("begin lease transaction in %s: %w", s.path, err)
	}
	defer func() {
		// SQLite ends a transaction by itself on some errors (a full disk),
		// and a failed COMMIT may have ended it too: roll back only one
		// still open, so the cause is not buried under "no transaction is
		// active".
		if err != nil && !c.AutoCommit() {
			if _, rollbackErr := c.ExecContext(ctx, "ROLLBACK", nil); rollbackErr != nil {
				err = errors.Join(err, fmt.Errorf("roll back: %w", rollbackErr))
			}
		}
	}()
	now := time.Now().Unix()
	for _, ch := range changes {
		l := ch.Lease
		if ch.Delete {
			if _, err := c.ExecContext(ctx, deleteLease, []driver.NamedValue{{Ordinal: 1, Value: l.IP.String()}}); err != nil {
				return fmt.Errorf("delete lease %s in %s: %w", l.IP, s.path, err)
			}
			continue
		}
		mac := ""
		if l.MAC != nil {
			mac = l.MAC.String()
		}
		if _, err := c.ExecContext(ctx, upsertLease, []driver.NamedValue{
			{Ordinal: 1, Value: l.IP.String()}, {Ordinal: 2, Value: l.ClientID}, {Ordinal: 3, Value: mac},
			{Ordinal: 4, Value: l.Hostname}, {Ordinal: 5, Value: l.State.String()}, {Ordinal: 6, Value: l.Expires.Unix()},
			{Ordinal: 7, Value: now},
		}); err != nil {
			return fmt.Errorf("write lease %s to %s: %w", l.IP, s.path, err)
		}
	}
	if _, err := c.ExecContext(ctx, "COMMIT", nil); err != nil {
		return fmt.Errorf("commit leases to %s: %w", s.path, err)
	}
	return nil
}

// Close implements Store.
func (s *SQLiteStore) Close() error {
	if s.checkpoints != nil {
		s.checkpoints.Close()
	}
	return s.db.Close()
}
