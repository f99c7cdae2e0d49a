// Package cli is hyperdhcpd's command line.
package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/coredhcp/coredhcp/logger"
	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"

	"github.com/hyperdhcp/hyperdhcp/apis/config"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/internal/daemon"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/internal/version"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

// Flag names; each is also read from HYPERDHCPD_<NAME> in the environment.
const (
	flagConfig         = "config"
	flagInterface      = "interface"
	flagPort           = "port"
	flagLeaseDatabase  = "lease-database"
	flagMetricsAddress = "metrics-address"
	flagHAListen       = "ha-listen"
	flagLogLevel       = "log-level"
	flagLogFormat      = "log-format"
	flagCPUProfile     = "cpu-profile"
	flagOutput         = "output"
	flagKubeconfig     = "kubeconfig"
)

func envVar(flag string) []string {
	return []string{"HYPERDHCPD_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))}
}

var configFlag = &cli.StringFlag{
	Name: flagConfig, Aliases: []string{"c"}, EnvVars: envVar(flagConfig),
	Usage: "configuration file (default: " + config.DefaultFile + " in the working directory)",
}

// overrideFlags override the configuration file's settings.
var overrideFlags = []cli.Flag{
	&cli.StringFlag{Name: flagInterface, EnvVars: envVar(flagInterface), Usage: "interface to serve on (default: server.networkAttachment.interface)"},
	&cli.IntFlag{Name: flagPort, EnvVars: envVar(flagPort), Usage: "UDP port to listen on (default: 67)"},
	&cli.StringFlag{Name: flagLeaseDatabase, EnvVars: envVar(flagLeaseDatabase), Usage: "lease database file (default: " + config.DefaultLeaseDatabase + ")"},
	&cli.StringFlag{Name: flagMetricsAddress, EnvVars: envVar(flagMetricsAddress), Usage: "address for /metrics, /healthz, /readyz; 0 turns them off (default: " + config.DefaultMetricsAddress + ")"},
	&cli.StringFlag{Name: flagHAListen, EnvVars: envVar(flagHAListen), Usage: "replication address of a replica of a pair (overrides highAvailability.listen)"},
	&cli.StringFlag{Name: flagLogLevel, EnvVars: envVar(flagLogLevel), Usage: "debug, info, warn or error (default: info)"},
	&cli.StringFlag{Name: flagKubeconfig, EnvVars: envVar(flagKubeconfig), Usage: "kubeconfig for local runs (default: the in-cluster service account); only used when the config has a kubernetes section"},
}

var logFormatFlag = &cli.StringFlag{Name: flagLogFormat, EnvVars: envVar(flagLogFormat), Value: "text", Usage: "text or json"}

// cpuProfileFlag is for measuring the packet path (make bench): off by
// default, and never an endpoint.
var cpuProfileFlag = &cli.StringFlag{Name: flagCPUProfile, EnvVars: envVar(flagCPUProfile),
	Usage: "write a Go CPU profile of the whole run to this file (for `go tool pprof`)"}

// App returns the hyperdhcpd command line application.
func App() *cli.App {
	return &cli.App{
		Name:    "hyperdhcpd",
		Usage:   "DHCPv4 server for KubeVirt VMs on Multus networks",
		Version: fmt.Sprintf("%s (commit %s, built %s)", version.Version, version.Commit, version.Date),
		// Errors are printed once, by main; usage is not repeated after them.
		HideHelpCommand: true,
		Commands: []*cli.Command{
			{
				Name:   "serve",
				Usage:  "serve DHCP on the configured interface",
				Flags:  append([]cli.Flag{configFlag, logFormatFlag, cpuProfileFlag}, overrideFlags...),
				Action: serve,
			},
			{
				Name:   "check",
				Usage:  "validate the configuration and print it with every default applied",
				Flags:  append([]cli.Flag{configFlag}, overrideFlags...),
				Action: check,
			},
			{
				Name:  "leases",
				Usage: "read, check and recover the lease database",
				Subcommands: []*cli.Command{
					{
						Name:   "list",
						Usage:  "list every lease",
						Flags:  leaseFlags(),
						Action: listLeases,
					},
					{
						Name:      "show",
						Usage:     "show the lease of an IP or MAC address",
						ArgsUsage: "IP|MAC",
						Flags:     leaseFlags(),
						Action:    showLease,
					},
					leaseCheckCommand(),
					leaseExportCommand(),
					leaseImportCommand(),
				},
			},
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(c *cli.Context) error {
					_, err := fmt.Fprintf(c.App.Writer, "hyperdhcpd %s\ncommit %s\nbuilt %s\n", version.Version, version.Commit, version.Date)
					return err
				},
			},
		},
	}
}

