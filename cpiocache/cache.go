// Package cpiocache turns Nix store paths into initrd pieces: one compressed
// newc cpio archive ("member") per store path, built deterministically, kept
// in an on-disk cache, and served as the concatenation of a base member and
// the members of a closure (see Cache.Initrd and Concat). It only reads the
// store.
//
// Cache files are named "<hash>-<name>" plus Compression.Suffix(). Each holds
// the member followed by an integrity footer (see footer.go); only the member
// is ever served.
//
// A member is written to a temporary file, fsynced and renamed into place.
// Open deletes leftover temporary files and members whose footer is missing
// or inconsistent (truncation); the first use of a member after Open checks
// its SHA-256, so a corrupt file is rebuilt, never served.
//
// Eviction is least-recently-used by bytes. Recency survives restarts as the
// file's mtime, which is set when a member is used (at most once a minute per
// member). Evicting a member deletes its file; a Concat that already holds
// the file open keeps reading it (Linux keeps the data of open, unlinked
// files), and members pinned by an Initrd call still in progress are never
// evicted.
package cpiocache

import (
	"bufio"
	"container/list"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"
)

// Options configure a Cache. Only Dir is required.
type Options struct {
	// Dir is the cache directory; it is created if missing. One process
	// at a time may use it (Open takes a lock).
	Dir string
	// MaxBytes limits the bytes of cache files; 0 means no limit. Members
	// pinned by Initrd calls in progress may push the cache over it
	// for a while.
	MaxBytes int64
	// Compression of new members (default Zstd).
	Compression Compression
	// Parallelism bounds how many members are compressed (or checked)
	// at once; 0 means GOMAXPROCS. Up to 2 × Parallelism more finished
	// members may wait for fsync.
	Parallelism int
	// FSRoot is prefixed to store paths when reading them, for chroot
	// stores ("/srv/store" reads /srv/store/nix/store/...); archive names
	// stay "nix/store/...". "" means "/".
	FSRoot string
	// Logger receives build and eviction logs; nil discards them.
	Logger *slog.Logger
	// Metrics, if not nil, receives the cache's counters.
	Metrics *Metrics

	// zstdLevel overrides defaultZstdLevel (benchmarks compare levels).
	zstdLevel zstd.EncoderLevel
}

// Member describes a cached member.
type Member struct {
	StorePath string
	// File is the cache file. Its first Size bytes are the member; an
	// integrity footer follows. The file may be evicted at any time after
	// Member returns: use Initrd to serve.
	File string
	Size int64
}

// Stats are the cache's counters since Open, and its current size.
type Stats struct {
	Hits        int64 // requests served without waiting
	Misses      int64 // requests that waited for a build or integrity check
	Builds      int64 // members built
	BuildErrors int64
	Evictions   int64
	// BytesWritten counts the bytes of member files written.
	BytesWritten int64
	Bytes        int64 // bytes of cache files now
	Members      int   // cache files now
}

// ErrClosed is returned by a closed Cache or Concat.
var ErrClosed = errors.New("cpiocache: closed")

// tmpPrefix marks files being written; Open deletes leftovers.
const (
	tmpPrefix = ".tmp-"
	lockName  = ".lock"
)

// A member is only written to disk as last-use time if the recorded one is
// older than this, so a boot does not rewrite hundreds of inodes.
const touchInterval = time.Minute

// Cache is the on-disk member cache. Its methods are safe for concurrent use.
type Cache struct {
	dir         string
	comp        Compression
	maxBytes    int64
	fsRoot      string
	log         *slog.Logger
	metrics     *Metrics
	zstdLevel   zstd.EncoderLevel
	parallelism int

	lockFile *os.File
	dirFile  *os.File
	workers  chan *worker  // a worker is both a build slot and its buffers
	commits  chan struct{} // bounds builds waiting for fsync
	// Builds run under ctx, not the requester's context: a build is shared
	// by every request for the path, and finishing it warms the cache.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	counts [nCounters]atomic.Int64

	mu      sync.Mutex
	entries map[string]*entry  // by file name
	flights map[string]*flight // builds and checks in progress, by file name
	lru     *list.List         // of *entry, most recently used first
	bytes   int64
	closed  bool
}

