package ha

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

const (
	// peerTimeout bounds a replication round trip; a standby that does not
	// answer within it is taken for gone and the active goes on alone.
	peerTimeout = time.Second
	// heartbeatEvery is how often the active tells the standby where the
	// stream is when no batch goes.
	heartbeatEvery = 500 * time.Millisecond
	maxBatchBytes  = 64 << 20
	// standbyWALRestartEvery: the standby starts its database's WAL over
	// after this many batches, as the lease database's committer does on
	// the active (the WAL is never checkpointed by SQLite itself).
	standbyWALRestartEvery = 256
)

// Errors of Apply on a replica that may not acknowledge.
var (
	// ErrNotActive: the replica does not hold a fresh Lease.
	ErrNotActive = errors.New("not the active replica (no fresh Lease)")
	// ErrFenced: the standby has seen a newer epoch: another replica is
	// active.
	ErrFenced = errors.New("fenced: the other replica holds a newer epoch")
)

// batch is one replication message: changes of one group commit (none for
// a heartbeat), numbered within the sender's epoch.
type batch struct {
	Epoch int64 `json:"epoch"`
	// Stream is chosen at random by the active for each term: a process
	// that takes the Lease again in the same epoch starts a new stream.
	Stream  uint64           `json:"stream"`
	Seq     uint64           `json:"seq"`
	Changes []leasedb.Change `json:"changes,omitempty"`
}

// snapshot is every lease of the active and where its stream stands.
type snapshot struct {
	Epoch  int64           `json:"epoch"`
	Stream uint64          `json:"stream"`
	Seq    uint64          `json:"seq"`
	Leases []leasedb.Lease `json:"leases"`
}

// TLSFiles authenticate the pair: both replicas present a certificate of
// the pair's CA and accept only such a peer.
type TLSFiles struct {
	CA, Cert, Key string
}

// Replica is one replica's side of the pair. As the active it is the lease
// database's Store: Apply writes the local database and the standby's
// together. As the standby it serves the active's batches (ServeHTTP) into
// the local database.
type Replica struct {
	local    *leasedb.SQLiteStore
	election *Election
	peerURL  string
	client   *http.Client
	log      *slog.Logger

	// mu orders everything the stream carries: the active's batches and
	// snapshots, the standby's applying and catching up.
	mu sync.Mutex
	// epoch, stream and seq: where the stream stands (sent as the active,
	// applied as the standby).
	epoch  int64
	stream uint64
	seq    uint64
	// activated is the epoch this replica became active in; Apply refuses
	// in any other.
	activated atomic.Int64
	// synced: as the standby, the local database holds the stream up to
	// seq (it caught up since it started); as the active, the standby
	// answered the last batch.
	synced bool
	// alone: as the active, the Lease says the standby is not in sync.
	alone bool
	// replicating mirrors synced on the active, for OnReplicating's
	// readers; always false on the standby.
	replicating atomic.Bool

	// OnReplicating, when set, is told (with the stream's lock held) each
	// time the active's batches start or stop reaching the standby. The
	// daemon caps lease times while they do not.
	OnReplicating func(replicating bool)

	// lastConfirmed is when the standby last confirmed a batch or
	// heartbeat (Unix nanoseconds), for the lag metric.
	lastConfirmed atomic.Int64
	// appliedSinceWALRestart counts the standby's batches; r.mu is held.
	appliedSinceWALRestart int
	// heard is when, as the standby, this replica last took a batch,
	// heartbeat or snapshot of the active's stream (Unix nanoseconds).
	heard      atomic.Int64
	catchingUp atomic.Bool
}

