package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

// The recovery commands: `leases check` tells whether hyperdhcpd can serve
// from a database, `leases export` saves what can be read of one, and
// `leases import` loads that into a new database. check and export only
// read, and create no file beside the database.

func leaseCheckCommand() *cli.Command {
	return &cli.Command{
		Name:  "check",
		Usage: "check that the lease database is sound and every lease in it can be loaded",
		Description: "Reads the database without writing to it. Exits 0 when hyperdhcpd can serve from it, " +
			"and 1 with the problems and the way to recover otherwise.",
		Flags:  leaseDatabaseFlags(),
		Action: checkLeases,
	}
}

func leaseExportCommand() *cli.Command {
	return &cli.Command{
		Name:  "export",
		Usage: "write every lease that can be read, from a damaged database too, as JSON on stdout",
		Description: "Reads the database without writing to it, and writes the leases it can read as a JSON array, " +
			"which `hyperdhcpd leases import` loads into a new database. Rows that cannot be read are reported on stderr. " +
			"Exits 0 when the database could be read, even in part, and 1 when nothing could be read from it.",
		Flags: append(leaseDatabaseFlags(),
			&cli.StringFlag{Name: flagOutput, Aliases: []string{"o"}, Value: "json", Usage: "json (the only format)"}),
		Action: exportLeases,
	}
}

func leaseImportCommand() *cli.Command {
	return &cli.Command{
		Name:      "import",
		Usage:     "load the output of `hyperdhcpd leases export` into a new lease database",
		ArgsUsage: "EXPORT.json|-",
		Description: "Validates every lease first and imports nothing if one is invalid. The database must be new or " +
			"empty, and no hyperdhcpd may be serving from it. Use - to read the export from stdin.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: flagLeaseDatabase, EnvVars: envVar(flagLeaseDatabase), Required: true,
				Usage: "the new lease database file to import into"},
		},
		Action: importLeases,
	}
}

func leaseDatabaseFlags() []cli.Flag {
	return []cli.Flag{
		configFlag,
		&cli.StringFlag{Name: flagLeaseDatabase, EnvVars: envVar(flagLeaseDatabase), Usage: "lease database file (default: from the configuration)"},
	}
}

// leaseDatabasePath is --lease-database, or the configuration's database.
func leaseDatabasePath(c *cli.Context) (string, error) {
	if path := c.String(flagLeaseDatabase); path != "" {
		return path, nil
	}
	cfg, _, err := loadConfig(c)
	if err != nil {
		return "", fmt.Errorf("no --lease-database given and %w", err)
	}
	return cfg.LeaseDatabase, nil
}

// recovery says how to recover from a damaged database at path.
func recovery(path string, readable bool) string {
	aside := fmt.Sprintf("move %s aside (with its -wal and -shm files, if any)", path)
	if !readable {
		return "nothing can be read from it: " + aside + " and start again with an empty database"
	}
	return fmt.Sprintf("to recover, save what can be read with `hyperdhcpd leases export --lease-database %s > leases.json`, %s, "+
		"then load the export into a new database with `hyperdhcpd leases import --lease-database %s leases.json`", path, aside, path)
}

// openReadOnly opens the database at path for reading only.
func openReadOnly(c *cli.Context) (*leasedb.ReadOnlyStore, error) {
	path, err := leaseDatabasePath(c)
	if err != nil {
		return nil, err
	}
	return leasedb.OpenSQLiteReadOnly(path)
}

func checkLeases(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("leases check takes no arguments (the database is --lease-database), got %q", c.Args().Slice())
	}
	store, err := openReadOnly(c)
	if err != nil {
		return err
	}
	defer store.Close()
	path, out := store.Path(), c.App.Writer
	checkErr := store.Check(c.Context)
	leases, skipped, salvageErr := store.Salvage(c.Context)
	if checkErr == nil && salvageErr == nil && len(skipped) == 0 {
		_, err := fmt.Fprintf(out, "%s: ok, %d leases\n", path, len(leases))
		return err
	}
	if checkErr != nil {
		fmt.Fprintf(out, "%s: damaged: %s\n", path, strings.TrimPrefix(checkErr.Error(), "lease database "+path+" is damaged: "))
	}
	if salvageErr != nil {
		fmt.Fprintf(out, "%s: no lease can be read: %v\n", path, salvageErr)
		return fmt.Errorf("lease database %s is damaged and hyperdhcpd does not serve from it; %s", path, recovery(path, false))
	}
	if len(skipped) == 0 {
		fmt.Fprintf(out, "%s: all %d leases can be read\n", path, len(leases))
	} else {
		fmt.Fprintf(out, "%s: %d leases can be read; not read:\n", path, len(leases))
	}
	for _, s := range skipped {
		fmt.Fprintf(out, "  %s\n", s)
	}
	what := "is damaged"
	if checkErr == nil {
		what = "has rows that cannot be loaded"
	}
	return fmt.Errorf("lease database %s %s and hyperdhcpd does not serve from it; %s", path, what, recovery(path, len(leases) > 0))
}

