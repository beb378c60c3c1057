package cpiocache

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bootserve/bootserve/cpiocache/internal/synth"
	"github.com/klauspost/compress/zstd"
)

// The benchmarks share one synthetic closure of 500 paths and ~300 MB
// (generated on first use, deleted by TestMain) and one warm cache. They only
// run with -bench and are skipped with -short.
//
//	go test -run '^$' -bench . -benchtime 3x ./cpiocache/
var benchState struct {
	sync.Mutex
	root     string
	paths    []string
	rawBytes int64 // regular file bytes of the closure
	warmDir  string
	warm     *Cache
	base     []byte
	variants uint64
}

func removeSynth() {
	s := &benchState
	if s.warm != nil {
		s.warm.Close()
	}
	for _, d := range []string{s.root, s.warmDir} {
		if d != "" {
			os.RemoveAll(d)
		}
	}
}

func synthClosure(b *testing.B) (string, []string, int64) {
	if testing.Short() {
		b.Skip("needs the 500-path, 300 MB synthetic closure")
	}
	s := &benchState
	s.Lock()
	defer s.Unlock()
	if s.root == "" {
		dir, err := os.MkdirTemp("", "cpiocache-synth-")
		if err != nil {
			b.Fatal(err)
		}
		s.root = dir
		if s.paths, err = synth.Generate(dir, synth.Spec{Paths: 500, TotalBytes: 300 << 20, Seed: 1}); err != nil {
			b.Fatal(err)
		}
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if fi, err := d.Info(); err == nil {
					s.rawBytes += fi.Size()
				}
			}
			return err
		})
		syscall.Sync() // no writeback of the new tree during measurements
		// A registration text of realistic size for the base member.
		var reg strings.Builder
		for _, p := range s.paths {
			fmt.Fprintf(&reg, "%s\nsha256:%064d\n%d\n\n3\n%s\n%s\n%s\n", p, 0, 1234, p, p, p)
		}
		if s.base, err = BaseMember([]Entry{
			{Name: "nix/.nix-netboot-serve-db/registration", Body: []byte(reg.String())},
			{Name: "init", Linkname: s.paths[len(s.paths)-1] + "/init"},
		}, Zstd); err != nil {
			b.Fatal(err)
		}
	}
	return s.root, s.paths, s.rawBytes
}

// warmCache returns a cache holding every member of the synthetic closure.
func warmCache(b *testing.B) (*Cache, []string, []byte) {
	root, paths, _ := synthClosure(b)
	s := &benchState
	s.Lock()
	defer s.Unlock()
	if s.warm == nil {
		dir, err := os.MkdirTemp("", "cpiocache-warm-")
		if err != nil {
			b.Fatal(err)
		}
		s.warmDir = dir
		if s.warm, err = Open(Options{Dir: dir, FSRoot: root}); err != nil {
			b.Fatal(err)
		}
		ci, err := s.warm.Initrd(context.Background(), nil, paths)
		if err != nil {
			b.Fatal(err)
		}
		ci.Close()
	}
	return s.warm, paths, s.base
}

