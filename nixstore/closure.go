package nixstore

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// closureTimeout bounds one closure computation, which runs detached from any single
// caller because concurrent callers share it.
const closureTimeout = 10 * time.Minute

// Closure returns the closure of storePath (a basename or a full store path, checked as
// by Lookup): the path itself and every store path it refers to, directly or not.
//
// The result is sorted byte-wise by path: deterministic, identical for both backends,
// and independent of Nix's -qR order (a topological order that nothing here relies on:
// the kernel merges initrd members in any order, and a combined registration loads in
// any order).
//
// Closures are cached in memory (bounded by Options.ClosureCacheEntries): a store path's
// closure never changes. Concurrent calls for the same path share one computation.
func (s *Store) Closure(ctx context.Context, storePath string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := s.Lookup(storePath)
	if err != nil {
		return nil, err
	}
	if c, ok := s.closures.get(p); ok {
		return slices.Clone(c), nil
	}
	ch := s.closureSF.DoChan(p, func() (any, error) {
		if c, ok := s.closures.get(p); ok {
			return c, nil
		}
		// Detached from the first caller's ctx: the result is shared, and one client
		// going away must not fail the others.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closureTimeout)
		defer cancel()
		var c []string
		var err error
		if s.backend == BackendScan {
			c, err = s.scanClosure(ctx, p)
		} else {
			c, err = s.cliClosure(ctx, p)
		}
		if err != nil {
			return nil, err
		}
		slices.Sort(c)
		s.closures.add(p, c)
		return c, nil
	})
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return slices.Clone(r.Val.([]string)), nil
	}
}

func (s *Store) cliClosure(ctx context.Context, p string) ([]string, error) {
	args := append(s.storeArgs(), "--query", "--requisites", p)
	out, err := s.run(ctx, s.nixStore, args)
	if err != nil {
		if l, ok := stderrLine(err, "is not valid"); ok {
			return nil, notFoundf(err, "closure of %s: %s", p, shorten(l, 300))
		}
		return nil, fmt.Errorf("closure of %s: %w", p, err)
	}
	paths := nonEmptyLines(out)
	for _, q := range paths {
		if _, err := s.parseStorePath(q); err != nil {
			return nil, fmt.Errorf("closure of %s: nix-store printed %w", p, err)
		}
	}
	if !slices.Contains(paths, p) {
		return nil, fmt.Errorf("closure of %s: nix-store's answer does not contain the path itself", p)
	}
	return paths, nil
}
