// Package daemon runs hyperdhcpd: it wires the configuration, the lease
// database, the plugin chain, the socket and the HTTP endpoints together.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coredhcp/coredhcp/handler"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hyperdhcp/hyperdhcp/apis/config"
	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/internal/probe"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/internal/ratelimit"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/internal/server"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/internal/status"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/kubevirt"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

// reclaimInterval is how often expired leases and offers are swept; between
// sweeps they are also reclaimed on demand when a pool runs out.
const reclaimInterval = 10 * time.Second

// livenessTimeout is how long the packet loop, a worker, the lease lock or
// a database write may stall before /healthz fails and the kubelet restarts
// the pod. The receive loop turns at least once a second.
const livenessTimeout = 30 * time.Second

// Preflight checks what can fail before any socket is bound or the lease
// database is touched.
func Preflight(cfg *config.Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if _, err := net.InterfaceByName(cfg.Interface); err != nil {
		return fmt.Errorf("invalid config: interface: no network interface named %q here: %w", cfg.Interface, err)
	}
	return nil
}

// Run serves DHCP until ctx ends. cfg is the configuration read from file
// (with the command line's overrides); edits of the file, and of its
// ConfigMap in Kubernetes, are applied while serving (reloader).
func Run(ctx context.Context, cfg *config.Config, file File, log *slog.Logger) error {
	if err := Preflight(cfg); err != nil {
		return err
	}
	unlock, err := leasedb.LockDatabase(cfg.LeaseDatabase)
	if err != nil {
		return err
	}
	defer unlock()

	store, err := leasedb.OpenSQLite(cfg.LeaseDatabase)
	if err != nil {
		return err
	}
	// The HTTP endpoints come up first: the kubelet probes liveness while
	// hyperdhcpd waits for the first list of VMs and loads its leases, and
	// a start that takes its time must not be killed as a hang.
	var dbRef atomic.Pointer[leasedb.LeaseDB]
	var srvRef atomic.Pointer[server.Server]
	var vmsRef atomic.Pointer[vmWatch]
	metrics := server.NewMetrics(func() leasedb.Stats {
		if db := dbRef.Load(); db != nil {
			return db.Stats()
		}
		return leasedb.Stats{}
	})
	live := func() error {
		srv, db := srvRef.Load(), dbRef.Load()
		if srv == nil || db == nil {
			return nil // starting
		}
		return errors.Join(srv.Check(time.Now(), livenessTimeout), db.Check(livenessTimeout))
	}
	// Not ready while lease writes fail (no REQUEST can be acknowledged)
	// or the VM API is away; liveness stays: a restart fixes neither.
	var standbyBehind atomic.Pointer[func() bool] // set in a pair
	degraded := func() string {
		var why []string
		if behind := standbyBehind.Load(); behind != nil && dbRef.Load() == nil && (*behind)() {
			// A standby that could not take over yet: the operator rolls
			// the active only once this one is ready.
			why = append(why, "the standby has not caught up with the active")
		}
		if db := dbRef.Load(); db != nil {
			if err := db.StorageError(); err != nil {
				why = append(why, err.Error())
			}
		}
		if vms := vmsRef.Load(); vms != nil {
			if d := vms.watcher.Degraded(); d != "" {
				why = append(why, d)
			}
		}
		return strings.Join(why, "; ")
	}
	var ready atomic.Bool
	stopHTTP, err := serveHTTP(cfg.MetricsAddress, metrics, &ready, live, degraded, log)
	if err != nil {
		store.Close()
		return err
	}
	defer stopHTTP()

	storageChanged := make(chan struct{}, 1)
	// leaseOptions are the lease database's options for a configuration
	// and the VM watch that serves it; Reconfigure reads the live ones.
	leaseOptions := func(cfg *config.Config, vms *vmWatch) (leasedb.Options, error) {
		opts, err := leasedb.OptionsFromSpec(&cfg.Server)
		if err != nil {
			return opts, err
		}
		opts.Store, opts.Logger, opts.Observer = store, log, metrics
		opts.OfferHold, opts.DeclineProbation = cfg.OfferHold.Duration, cfg.DeclineProbation.Duration
		opts.OnStorageFault = func(error) {
			select {
			case storageChanged <- struct{}{}:
			default:
			}
		}
		if vms != nil {
			opts.Resolver, opts.OnlyKnown = vms.index, *cfg.Server.KubeVirt.OnlyKnownVMs
			opts.ResolverStale = func() bool { return vms.watcher.Degraded() != "" }
			opts.Notify = func(e leasedb.LeaseEvent) {
				if e.Reason == leasedb.EventPinUnusable {
					metrics.PinsRefused(1)
					log.Warn("pinned address refused; the VM is served from the pool", "vm", e.Key, "pin", e.IP)
				}
				vms.reporter.LeaseEvent(e)
			}
		}
		return opts, nil
	}
	vms, err := watchVMs(ctx, cfg, metrics, log)
	if err != nil {
		store.Close()
		return err
	}
	vmsRef.Store(vms)
	defer func() { vmsRef.Load().stop() }()
	vms.releaseDeletedVMs(&dbRef, log)

	probing := *cfg.Server.ConflictDetection.Enabled
	var prober *probe.Prober
	srvOpts := server.Options{}
	if probing {
		// Before the DHCP port is bound: without CAP_NET_RAW this fails here.
		if prober, err = probe.Open(cfg.Interface, cfg.Server.ConflictDetection.Timeout.Duration); err != nil {
			store.Close()
			return err
		}
		go prober.Run(ctx)
		srvOpts.Prober = prober
		if k := cfg.Kubernetes; k != nil {
			srvOpts.OnConflict = conflictEvents(ctx, k, cfg.DeclineProbation.Duration, log)
		}
	}

	// The lease database answers while this hyperdhcpd is active: from the
	// start, or as a replica of a pair once it holds the Lease. Until then
	// the gate drops every packet.
	gate := &activeGate{metrics: metrics}
	srvOpts.Durable = gate
	var servingCfg atomic.Pointer[config.Config]
	servingCfg.Store(cfg)
	var activating sync.Mutex // activation against edits
	defer func() {
		db := dbRef.Load()
		if db != nil {
			db.Close() // a replica's database closes the replication, not the file
		}
		if db == nil || cfg.HighAvailability != nil {
			store.Close()
		}
	}()
	// open loads a lease database from leases with the serving options;
	// the caller holds activating.
	open := func(leases leasedb.Store) (*leasedb.LeaseDB, error) {
		opts, err := leaseOptions(servingCfg.Load(), vmsRef.Load())
		if err != nil {
			return nil, err
		}
		opts.Store = leases
		loadStart := time.Now()
		db, err := leasedb.New(ctx, opts)
		if err != nil {
			return nil, err
		}
		log.Info("leases loaded", "took", time.Since(loadStart), "pool", db.Stats())
		return db, nil
	}
	// activate loads the lease database and answers from it; prepare (if
	// any) sets it up before the first packet reaches it.
	activate := func(leases leasedb.Store, prepare func(*leasedb.LeaseDB)) error {
		activating.Lock()
		defer activating.Unlock()
		db, err := open(leases)
		if err != nil {
			return err
		}
		if prepare != nil {
			prepare(db)
		}
		deferred := db.Deferred(probing)
		if prober != nil {
			deferred.OnReleased(prober.RememberFree)
		}
		dbRef.Store(db)
		gate.deferred.Store(deferred)
		return nil
	}

	if cfg.HighAvailability == nil {
		// Before the DHCP port is bound: a database that cannot be read
		// ends hyperdhcpd here.
		if err := activate(store, nil); err != nil {
			return err
		}
	}
	chain, err := server.BuildChain(&cfg.Server, gate.Handler4)
	if err != nil {
		return err
	}
	conn, err := server4.NewIPv4UDPConn(cfg.Interface, &net.UDPAddr{Port: cfg.Port})
	if err != nil {
		return fmt.Errorf("listen on %s port %d: %w", cfg.Interface, cfg.Port, err)
	}
	defer conn.Close()

	srv := server.New(conn, chain, srvOpts, metrics, log)
	srvRef.Store(srv)

	ctx, lostLease := context.WithCancelCause(ctx)
	defer lostLease(nil)
	var pairStatus func() *hyperdhcpv1beta1.HighAvailabilityStatus
	handOver := func() {}
	if cfg.HighAvailability != nil {
		hooks := pairHooks{
			activate: activate,
			current:  dbRef.Load,
			lost:     lostLease,
			openRenewalsOnly: func(leases leasedb.Store) (*leasedb.LeaseDB, error) {
				activating.Lock()
				defer activating.Unlock()
				return open(leases)
			},
		}
		var behind func() bool
		if pairStatus, handOver, behind, err = startReplica(ctx, cfg, store, gate, hooks, metrics, log); err != nil {
			return err
		}
		standbyBehind.Store(&behind)
	}

	// An edit: a new chain and lease options, and a new VM watch when the
	// KubeVirt settings changed (synced before the swap, so no VM goes
	// unknown), swapped in between two packets.
	apply := func(next *config.Config) error {
		activating.Lock()
		defer activating.Unlock()
		current := vmsRef.Load()
		nextVMs := current
		var err error
		if vmSettingsChanged(current, next) {
			if nextVMs, err = watchVMs(ctx, next, metrics, log); err != nil {
				return err
			}
		}
		opts, err := leaseOptions(next, nextVMs)
		if err == nil {
			var chain []handler.Handler4
			if chain, err = server.BuildChain(&next.Server, gate.Handler4); err == nil {
				err = srv.Reconfigure(func() ([]handler.Handler4, error) {
					if db := dbRef.Load(); db != nil {
						return chain, db.Reconfigure(opts)
					}
					return chain, nil
				})
			}
		}
		if err == nil {
			servingCfg.Store(next)
		}
		if nextVMs == current {
			return err
		}
		if err != nil {
			nextVMs.stop()
			return err
		}
		nextVMs.releaseDeletedVMs(&dbRef, log)
		vmsRef.Store(nextVMs)
		current.stop()
		return nil
	}
	reload, err := newReloader(file, cfg, apply, metrics, log)
	if err != nil {
		return err
	}
	go reload.pollFile(ctx)

	go func() {
		ticker := time.NewTicker(reclaimInterval)
		defer ticker.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-ticker.C:
				if db := dbRef.Load(); db != nil {
					if n := db.Reclaim(); n > 0 {
						log.Debug("reclaimed expired leases", "count", n)
					}
				}
			}
		}
	}()

	if k := cfg.Kubernetes; k != nil {
		// In a pair, the active replica reports the pool and its storage.
		active := func() bool { return dbRef.Load() != nil }
		stats := func() leasedb.Stats { return dbRef.Load().Stats() }
		fault := func() (time.Time, error) { return dbRef.Load().StorageFault() }
		startStatusReporter(ctx, k, active, stats, fault, storageChanged, reload, pairStatus, log)
	}
	log.Info("serving DHCP", "interface", cfg.Interface, "port", cfg.Port, "server", cfg.Server.ServerIP,
		"generation", cfg.Generation(), "metrics", cfg.MetricsAddress, "active", dbRef.Load() != nil)
	ready.Store(true)
	err = srv.Serve(ctx)
	ready.Store(false)
	log.Info("stopped serving DHCP")
	if cause := context.Cause(ctx); errors.Is(cause, errLostLease) {
		return cause
	}
	lostLease(nil) // the election stops (also after a failed Serve), then the Lease is given up
	handOver()
	return err
}