// NewReplica returns the replica of local, whose peer is at peerURL
// (https://host:port), authenticated by files.
func NewReplica(local *leasedb.SQLiteStore, election *Election, peerURL string, files TLSFiles, log *slog.Logger) (*Replica, error) {
	config, err := pairTLS(files)
	if err != nil {
		return nil, err
	}
	// HTTP/1.1 over one kept-alive connection: a batch at a time.
	transport := &http.Transport{TLSClientConfig: config, MaxIdleConnsPerHost: 4}
	r := &Replica{
		local: local, election: election, peerURL: peerURL, log: log,
		client: &http.Client{Transport: transport, Timeout: peerTimeout},
	}
	r.activated.Store(-1)
	return r, nil
}

// pairTLS is the TLS configuration both ends use: the pair's certificate,
// and a peer accepted only with a certificate of the pair's CA. Names are
// not checked: the replicas reach each other by address, and holding a key
// the pair's CA signed is what makes a peer.
func pairTLS(files TLSFiles) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		return nil, fmt.Errorf("replication certificate: %w", err)
	}
	caPEM, err := os.ReadFile(files.CA)
	if err != nil {
		return nil, fmt.Errorf("replication CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("replication CA %s: no PEM certificate", files.CA)
	}
	verify := func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errors.New("the peer sent no certificate")
		}
		leaf, err := x509.ParseCertificate(raw[0])
		if err != nil {
			return err
		}
		intermediates := x509.NewCertPool()
		for _, r := range raw[1:] {
			if c, err := x509.ParseCertificate(r); err == nil {
				intermediates.AddCert(c)
			}
		}
		_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: intermediates,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		return err
	}
	return &tls.Config{
		Certificates:          []tls.Certificate{cert},
		MinVersion:            tls.VersionTLS13,
		ClientAuth:            tls.RequireAnyClientCert,
		InsecureSkipVerify:    true, //nolint:gosec // VerifyPeerCertificate checks the chain to the pair's CA
		VerifyPeerCertificate: verify,
	}, nil
}