func leaseFlags() []cli.Flag {
	return append(leaseDatabaseFlags(), &cli.StringFlag{Name: flagOutput, Aliases: []string{"o"}, Value: "table", Usage: "table or json"})
}

// loadConfig reads the configuration file and applies flag and environment
// overrides, then defaults; it does not validate.
func loadConfig(c *cli.Context) (*config.Config, daemon.File, error) {
	file := daemon.File{Path: configPath(c)}
	if c.String(flagConfig) == "" {
		if _, err := os.Stat(file.Path); errors.Is(err, fs.ErrNotExist) {
			return nil, file, config.ErrNoConfig
		}
	}
	var err error
	if file.Data, err = os.ReadFile(file.Path); err != nil {
		return nil, file, fmt.Errorf("read config: %w", err)
	}
	cfg, err := config.Parse(file.Data, file.Path)
	if err != nil {
		return nil, file, err
	}
	if c.IsSet(flagInterface) {
		cfg.Interface = c.String(flagInterface)
	}
	if c.IsSet(flagPort) {
		cfg.Port = c.Int(flagPort)
	}
	if c.IsSet(flagLeaseDatabase) {
		cfg.LeaseDatabase = c.String(flagLeaseDatabase)
	}
	if c.IsSet(flagMetricsAddress) {
		cfg.MetricsAddress = c.String(flagMetricsAddress)
	}
	if c.IsSet(flagHAListen) && cfg.HighAvailability != nil {
		cfg.HighAvailability.Listen = c.String(flagHAListen)
	}
	if c.IsSet(flagLogLevel) {
		cfg.LogLevel = c.String(flagLogLevel)
	}
	if c.IsSet(flagKubeconfig) && cfg.Kubernetes != nil {
		cfg.Kubernetes.Kubeconfig = c.String(flagKubeconfig)
	}
	cfg.SetDefaults()
	return cfg, file, nil
}

// configPath is the configuration file named, or the default one.
func configPath(c *cli.Context) string {
	if path := c.String(flagConfig); path != "" {
		return path
	}
	return config.DefaultFile
}

func check(c *cli.Context) error {
	cfg, _, err := loadConfig(c)
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	out, err := cfg.Marshal()
	if err != nil {
		return err
	}
	_, err = c.App.Writer.Write(out)
	return err
}