// vmSettingsChanged tells whether next needs another VM watch than current
// (nil: none) serves: VM awareness turned on or off, or other namespaces.
// onlyKnownVMs is the lease database's and needs none.
func vmSettingsChanged(current *vmWatch, next *config.Config) bool {
	wanted := vmAware(next)
	if (current != nil) != wanted {
		return true
	}
	if !wanted {
		return false
	}
	return !slices.Equal(current.namespaces, vmNamespaces(next))
}

// vmWatch is the kubevirt plugin's state: the index packets read and the
// watcher that keeps it current.
type vmWatch struct {
	index      *kubevirt.Index
	watcher    *kubevirt.Watcher
	reporter   *kubevirt.Reporter
	namespaces []string
	cancel     context.CancelFunc
}

// stop ends the watch; a nil watch is none.
func (vms *vmWatch) stop() {
	if vms == nil {
		return
	}
	vms.cancel()
	vms.reporter.Close()
}

// releaseDeletedVMs frees a deleted VM's leases when the watch says it is
// gone for good.
func (vms *vmWatch) releaseDeletedVMs(dbRef *atomic.Pointer[leasedb.LeaseDB], log *slog.Logger) {
	if vms == nil {
		return
	}
	vms.watcher.OnVMGone(func(namespace, name string) {
		db := dbRef.Load()
		if db == nil {
			return // a standby: the active frees them
		}
		n := db.ReleaseKeys(leasedb.VMKeyPrefix + namespace + "/" + name + "/")
		log.Info("VM deleted: its leases are free again", "vm", namespace+"/"+name, "leases", n)
	})
}

