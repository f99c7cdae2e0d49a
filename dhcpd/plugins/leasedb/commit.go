package leasedb

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"
)

// retryAfter is how long the committer waits before writing again after a
// failed transaction, so a full disk is not hammered once per packet.
const retryAfter = time.Second

var errCommitterClosed = errors.New("lease database is closing")

// committer writes the allocator's change log to the store with group
// commit: handlers append their changes while they hold the lease lock, so
// the log is in the order memory changed, and wait for their ticket. One
// transaction (one fsync) writes everything appended so far and releases all
// of its waiters together; what arrives while it runs forms the next batch.
//
// The first handler to wait while nothing is being written writes the batch
// itself, on its own goroutine: at low rates an ACK then costs no hand-off
// to another goroutine and back, which on a small VM costs more CPU than
// the transaction (two futex wake-ups and context switches per REQUEST).
// There is no timer to wait for company: Go rounds a sleep under a
// millisecond up to one when the process is otherwise idle, which made a
// 300 µs window the largest part of the ACK's latency. A background
// goroutine writes batches nobody waits for, the batch that built up
// behind a running one, and the retries after a failure.
//
// A failed transaction is not lost: its changes go back to the head of the
// log and are written again before anything newer. Every change is a whole
// row, so only the last change of an address matters, and the log is
// compacted to that before each write.
type committer struct {
	store   Store
	observe func(batch int, took time.Duration, err error)
	// faulted is called once when writes start failing (with the first
	// error) and once when they succeed again (with nil): the episode, not
	// every failed attempt.
	faulted func(err error, since time.Time, attempts int)
	wake    chan struct{}
	done    chan struct{}
	// sinceRestart counts the batches written since the WAL last started
	// over; only the goroutine that is writing uses it.
	sinceRestart int

	mu       sync.Mutex
	pending  []Change
	appended uint64 // ticket of the newest change
	durable  uint64 // every change up to this ticket is in the store
	// unreplicatedUpTo is the newest ticket written without the replica
	// (ErrUnreplicated); waiters for it or anything older are told so,
	// however late they come (some of those were replicated: they learn it
	// too, which only costs a client a retry).
	unreplicatedUpTo uint64
	waiters          []waiter
	closed           bool
	// writing is set while one goroutine writes a batch; there is never
	// more than one.
	writing bool
	// applying is when the running transaction started (zero when none),
	// for liveness checks.
	applying time.Time
	// failing is the storage fault in progress: its first error, since
	// when, and how many attempts failed; nil while writes succeed.
	failing *storageFault
}

type storageFault struct {
	err      error
	since    time.Time
	attempts int
}

type waiter struct {
	ticket uint64
	result chan error
}

