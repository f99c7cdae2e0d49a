package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hyperdhcp/hyperdhcp/apis/config"
	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/internal/ha"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/internal/server"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/internal/status"
	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

// errLostLease ends a replica that was active and lost the Lease: its
// memory may hold what the new active never saw, so it starts over as a
// standby (the kubelet restarts it) and catches up.
var errLostLease = errors.New("lost the Lease to the other replica: restarting as the standby")

// activeGate is the allocating step of the chain and the server's
// Deferrer: the lease database's while this hyperdhcpd is active, a drop
// of every packet before. It turns active once per process (a replica that
// loses the Lease exits), so a batch is never decided by one database and
// made durable by another.
//
// A standby that can reach neither the API server nor the active answers
// renewals only (renewalsOnly), from its own copy of the leases.
type activeGate struct {
	deferred     atomic.Pointer[leasedb.Deferred]
	renewalsOnly atomic.Pointer[leasedb.LeaseDB]
	metrics      *server.Metrics
}

func (g *activeGate) Handler4(req, resp *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
	if d := g.deferred.Load(); d != nil {
		return d.Handler4(req, resp)
	}
	if db := g.renewalsOnly.Load(); db != nil {
		return db.Handler4(req, resp)
	}
	g.metrics.Dropped(server.DropStandby)
	return nil, true
}

func (g *activeGate) Durable(ctx context.Context, reqs []*dhcpv4.DHCPv4, sendable []bool) {
	if d := g.deferred.Load(); d != nil {
		d.Durable(ctx, reqs, sendable)
		return
	}
	// Before activation an ACK can only be a renewals-only confirmation,
	// which grants and writes nothing.
	for i := range sendable {
		sendable[i] = true
	}
}

func (g *activeGate) ProbeFirst(req *dhcpv4.DHCPv4) (netip.Addr, bool) {
	if d := g.deferred.Load(); d != nil {
		return d.ProbeFirst(req)
	}
	return netip.Addr{}, false
}

func (g *activeGate) Conflict(req *dhcpv4.DHCPv4, ip netip.Addr, mac net.HardwareAddr) {
	if d := g.deferred.Load(); d != nil {
		d.Conflict(req, ip, mac)
	}
}

// holderNow asks the API server who holds the Lease, briefly.
func holderNow(ctx context.Context, election *ha.Election) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return election.Holder(ctx)
}

// pairHooks are the daemon's parts a replica drives.
type pairHooks struct {
	// activate loads the lease database from the replicated store and
	// answers as the active.
	activate func(leasedb.Store, func(*leasedb.LeaseDB)) error
	// current is the active's lease database, nil before activation.
	current func() *leasedb.LeaseDB
	// lost ends the process.
	lost context.CancelCauseFunc
	// openRenewalsOnly loads a lease database for a standby's renewals-only
	// answers.
	openRenewalsOnly func(leasedb.Store) (*leasedb.LeaseDB, error)
}