// vmAware tells whether cfg serves KubeVirt VMs.
func vmAware(cfg *config.Config) bool {
	kv := cfg.Server.KubeVirt
	return cfg.Kubernetes != nil && kv != nil && kv.Enabled != nil && *kv.Enabled
}

// vmNamespaces are the namespaces cfg reads VMs in.
func vmNamespaces(cfg *config.Config) []string {
	server := &hyperdhcpv1beta1.Server{Spec: cfg.Server}
	server.Namespace = cfg.Kubernetes.ServerNamespace
	return server.KubeVirtNamespaces()
}

// watchVMs starts the kubevirt plugin when the Server is VM-aware and
// hyperdhcpd talks to Kubernetes; nil otherwise. Only a configuration
// error is returned: an unreachable API leaves the watcher trying.
func watchVMs(ctx context.Context, cfg *config.Config, metrics *server.Metrics, log *slog.Logger) (_ *vmWatch, err error) {
	if !vmAware(cfg) {
		return nil, nil
	}
	k := cfg.Kubernetes
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		if err != nil {
			cancel()
		}
	}()
	restConfig, err := status.RESTConfig(k.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubevirt: %w", err)
	}
	server := &hyperdhcpv1beta1.Server{Spec: cfg.Server}
	server.Namespace = k.ServerNamespace
	network := kubevirt.Network{Namespace: server.AttachmentNamespace(), Name: cfg.Server.NetworkAttachment.Name}
	index := kubevirt.NewIndex(network)
	watcher, err := kubevirt.NewWatcher(restConfig, index, server.KubeVirtNamespaces(), log)
	if err != nil {
		return nil, err
	}
	reporter, err := kubevirt.NewReporter(ctx, restConfig, index)
	if err != nil {
		return nil, err
	}
	watcher.OnRefused = func(refused map[string]string) {
		metrics.PinsRefused(len(refused))
		reporter.PinsRefused(refused)
	}
	watcher.Grace = k.VMDeletionGrace.Duration
	synced, err := watcher.Start(ctx, k.SyncTimeout.Duration)
	if err != nil {
		return nil, err
	}
	if synced {
		log.Info("serving KubeVirt VMs", "network", network.Namespace+"/"+network.Name, "namespaces", server.KubeVirtNamespaces(), "macs", index.Len())
	} else {
		log.Warn("KubeVirt objects not listed yet: serving the VMs the lease database knows until they are", "reason", watcher.Degraded())
	}
	return &vmWatch{index: index, watcher: watcher, reporter: reporter, namespaces: server.KubeVirtNamespaces(), cancel: cancel}, nil
}

