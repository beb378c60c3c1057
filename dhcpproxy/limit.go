package dhcpproxy

import (
	"sync"
	"time"
)

// limiter is a token bucket per key with a bounded number of keys, so a
// flood of spoofed MACs costs memory only up to max entries.
type limiter struct {
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

func newLimiter(interval time.Duration, burst, max int) *limiter {
	return &limiter{interval: interval, burst: float64(burst), max: max, buckets: map[string]*bucket{}}
}

func (l *limiter) allow(key string, now time.Time) bool {
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
	b.tokens += float64(now.Sub(b.last)) / float64(l.interval)
	if b.tokens > l.burst {
		b.tokens = l.burst
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sweep drops buckets that have refilled completely: they carry no state.
func (l *limiter) sweep(now time.Time) {
	full := time.Duration(l.burst * float64(l.interval))
	for k, b := range l.buckets {
		if now.Sub(b.last) >= full {
			delete(l.buckets, k)
		}
	}
}

// onceSet remembers keys already logged, up to a bound, so "logged once per
// MAC" stays true for normal networks and bounded under floods.
type onceSet struct {
	mu   sync.Mutex
	max  int
	seen map[string]struct{}
}

func newOnceSet(max int) *onceSet { return &onceSet{max: max, seen: map[string]struct{}{}} }

func (o *onceSet) first(key string) bool {
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
