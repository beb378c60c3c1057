package dhcpnet

import "sync"

// DefaultMaxInFlight is how many requests NewWorkers handles at once when
// not told. After a power cut every machine of a rack asks within the same
// second, each once (the per-client limit sees to that); on a busy host
// 64 slots made a tenth of a 500-machine storm wait 4 s for a DISCOVER
// retry. 512 goroutines cost a few MB at most.
const DefaultMaxInFlight = 512

// Workers runs request handlers with bounded concurrency. A read loop
// hands each admitted packet to Go and drops it when all slots are taken,
// so a flood cannot queue unbounded work behind slow handlers.
type Workers struct {
	sem chan struct{}
	wg  sync.WaitGroup
}

// NewWorkers allows max handlers at once; zero or negative means
// DefaultMaxInFlight.
func NewWorkers(max int) *Workers {
	if max <= 0 {
		max = DefaultMaxInFlight
	}
	return &Workers{sem: make(chan struct{}, max)}
}

// Go runs f in a new goroutine if a slot is free, and says whether it did.
func (w *Workers) Go(f func()) bool {
	select {
	case w.sem <- struct{}{}:
	default:
		return false
	}
	w.wg.Add(1)
	go func() {
		defer func() { <-w.sem; w.wg.Done() }()
		f()
	}()
	return true
}

// Wait waits for the handlers started so far.
func (w *Workers) Wait() { w.wg.Wait() }