// BenchmarkColdBuild builds every member of the closure into an empty cache.
// Each iteration also runs the baseline pipeline on the same tree, so the
// ratio (×baseline) compares runs under the same machine load. cores is the
// CPU time of the build divided by its wall time.
func BenchmarkColdBuild(b *testing.B) {
	for _, bc := range []struct {
		name  string
		comp  Compression
		level zstd.EncoderLevel
	}{
		{"zstd-default", Zstd, zstd.SpeedDefault},
		{"zstd-better", Zstd, zstd.SpeedBetterCompression},
		{"gzip", Gzip, 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			root, paths, raw := synthClosure(b)
			haveTools := true
			for _, tool := range []string{"cpio", "zstd", "find"} {
				if _, err := exec.LookPath(tool); err != nil {
					haveTools = false
				}
			}
			baseOut := filepath.Join(b.TempDir(), "baseline.cpio.zst")
			b.SetBytes(raw)
			var out int64
			var elapsed, baseElapsed, cpu time.Duration
			for range b.N {
				b.StopTimer()
				if haveTools {
					start := time.Now()
					runBaseline(b, root, baseOut)
					baseElapsed += time.Since(start)
				}
				dir, err := os.MkdirTemp("", "cpiocache-cold-")
				if err != nil {
					b.Fatal(err)
				}
				cpu0 := cpuTime()
				b.StartTimer()
				start := time.Now()
				c, err := Open(Options{Dir: dir, FSRoot: root, Compression: bc.comp, zstdLevel: bc.level})
				if err != nil {
					b.Fatal(err)
				}
				ci, err := c.Initrd(context.Background(), nil, paths)
				if err != nil {
					b.Fatal(err)
				}
				elapsed += time.Since(start)
				b.StopTimer()
				cpu += cpuTime() - cpu0
				out = ci.Size()
				ci.Close()
				c.Close()
				os.RemoveAll(dir)
				b.StartTimer()
			}
			b.ReportMetric(float64(out)/float64(raw), "out/in")
			b.ReportMetric(cpu.Seconds()/elapsed.Seconds(), "cores")
			if haveTools {
				st, err := os.Stat(baseOut)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(raw)*float64(b.N)/1e6/baseElapsed.Seconds(), "baseline-MB/s")
				b.ReportMetric(float64(st.Size())/float64(raw), "baseline-out/in")
				b.ReportMetric(baseElapsed.Seconds()/elapsed.Seconds(), "×baseline")
			}
		})
	}
}

// runBaseline runs `find | cpio -o -H newc | zstd -3` over the tree.
func runBaseline(b *testing.B, root, out string) {
	cmd := exec.Command("sh", "-c", "find nix | cpio -o -H newc --quiet | zstd -3 -q > "+out)
	cmd.Dir = root
	if o, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("baseline: %v\n%s", err, o)
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkBaseline is the `find | cpio -o -H newc | zstd -3` pipeline alone.
func BenchmarkBaseline(b *testing.B) {
	root, _, raw := synthClosure(b)
	if _, err := exec.LookPath("cpio"); err != nil {
		b.Skip("cpio not installed")
	}
	out := filepath.Join(b.TempDir(), "baseline.cpio.zst")
	b.SetBytes(raw)
	for range b.N {
		runBaseline(b, root, out)
	}
}

// BenchmarkInitrdWarm is the time to assemble a Concat when every member is
// cached (lookups, pins, 500 opens).
func BenchmarkInitrdWarm(b *testing.B) {
	c, paths, base := warmCache(b)
	for range b.N {
		ci, err := c.Initrd(context.Background(), base, paths)
		if err != nil {
			b.Fatal(err)
		}
		ci.Close()
	}
}

// BenchmarkFirstUseAfterRestart is Initrd right after Open of a full cache:
// every member is hash-checked once.
func BenchmarkFirstUseAfterRestart(b *testing.B) {
	c, paths, base := warmCache(b)
	dir := c.dir
	root := benchState.root
	s := &benchState
	s.Lock()
	defer s.Unlock()
	c.Close()
	var size int64
	for range b.N {
		b.StopTimer()
		c2, err := Open(Options{Dir: dir, FSRoot: root})
		if err != nil {
			b.Fatal(err)
		}
		size = c2.Stats().Bytes
		b.StartTimer()
		ci, err := c2.Initrd(context.Background(), base, paths)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if c2.Stats().Builds != 0 {
			b.Fatal("members rebuilt")
		}
		ci.Close()
		c2.Close()
		b.StartTimer()
	}
	b.SetBytes(size)
	var err error
	if s.warm, err = Open(Options{Dir: dir, FSRoot: root}); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkStream writes the whole initrd of the warm closure to io.Discard,
// to an in-process client over loopback TCP, and over net/http to curl, each
// with sendfile and with plain copies (the writer's ReaderFrom hidden).
func BenchmarkStream(b *testing.B) {
	c, paths, base := warmCache(b)
	ci, err := c.Initrd(context.Background(), base, paths)
	if err != nil {
		b.Fatal(err)
	}
	defer ci.Close()
	size := ci.Size()

	b.Run("discard", func(b *testing.B) {
		b.SetBytes(size)
		for range b.N {
			if _, err := ci.WriteTo(io.Discard); err != nil {
				b.Fatal(err)
			}
		}
	})
	tcp := func(b *testing.B, hide bool) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				var w io.Writer = conn
				if hide {
					w = struct{ io.Writer }{conn} // no ReaderFrom: plain copies
				}
				ci.WriteRange(w, 0, size)
				conn.Close()
			}
		}()
		buf := make([]byte, 256<<10)
		b.SetBytes(size)
		for range b.N {
			conn, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, conn, buf)
			conn.Close()
			if err != nil || n != size {
				b.Fatalf("got %d bytes, %v", n, err)
			}
		}
	}
	b.Run("tcp-sendfile", func(b *testing.B) { tcp(b, false) })
	b.Run("tcp-copy", func(b *testing.B) { tcp(b, true) })
	// Over HTTP with curl as the client, so that this process's CPU time
	// is the server's alone.
	httpBench := func(b *testing.B, hide bool) {
		curl, err := exec.LookPath("curl")
		if err != nil {
			b.Skip("curl not installed")
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", fmt.Sprint(size))
			var out io.Writer = w
			if hide {
				out = struct{ io.Writer }{w}
			}
			ci.WriteRange(out, 0, size)
		})}
		go srv.Serve(ln)
		defer srv.Close()
		url := "http://" + ln.Addr().String() + "/initrd"
		b.SetBytes(size)
		cpu0 := cpuTime()
		for range b.N {
			out, err := exec.Command(curl, "-sS", "-o", "/dev/null", "-w", "%{size_download}", url).CombinedOutput()
			if err != nil || string(out) != fmt.Sprint(size) {
				b.Fatalf("curl: %v %s", err, out)
			}
		}
		b.ReportMetric((cpuTime()-cpu0).Seconds()*1e3/(float64(size)*float64(b.N)/1e9), "server-cpu-ms/GB")
	}
	b.Run("http-sendfile", func(b *testing.B) { httpBench(b, false) })
	b.Run("http-copy", func(b *testing.B) { httpBench(b, true) })
}