func exportLeases(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("leases export takes no arguments (the database is --lease-database), got %q", c.Args().Slice())
	}
	if f := c.String(flagOutput); f != "json" {
		return fmt.Errorf("invalid output format %q: leases export writes json", f)
	}
	store, err := openReadOnly(c)
	if err != nil {
		return err
	}
	defer store.Close()
	path, stderr := store.Path(), c.App.ErrWriter
	if err := store.Check(c.Context); err != nil {
		fmt.Fprintf(stderr, "hyperdhcpd: %v; exporting what can be read\n", err)
	}
	leases, skipped, err := store.Salvage(c.Context)
	if err != nil {
		return fmt.Errorf("nothing can be exported: %w", err)
	}
	for _, s := range skipped {
		fmt.Fprintf(stderr, "hyperdhcpd: not exported: %s\n", s)
	}
	if len(leases) == 0 && len(skipped) > 0 {
		return fmt.Errorf("no lease could be read from %s: nothing exported", path)
	}
	slices.SortFunc(leases, func(a, b leasedb.Lease) int { return a.IP.Compare(b.IP) })
	records := make([]leaseRecord, 0, len(leases))
	for _, l := range leases {
		records = append(records, newLeaseRecord(l, l.State.String()))
	}
	enc := json.NewEncoder(c.App.Writer)
	enc.SetIndent("", "  ")
	if err := enc.Encode(records); err != nil {
		return fmt.Errorf("write the export: %w", err)
	}
	if len(skipped) > 0 {
		fmt.Fprintf(stderr, "hyperdhcpd: exported %d leases from %s; the rest could not be read (above)\n", len(records), path)
	} else {
		fmt.Fprintf(stderr, "hyperdhcpd: exported %d leases from %s\n", len(records), path)
	}
	return nil
}

// maxImportProblems is how many invalid records an import reports.
const maxImportProblems = 10

func importLeases(c *cli.Context) error {
	if c.NArg() != 1 {
		return fmt.Errorf("want one argument, the file written by `hyperdhcpd leases export` (or - for stdin), got %d", c.NArg())
	}
	source, path := c.Args().First(), c.String(flagLeaseDatabase)
	var in io.Reader = c.App.Reader
	if in == nil {
		in = os.Stdin
	}
	if source != "-" {
		f, err := os.Open(source)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	} else {
		source = "stdin"
	}
	leases, err := readExport(in, source)
	if err != nil {
		return err
	}

	// A leftover WAL would be replayed into the new database.
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		for _, suffix := range []string{"-wal", "-journal"} {
			if _, err := os.Stat(path + suffix); err == nil {
				return fmt.Errorf("%s%s is left from a database that was moved or deleted: move it aside too, "+
					"or SQLite would apply it to the new database", path, suffix)
			}
		}
	}
	unlock, err := leasedb.LockDatabase(path)
	if err != nil {
		return err
	}
	defer unlock()
	store, err := leasedb.OpenSQLite(path)
	if err != nil {
		return err
	}
	defer store.Close()
	existing, err := store.Load(c.Context)
	if err != nil {
		return err
	}
	if len(existing) > 0 {
		return fmt.Errorf("lease database %s already holds %d leases: import only into a new database (move this one aside first)", path, len(existing))
	}
	changes := make([]leasedb.Change, 0, len(leases))
	for _, l := range leases {
		changes = append(changes, leasedb.Change{Lease: l})
	}
	if err := store.Apply(c.Context, changes); err != nil {
		return err
	}
	if err := store.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	_, err = fmt.Fprintf(c.App.Writer, "imported %d leases into %s\n", len(leases), path)
	return err
}

// readExport reads and validates the output of `leases export`: every
// record, or an error listing the invalid ones.
func readExport(in io.Reader, source string) ([]leasedb.Lease, error) {
	dec := json.NewDecoder(in)
	dec.DisallowUnknownFields()
	var records []leaseRecord
	if err := dec.Decode(&records); err != nil {
		return nil, fmt.Errorf("read %s: %w (want the JSON array `hyperdhcpd leases export` writes)", source, err)
	}
	if records == nil {
		return nil, fmt.Errorf("read %s: not a JSON array of leases", source)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read %s: more follows the JSON array of leases", source)
	}
	var problems []string
	seen := map[netip.Addr]int{}
	leases := make([]leasedb.Lease, 0, len(records))
	for i, r := range records {
		l, err := r.lease()
		if err == nil {
			if first, dup := seen[l.IP]; dup {
				err = fmt.Errorf("the address is also in record %d", first)
			}
			seen[l.IP] = i + 1
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("record %d (ip %q): %v", i+1, r.IP, err))
			continue
		}
		leases = append(leases, l)
	}
	if n := len(problems); n > 0 {
		more := ""
		if n > maxImportProblems {
			more = fmt.Sprintf("\n  and %d more", n-maxImportProblems)
			problems = problems[:maxImportProblems]
		}
		return nil, fmt.Errorf("%s: %d of %d records are not valid leases; nothing imported:\n  %s%s",
			source, n, len(records), strings.Join(problems, "\n  "), more)
	}
	return leases, nil
}

// lease validates an exported record.
func (r leaseRecord) lease() (leasedb.Lease, error) {
	if r.Expires.IsZero() {
		return leasedb.Lease{}, errors.New("no expires")
	}
	if r.State == "expired" {
		return leasedb.Lease{}, errors.New(`state "expired" is how "leases list" shows a lease that ran out: import the output of "leases export", which has the stored state`)
	}
	return leasedb.ParseLease(r.IP, r.ClientID, r.MAC, r.Hostname, r.State, r.Expires)
}
