package leasedb

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// ReadOnlyStore reads a lease database, damaged or not, without writing to
// it: no table is created and the journal mode is left alone. The leases
// commands use it to look at a database, and to save what can still be
// read from a damaged one.
type ReadOnlyStore struct {
	path string
	db   *sql.DB
}

// OpenSQLiteReadOnly opens the lease database at path for reading. The file
// must exist. Nothing is read yet: a file that is not a database at all
// fails on Check or Salvage.
func OpenSQLiteReadOnly(path string) (*ReadOnlyStore, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("lease database %s does not exist", path)
	}
	if err != nil {
		return nil, fmt.Errorf("open lease database %s: %w", path, err)
	}
	if fi.IsDir() {
		return nil, fmt.Errorf("lease database %s is a directory", path)
	}
	db, err := openReadOnlyDB(path)
	if err != nil {
		return nil, fmt.Errorf("open lease database %s: %w", path, err)
	}
	return &ReadOnlyStore{path: path, db: db}, nil
}

// openReadOnlyDB opens an SQLite file read-only.
//
// A database in WAL mode has its -wal file for as long as a connection has
// it open, and after a crash: then the WAL must be read, and SQLite keeps
// its -shm beside it. Without one, the file is the whole database, and
// immutable=1 reads it without creating a -wal and -shm beside it, so a copy
// taken aside stays alone. (A server that opens it meanwhile writes to its
// own WAL, not to this file, until it checkpoints.)
func openReadOnlyDB(path string) (*sql.DB, error) {
	dsn := "file:" + uriPath.Replace(path) + "?mode=ro"
	if !fileExists(path+"-wal") && !fileExists(path+"-journal") {
		dsn += "&immutable=1"
	}
	db, err := sql.Open("sqlite3", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	db.SetConnMaxLifetime(0)
	return db, nil
}

func fileExists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// Path is the database file.
func (s *ReadOnlyStore) Path() string { return s.path }

// Close closes the database.
func (s *ReadOnlyStore) Close() error { return s.db.Close() }

// Check runs SQLite's quick_check, as OpenSQLite does before serving: nil
// when the file is sound, otherwise an error with up to five problems.
func (s *ReadOnlyStore) Check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	damaged, err := checkIntegrity(s.db)
	switch {
	case err == nil:
		return nil
	case !damaged:
		return fmt.Errorf("read lease database %s: %w", s.path, err)
	}
	if h, ok := readSQLiteHeader(s.path); ok && h.cutShort() {
		err = fmt.Errorf("%w (%s)", err, h)
	}
	return fmt.Errorf("lease database %s is damaged: %w", s.path, err)
}

// Salvage reads every lease it can. Each row is read and parsed on its own:
// a row that does not parse is described in skipped and the others are
// kept. When the table itself is damaged, the scan that stops at the damage
// is followed by one from the other end, and skipped says which rows could
// not be reached. err is set only when nothing at all could be read, as
// when the file is not a database; a database with no lease table yet (an
// empty file) has no leases.
func (s *ReadOnlyStore) Salvage(ctx context.Context) (leases []Lease, skipped []string, err error) {
	leases, skipped, err = salvageDB(ctx, s.db, s.path)
	if err == nil || ctx.Err() != nil {
		return leases, skipped, err
	}
	// SQLite refuses a whole file that is shorter than its header says, so
	// read a copy padded to that length, where the missing pages are only
	// unreadable.
	h, ok := readSQLiteHeader(s.path)
	if !ok || !h.cutShort() || h.pageSize*h.pages > maxPadded {
		return nil, nil, err
	}
	leases, skipped, err2 := s.salvagePadded(ctx, h)
	if err2 != nil {
		return nil, nil, fmt.Errorf("%w (%s; reading up to its end: %v)", err, h, err2)
	}
	return leases, append([]string{h.String()}, skipped...), nil
}

// maxPadded bounds the (sparse) copy of a file that was cut short: a
// header that claims more is itself damaged.
const maxPadded = 64 << 30