type entry struct {
	name      string
	storePath string // from the footer
	size      int64  // of the file, footer included
	dataLen   int64  // of the member
	// verified is false for files found by Open until their hash is
	// checked; only verified entries are handed out.
	verified bool
	pins     int
	elem     *list.Element
	diskTime time.Time // mtime last set on disk
}

// worker holds what one build needs; creating zstd encoders is costly.
type worker struct {
	z   compressor
	bw  *bufio.Writer
	buf []byte
}

// Open opens (creating if needed) the cache in opts.Dir: it takes the
// directory's lock, deletes leftover temporary files, and indexes the members
// whose footer is intact. Their contents are checked on first use.
func Open(opts Options) (*Cache, error) {
	if opts.Dir == "" {
		return nil, errors.New("cpiocache: no cache directory given: set cache_dir")
	}
	if !opts.Compression.valid() {
		return nil, fmt.Errorf("cpiocache: unknown compression %d", int(opts.Compression))
	}
	if opts.MaxBytes < 0 {
		return nil, fmt.Errorf("cpiocache: negative size limit %d", opts.MaxBytes)
	}
	c := &Cache{
		dir:         opts.Dir,
		comp:        opts.Compression,
		maxBytes:    opts.MaxBytes,
		fsRoot:      opts.FSRoot,
		log:         opts.Logger,
		metrics:     opts.Metrics,
		zstdLevel:   opts.zstdLevel,
		parallelism: opts.Parallelism,
		entries:     map[string]*entry{},
		flights:     map[string]*flight{},
		lru:         list.New(),
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.parallelism <= 0 {
		c.parallelism = runtime.GOMAXPROCS(0)
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return nil, fmt.Errorf("create cache dir: %w: set cache_dir to a writable directory", err)
	}
	var err error
	if c.lockFile, err = os.OpenFile(filepath.Join(c.dir, lockName), os.O_RDWR|os.O_CREATE, 0o644); err != nil {
		return nil, fmt.Errorf("open cache lock: %w: set cache_dir to a writable directory", err)
	}
	if err := syscall.Flock(int(c.lockFile.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		c.lockFile.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("cache dir %s is in use by another process: give each instance its own cache_dir", c.dir)
		}
		return nil, fmt.Errorf("lock cache dir %s: %w", c.dir, err)
	}
	if c.dirFile, err = os.Open(c.dir); err != nil {
		c.lockFile.Close()
		return nil, fmt.Errorf("open cache dir: %w", err)
	}
	if err := c.scan(); err != nil {
		c.dirFile.Close()
		c.lockFile.Close()
		return nil, err
	}
	c.workers = make(chan *worker, c.parallelism)
	c.commits = make(chan struct{}, 2*c.parallelism)
	for range c.parallelism {
		c.workers <- &worker{}
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.mu.Lock()
	c.evictLocked()
	c.metrics.setSize(c.bytes, len(c.entries))
	c.log.Info("member cache opened", "dir", c.dir, "members", len(c.entries), "bytes", c.bytes,
		"max_bytes", c.maxBytes, "compression", c.comp.String())
	c.mu.Unlock()
	return c, nil
}

// scan indexes the cache directory, oldest use last in the LRU list.
func (c *Cache) scan() error {
	des, err := os.ReadDir(c.dir)
	if err != nil {
		return fmt.Errorf("read cache dir: %w", err)
	}
	type found struct {
		e     *entry
		mtime time.Time
	}
	var all []found
	for _, de := range des {
		name := de.Name()
		p := filepath.Join(c.dir, name)
		if strings.HasPrefix(name, tmpPrefix) {
			// Left by a crash mid-build; never renamed, so never served.
			if err := os.Remove(p); err != nil {
				return fmt.Errorf("remove leftover temporary file: %w", err)
			}
			c.log.Info("removed leftover temporary file", "file", p)
			continue
		}
		comp, ok := suffixCompression(name)
		if !ok || !de.Type().IsRegular() {
			continue
		}
		e, mtime, err := readEntry(p, name, comp)
		if err != nil {
			c.log.Warn("deleting unusable cache file", "file", p, "err", err)
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove unusable cache file: %w", err)
			}
			continue
		}
		all = append(all, found{e, mtime})
	}
	slices.SortFunc(all, func(a, b found) int { return a.mtime.Compare(b.mtime) })
	for _, f := range all {
		f.e.elem = c.lru.PushFront(f.e)
		c.entries[f.e.name] = f.e
		c.bytes += f.e.size
	}
	return nil
}

func readEntry(p, name string, comp Compression) (*entry, time.Time, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, time.Time{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, time.Time{}, err
	}
	ft, err := readFooter(f, st.Size())
	if err != nil {
		return nil, time.Time{}, err
	}
	if ft.comp != comp || path.Base(ft.storePath)+comp.Suffix() != name {
		return nil, time.Time{}, fmt.Errorf("footer names %s (%v), which does not match the file name", ft.storePath, ft.comp)
	}
	return &entry{name: name, storePath: ft.storePath, size: st.Size(), dataLen: ft.dataLen,
		diskTime: st.ModTime()}, st.ModTime(), nil
}

func suffixCompression(name string) (Compression, bool) {
	if strings.HasPrefix(name, ".") {
		return 0, false
	}
	// Longest suffix first: ".cpio" is a suffix of none of the others, but
	// keep the order explicit anyway.
	for _, c := range []Compression{Zstd, Gzip, None} {
		if strings.HasSuffix(name, c.Suffix()) && len(name) > len(c.Suffix()) {
			return c, true
		}
	}
	return 0, false
}

// Close stops builds in progress, waits for them and releases the cache
// directory. Concats already returned stay usable until closed themselves.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	return errors.Join(c.dirFile.Close(), c.lockFile.Close())
}