// startStatusReporter keeps the Server's status.pool and
// status.leaseStorage current. Without an API server hyperdhcpd still
// serves DHCP: problems are logged, not fatal.
func startStatusReporter(ctx context.Context, k *config.Kubernetes, active func() bool, stats func() leasedb.Stats, storage func() (time.Time, error),
	storageChanged <-chan struct{}, reload *reloader, pair func() *hyperdhcpv1beta1.HighAvailabilityStatus, log *slog.Logger) {
	restConfig, err := status.RESTConfig(k.Kubeconfig)
	if err != nil {
		log.Error("not reporting pool usage to Kubernetes", "error", err)
		return
	}
	reporter, err := status.NewReporter(restConfig, k.ServerNamespace, k.ServerName, k.StatusInterval.Duration, stats, log)
	if err != nil {
		log.Error("not reporting pool usage to Kubernetes", "error", err)
		return
	}
	reporter.WatchStorage(storage, storageChanged)
	reporter.WatchServed(reload.served, reload.changed)
	reporter.OnlyWhile(active)
	if pair != nil {
		reporter.WatchPair(pair)
	}
	go reporter.Run(ctx)
	if k.ConfigMap != "" {
		if err := reload.watchConfigMap(ctx, restConfig, k); err != nil {
			log.Error("edits arrive when the kubelet refreshes the mounted file", "error", err)
		}
	}
}

