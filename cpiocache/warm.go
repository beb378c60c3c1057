package cpiocache

import (
	"context"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
)

// Progress is how far a Warm call has got.
type Progress struct {
	Done, Total int
	// Built counts members built since the call started (by it, or by
	// requests for the same paths meanwhile); the others were cached.
	Built int
	// Bytes is the size of the members done so far.
	Bytes   int64
	Elapsed time.Duration
}

// Warm makes sure every path has a cached member, building the missing ones
// in parallel (as Initrd does), and calls report after each path and once at
// the start, from one goroutine at a time.
func (c *Cache) Warm(ctx context.Context, paths []string, report func(Progress)) error {
	start := time.Now()
	builds0 := c.Stats().Builds
	var mu sync.Mutex
	p := Progress{Total: len(paths)}
	if report != nil {
		report(p)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(16, 4*c.parallelism))
	for _, sp := range paths {
		g.Go(func() error {
			m, err := c.Member(gctx, sp)
			if err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			p.Done++
			p.Bytes += m.Size
			p.Built = int(c.Stats().Builds - builds0)
			p.Elapsed = time.Since(start)
			if report != nil {
				report(p)
			}
			return nil
		})
	}
	return g.Wait()
}