// Stats returns the counters and the current size.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	s := Stats{Bytes: c.bytes, Members: len(c.entries)}
	c.mu.Unlock()
	s.Hits = c.counts[cHits].Load()
	s.Misses = c.counts[cMisses].Load()
	s.Builds = c.counts[cBuilds].Load()
	s.BuildErrors = c.counts[cBuildErrors].Load()
	s.Evictions = c.counts[cEvictions].Load()
	s.BytesWritten = c.counts[cBytesWritten].Load()
	return s
}

func (c *Cache) count(k counter, v int64) {
	c.counts[k].Add(v)
	c.metrics.add(k, v)
}

// checkStorePath refuses what cannot be a store path. Whether the path is a
// direct child of the store directory is the caller's business; this is
// defence in depth against reading outside the store.
func checkStorePath(p string) error {
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" || strings.ContainsRune(p, 0) {
		return fmt.Errorf("store path %q must be an absolute, clean path such as /nix/store/<hash>-<name>", p)
	}
	if strings.HasPrefix(path.Base(p), ".") {
		return fmt.Errorf("store path %q: name starts with a dot", p)
	}
	if len(p) >= maxPathLen {
		return fmt.Errorf("store path %q is too long", p)
	}
	return nil
}

// Member returns the member of storePath, building it if needed. Concurrent
// requests for one path share one build. If ctx ends, Member returns but the
// build goes on for the next request.
func (c *Cache) Member(ctx context.Context, storePath string) (Member, error) {
	e, err := c.acquire(ctx, storePath)
	if err != nil {
		return Member{}, err
	}
	m := Member{StorePath: e.storePath, File: filepath.Join(c.dir, e.name), Size: e.dataLen}
	c.release(e)
	return m, nil
}

// flight is a build or check of one cache file that requests wait for
// (single flight: one build however many requests).
type flight struct {
	storePath string
	done      chan struct{} // closed when e or err is set
	// waiters counts the requests waiting for this flight; the result
	// is pinned once for each of them before it is visible to eviction.
	waiters int
	e       *entry
	err     error
}