// salvagePadded salvages a copy of the database, padded to the size its
// header gives, in a temporary directory.
func (s *ReadOnlyStore) salvagePadded(ctx context.Context, h sqliteHeader) ([]Lease, []string, error) {
	dir, err := os.MkdirTemp("", "hyperdhcpd-salvage-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(dir)
	copyPath := filepath.Join(dir, "leases.db")
	if err := copyPadded(s.path, copyPath, h.pageSize*h.pages); err != nil {
		return nil, nil, err
	}
	if fileExists(s.path + "-wal") {
		if err := copyPadded(s.path+"-wal", copyPath+"-wal", 0); err != nil {
			return nil, nil, err
		}
	}
	db, err := openReadOnlyDB(copyPath)
	if err != nil {
		return nil, nil, err
	}
	defer db.Close()
	return salvageDB(ctx, db, s.path)
}

// copyPadded copies a file, then extends the copy with zeros to size.
func copyPadded(from, to string, size int64) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	n, err := io.Copy(out, in)
	if err == nil && n < size {
		err = out.Truncate(size)
	}
	return errors.Join(err, out.Close())
}

// sqliteHeader is what Salvage needs of an SQLite file's 100-byte header.
type sqliteHeader struct {
	pageSize, pages int64 // the database's length in pages, by the header
	filePages       int64 // whole pages in the file
}

// readSQLiteHeader reads the header of the SQLite file at path; ok is false when
// it has none, or one that does not give the database's length.
func readSQLiteHeader(path string) (sqliteHeader, bool) {
	f, err := os.Open(path)
	if err != nil {
		return sqliteHeader{}, false
	}
	defer f.Close()
	buf := make([]byte, 100)
	if _, err := io.ReadFull(f, buf); err != nil || string(buf[:16]) != "SQLite format 3\x00" {
		return sqliteHeader{}, false
	}
	fi, err := f.Stat()
	if err != nil {
		return sqliteHeader{}, false
	}
	h := sqliteHeader{pageSize: int64(binary.BigEndian.Uint16(buf[16:18])), pages: int64(binary.BigEndian.Uint32(buf[28:32]))}
	if h.pageSize == 1 {
		h.pageSize = 65536
	}
	// The length in the header counts only when the change counter and the
	// version-valid-for number agree (SQLite's own rule).
	if h.pageSize < 512 || h.pageSize&(h.pageSize-1) != 0 || h.pages == 0 ||
		binary.BigEndian.Uint32(buf[24:28]) != binary.BigEndian.Uint32(buf[92:96]) {
		return sqliteHeader{}, false
	}
	h.filePages = fi.Size() / h.pageSize
	return h, true
}

func (h sqliteHeader) cutShort() bool { return h.filePages < h.pages }

func (h sqliteHeader) String() string {
	return fmt.Sprintf("the file is cut short: it has %d of the %d pages its header counts", h.filePages, h.pages)
}

// leaseColumns are the columns Salvage reads, in the order parseRow takes.
const leaseColumns = `ip, client_id, mac, hostname, state, expires`