// conflictEvents returns what records an Event on the Server for each
// address found in use; nil (logs only) when the API cannot be reached.
func conflictEvents(ctx context.Context, k *config.Kubernetes, probation time.Duration, log *slog.Logger) func(netip.Addr, net.HardwareAddr) {
	restConfig, err := status.RESTConfig(k.Kubeconfig)
	if err == nil {
		var events *status.ServerEvents
		if events, err = status.NewServerEvents(ctx, restConfig, k.ServerNamespace, k.ServerName); err == nil {
			context.AfterFunc(ctx, events.Close)
			return func(ip netip.Addr, mac net.HardwareAddr) { events.AddressInUse(ip, mac, probation) }
		}
	}
	log.Error("not recording address conflicts as Events on the Server", "error", err)
	return nil
}

// listenOnAddressDevice listens on addr. When addr names one address (the
// pod IP), the socket is also bound to the interface that has it: Linux
// accepts a packet for any local address on any interface, so a VM on the
// served network could otherwise reach the endpoints through a route via
// the server's address there.
func listenOnAddressDevice(addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.IsUnspecified() {
		return net.Listen("tcp", addr)
	}
	device, err := interfaceWith(ip)
	if err != nil {
		return nil, err
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var sockErr error
		if err := c.Control(func(fd uintptr) {
			sockErr = syscall.SetsockoptString(int(fd), syscall.SOL_SOCKET, syscall.SO_BINDTODEVICE, device)
		}); err != nil {
			return err
		}
		if sockErr != nil {
			return fmt.Errorf("bind to interface %s: %w", device, sockErr)
		}
		return nil
	}}
	return lc.Listen(context.Background(), "tcp", addr)
}

// interfaceWith names the network interface that has address ip.
func interfaceWith(ip netip.Addr) (string, error) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return "", fmt.Errorf("list network interfaces: %w", err)
	}
	for _, iface := range ifaces {
		addrs, err := iface.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if prefix, ok := a.(*net.IPNet); ok {
				if got, ok := netip.AddrFromSlice(prefix.IP); ok && got.Unmap() == ip {
					return iface.Name, nil
				}
			}
		}
	}
	return "", fmt.Errorf("no network interface has the address %s", ip)
}

func serveHTTP(addr string, metrics *server.Metrics, ready *atomic.Bool, live func() error, degraded func() string, log *slog.Logger) (stop func(), err error) {
	if addr == "0" {
		return func() {}, nil
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{}))
	var unhealthy ratelimit.PerMinute
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := live(); err != nil {
			if unhealthy.Allow(time.Now()) {
				log.Error("not alive", "error", err)
			}
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "not serving yet", http.StatusServiceUnavailable)
			return
		}
		if why := degraded(); why != "" {
			// Serving, but VMs are answered from the last state seen.
			http.Error(w, "degraded: "+why, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	listener, err := listenOnAddressDevice(addr)
	if err != nil {
		return nil, fmt.Errorf("listen for metrics on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "error", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}