// acquire returns the verified entry of storePath, pinned.
func (c *Cache) acquire(ctx context.Context, storePath string) (*entry, error) {
	if err := checkStorePath(storePath); err != nil {
		return nil, err
	}
	name := path.Base(storePath) + c.comp.Suffix()
	for first := true; ; first = false {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		if e := c.entries[name]; e != nil && e.verified && e.storePath == storePath {
			e.pins++
			touch := c.touchLocked(e)
			c.mu.Unlock()
			if first {
				c.count(cHits, 1)
			}
			if !touch.IsZero() {
				// Errors only cost LRU accuracy after a restart.
				_ = os.Chtimes(filepath.Join(c.dir, name), touch, touch)
			}
			return e, nil
		}
		f := c.flights[name]
		if f == nil && ctx.Err() != nil {
			// Joining a flight is free; starting one for a request that
			// is gone is not.
			c.mu.Unlock()
			return nil, fmt.Errorf("member of %s: %w", storePath, context.Cause(ctx))
		}
		if f == nil {
			f = &flight{storePath: storePath, done: make(chan struct{})}
			c.flights[name] = f
			c.wg.Add(1)
			go c.fly(f, name)
		}
		// A flight for another path with the same base name is waited
		// out, then this path gets its own.
		mine := f.storePath == storePath
		if mine {
			f.waiters++
		}
		c.mu.Unlock()
		if first {
			c.count(cMisses, 1)
		}
		select {
		case <-f.done:
			if !mine {
				continue
			}
			return f.e, f.err
		case <-ctx.Done():
			if mine {
				c.mu.Lock()
				select {
				case <-f.done:
					if f.err == nil {
						f.e.pins--
						c.evictLocked()
					}
				default:
					f.waiters--
				}
				c.mu.Unlock()
			}
			return nil, fmt.Errorf("member of %s: %w", storePath, context.Cause(ctx))
		}
	}
}

// fly runs flight f: it makes a verified entry exist and hands one pin to
// each waiting request. It runs in the background, under the cache's
// context, so a request that gives up does not stop a build others wait for
// (or that warms the cache).
func (c *Cache) fly(f *flight, name string) {
	defer c.wg.Done()
	e, err := c.ensure(name, f.storePath)
	if err == nil {
		// The use goes on disk before the waiters get the entry, so none
		// of them sees the mtime from before it; ensure's pin keeps e
		// meanwhile.
		c.mu.Lock()
		touch := c.touchLocked(e)
		c.mu.Unlock()
		if !touch.IsZero() {
			_ = os.Chtimes(filepath.Join(c.dir, name), touch, touch)
		}
	}
	c.mu.Lock()
	if err == nil {
		e.pins += f.waiters - 1 // ensure's own pin becomes the waiters'
		c.evictLocked()
	}
	f.e, f.err = e, err
	delete(c.flights, name)
	close(f.done)
	c.mu.Unlock()
}

// touchLocked marks e as just used and returns the time to record on disk,
// or the zero time if the recorded one is recent enough.
func (c *Cache) touchLocked(e *entry) time.Time {
	c.lru.MoveToFront(e.elem)
	now := time.Now()
	if now.Sub(e.diskTime) < touchInterval {
		return time.Time{}
	}
	e.diskTime = now
	return now
}

func (c *Cache) release(es ...*entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range es {
		if e != nil {
			e.pins--
		}
	}
	c.evictLocked()
}

