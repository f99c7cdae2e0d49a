// Package ha makes two hyperdhcpd replicas a hot-standby pair (see
// docs/design/ha.md): a Kubernetes Lease decides which one is active, the
// active replicates every batch of lease changes to the standby and
// acknowledges a lease only once both have it on disk, and an epoch (the
// Lease's transition count) fences off a former active.
package ha

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Lease timings: the standby takes over at most LeaseDuration+RetryPeriod
// after the active's last renewal.
const (
	LeaseDuration = 6 * time.Second
	RenewDeadline = 4 * time.Second
	RetryPeriod   = time.Second
	// freshMargin is taken off the Lease's duration when the holder judges
	// whether its Lease still stands, for clocks that run at slightly
	// different rates.
	freshMargin = time.Second
)

// InSyncLabel on the Lease says whether the standby holds every lease the
// active granted; the active sets it to "false" before it grants one alone.
const InSyncLabel = "hyperdhcp.io/standby-in-sync"

// Election stands for the Lease on behalf of one replica.
type Election struct {
	leases    coordinationv1client.LeasesGetter
	namespace string
	name      string
	identity  string
	lock      *trackedLock
	log       *slog.Logger

	leading atomic.Bool
	// renewed is when the last successful write of our record was sent
	// (Unix nanoseconds); epoch is the Lease's transition count then.
	renewed atomic.Int64
	epoch   atomic.Int64

	// OnStartedLeading is called when the replica took the Lease, with
	// the epoch and whether the former holder left the standby in sync.
	OnStartedLeading func(epoch int64, inSync bool)
	// OnStoppedLeading is called when the replica lost the Lease.
	OnStoppedLeading func()
}

// NewElection returns the election of the Lease namespace/name, in which
// this replica is identity.
func NewElection(cfg *rest.Config, namespace, name, identity string, log *slog.Logger) (*Election, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "hyperdhcpd"
	client, err := coordinationv1client.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("lease election client: %w", err)
	}
	e := &Election{leases: client, namespace: namespace, name: name, identity: identity, log: log}
	e.lock = &trackedLock{
		inner:    &resourcelock.LeaseLock{LeaseMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}, Client: client, LockConfig: resourcelock.ResourceLockConfig{Identity: identity}},
		election: e,
	}
	return e, nil
}

// Fresh tells whether this replica holds the Lease and no other replica
// can have taken it: until the Lease's duration, less a margin, after the
// last renewal was sent.
func (e *Election) Fresh(now time.Time) bool {
	return e.leading.Load() && now.Before(time.Unix(0, e.renewed.Load()).Add(LeaseDuration-freshMargin))
}

// Epoch is the Lease's transition count when this replica last held it.
func (e *Election) Epoch() int64 { return e.epoch.Load() }

// Run stands for the Lease whenever eligible says the replica may (a
// standby in sync), until ctx ends. A candidate that stops being eligible
// (its stream has a gap, it is catching up) stops standing at once.
func (e *Election) Run(ctx context.Context, eligible func() bool) {
	for ctx.Err() == nil {
		if !eligible() {
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:          e.lock,
			LeaseDuration: LeaseDuration,
			RenewDeadline: RenewDeadline,
			RetryPeriod:   RetryPeriod,
			Name:          e.name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: e.startedLeading,
				OnStoppedLeading: func() {
					if e.leading.Swap(false) && e.OnStoppedLeading != nil {
						e.OnStoppedLeading()
					}
				},
			},
		})
		if err != nil {
			e.log.Error("cannot stand for the Lease", "error", err)
			return
		}
		standing, stop := context.WithCancel(ctx)
		go func() {
			ticker := time.NewTicker(200 * time.Millisecond)
			defer ticker.Stop()
			for {
				select {
				case <-standing.Done():
					return
				case <-ticker.C:
					if !e.leading.Load() && !e.Fresh(time.Now()) && !eligible() {
						stop()
						return
					}
				}
			}
		}()
		elector.Run(standing)
		stop()
	}
}

func (e *Election) startedLeading(ctx context.Context) {
	e.leading.Store(true)
	inSync := true
	lease, err := e.leases.Leases(e.namespace).Get(ctx, e.name, metav1.GetOptions{})
	if err == nil && lease.Labels[InSyncLabel] == "false" {
		inSync = false
	}
	e.log.Info("took the Lease: active", "lease", e.namespace+"/"+e.name, "epoch", e.Epoch(), "standby_was_in_sync", inSync)
	if e.OnStartedLeading != nil {
		e.OnStartedLeading(e.Epoch(), inSync)
	}
}

