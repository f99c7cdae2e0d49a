package leasedb

import (
	"context"
	"errors"
	"sync"
	"time"
)

// maxBatch bounds one transaction so a burst cannot delay the first ACK of
// the batch for long.
const maxBatch = 512

// DefaultCommitWindow is how long a commit waits for more leases to share
// its fsync. Measured with make bench on 2 cores: CPU per exchange falls by
// about 30% at 1,000/s (400 -> 290 µs) and 4% at 3,000/s, for about 0.4-0.8
// ms more on the ACK, which no DHCP client notices.
const DefaultCommitWindow = 300 * time.Microsecond

var errCommitterClosed = errors.New("lease database is closing")

// committer implements group commit: handlers queue their changes and wait;
// one goroutine writes everything queued so far in a single transaction (one
// fsync), then releases all of their ACKs together. Under load the batch
// grows, so throughput is not bounded by fsync latency.
type committer struct {
	store   Store
	queue   chan *commitRequest
	observe func(batch int, took time.Duration, err error)
	window  time.Duration // how long to wait for company; <= 0: no wait
	done    chan struct{}

	// closing guards queue: commits hold it shared while they send, close
	// holds it exclusively, so nothing sends on the closed channel.
	closing sync.RWMutex
	closed  bool
}

type commitRequest struct {
	changes []Change
	result  chan error
}

func newCommitter(store Store, window time.Duration, observe func(int, time.Duration, error)) *committer {
	c := &committer{
		store:   store,
		queue:   make(chan *commitRequest, maxBatch),
		observe: observe,
		window:  window,
		done:    make(chan struct{}),
	}
	go c.run()
	return c
}

// commit returns once changes are durable, or with the reason they are not.
func (c *committer) commit(ctx context.Context, changes ...Change) error {
	req := &commitRequest{changes: changes, result: make(chan error, 1)}
	c.closing.RLock()
	if c.closed {
		c.closing.RUnlock()
		return errCommitterClosed
	}
	select {
	case c.queue <- req:
		c.closing.RUnlock()
	case <-ctx.Done():
		c.closing.RUnlock()
		return ctx.Err()
	}
	select {
	case err := <-req.result:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *committer) run() {
	defer close(c.done)
	var batch []*commitRequest
	var changes []Change
	for first := range c.queue {
		batch = c.gather(append(batch[:0], first))
		changes = changes[:0]
		for _, req := range batch {
			changes = append(changes, req.changes...)
		}
		start := time.Now()
		err := c.store.Apply(context.Background(), changes)
		c.observe(len(batch), time.Since(start), err)
		for _, req := range batch {
			req.result <- err
		}
	}
}

// gather adds queued requests to batch: with a window it waits up to that
// long for more, without one it takes only what is already queued.
func (c *committer) gather(batch []*commitRequest) []*commitRequest {
	var windowEnd <-chan time.Time
	if c.window > 0 {
		timer := time.NewTimer(c.window)
		defer timer.Stop()
		windowEnd = timer.C
	}
	for len(batch) < maxBatch {
		if windowEnd == nil {
			select {
			case req, ok := <-c.queue:
				if !ok {
					return batch
				}
				batch = append(batch, req)
				continue
			default:
				return batch
			}
		}
		select {
		case req, ok := <-c.queue:
			if !ok {
				return batch
			}
			batch = append(batch, req)
		case <-windowEnd:
			return batch
		}
	}
	return batch
}

// close writes what is queued and stops; later commits fail.
func (c *committer) close() {
	c.closing.Lock()
	if !c.closed {
		c.closed = true
		close(c.queue)
	}
	c.closing.Unlock()
	<-c.done
}