// ensure makes a verified entry for storePath exist under name and returns
// it with one pin. Only one ensure per name runs at a time (see flight).
func (c *Cache) ensure(name, storePath string) (*entry, error) {
	c.mu.Lock()
	e := c.entries[name]
	switch {
	case e != nil && e.verified && e.storePath == storePath:
		// Defensive: acquire found no such entry under the same lock
		// that started this flight.
		e.pins++
		c.mu.Unlock()
		return e, nil
	case e != nil && !e.verified && e.storePath == storePath:
		e.pins++ // not evicted while being read
		c.mu.Unlock()
		err := c.verify(e)
		c.mu.Lock()
		if err == nil {
			e.verified = true
			c.mu.Unlock()
			return e, nil
		}
		e.pins--
		if errors.Is(err, ErrClosed) {
			c.mu.Unlock()
			return nil, err
		}
		c.log.Warn("cached member is corrupt, rebuilding", "file", filepath.Join(c.dir, name), "err", err)
		c.removeLocked(e)
	case e != nil:
		// Another path with the same base name: the cache is keyed by base
		// name, so one of them has to go.
		if e.pins > 0 {
			c.mu.Unlock()
			return nil, fmt.Errorf("cache file %s holds %s, which is in use, so it cannot hold %s now", name, e.storePath, storePath)
		}
		c.removeLocked(e)
	}
	c.mu.Unlock()
	return c.build(name, storePath)
}

// verify checks the file of an entry found by Open against its footer.
func (c *Cache) verify(e *entry) error {
	w, err := c.getWorker()
	if err != nil {
		return err
	}
	defer c.putWorker(w)
	ft, err := verifyFile(filepath.Join(c.dir, e.name), w.buf)
	if err != nil {
		return err
	}
	if ft.storePath != e.storePath || ft.dataLen != e.dataLen {
		return errors.New("file changed since the cache was opened")
	}
	return nil
}

func (c *Cache) getWorker() (*worker, error) {
	select {
	case w := <-c.workers:
		if w.buf == nil {
			w.buf = make([]byte, 256<<10)
			w.bw = bufio.NewWriterSize(nil, 256<<10)
		}
		return w, nil
	case <-c.ctx.Done():
		return nil, ErrClosed
	}
}

func (c *Cache) putWorker(w *worker) { c.workers <- w }

// build archives storePath into the cache file name and returns the new
// entry with one pin.
func (c *Cache) build(name, storePath string) (*entry, error) {
	start := time.Now()
	w, err := c.getWorker()
	if err != nil {
		return nil, err
	}
	tmp, e, err := c.write(w, name, storePath)
	// The fsync in commit waits for the disk, not the CPU, so the worker
	// slot goes to the next build first.
	c.putWorker(w)
	if err == nil {
		err = c.commit(tmp, name)
	}
	if err != nil {
		if c.ctx.Err() != nil {
			return nil, ErrClosed
		}
		c.count(cBuildErrors, 1)
		c.log.Warn("member build failed", "store_path", storePath, "err", err)
		return nil, fmt.Errorf("archive %s: %w", storePath, err)
	}
	c.count(cBuilds, 1)
	c.count(cBytesWritten, e.size)
	c.mu.Lock()
	e.pins = 1
	e.elem = c.lru.PushFront(e)
	c.entries[name] = e
	c.bytes += e.size
	c.metrics.setSize(c.bytes, len(c.entries))
	c.mu.Unlock()
	c.log.Debug("member built", "store_path", storePath, "bytes", e.dataLen, "duration", time.Since(start))
	return e, nil
}