// salvageDB is Salvage on an open database; path names it in messages.
func salvageDB(ctx context.Context, db *sql.DB, path string) (leases []Lease, skipped []string, err error) {
	var tables []string
	if err := scanRows(ctx, db, `SELECT name FROM sqlite_schema WHERE type = 'table'`, nil, func(vals []any) {
		tables = append(tables, columnText(vals[0]))
	}); err != nil {
		return nil, nil, fmt.Errorf("read lease database %s: %w", path, err)
	}
	if !slices.Contains(tables, "leases") {
		if len(tables) > 0 {
			return nil, nil, fmt.Errorf("%s is not a hyperdhcpd lease database: it has no leases table (tables: %s)", path, strings.Join(tables, ", "))
		}
		return nil, nil, nil
	}

	read := 0    // rows read, parsed or not
	keyless := 0 // rows read without an address: zeroed or garbage cells
	var last string
	forwardRow := func(vals []any) {
		read++
		if vals[0] == nil {
			keyless++
			return
		}
		last = columnText(vals[0])
		l, err := parseRow(vals)
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("row %q: %v", last, err))
			return
		}
		leases = append(leases, l)
	}
	// noteKeyless reports the rows without an address at the end of skipped.
	noteKeyless := func() {
		if keyless > 0 {
			skipped = append(skipped, fmt.Sprintf("%d rows with no address could not be read (their cells are zeroed or garbage)", keyless))
		}
	}
	// A WITHOUT ROWID table is a b-tree on ip: both scans follow it in key
	// order without sorting, so each returns rows until it meets damage.
	forward := scanRows(ctx, db, `SELECT `+leaseColumns+` FROM leases ORDER BY ip`, nil, forwardRow)
	if forward == nil {
		noteKeyless()
		return leases, skipped, nil
	}
	if ctx.Err() != nil {
		return nil, nil, ctx.Err()
	}
	stoppedAfter, forwardRead := last, read
	var tail []Lease
	var tailSkipped []string
	first := ""
	backwardRow := func(vals []any) {
		read++
		if vals[0] == nil {
			keyless++
			return
		}
		first = columnText(vals[0])
		l, err := parseRow(vals)
		if err != nil {
			tailSkipped = append(tailSkipped, fmt.Sprintf("row %q: %v", first, err))
			return
		}
		tail = append(tail, l)
	}
	var backward error
	if forwardRead == 0 {
		backward = scanRows(ctx, db, `SELECT `+leaseColumns+` FROM leases ORDER BY ip DESC`, nil, backwardRow)
	} else {
		backward = scanRows(ctx, db, `SELECT `+leaseColumns+` FROM leases WHERE ip > ? ORDER BY ip DESC`, []any{stoppedAfter}, backwardRow)
	}
	if ctx.Err() != nil {
		return nil, nil, ctx.Err()
	}
	if read == 0 {
		return nil, nil, fmt.Errorf("read leases from %s: %w", path, forward)
	}
	slices.Reverse(tail)
	slices.Reverse(tailSkipped)
	leases, skipped = append(leases, tail...), append(skipped, tailSkipped...)
	noteKeyless()
	switch {
	case backward == nil:
		// The scan from the end got back to where the first one stopped:
		// no row is missing, though a damaged page was on the way.
		skipped = append(skipped, fmt.Sprintf("the table has a damaged page, read around from its end: %v", forward))
	case read == forwardRead:
		skipped = append(skipped, fmt.Sprintf("the rows after %q could not be read: %v", stoppedAfter, forward))
	case forwardRead == 0:
		skipped = append(skipped, fmt.Sprintf("the rows before %q could not be read: %v", first, forward))
	default:
		skipped = append(skipped, fmt.Sprintf("the rows between %q and %q (addresses compared as text) could not be read: %v", stoppedAfter, first, forward))
	}
	return leases, skipped, nil
}

// scanRows runs a query and hands each row's values to f.
func scanRows(ctx context.Context, db *sql.DB, q string, args []any, f func([]any)) error {
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return err
	}
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil { // scanning into *any does not convert
			return err
		}
		f(vals)
	}
	return rows.Err()
}

// columnText is a column value as text: SQLite gives TEXT as []byte or string.
func columnText(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case []byte:
		return string(v)
	case string:
		return v
	}
	return fmt.Sprint(v)
}

// parseRow turns a row of leaseColumns into a lease.
func parseRow(vals []any) (Lease, error) {
	for i, name := range []string{"ip", "client_id", "mac", "hostname", "state", "expires"} {
		if vals[i] == nil {
			return Lease{}, fmt.Errorf("no %s", name)
		}
	}
	expires, ok := vals[5].(int64)
	if !ok {
		return Lease{}, fmt.Errorf("expires %q is not a Unix time", columnText(vals[5]))
	}
	for i, name := range []string{"ip", "client_id", "mac", "hostname", "state"} {
		switch vals[i].(type) {
		case string, []byte:
		default:
			return Lease{}, fmt.Errorf("%s %v is not text", name, vals[i])
		}
	}
	return ParseLease(columnText(vals[0]), columnText(vals[1]), columnText(vals[2]), columnText(vals[3]), columnText(vals[4]), time.Unix(expires, 0))
}

// ParseLease builds a lease from its fields as stored and exported, with
// the checks Load makes: an IP address, a MAC address or none, and a state.
func ParseLease(ip, clientID, mac, hostname, state string, expires time.Time) (Lease, error) {
	l := Lease{ClientID: clientID, Hostname: hostname, Expires: expires}
	var err error
	if l.IP, err = netip.ParseAddr(ip); err != nil {
		return Lease{}, fmt.Errorf("bad address %q: %w", ip, err)
	}
	if mac != "" {
		if l.MAC, err = net.ParseMAC(mac); err != nil {
			return Lease{}, fmt.Errorf("bad MAC %q: %w", mac, err)
		}
	}
	if l.State, err = ParseState(state); err != nil {
		return Lease{}, err
	}
	return l, nil
}

// ParseState is the inverse of State.String.
func ParseState(s string) (State, error) { return parseState(s) }
