package cpiocache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// mkPath writes a store path directory with the given files (0444) under
// root and returns its logical path.
func mkPath(t testing.TB, root, name string, files map[string][]byte) string {
	t.Helper()
	sp := fmt.Sprintf("/nix/store/%s-%s", testHash, name)
	for rel, body := range files {
		p := filepath.Join(root, sp, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, body, 0o444); err != nil {
			t.Fatal(err)
		}
	}
	return sp
}

// randBytes is incompressible; textBytes compresses (slowly enough that a
// few MB keep a build busy for a while).
func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	var s [32]byte
	s[0] = byte(seed)
	rand.NewChaCha8(s).Read(b)
	return b
}

func textBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed))
	words := []string{"alpha ", "beta ", "gamma ", "delta\n", "epsilon ", "zeta ", "eta ", "theta\n", "iota ", "kappa "}
	b := make([]byte, 0, n+8)
	for len(b) < n {
		b = append(b, words[rng.IntN(len(words))]...)
		if rng.IntN(8) == 0 {
			b = strconv.AppendUint(b, uint64(rng.Uint32()), 10)
			b = append(b, ' ')
		}
	}
	return b[:n]
}

// checkNoPins waits for background flights to end and checks that no entry
// is left pinned (a leaked pin would make a member unevictable forever).
func checkNoPins(t *testing.T, c *Cache) {
	t.Helper()
	for range 5000 {
		c.mu.Lock()
		n := len(c.flights)
		c.mu.Unlock()
		if n == 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.flights) != 0 {
		t.Errorf("%d flights still running", len(c.flights))
	}
	for _, e := range c.entries {
		if e.pins != 0 {
			t.Errorf("%s: %d pins left", e.name, e.pins)
		}
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func TestSingleFlight(t *testing.T) {
	root := t.TempDir()
	sp := mkPath(t, root, "big", map[string][]byte{"data": textBytes(1, 24<<20)})
	c := openCache(t, Options{FSRoot: root, Parallelism: 4})
	const n = 20
	start := make(chan struct{})
	var wg sync.WaitGroup
	ms := make([]Member, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			<-start
			ms[i], errs[i] = c.Member(context.Background(), sp)
		})
	}
	close(start)
	wg.Wait()
	for i := range n {
		if errs[i] != nil || ms[i] != ms[0] {
			t.Fatalf("request %d: %+v %v, request 0: %+v", i, ms[i], errs[i], ms[0])
		}
	}
	s := c.Stats()
	if s.Builds != 1 {
		t.Errorf("%d builds for %d concurrent requests, want 1", s.Builds, n)
	}
	if s.Misses < 2 {
		t.Fatalf("only %d requests overlapped the build; the test proves nothing", s.Misses)
	}
	if s.Hits+s.Misses != n {
		t.Errorf("hits %d + misses %d != %d", s.Hits, s.Misses, n)
	}
	checkNoPins(t, c)
}

// TestParallelBuildBounded watches the temporary files of builds in progress:
// files without a footer yet are being compressed, and there are never more
// than Parallelism of them (but that many); files with a footer wait for
// fsync, at most 2 × Parallelism.
func TestParallelBuildBounded(t *testing.T) {
	root := t.TempDir()
	var paths []string
	for i := range 12 {
		paths = append(paths, mkPath(t, root, fmt.Sprintf("p%d", i), map[string][]byte{"d": textBytes(uint64(i), 4<<20)}))
	}
	const par = 2
	c := openCache(t, Options{FSRoot: root, Parallelism: par})
	done := make(chan struct{})
	type seen struct{ compressing, committing int }
	maxSeen := make(chan seen)
	go func() {
		var m seen
		for {
			select {
			case <-done:
				maxSeen <- m
				return
			default:
			}
			tmps, _ := filepath.Glob(filepath.Join(c.dir, tmpPrefix+"*"))
			var s seen
			for _, p := range tmps {
				f, err := os.Open(p)
				if err != nil {
					continue // committed meanwhile
				}
				if st, err := f.Stat(); err == nil {
					if _, err := readFooter(f, st.Size()); err == nil {
						s.committing++
					} else {
						s.compressing++
					}
				}
				f.Close()
			}
			m.compressing = max(m.compressing, s.compressing)
			m.committing = max(m.committing, s.committing)
			time.Sleep(200 * time.Microsecond)
		}
	}()
	ci, err := c.Initrd(context.Background(), nil, paths)
	close(done)
	if err != nil {
		t.Fatal(err)
	}
	defer ci.Close()
	m := <-maxSeen
	if m.compressing != par {
		t.Errorf("saw %d members compressed at once, want %d", m.compressing, par)
	}
	if m.committing > 2*par {
		t.Errorf("saw %d members waiting for fsync at once, want at most %d", m.committing, 2*par)
	}
	if s := c.Stats(); s.Builds != int64(len(paths)) {
		t.Errorf("builds %d, want %d", s.Builds, len(paths))
	}
}