func newCommitter(store Store, observe func(int, time.Duration, error), faulted func(error, time.Time, int)) *committer {
	c := &committer{
		store:   store,
		observe: observe,
		faulted: faulted,
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	go c.run()
	return c
}

// append adds changes to the log and returns the ticket to wait for. The
// caller holds the lock under which the changes were made, which is what
// keeps the log in order. The caller then waits for the ticket, which
// writes the changes, or calls flush.
func (c *committer) append(changes []Change) uint64 {
	c.mu.Lock()
	c.pending = append(c.pending, changes...)
	c.appended += uint64(len(changes))
	ticket := c.appended
	c.mu.Unlock()
	return ticket
}

// flush has the background goroutine write what was appended, for changes
// nobody waits for (an offer taken back, expiries).
func (c *committer) flush() { c.signal() }

func (c *committer) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// wait returns once every change up to ticket is durable, or with the
// reason they are not (the transaction failed, ctx ended, or the committer
// closed). A failed change is still written later; the caller only learns
// that it cannot count on it now. When nothing is being written, the
// caller writes the batch itself; during a storage fault it returns at
// once.
func (c *committer) wait(ctx context.Context, ticket uint64) error {
	c.mu.Lock()
	if c.durable >= ticket {
		unreplicated := ticket > 0 && ticket <= c.unreplicatedUpTo
		c.mu.Unlock()
		if unreplicated {
			return ErrUnreplicated
		}
		return nil
	}
	if c.closed {
		c.mu.Unlock()
		return errCommitterClosed
	}
	if c.failing != nil {
		// During a fault only the background goroutine writes, once per
		// retryAfter; nobody waits for it: a server answering from one
		// goroutine would stop answering at all.
		err := c.failing.err
		c.mu.Unlock()
		return fmt.Errorf("lease storage is failing: %w", err)
	}
	if !c.writing {
		c.writing = true
		c.mu.Unlock()
		// The batch covers ticket: it was appended before this call.
		return c.write()
	}
	w := waiter{ticket: ticket, result: make(chan error, 1)}
	c.waiters = append(c.waiters, w)
	c.mu.Unlock()
	select {
	case err := <-w.result:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run is the background writer: batches nobody waits for, the batch that
// built up behind another, retries during a fault, the last batch at close.
func (c *committer) run() {
	defer close(c.done)
	var retry <-chan time.Time
	for {
		retried := false
		if retry != nil {
			// After a failure, new changes wait for the back-off too: a full
			// disk must not be retried once per packet.
			<-retry
			retry, retried = nil, true
		} else {
			<-c.wake
		}
		c.mu.Lock()
		if c.writing {
			// The writer signals when it is done.
			c.mu.Unlock()
			continue
		}
		if c.failing != nil && !retried && !c.closed {
			// A handler's write failed: the retries are paced from here.
			c.mu.Unlock()
			retry = time.After(retryAfter)
			continue
		}
		closed := c.closed
		c.writing = true
		c.mu.Unlock()
		_ = c.write()
		switch {
		case closed:
			return
		case c.faulty():
			// Retried (and probed) every second, traffic or not, so the
			// fault clears by itself once the cause goes.
			retry = time.After(retryAfter)
		}
	}
}

// write writes everything appended so far as one transaction, releases the
// waiters it covers and returns its result; the caller has set c.writing.
func (c *committer) write() error {
	c.mu.Lock()
	changes, upTo := compact(c.pending), c.appended
	c.pending = nil
	c.applying = time.Now()
	c.mu.Unlock()

	var err error
	if len(changes) > 0 {
		err = c.store.Apply(context.Background(), changes)
	}
	// A batch written without the replica is written: the waiters learn
	// that it is only here.
	unreplicated := errors.Is(err, ErrUnreplicated)
	health := err // of the local storage
	if unreplicated {
		health = nil
	}
	if len(changes) > 0 {
		c.observe(len(changes), time.Since(c.applying), health)
		if health == nil {
			c.boundWAL()
		}
	}
	// During a fault a successful batch proves little (deleting a row
	// that was never stored writes nothing): the storage is healthy
	// again only when a write that always reaches the disk succeeds.
	written := health == nil
	if written && c.faulty() {
		if p, ok := c.store.(prober); ok {
			health = p.Probe(context.Background())
		}
	}

	c.mu.Lock()
	started := c.applying
	c.applying = time.Time{}
	if written {
		c.durable = upTo
		if unreplicated {
			c.unreplicatedUpTo = upTo
		}
	} else {
		c.pending = append(changes, c.pending...)
	}
	var transition *storageFault
	switch {
	case health == nil && c.failing != nil:
		transition, c.failing = c.failing, nil
	case health != nil && c.failing == nil:
		c.failing = &storageFault{err: health, since: started}
		transition = c.failing
	}
	if health != nil {
		c.failing.attempts++
	}
	c.waiters = c.release(upTo, err)
	if health != nil {
		// Nobody waits out a fault: those whose changes came after this
		// batch learn of it now too (the retries are the background's).
		c.waiters = c.release(c.appended, health)
	}
	c.writing = false
	// Whatever was appended meanwhile, a failure to retry or a close is the
	// background writer's.
	handOver := len(c.pending) > 0 || health != nil || c.closed
	c.mu.Unlock()
	if transition != nil && c.faulted != nil {
		if health != nil {
			c.faulted(health, transition.since, 1)
		} else {
			c.faulted(nil, transition.since, transition.attempts)
		}
	}
	if handOver {
		c.signal()
	}
	return err
}

// release answers the waiters whose tickets the last transaction covered
// and returns the others; with c.mu held.
func (c *committer) release(upTo uint64, err error) []waiter {
	rest := c.waiters[:0]
	for _, w := range c.waiters {
		if w.ticket <= upTo {
			w.result <- err
		} else {
			rest = append(rest, w)
		}
	}
	return rest
}

// walRestartEvery is how many committed batches the committer lets into
// the write-ahead log before it restarts it, between two batches. A batch
// adds one or two 4 KiB pages, so the WAL stays near 1 MiB. Under sustained
// load a checkpoint beside the writer is always a few frames behind, and
// the WAL grew without end (250 MB in 30 s at 2,000 leases/s); this one,
// with the background checkpointer's copying mostly done, costs about one
// more fsync per 256 commits.
const walRestartEvery = 256

// walRestarter is a Store whose write-ahead log can be started over.
type walRestarter interface {
	RestartWAL(ctx context.Context) error
}

// boundWAL restarts the WAL every walRestartEvery batches; on the
// committer's goroutine, between transactions. A failure is left to the
// next batch and to the background checkpointer.
func (c *committer) boundWAL() {
	c.sinceRestart++
	if w, ok := c.store.(walRestarter); ok && c.sinceRestart >= walRestartEvery {
		if w.RestartWAL(context.Background()) == nil {
			c.sinceRestart = 0
		}
	}
}

// prober is a Store that can prove it takes writes.
type prober interface {
	// Probe makes one small durable write.
	Probe(ctx context.Context) error
}

func (c *committer) faulty() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failing != nil
}

// fault returns the storage fault in progress: the first error of the
// episode and since when; a nil error while writes succeed.
func (c *committer) fault() (since time.Time, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failing == nil {
		return time.Time{}, nil
	}
	return c.failing.since, c.failing.err
}

// stuckFor reports how long the running transaction has taken, 0 if none runs.
func (c *committer) stuckFor(now time.Time) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.applying.IsZero() {
		return 0
	}
	return now.Sub(c.applying)
}

// close makes one last attempt to write the log and stops; later waits fail.
func (c *committer) close() {
	c.mu.Lock()
	already := c.closed
	c.closed = true
	c.mu.Unlock()
	if !already {
		c.signal()
	}
	<-c.done
	c.mu.Lock()
	for _, w := range c.waiters {
		w.result <- errCommitterClosed
	}
	c.waiters = nil
	c.mu.Unlock()
}

// compact keeps the last change of each address, in log order: each change
// writes a whole row, so earlier ones of the same address are overwritten
// within the same transaction anyway.
func compact(log []Change) []Change {
	if len(log) < 2 {
		return log
	}
	index := make(map[netip.Addr]int, len(log))
	for i, ch := range log {
		index[ch.Lease.IP] = i
	}
	if len(index) == len(log) {
		return log
	}
	out := make([]Change, 0, len(index))
	for i, ch := range log {
		if index[ch.Lease.IP] == i {
			out = append(out, ch)
		}
	}
	return out
}
