// Package ratelimit lets a warning that could come once per packet or per
// probe through once a minute: one log line per episode.
package ratelimit

import (
	"sync"
	"time"
)

// PerMinute allows one event a minute. The zero value is ready to use.
type PerMinute struct {
	mu   sync.Mutex
	last time.Time
}

// Allow reports whether an event at now may happen, and if so counts it.
func (r *PerMinute) Allow(now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.last.IsZero() && now.Sub(r.last) < time.Minute {
		return false
	}
	r.last = now
	return true
}