func TestLRUEviction(t *testing.T) {
	root := t.TempDir()
	dir := t.TempDir()
	paths := map[string]string{}
	for i, n := range []string{"a", "b", "c", "d"} {
		paths[n] = mkPath(t, root, n, map[string][]byte{"blob": randBytes(uint64(i), 1<<20)})
	}
	file := func(n string) string { return filepath.Join(dir, testHash+"-"+n+".cpio.zst") }
	ctx := context.Background()
	c, err := Open(Options{Dir: dir, FSRoot: root, MaxBytes: 3<<20 + 512<<10})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b", "c", "a", "d"} {
		if _, err := c.Member(ctx, paths[n]); err != nil {
			t.Fatal(err)
		}
	}
	if fileExists(file("b")) || !fileExists(file("a")) || !fileExists(file("c")) || !fileExists(file("d")) {
		t.Errorf("b (least recently used) should be the one evicted")
	}
	s := c.Stats()
	if s.Evictions != 1 || s.Members != 3 || s.Bytes > 3<<20+512<<10 || s.Hits != 1 || s.Builds != 4 {
		t.Errorf("stats %+v", s)
	}
	c.Close()

	// Across a restart, recency comes from the files' mtimes.
	now := time.Now()
	for n, age := range map[string]time.Duration{"a": 3 * time.Hour, "c": time.Hour, "d": 2 * time.Hour} {
		os.Chtimes(file(n), now.Add(-age), now.Add(-age))
	}
	c, err = Open(Options{Dir: dir, FSRoot: root, MaxBytes: 2<<20 + 512<<10})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if fileExists(file("a")) || !fileExists(file("c")) || !fileExists(file("d")) {
		t.Errorf("a (oldest mtime) should be evicted on open")
	}
	// Using a member records the use on disk.
	if _, err := c.Member(ctx, paths["d"]); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(file("d"))
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(st.ModTime()) > time.Minute {
		t.Errorf("use of d not recorded: mtime %v", st.ModTime())
	}
}