// Holder names the replica the Lease names now ("" for none).
func (e *Election) Holder(ctx context.Context) (string, error) {
	lease, err := e.leases.Leases(e.namespace).Get(ctx, e.name, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	if lease.Spec.HolderIdentity == nil {
		return "", nil
	}
	return *lease.Spec.HolderIdentity, nil
}

// Release gives up the Lease once Run has returned (the caller waits for
// it: a renewal after the release would take the Lease back), so that at a
// planned stop the other replica takes over within a retry period instead
// of a Lease duration. It reports whether there was a Lease to give up.
func (e *Election) Release(ctx context.Context) (bool, error) {
	if e.leading.Load() {
		return false, errors.New("give the Lease up: still leading")
	}
	return e.lock.release(ctx)
}

// Identity is this replica's name in the Lease.
func (e *Election) Identity() string { return e.identity }

// MayStand tells whether a replica that is not in sync with an active may
// still stand for the Lease: when it was itself the last holder (an active
// holds every lease it acknowledged), or, for the bootstrap replica (the
// one with the Server's database when the pair was made), when nobody has
// held the Lease yet. Otherwise only a standby in sync may: a new replica
// with an empty database must never be the first to answer.
func (e *Election) MayStand(ctx context.Context, bootstrap bool) (bool, error) {
	lease, err := e.leases.Leases(e.namespace).Get(ctx, e.name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return bootstrap, nil
	case err != nil:
		return false, err
	case lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "":
		return bootstrap, nil
	}
	return *lease.Spec.HolderIdentity == e.identity, nil
}

// SetInSync records on the Lease whether the standby holds every lease;
// only the holder may call it. It does not count as a renewal: the record
// the other replica watches does not change.
func (e *Election) SetInSync(ctx context.Context, inSync bool) error {
	return e.lock.setLabel(ctx, InSyncLabel, fmt.Sprint(inSync))
}

// trackedLock is the Lease lock, noting when the elector's writes of our
// record were sent and the epoch they carry.
type trackedLock struct {
	inner    *resourcelock.LeaseLock
	election *Election
	mu       sync.Mutex
	last     *resourcelock.LeaderElectionRecord
}

func (l *trackedLock) Get(ctx context.Context) (*resourcelock.LeaderElectionRecord, []byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inner.Get(ctx)
}

func (l *trackedLock) Create(ctx context.Context, record resourcelock.LeaderElectionRecord) error {
	return l.write(ctx, record, l.inner.Create)
}

func (l *trackedLock) Update(ctx context.Context, record resourcelock.LeaderElectionRecord) error {
	return l.write(ctx, record, l.inner.Update)
}

func (l *trackedLock) write(ctx context.Context, record resourcelock.LeaderElectionRecord,
	write func(context.Context, resourcelock.LeaderElectionRecord) error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	sent := time.Now()
	if err := write(ctx, record); err != nil {
		return err
	}
	if record.HolderIdentity == l.inner.Identity() {
		l.last = &record
		l.election.renewed.Store(sent.UnixNano())
		l.election.epoch.Store(int64(record.LeaderTransitions))
	}
	return nil
}

func (l *trackedLock) setLabel(ctx context.Context, key, value string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil || !l.election.leading.Load() || !l.election.Fresh(time.Now()) {
		return fmt.Errorf("not holding the Lease")
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	// The lock writes its Labels with every renewal too: a label that
	// could not be written must not be written later by a renewal.
	previous := l.inner.Labels
	l.inner.Labels = map[string]string{key: value}
	ours, err := l.updateOwnRecord(ctx, func(*resourcelock.LeaderElectionRecord) {})
	switch {
	case err != nil:
		l.inner.Labels = previous
		return fmt.Errorf("label the Lease %s=%s: %w", key, value, err)
	case !ours:
		l.inner.Labels = previous
		return fmt.Errorf("not holding the Lease")
	}
	return nil
}

// release ends this replica's Lease early, if the Lease is still the one
// it last wrote: the record says it lasts 1 s from now, so the other
// replica takes it at its next try. The holder stays this replica (its
// last holder), so the bootstrap rule does not apply to an ended Lease.
func (l *trackedLock) release(ctx context.Context) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		return false, nil
	}
	return l.updateOwnRecord(ctx, func(record *resourcelock.LeaderElectionRecord) {
		record.LeaseDurationSeconds = 1
		record.RenewTime = metav1.Now()
	})
}

// updateOwnRecord writes the Lease again with change applied, if it still
// holds the record this replica last wrote (its holder, same transition
// count), and reports whether it did. It reads the Lease first: the
// elector's last read may be of the other replica's record, which this
// write must never put back to ours. l.mu is held.
func (l *trackedLock) updateOwnRecord(ctx context.Context, change func(*resourcelock.LeaderElectionRecord)) (bool, error) {
	current, _, err := l.inner.Get(ctx)
	if err != nil {
		return false, fmt.Errorf("read the Lease: %w", err)
	}
	if current.HolderIdentity != l.inner.Identity() || current.LeaderTransitions != l.last.LeaderTransitions {
		return false, nil
	}
	change(current)
	if err := l.inner.Update(ctx, *current); err != nil {
		return false, err
	}
	return true, nil
}

func (l *trackedLock) RecordEvent(string) {}
func (l *trackedLock) Identity() string   { return l.inner.Identity() }
func (l *trackedLock) Describe() string   { return l.inner.Describe() }