// startReplica makes this hyperdhcpd a replica of its pair: it serves
// replication, catches up with the active, stands for the Lease while it
// may, and activates with the replicated store once it holds the Lease.
// Losing the Lease ends the process (lost).
//
// When the Lease is lost because no replica can reach the API server, the
// active keeps its database and answers renewals only (SetRenewalsOnly)
// until it holds the Lease again, unless the other replica took it
// meanwhile: then it exits and comes back as the standby. A standby that
// hears neither the API server nor the active answers renewals only too
// (watchForOutage).
//
// It returns the active's status report; handOver, which a stopping
// replica calls once it answers no more: an active gives its Lease up, so
// the standby takes over at its next try (a rolling update); and behind,
// which tells whether, as the standby, it has yet to catch up.
func startReplica(ctx context.Context, cfg *config.Config, store *leasedb.SQLiteStore, gate *activeGate, hooks pairHooks,
	metrics *server.Metrics, log *slog.Logger) (report func() *hyperdhcpv1beta1.HighAvailabilityStatus, handOver func(), behind func() bool, err error) {
	activate, current, lost := hooks.activate, hooks.current, hooks.lost
	pair, k := cfg.HighAvailability, cfg.Kubernetes
	mclt := pair.MaxClientLeadTime.Duration
	restConfig, err := status.RESTConfig(k.Kubeconfig)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("high availability: %w", err)
	}
	log = log.With("replica", pair.Replica)
	election, err := ha.NewElection(restConfig, k.ServerNamespace, pair.Lease, pair.Replica, log)
	if err != nil {
		return nil, nil, nil, err
	}
	files := ha.TLSFiles{CA: pair.CA, Cert: pair.Cert, Key: pair.Key}
	replica, err := ha.NewReplica(store, election, pair.Peer, files, log)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := replica.Listen(ctx, pair.Listen, files); err != nil {
		return nil, nil, nil, err
	}
	// While the standby does not get the batches, leases are granted for
	// the MCLT at most: a replica that takes over without them waits that
	// long, not a lease time, before it grants anything new.
	var capping sync.Mutex
	capLeasesOf := func(db *leasedb.LeaseDB) {
		capping.Lock()
		defer capping.Unlock()
		if replica.Replicating() {
			db.SetLeaseTimeCap(0)
			return
		}
		db.SetLeaseTimeCap(mclt)
	}
	capLeases := func() {
		if db := current(); db != nil {
			capLeasesOf(db)
		}
	}
	replica.OnReplicating = func(on bool) {
		capLeases()
		if current() != nil && !on {
			log.Warn("leases are granted for the MCLT at most while the standby does not have them", "mclt", mclt)
		}
	}
	metrics.Role(false)
	var heldEpoch atomic.Int64
	var tookOver atomic.Int64 // Unix nanoseconds of the takeover
	// recoveringUntil ends the renewals-only time after a takeover from an
	// active that was alone (Unix nanoseconds).
	var recoveringUntil atomic.Int64
	election.OnStartedLeading = func(epoch int64, inSync bool) {
		if db := current(); db != nil {
			// The Lease again, after an outage of the API server.
			if epoch != heldEpoch.Load() {
				lost(fmt.Errorf("%w (the other replica held it meanwhile)", errLostLease))
				return
			}
			if time.Now().UnixNano() >= recoveringUntil.Load() {
				db.SetRenewalsOnly(false)
			}
			metrics.Role(true)
			log.Info("holding the Lease again", "epoch", epoch)
			return
		}
		replica.Activate(epoch, inSync)
		var recovering *leasedb.LeaseDB
		err := activate(replica, func(db *leasedb.LeaseDB) {
			// Before the first packet: the cap, and after a lone active
			// renewals only, or a new client could get what the other
			// replica granted alone.
			capLeasesOf(db)
			if !inSync {
				db.SetRenewalsOnly(true)
				recovering = db
			}
		})
		if err != nil {
			lost(fmt.Errorf("activate after taking the Lease: %w", err))
			return
		}
		heldEpoch.Store(epoch)
		capLeases() // a change of the standby's while the database loaded
		if db := recovering; db != nil {
			// The former active went on alone: this database may lack
			// leases it granted, for the MCLT at most. Until they have
			// ended, only clients' own leases are confirmed, nothing new is
			// granted.
			recoveringUntil.Store(time.Now().Add(mclt).UnixNano())
			log.Warn("took over from an active that was alone: answering renewals only until the leases it granted alone have ended", "for", mclt)
			time.AfterFunc(mclt, func() {
				if election.Fresh(time.Now()) && election.Epoch() == epoch {
					db.SetRenewalsOnly(false)
					log.Info("every lease granted alone has ended: answering every client")
				}
			})
		}
		tookOver.Store(time.Now().UnixNano())
		metrics.Role(true)
		metrics.Failover()
		log.Info("active: answering DHCP", "epoch", epoch, "standby_was_in_sync", inSync)
	}
	election.OnStoppedLeading = func() {
		metrics.Role(false)
		db := current()
		if db == nil || ctx.Err() != nil {
			return // never active, or stopping (handOver gives the Lease up)
		}
		if holder, err := holderNow(ctx, election); err == nil && holder != election.Identity() {
			lost(errLostLease)
			return
		}
		// Nobody can hold the Lease: keep what clients have, grant nothing.
		db.SetRenewalsOnly(true)
		log.Warn("the Lease cannot be renewed (the API server is away): answering renewals of existing leases only, with the time they have left")
		go func() {
			for ctx.Err() == nil && !election.Fresh(time.Now()) {
				if holder, err := holderNow(ctx, election); err == nil && holder != "" && holder != election.Identity() {
					lost(errLostLease)
					return
				}
				select {
				case <-ctx.Done():
				case <-time.After(ha.RetryPeriod):
				}
			}
		}()
	}
	go func() {
		// A fresh standby asks at once; afterwards the active's heartbeats
		// find any gap.
		if err := replica.CatchUp(ctx); err != nil {
			log.Info("no active to catch up with yet", "error", err)
		}
	}()
	go replica.Heartbeat(ctx)
	go watchForOutage(ctx, replica, election, store, gate, hooks, log)
	go metrics.WatchLag(ctx, replica.Lag)
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		election.Run(ctx, func() bool {
			if replica.InSync() {
				return true
			}
			ok, err := election.MayStand(ctx, pair.Bootstrap)
			return err == nil && ok
		})
	}()
	handOver = func() {
		select {
		case <-ran:
		case <-time.After(2 * ha.RetryPeriod):
			log.Warn("the election did not stop in time: the Lease is left to run out")
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		switch released, err := election.Release(ctx); {
		case err != nil:
			log.Warn("the Lease is left to run out", "error", err)
		case released:
			log.Info("gave the Lease up: the standby takes over at its next try")
		}
	}
	report = func() *hyperdhcpv1beta1.HighAvailabilityStatus {
		if !election.Fresh(time.Now()) {
			return nil
		}
		return &hyperdhcpv1beta1.HighAvailabilityStatus{
			Active: pair.Replica, Epoch: election.Epoch(), Since: metav1.NewTime(time.Unix(0, tookOver.Load())),
			StandbyInSync: replica.InSync(), ReplicationLagMilliseconds: replica.Lag(time.Now()).Round(time.Second).Milliseconds(),
		}
	}
	behind = func() bool { return !replica.InSync() }
	return report, handOver, behind, nil
}