// TestInitrdPinsMembers builds a closure bigger than the cache limit: the
// members of the Initrd in progress must not be evicted, and evicted files
// must still be served by the Concat that holds them.
func TestInitrdPinsMembers(t *testing.T) {
	root := t.TempDir()
	var paths []string
	for i := range 5 {
		paths = append(paths, mkPath(t, root, fmt.Sprintf("p%d", i), map[string][]byte{"blob": randBytes(uint64(i), 1<<20)}))
	}
	c := openCache(t, Options{FSRoot: root, MaxBytes: 2 << 20, Parallelism: 2})
	ci, err := c.Initrd(context.Background(), nil, paths)
	if err != nil {
		t.Fatal(err)
	}
	defer ci.Close()
	s := c.Stats()
	if s.Builds != 5 || s.Bytes > 2<<20 || s.Evictions < 3 {
		t.Errorf("stats after Initrd: %+v", s)
	}
	var buf bytes.Buffer
	if _, err := ci.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	files, members, err := unpackInitrd(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if members != 5 {
		t.Errorf("%d members, want 5", members)
	}
	for _, p := range paths {
		checkEntries(t, files, root, p)
	}
	checkNoPins(t, c)
}

// TestInitrdCanceled: a request that gives up releases its pins, and the
// builds it started still complete (they warm the cache).
func TestInitrdCanceled(t *testing.T) {
	root := t.TempDir()
	var paths []string
	for i := range 6 {
		paths = append(paths, mkPath(t, root, fmt.Sprintf("p%d", i), map[string][]byte{"d": textBytes(uint64(i), 2<<20)}))
	}
	c := openCache(t, Options{FSRoot: root, Parallelism: 2})
	if _, err := c.Member(context.Background(), paths[0]); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for {
			if tmps, _ := filepath.Glob(filepath.Join(c.dir, tmpPrefix+"*")); len(tmps) > 0 {
				cancel()
				return
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	if _, err := c.Initrd(ctx, nil, paths); !errors.Is(err, context.Canceled) {
		t.Fatalf("Initrd with canceled context: %v", err)
	}
	checkNoPins(t, c)
	// Builds under way when the request was canceled finished; none
	// were started after.
	if s := c.Stats(); s.Builds < 2 || int64(s.Members) != s.Builds || s.BuildErrors != 0 {
		t.Errorf("builds did not complete after the request gave up: %+v", s)
	}
}

func TestCrashLeftovers(t *testing.T) {
	root := t.TempDir()
	dir := t.TempDir()
	ctx := context.Background()
	paths := map[string]string{}
	for i, n := range []string{"trunc-footer", "trunc-data", "empty", "flipped", "good"} {
		paths[n] = mkPath(t, root, n, map[string][]byte{"x": textBytes(uint64(i), 200<<10), "bin/y": []byte("y")})
	}
	c, err := Open(Options{Dir: dir, FSRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	ms := map[string]Member{}
	orig := map[string][]byte{}
	for n, p := range paths {
		if ms[n], err = c.Member(ctx, p); err != nil {
			t.Fatal(err)
		}
		orig[n] = readMember(t, ms[n])
	}
	c.Close()

	// What a crash or a bad disk can leave behind.
	tmp := filepath.Join(dir, tmpPrefix+"half-written.cpio.zst-123")
	os.WriteFile(tmp, []byte("partial"), 0o600)
	os.Truncate(ms["trunc-footer"].File, ms["trunc-footer"].Size+10)
	os.Truncate(ms["trunc-data"].File, ms["trunc-data"].Size/2)
	os.Truncate(ms["empty"].File, 0)
	f, _ := os.OpenFile(ms["flipped"].File, os.O_RDWR, 0)
	b := []byte{0}
	f.ReadAt(b, ms["flipped"].Size/2)
	b[0] ^= 0x40
	f.WriteAt(b, ms["flipped"].Size/2)
	f.Close()

	c, err = Open(Options{Dir: dir, FSRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if fileExists(tmp) {
		t.Error("temporary file not deleted on open")
	}
	for _, n := range []string{"trunc-footer", "trunc-data", "empty"} {
		if fileExists(ms[n].File) {
			t.Errorf("truncated member %s not deleted on open", n)
		}
	}
	// The flipped byte is only found by the hash check on first use.
	if s := c.Stats(); s.Members != 2 {
		t.Errorf("%d members indexed, want 2 (flipped, good)", s.Members)
	}
	var order []string
	for _, n := range []string{"trunc-footer", "trunc-data", "empty", "flipped", "good"} {
		order = append(order, paths[n])
	}
	ci, err := c.Initrd(ctx, nil, order)
	if err != nil {
		t.Fatal(err)
	}
	defer ci.Close()
	if s := c.Stats(); s.Builds != 4 {
		t.Errorf("%d builds, want 4 (all but the good member)", s.Builds)
	}
	var buf bytes.Buffer
	if _, err := ci.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	files, members, err := unpackInitrd(buf.Bytes())
	if err != nil || members != 5 {
		t.Fatalf("unpack: %d members, %v", members, err)
	}
	for _, p := range order {
		checkEntries(t, files, root, p)
	}
	// Rebuilt members are byte-identical to the originals.
	for n, p := range paths {
		got, err := c.Member(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(readMember(t, got), orig[n]) {
			t.Errorf("%s: rebuilt member differs from the original", n)
		}
	}
}

// TestKill9DuringBuild kills a process building a member and checks that
// the next Open serves nothing half-written.
func TestKill9DuringBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a 60 MB member")
	}
	root := t.TempDir()
	dir := t.TempDir()
	sp := mkPath(t, root, "huge", map[string][]byte{"a": textBytes(7, 30<<20), "b": randBytes(8, 30<<20)})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "CPIOCACHE_TEST_HELPER=build", "HELPER_DIR="+dir, "HELPER_ROOT="+root, "HELPER_PATH="+sp)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		tmps, _ := filepath.Glob(filepath.Join(dir, tmpPrefix+"*"))
		if len(tmps) == 1 {
			if st, err := os.Stat(tmps[0]); err == nil && st.Size() > 1<<20 {
				break
			}
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("helper never started writing")
		}
		time.Sleep(time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	names, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(names) != 1 {
		t.Logf("after kill: %q", names)
	}

	c := openCache(t, Options{Dir: dir, FSRoot: root})
	if s := c.Stats(); s.Members != 0 {
		t.Errorf("%d members after a killed build", s.Members)
	}
	if tmps, _ := filepath.Glob(filepath.Join(dir, tmpPrefix+"*")); len(tmps) != 0 {
		t.Errorf("temporary files left: %q", tmps)
	}
	m, err := c.Member(context.Background(), sp)
	if err != nil {
		t.Fatal(err)
	}
	checkEntries(t, entryMap(memberEntries(t, readMember(t, m))), root, sp)
}

// helperBuild runs in a child process of TestKill9DuringBuild.
func helperBuild() int {
	c, err := Open(Options{Dir: os.Getenv("HELPER_DIR"), FSRoot: os.Getenv("HELPER_ROOT"), Parallelism: 1})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := c.Member(context.Background(), os.Getenv("HELPER_PATH")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func TestOpenLocksDir(t *testing.T) {
	dir := t.TempDir()
	c := openCache(t, Options{Dir: dir})
	if _, err := Open(Options{Dir: dir}); err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Fatalf("second Open: %v", err)
	}
	c.Close()
	c2, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	c2.Close()
	if _, err := c2.Member(context.Background(), "/nix/store/x"); !errors.Is(err, ErrClosed) {
		t.Errorf("Member after Close: %v", err)
	}
}

// TestNameCollision: two paths with one base name share a cache file name;
// each request must get its own path's content.
func TestNameCollision(t *testing.T) {
	root := t.TempDir()
	a := mkPath(t, root, "same", map[string][]byte{"f": []byte("nix")})
	b := "/gnu/store/" + testHash + "-same"
	os.MkdirAll(filepath.Join(root, b), 0o755)
	os.WriteFile(filepath.Join(root, b, "f"), []byte("gnu"), 0o444)
	c := openCache(t, Options{FSRoot: root})
	for _, p := range []string{a, b, a} {
		m, err := c.Member(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		es := entryMap(memberEntries(t, readMember(t, m)))
		if got := string(es[p[1:]+"/f"].body); got != strings.Split(p, "/")[1] {
			t.Errorf("%s: served content %q", p, got)
		}
	}
	if s := c.Stats(); s.Builds != 3 {
		t.Errorf("%d builds, want 3", s.Builds)
	}
}

func TestCloseStopsBuilds(t *testing.T) {
	root := t.TempDir()
	files := map[string][]byte{}
	for i := range 40 {
		files[fmt.Sprintf("f%d", i)] = textBytes(uint64(i), 1<<20)
	}
	sp := mkPath(t, root, "many", files)
	c := openCache(t, Options{FSRoot: root})
	errc := make(chan error)
	go func() {
		_, err := c.Member(context.Background(), sp)
		errc <- err
	}()
	for {
		if tmps, _ := filepath.Glob(filepath.Join(c.dir, tmpPrefix+"*")); len(tmps) > 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	c.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Errorf("Member during Close: %v", err)
	}
	if tmps, _ := filepath.Glob(filepath.Join(c.dir, tmpPrefix+"*")); len(tmps) != 0 {
		t.Errorf("temporary files left: %q", tmps)
	}
}

func TestMemberContextCanceled(t *testing.T) {
	root := t.TempDir()
	sp := mkPath(t, root, "big", map[string][]byte{"data": textBytes(1, 16<<20)})
	c := openCache(t, Options{FSRoot: root})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Member(ctx, sp); !errors.Is(err, context.Canceled) {
		t.Fatalf("Member with canceled context: %v", err)
	}
	if s := c.Stats(); s.Builds != 0 || len(c.flights) != 0 {
		t.Errorf("a request that was already canceled started a build: %+v", s)
	}

	// Canceled while waiting: Member returns, the build goes on and
	// serves the next request.
	ctx, cancel = context.WithCancel(context.Background())
	go func() {
		for {
			if tmps, _ := filepath.Glob(filepath.Join(c.dir, tmpPrefix+"*")); len(tmps) > 0 {
				cancel()
				return
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	if _, err := c.Member(ctx, sp); !errors.Is(err, context.Canceled) {
		t.Fatalf("Member canceled while waiting: %v", err)
	}
	if _, err := c.Member(context.Background(), sp); err != nil {
		t.Fatal(err)
	}
	if s := c.Stats(); s.Builds != 1 {
		t.Errorf("%d builds, want 1", s.Builds)
	}
	checkNoPins(t, c)
}

func TestMetrics(t *testing.T) {
	root := t.TempDir()
	sp := mkPath(t, root, "m", map[string][]byte{"f": []byte("x")})
	reg := prometheus.NewRegistry()
	c := openCache(t, Options{FSRoot: root, Metrics: NewMetrics(reg)})
	for range 2 {
		if _, err := c.Member(context.Background(), sp); err != nil {
			t.Fatal(err)
		}
	}
	c.Member(context.Background(), "/nix/store/"+testHash+"-missing")
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		if m.Counter != nil {
			got[mf.GetName()] = m.Counter.GetValue()
		} else {
			got[mf.GetName()] = m.Gauge.GetValue()
		}
	}
	s := c.Stats()
	want := map[string]float64{
		"bootserve_cache_hits_total":          1,
		"bootserve_cache_misses_total":        2,
		"bootserve_cache_builds_total":        1,
		"bootserve_cache_build_errors_total":  1,
		"bootserve_cache_evictions_total":     0,
		"bootserve_cache_written_bytes_total": float64(s.BytesWritten),
		"bootserve_cache_bytes":               float64(s.Bytes),
		"bootserve_cache_members":             1,
	}
	for n, v := range want {
		if g, ok := got[n]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", n, g, ok, v)
		}
	}
	if s.BytesWritten == 0 || s.Bytes != s.BytesWritten {
		t.Errorf("stats %+v", s)
	}
}