// write archives storePath into a new temporary file in the cache directory,
// footer included, and returns it still open.
func (c *Cache) write(w *worker, name, storePath string) (_ *os.File, _ *entry, err error) {
	entries, err := collectTree(c.fsRoot, storePath)
	if err != nil {
		return nil, nil, err
	}
	if w.z == nil {
		if w.z, err = newCompressor(c.comp, c.zstdLevel); err != nil {
			return nil, nil, err
		}
	}
	tmp, err := os.CreateTemp(c.dir, tmpPrefix+name+"-*")
	if err != nil {
		return nil, nil, fmt.Errorf("create file in cache dir: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	hw := &hashWriter{w: tmp, h: sha256.New()}
	w.bw.Reset(hw)
	w.z.Reset(w.bw)
	if err = writeTree(c.ctx, w.z, entries, w.buf); err != nil {
		return nil, nil, err
	}
	if err = w.z.Close(); err != nil {
		return nil, nil, err
	}
	if err = w.bw.Flush(); err != nil {
		return nil, nil, fmt.Errorf("write cache file: %w", err)
	}
	ft := footer{storePath: storePath, dataLen: hw.n, comp: c.comp}
	hw.h.Sum(ft.sum[:0])
	if _, err = tmp.Write(ft.appendTo(nil)); err != nil {
		return nil, nil, fmt.Errorf("write cache file: %w", err)
	}
	return tmp, &entry{name: name, storePath: storePath, size: hw.n + ft.len(), dataLen: hw.n,
		verified: true, diskTime: time.Now()}, nil
}

// commit makes a written temporary file the cache file name, crash-safely:
// fsync, rename, directory fsync. Whatever a crash leaves is either a
// temporary file (deleted by Open) or a complete file.
func (c *Cache) commit(tmp *os.File, name string) (err error) {
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	select {
	case c.commits <- struct{}{}:
		defer func() { <-c.commits }()
	case <-c.ctx.Done():
		return ErrClosed
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("sync cache file: %w", err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("write cache file: %w", err)
	}
	if err = os.Rename(tmp.Name(), filepath.Join(c.dir, name)); err != nil {
		return fmt.Errorf("rename cache file: %w", err)
	}
	// The rename is only durable once the directory is synced. Without it
	// a power loss may lose the member, never corrupt it.
	if err := c.dirFile.Sync(); err != nil {
		c.log.Warn("sync cache dir", "err", err)
	}
	return nil
}

type hashWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (h *hashWriter) Write(p []byte) (int, error) {
	h.h.Write(p)
	n, err := h.w.Write(p)
	h.n += int64(n)
	return n, err
}

// evictLocked deletes least recently used, unpinned members until the cache
// fits its limit.
func (c *Cache) evictLocked() {
	if c.maxBytes <= 0 {
		return
	}
	for el := c.lru.Back(); el != nil && c.bytes > c.maxBytes; {
		prev := el.Prev()
		if e := el.Value.(*entry); e.pins == 0 {
			c.removeLocked(e)
			c.count(cEvictions, 1)
			c.log.Debug("member evicted", "store_path", e.storePath, "bytes", e.size)
		}
		el = prev
	}
}

// removeLocked drops e from the index and deletes its file.
func (c *Cache) removeLocked(e *entry) {
	delete(c.entries, e.name)
	c.lru.Remove(e.elem)
	c.bytes -= e.size
	c.metrics.setSize(c.bytes, len(c.entries))
	if err := os.Remove(filepath.Join(c.dir, e.name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.log.Warn("delete cache file", "err", err)
	}
}

// Initrd returns the initrd made of base followed by the members of paths, in
// that order (repeated paths are kept once). Missing members are built in
// parallel, at most Options.Parallelism at a time. The Concat holds one open
// file per member, so later evictions do not affect it; Close it when done,
// and share one Concat among concurrent requests for the same closure to
// spare file descriptors. base must not be modified while the Concat is in
// use.
func (c *Cache) Initrd(ctx context.Context, base []byte, paths []string) (*Concat, error) {
	seen := make(map[string]bool, len(paths))
	uniq := make([]string, 0, len(paths))
	for _, p := range paths {
		if !seen[p] {
			seen[p] = true
			uniq = append(uniq, p)
		}
	}
	es := make([]*entry, len(uniq))
	defer c.release(es...)
	g, gctx := errgroup.WithContext(ctx)
	// More requests in flight than build slots, so slots never idle while a
	// request is between a hit and its next path.
	g.SetLimit(max(16, 4*c.parallelism))
	for i, p := range uniq {
		g.Go(func() error {
			e, err := c.acquire(gctx, p)
			es[i] = e
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	files := make([]*os.File, 0, len(es))
	sizes := make([]int64, 0, len(es))
	for _, e := range es {
		f, err := os.Open(filepath.Join(c.dir, e.name))
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			return nil, fmt.Errorf("open member of %s: %w", e.storePath, err)
		}
		files = append(files, f)
		sizes = append(sizes, e.dataLen)
	}
	return newConcat(base, files, sizes)
}