// BenchmarkChangedClosure is the cycle after a rebuild that changed 3 paths
// (a median, a 90th- and a 98th-percentile path by size): 3 new members and
// 497 reused ones, until the Concat is ready and fully written.
func BenchmarkChangedClosure(b *testing.B) {
	c, paths, base := warmCache(b)
	root := benchState.root
	bySize := slices.Clone(paths)
	sizes := map[string]int64{}
	for _, p := range paths {
		filepath.WalkDir(filepath.Join(root, p), func(q string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				fi, _ := d.Info()
				sizes[p] += fi.Size()
			}
			return nil
		})
	}
	slices.SortFunc(bySize, func(x, y string) int { return int(sizes[x] - sizes[y]) })
	changed := []int{len(paths) / 2, len(paths) * 90 / 100, len(paths) * 98 / 100}
	var changedBytes int64
	for _, i := range changed {
		changedBytes += sizes[bySize[i]]
	}
	b.ReportMetric(float64(changedBytes)/1e6, "changed-MB")
	for range b.N {
		b.StopTimer()
		next := slices.Clone(paths)
		var made []string
		for _, ci := range changed {
			benchState.variants++ // a new hash every time, across runs
			v, err := synth.Variant(root, bySize[ci], benchState.variants)
			if err != nil {
				b.Fatal(err)
			}
			made = append(made, v)
			next[slices.Index(paths, bySize[ci])] = v
		}
		builds := c.Stats().Builds
		b.StartTimer()
		ci, err := c.Initrd(context.Background(), base, next)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := ci.WriteTo(io.Discard); err != nil {
			b.Fatal(err)
		}
		ci.Close()
		b.StopTimer()
		if got := c.Stats().Builds - builds; got != 3 {
			b.Fatalf("%d builds, want 3", got)
		}
		for _, v := range made {
			os.RemoveAll(filepath.Join(root, v))
		}
		b.StartTimer()
	}
}