// writesNothing is the standby's own database as a renewals-only LeaseDB
// sees it: read once, never written (the active's stream writes it).
type writesNothing struct{ leasedb.Store }

func (writesNothing) Apply(context.Context, []leasedb.Change) error { return nil }
func (writesNothing) Close() error                                  { return nil }

// latest is the later of a and b.
func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// watchForOutage turns a standby's renewals-only answers on while it hears
// neither the active (no batch or heartbeat) nor the API server for a Lease
// duration, and off again when either is back or this replica activates.
// Then the active may be gone with the API server, and its clients
// rebinding (RFC 2131 4.4.5) would find nobody: the standby confirms a
// client's own lease from its copy with the time it has left, as the
// former active does (lease-lost); nothing is granted or extended, so
// nothing can go to two clients whatever the other replica does. Its copy
// may be behind (read once, or never caught up since a restart): every
// lease in it was acknowledged by an active to that client, and a copy
// behind only holds shorter leases, or ones the client has since given
// up and so does not renew.
func watchForOutage(ctx context.Context, replica *ha.Replica, election *ha.Election, store leasedb.Store, gate *activeGate,
	hooks pairHooks, log *slog.Logger) {
	apiSeen := time.Now()
	stop := func(why string) {
		if db := gate.renewalsOnly.Swap(nil); db != nil {
			log.Info("the standby stops answering renewals", "because", why)
			_ = db.Close()
		}
	}
	defer stop("it is ending")
	ticker := time.NewTicker(ha.RetryPeriod)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		now := time.Now()
		switch {
		case hooks.current() != nil:
			stop("it is the active")
			continue
		case now.Sub(replica.Heard()) < ha.LeaseDuration:
			stop("the active is back")
			continue
		}
		if _, err := holderNow(ctx, election); err == nil {
			apiSeen = now
			stop("the API server is back")
			continue
		}
		// Neither for a Lease duration: from the later of the two.
		if now.Sub(latest(apiSeen, replica.Heard())) < ha.LeaseDuration || gate.renewalsOnly.Load() != nil {
			continue
		}
		db, err := hooks.openRenewalsOnly(writesNothing{store})
		if err != nil {
			log.Error("cannot load the leases to answer renewals", "error", err)
			continue
		}
		db.SetRenewalsOnly(true)
		gate.renewalsOnly.Store(db)
		log.Warn("the standby hears neither the active nor the API server: answering renewals of existing leases only, with the time they have left")
	}
}