// Listen serves the replication endpoints on addr until ctx ends.
func (r *Replica) Listen(ctx context.Context, addr string, files TLSFiles) error {
	config, err := pairTLS(files)
	if err != nil {
		return err
	}
	listener, err := tls.Listen("tcp", addr, config)
	if err != nil {
		return fmt.Errorf("listen for replication on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: r, ReadHeaderTimeout: 5 * time.Second}
	context.AfterFunc(ctx, func() { _ = srv.Close() })
	go func() {
		if err := srv.Serve(listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.log.Error("replication endpoint stopped", "error", err)
		}
	}()
	return nil
}

// Activate makes this replica the active one of epoch: Apply writes only
// while the Lease is fresh in that epoch. standbyInSync is what the Lease
// said of the other replica: if not, the label is set back once it has
// caught up.
func (r *Replica) Activate(epoch int64, standbyInSync bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.activated.Store(epoch)
	if !standbyInSync {
		r.alone = true
	}
}

// newTerm starts the stream of a term; r.mu is held.
func (r *Replica) newTerm(epoch int64) {
	r.epoch, r.stream, r.seq = epoch, rand.Uint64(), 0
	r.setReplicating(false)
}

// setReplicating records whether the active's batches reach the standby;
// r.mu is held.
func (r *Replica) setReplicating(on bool) {
	r.synced = on
	if r.replicating.Swap(on) != on && r.OnReplicating != nil {
		r.OnReplicating(on)
	}
}

// Replicating tells whether, as the active, this replica's batches reach
// the standby.
func (r *Replica) Replicating() bool { return r.replicating.Load() }

// The local database's upkeep passes through to it, so the lease database
// on top of the active checkpoints it, starts its WAL over and probes the
// disk during a fault as on a single server (none of it is replicated).

// Checkpoint runs a checkpoint of the local database.
func (r *Replica) Checkpoint(ctx context.Context) (walPages, copied int, err error) {
	return r.local.Checkpoint(ctx)
}

// WALSize is the size of the local database's WAL.
func (r *Replica) WALSize() int64 { return r.local.WALSize() }

// RestartWAL starts the local database's WAL over; the committer calls it
// after Apply, and the lock keeps a standby's batch from racing it.
func (r *Replica) RestartWAL(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.local.RestartWAL(ctx)
}

// Probe makes one durable write to the local database.
func (r *Replica) Probe(ctx context.Context) error { return r.local.Probe(ctx) }

// Load implements leasedb.Store.
func (r *Replica) Load(ctx context.Context) ([]leasedb.Lease, error) { return r.local.Load(ctx) }

// Close implements leasedb.Store; the local store stays open for the
// replica (it is closed by whoever opened it).
func (r *Replica) Close() error { return nil }

// Apply implements leasedb.Store for the active: the batch is written to
// the local database and sent to the standby at once, and Apply succeeds
// only when both have it. Written only here (the standby away; the Lease
// is labelled first), it returns leasedb.ErrUnreplicated. It fails while
// this replica's Lease is not fresh, before and after the write, so no ACK
// leaves a former active.
func (r *Replica) Apply(ctx context.Context, changes []leasedb.Change) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	epoch := r.election.Epoch()
	if !r.election.Fresh(time.Now()) || epoch != r.activated.Load() {
		return ErrNotActive
	}
	if epoch != r.epoch || r.stream == 0 {
		// A new term: the standby catches up from a snapshot of it.
		r.newTerm(epoch)
	}
	next := batch{Epoch: epoch, Stream: r.stream, Seq: r.seq + 1, Changes: changes}
	var peerErr error
	var wg sync.WaitGroup
	if r.synced {
		wg.Go(func() { peerErr = r.send(ctx, next) })
	}
	localErr := r.local.Apply(ctx, changes)
	wg.Wait()
	if localErr != nil {
		// Rows are whole: the committer writes them again, in a new batch.
		return localErr
	}
	r.seq = next.Seq
	switch {
	case !r.synced:
	case peerErr == nil:
		r.lastConfirmed.Store(time.Now().UnixNano())
	case errors.Is(peerErr, ErrFenced):
		return peerErr
	default:
		r.setReplicating(false)
		r.log.Warn("the standby did not take a batch: going on alone", "error", peerErr)
	}
	if !r.synced && !r.alone {
		if err := r.election.SetInSync(ctx, false); err != nil {
			return fmt.Errorf("the standby is not in sync and the Lease cannot say so: %w", err)
		}
		r.alone = true
	}
	if !r.election.Fresh(time.Now()) || r.election.Epoch() != r.activated.Load() {
		return ErrNotActive
	}
	if !r.synced {
		// Only ACKs decided under the lease time cap may go out.
		return fmt.Errorf("the standby does not have this batch: %w", leasedb.ErrUnreplicated)
	}
	return nil
}

// send posts b to the standby and waits for its answer.
func (r *Replica) send(ctx context.Context, b batch) error {
	body, err := json.Marshal(b)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, peerTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.peerURL+"/v1/batch", bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	switch resp.StatusCode {
	case http.StatusOK:
		return nil
	case http.StatusConflict:
		return fmt.Errorf("%w: %s", ErrFenced, bytes.TrimSpace(msg))
	default:
		return fmt.Errorf("standby answered %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
}

// Heartbeat tells the standby where the stream stands every
// heartbeatEvery while this replica is active, until ctx ends; a standby
// that answers again after a gap and has caught up is in sync once more,
// and the Lease says so.
func (r *Replica) Heartbeat(ctx context.Context) {
	ticker := time.NewTicker(heartbeatEvery)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		r.heartbeat(ctx)
	}
}

func (r *Replica) heartbeat(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.election.Fresh(time.Now()) || r.election.Epoch() != r.activated.Load() {
		return
	}
	if r.epoch != r.election.Epoch() || r.stream == 0 {
		// The first heartbeat of a term starts its stream, so the
		// standby catches up before the first batch.
		r.newTerm(r.election.Epoch())
	}
	b := batch{Epoch: r.epoch, Stream: r.stream, Seq: r.seq}
	if r.synced {
		// In the stream, ordered with the batches.
		if err := r.send(ctx, b); err != nil {
			r.setReplicating(false)
			r.log.Warn("the standby does not answer heartbeats", "error", err)
			return
		}
		r.lastConfirmed.Store(time.Now().UnixNano())
	} else {
		// The standby is away or behind: a probe, sent without holding up
		// the batches written alone meanwhile (its timeout each time).
		r.mu.Unlock()
		err := r.send(ctx, b)
		r.mu.Lock()
		if err != nil || r.synced {
			return // still away, or a snapshot served meanwhile put it back
		}
		if r.epoch != b.Epoch || r.stream != b.Stream || r.seq != b.Seq {
			return // the stream moved on: the next heartbeat shows the gap
		}
		r.lastConfirmed.Store(time.Now().UnixNano())
		r.setReplicating(true)
		r.log.Info("the standby is in sync again", "epoch", r.epoch, "seq", r.seq)
	}
	if r.alone {
		// Under the lock: a batch that finds the standby gone meanwhile
		// must see alone still set, and label the Lease false after this.
		if err := r.election.SetInSync(ctx, true); err == nil {
			r.alone = false
		}
	}
}

// ServeHTTP serves the standby's side (POST /v1/batch) and the active's
// (GET /v1/snapshot).
func (r *Replica) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	switch {
	case req.Method == http.MethodPost && req.URL.Path == "/v1/batch":
		r.receive(w, req)
	case req.Method == http.MethodGet && req.URL.Path == "/v1/snapshot":
		r.serveSnapshot(w, req)
	default:
		http.NotFound(w, req)
	}
}

// receive applies a batch as the standby: one of the current epoch that
// follows the last is written, then confirmed; one of an older epoch is
// refused (fencing); a gap or a newer epoch starts a catch-up.
func (r *Replica) receive(w http.ResponseWriter, req *http.Request) {
	var b batch
	if err := json.NewDecoder(io.LimitReader(req.Body, maxBatchBytes)).Decode(&b); err != nil {
		http.Error(w, "bad batch: "+err.Error(), http.StatusBadRequest)
		return
	}
	if r.election.Fresh(time.Now()) {
		http.Error(w, "this replica is active", http.StatusConflict)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case b.Epoch < r.epoch || b.Epoch < r.election.Epoch():
		http.Error(w, fmt.Sprintf("epoch %d is older than %d", b.Epoch, max(r.epoch, r.election.Epoch())), http.StatusConflict)
		return
	default:
		// An active of this or a newer epoch is there, whatever becomes of
		// its batch.
		r.heard.Store(time.Now().UnixNano())
	}
	switch {
	case !r.synced || b.Epoch > r.epoch || b.Stream != r.stream || len(b.Changes) == 0 && b.Seq != r.seq || len(b.Changes) > 0 && b.Seq != r.seq+1:
		// Behind (or the active started over): every batch the active
		// applied alone must be here before this replica is in sync.
		r.startCatchUp()
		http.Error(w, "catching up", http.StatusPreconditionFailed)
		return
	case len(b.Changes) == 0:
		r.heard.Store(time.Now().UnixNano())
		w.WriteHeader(http.StatusOK) // a heartbeat where the stream stands
		return
	}
	if err := r.local.Apply(req.Context(), b.Changes); err != nil {
		http.Error(w, "write: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	r.seq = b.Seq
	r.heard.Store(time.Now().UnixNano())
	r.boundStandbyWAL()
	w.WriteHeader(http.StatusOK)
}

// boundStandbyWAL starts the standby's WAL over every
// standbyWALRestartEvery batches, between two of them; r.mu is held. A
// failure is retried at the next batch.
func (r *Replica) boundStandbyWAL() {
	r.appliedSinceWALRestart++
	if r.appliedSinceWALRestart >= standbyWALRestartEvery && r.local.RestartWAL(context.Background()) == nil {
		r.appliedSinceWALRestart = 0
	}
}

// Heard is when, as the standby, this replica last took part of the
// active's stream; zero if never.
func (r *Replica) Heard() time.Time {
	if n := r.heard.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// serveSnapshot sends every lease and where the stream stands, taken
// between two batches, while this replica is active. The standby that
// asked has what the stream carried so far: the batches from here on go to
// it again (if it cannot take them, the next batch says so).
func (r *Replica) serveSnapshot(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	if !r.election.Fresh(time.Now()) || r.election.Epoch() != r.activated.Load() || r.epoch != r.election.Epoch() || r.stream == 0 {
		r.mu.Unlock()
		http.Error(w, "not the active replica", http.StatusConflict)
		return
	}
	leases, err := r.local.Load(req.Context())
	s := snapshot{Epoch: r.epoch, Stream: r.stream, Seq: r.seq, Leases: leases}
	if err == nil && !r.synced {
		r.setReplicating(true)
		r.log.Info("the standby is in sync again: it has the snapshot", "epoch", r.epoch, "seq", r.seq)
	}
	r.mu.Unlock()
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(s)
}

// startCatchUp fetches a snapshot from the active in the background;
// r.mu is held.
func (r *Replica) startCatchUp() {
	r.synced = false
	go func() {
		if err := r.CatchUp(context.Background()); err != nil {
			r.log.Warn("catching up with the active failed; retried at its next batch", "error", err)
		}
	}()
}

// CatchUp makes the local database equal to the active's snapshot; the
// replica is in sync (and may stand for the Lease) once it succeeded. One
// runs at a time; a snapshot older than what the replica applied since is
// dropped.
func (r *Replica) CatchUp(ctx context.Context) error {
	if !r.catchingUp.CompareAndSwap(false, true) {
		return nil
	}
	defer r.catchingUp.Store(false)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.peerURL+"/v1/snapshot", nil)
	if err != nil {
		return err
	}
	client := *r.client
	client.Timeout = 30 * time.Second
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("fetch snapshot: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("fetch snapshot: %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	var s snapshot
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.election.Fresh(time.Now()) {
		return errors.New("this replica became active")
	}
	if r.synced && (s.Epoch < r.epoch || s.Epoch == r.epoch && s.Stream == r.stream && s.Seq <= r.seq) {
		return nil // batches since have brought it further
	}
	mine, err := r.local.Load(ctx)
	if err != nil {
		return err
	}
	changes := make([]leasedb.Change, 0, len(s.Leases)+len(mine))
	theirs := make(map[string]bool, len(s.Leases))
	for _, l := range s.Leases {
		theirs[l.IP.String()] = true
		changes = append(changes, leasedb.Change{Lease: l})
	}
	for _, l := range mine {
		if !theirs[l.IP.String()] {
			changes = append(changes, leasedb.Change{Lease: l, Delete: true})
		}
	}
	if err := r.local.Apply(ctx, changes); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	r.epoch, r.stream, r.seq, r.synced = s.Epoch, s.Stream, s.Seq, true
	r.heard.Store(time.Now().UnixNano())
	r.log.Info("caught up with the active", "leases", len(s.Leases), "epoch", s.Epoch, "seq", s.Seq)
	return nil
}

// InSync tells whether, as the standby, the local database holds the
// active's stream (the replica may stand for the Lease); as the active,
// whether the standby answered the last batch or heartbeat.
func (r *Replica) InSync() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.synced
}

// Lag is how long ago the standby last confirmed a batch or heartbeat, as
// seen by the active.
func (r *Replica) Lag(now time.Time) time.Duration {
	last := r.lastConfirmed.Load()
	if last == 0 {
		return 0
	}
	return now.Sub(time.Unix(0, last))
}

var _ leasedb.Store = (*Replica)(nil)