func serve(c *cli.Context) error {
	cfg, file, err := loadConfig(c)
	if err != nil {
		return err
	}
	log, err := newLogger(c.App.ErrWriter, cfg.LogLevel, c.String(flagLogFormat))
	if err != nil {
		return err
	}
	if path := c.String(flagCPUProfile); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	return daemon.Run(ctx, cfg, file, log)
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("invalid log level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: l}
	// CoreDHCP's stock plugins log through a global logrus logger: give it
	// our level and format so the output stays one stream of one shape.
	coredhcp := logger.GetLogger("hyperdhcpd").Logger
	coredhcp.SetOutput(w)
	if level, err := logrus.ParseLevel(level); err == nil {
		coredhcp.SetLevel(level)
	}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		coredhcp.SetFormatter(&logrus.JSONFormatter{})
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("invalid log format %q: want text or json", format)
}

// leaseRecord is one lease as the leases commands print it; `leases export`
// writes these with the stored state, and `leases import` reads them.
type leaseRecord struct {
	IP       string    `json:"ip"`
	MAC      string    `json:"mac"`
	ClientID string    `json:"clientID"`
	Hostname string    `json:"hostname,omitempty"`
	State    string    `json:"state"`
	Expires  time.Time `json:"expires"`
}

// readLeases reads the database read-only, as the server would load it: a
// damaged database, or one with a lease that cannot be loaded, is refused
// with the way to recover.
func readLeases(c *cli.Context) ([]leaseRecord, error) {
	store, err := openReadOnly(c)
	if err != nil {
		return nil, err
	}
	defer store.Close()
	path := store.Path()
	if err := store.Check(c.Context); err != nil {
		return nil, fmt.Errorf("%w; see `hyperdhcpd leases check --lease-database %s`", err, path)
	}
	leases, skipped, err := store.Salvage(c.Context)
	if err != nil {
		return nil, err
	}
	if len(skipped) > 0 {
		return nil, fmt.Errorf("lease database %s has %d rows that cannot be loaded (first: %s); see `hyperdhcpd leases check --lease-database %s`",
			path, len(skipped), skipped[0], path)
	}
	slices.SortFunc(leases, func(a, b leasedb.Lease) int { return a.IP.Compare(b.IP) })
	now := time.Now()
	records := make([]leaseRecord, 0, len(leases))
	for _, l := range leases {
		state := l.State.String()
		if (l.State == leasedb.StateBound || l.State == leasedb.StateDeclined) && !l.Expires.After(now) {
			state = "expired"
		}
		records = append(records, newLeaseRecord(l, state))
	}
	return records, nil
}

// newLeaseRecord is a lease as the leases commands print it, in a given
// state.
func newLeaseRecord(l leasedb.Lease, state string) leaseRecord {
	mac := ""
	if l.MAC != nil {
		mac = l.MAC.String()
	}
	return leaseRecord{IP: l.IP.String(), MAC: mac, ClientID: l.ClientID, Hostname: l.Hostname, State: state, Expires: l.Expires.UTC()}
}

func listLeases(c *cli.Context) error {
	records, err := readLeases(c)
	if err != nil {
		return err
	}
	return printLeases(c, records)
}

func showLease(c *cli.Context) error {
	if c.NArg() != 1 {
		return fmt.Errorf("want one IP or MAC address, got %d arguments", c.NArg())
	}
	key := c.Args().First()
	var match func(leaseRecord) bool
	if ip, err := netip.ParseAddr(key); err == nil {
		match = func(r leaseRecord) bool { return r.IP == ip.String() }
	} else if mac, err := net.ParseMAC(key); err == nil {
		match = func(r leaseRecord) bool { return r.MAC == mac.String() }
	} else {
		return fmt.Errorf("%q is neither an IP nor a MAC address", key)
	}
	records, err := readLeases(c)
	if err != nil {
		return err
	}
	records = slices.DeleteFunc(records, func(r leaseRecord) bool { return !match(r) })
	if len(records) == 0 {
		return fmt.Errorf("no lease for %s", key)
	}
	return printLeases(c, records)
}

func printLeases(c *cli.Context, records []leaseRecord) error {
	switch c.String(flagOutput) {
	case "json":
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(records)
	case "table":
		w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "IP\tMAC\tHOSTNAME\tSTATE\tEXPIRES\tCLIENT ID")
		for _, r := range records {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", r.IP, cmp.Or(r.MAC, "-"), cmp.Or(r.Hostname, "-"), r.State, r.Expires.Format(time.RFC3339), cmp.Or(r.ClientID, "-"))
		}
		return w.Flush()
	}
	return fmt.Errorf("invalid output format %q: want table or json", c.String(flagOutput))
}

// Main runs the application and returns the process exit code.
func Main(args []string) int {
	if err := App().RunContext(context.Background(), args); err != nil {
		fmt.Fprintf(os.Stderr, "hyperdhcpd: %v\n", err)
		return 1
	}
	return 0
}
