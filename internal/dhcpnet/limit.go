package dhcpnet

import (
	"sync"
	"time"
)

// Limiter is a token bucket per key with a bounded number of keys, so a
// flood of spoofed MACs costs memory only up to max entries.
type Limiter struct {
	mu       sync.Mutex
	interval time.Duration
	burst    float64
	max      int
	buckets  map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

// Defaults for NewLimiter: a client's first few repeats are answered (a
// firmware retries quickly), then one per half second.
const (
	DefaultRepeatInterval = 500 * time.Millisecond
	DefaultRepeatBurst    = 3
)

// maxKeys bounds the clients a Limiter or OnceSet keeps state for: far
// more than a LAN has, small enough that a flood costs little memory.
const maxKeys = 4096

// NewLimiter allows burst events per key at once, then one per interval.
// Zero or negative values mean DefaultRepeatInterval and DefaultRepeatBurst.
func NewLimiter(interval time.Duration, burst int) *Limiter {
	if interval <= 0 {
		interval = DefaultRepeatInterval
	}
	if burst <= 0 {
		burst = DefaultRepeatBurst
	}
	return newLimiter(interval, burst, maxKeys)
}

func newLimiter(interval time.Duration, burst, max int) *Limiter {
	return &Limiter{interval: interval, burst: float64(burst), max: max, buckets: map[string]*bucket{}}
}

// Allow takes a token from key's bucket and says whether there was one.
func (l *Limiter) Allow(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= l.max {
			l.sweep(now)
			if len(l.buckets) >= l.max {
				// Full of active keys: a flood. Refusing new keys bounds
				// memory; genuine clients retry.
				return false
			}
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = min(l.burst, b.tokens+float64(now.Sub(b.last))/float64(l.interval))
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sweep drops buckets that have refilled completely: they carry no state.
func (l *Limiter) sweep(now time.Time) {
	full := time.Duration(l.burst * float64(l.interval))
	for k, b := range l.buckets {
		if now.Sub(b.last) >= full {
			delete(l.buckets, k)
		}
	}
}

// OnceSet remembers keys already logged, up to a bound, so "logged once per
// MAC" stays true for normal networks and bounded under floods.
type OnceSet struct {
	mu   sync.Mutex
	max  int
	seen map[string]struct{}
}

// NewOnceSet returns an empty set. Past its bound it forgets all keys, so
// under a flood a client may be logged again.
func NewOnceSet() *OnceSet { return newOnceSet(maxKeys) }

func newOnceSet(max int) *OnceSet { return &OnceSet{max: max, seen: map[string]struct{}{}} }

// First says whether key is new, and remembers it.
func (o *OnceSet) First(key string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.seen[key]; ok {
		return false
	}
	if len(o.seen) >= o.max {
		clear(o.seen)
	}
	o.seen[key] = struct{}{}
	return true
}
