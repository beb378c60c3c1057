// Command nix is the benchmark of issue 3: serving a Nix closure as an initrd
// through the real `bootserve nix` binary, side by side with archiving the
// same closure with `find | cpio -o -H newc | zstd -3` (and `zstd -T0 -3`).
// Run it as root from the module root (it creates, and removes, a network
// namespace in which bootserve's ProxyDHCP has an interface to bind and
// clients talk to bootserve over the namespace's loopback):
//
//	go run ./bench/nix                 # 3 runs of each measure, medians
//	go run ./bench/nix -runs 5 -perf   # and a perf profile of warm streaming
//
// It generates a synthetic closure of 500 store paths and ~300 MB with
// cpiocache's gensynth (plus a NixOS-shaped top level referencing every path),
// and a ~1 GB one for the memory measure, all under -work (deleted at the end
// unless -keep). bootserve runs with --store-backend scan --store-root, so no
// Nix database is needed. Measures:
//
//	(a) cold: empty cache, first initrd request → last byte, MB/s of input
//	(b) warm: initrd streamed to curl and to a Go client, GB/s
//	(c) cycle: 3 paths changed (new paths and a new top level) → last byte
//	    of the new system's initrd
//	(d) memory: peak RSS (VmHWM) of bootserve while 20 clients stream the
//	    ~1 GB closure's initrd at once
//
// The result is printed as a Markdown table (docs/benchmarks.md keeps one).
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bootserve/bootserve/nixstore"
)

type options struct {
	work    string
	runs    int
	port    int
	paths   int
	mb      int64
	bigMB   int64
	clients int
	keep    bool
	perf    bool
	inner   bool
	ns      string
	// Set by the outer process for the inner one.
	bootserve, gensynth string
}

func main() {
	var o options
	flag.StringVar(&o.work, "work", "", "work directory (default: a new one under /var/tmp)")
	flag.IntVar(&o.runs, "runs", 3, "runs of each measure (the median is reported)")
	flag.IntVar(&o.port, "port", 18380, "HTTP port of bootserve inside the namespace")
	flag.IntVar(&o.paths, "paths", 500, "store paths of each closure")
	flag.Int64Var(&o.mb, "mb", 300, "megabytes of the closure of (a)-(c)")
	flag.Int64Var(&o.bigMB, "big-mb", 1000, "megabytes of the closure of (d); 0 skips (d)")
	flag.IntVar(&o.clients, "clients", 20, "concurrent clients of (d)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory")
	flag.BoolVar(&o.perf, "perf", false, "profile warm streaming with perf (system-wide) and print the top symbols")
	flag.BoolVar(&o.inner, "inner", false, "internal: run the measures (inside the namespace)")
	flag.StringVar(&o.ns, "netns", "", "internal: namespace name")
	flag.StringVar(&o.bootserve, "bootserve-bin", "", "internal: bootserve binary")
	flag.StringVar(&o.gensynth, "gensynth-bin", "", "internal: gensynth binary")
	serveAddr := flag.String("fileserver", "", "internal: serve -work's files on this address")
	flag.Parse()
	if *serveAddr != "" {
		if err := fileServer(*serveAddr, o.work); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	if o.inner {
		err = inner(ctx, log, o)
	} else {
		err = outer(ctx, log, o)
	}
	if err != nil {
		log.Error("benchmark failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// outer builds the binaries, makes the namespace and runs itself inside it.
func outer(ctx context.Context, log *slog.Logger, o options) error {
	if os.Geteuid() != 0 {
		return errors.New("run as root: the benchmark creates a network namespace for bootserve's ProxyDHCP")
	}
	for _, tool := range []string{"ip", "curl", "cpio", "zstd", "find", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is needed: %w", tool, err)
		}
	}
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil || len(bytes.TrimSpace(gomod)) == 0 {
		return fmt.Errorf("run from inside the bootserve module: go env GOMOD: %v", err)
	}
	modDir := filepath.Dir(string(bytes.TrimSpace(gomod)))
	if o.work == "" {
		if o.work, err = os.MkdirTemp("/var/tmp", "bootserve-bench-nix-"); err != nil {
			return err
		}
		if !o.keep {
			defer os.RemoveAll(o.work)
		}
	}
	// bootserve serves as nobody: the store must be readable by all.
	if err := os.MkdirAll(o.work, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(o.work, 0o755); err != nil {
		return err
	}
	o.bootserve = filepath.Join(o.work, "bootserve")
	o.gensynth = filepath.Join(o.work, "gensynth")
	for bin, pkg := range map[string]string{o.bootserve: "./cmd/bootserve", o.gensynth: "./cpiocache/internal/synth/gensynth"} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, pkg)
		cmd.Dir = modDir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
		}
	}
	o.ns = fmt.Sprintf("bsbench-nix-%d", os.Getpid())
	if err := run(ctx, "ip", "netns", "add", o.ns); err != nil {
		return err
	}
	defer func() {
		if err := run(context.Background(), "ip", "netns", "del", o.ns); err != nil {
			log.Warn("remove network namespace", "err", err)
		}
	}()
	for _, args := range [][]string{
		{"-n", o.ns, "link", "set", "lo", "up"},
		// A veth pair with both ends in the namespace (this kernel has no
		// dummy interfaces): ProxyDHCP binds to one end, nothing else.
		{"-n", o.ns, "link", "add", "bsbench0", "type", "veth", "peer", "name", "bsbench1"},
		{"-n", o.ns, "addr", "add", "10.213.0.1/24", "dev", "bsbench0"},
		{"-n", o.ns, "link", "set", "bsbench0", "up"},
		{"-n", o.ns, "link", "set", "bsbench1", "up"},
	} {
		if err := run(ctx, "ip", args...); err != nil {
			return err
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	args := []string{"netns", "exec", o.ns, self, "-inner", "-netns", o.ns, "-work", o.work,
		"-runs", strconv.Itoa(o.runs), "-port", strconv.Itoa(o.port), "-paths", strconv.Itoa(o.paths),
		"-mb", strconv.FormatInt(o.mb, 10), "-big-mb", strconv.FormatInt(o.bigMB, 10),
		"-clients", strconv.Itoa(o.clients), "-bootserve-bin", o.bootserve, "-gensynth-bin", o.gensynth,
		"-perf=" + strconv.FormatBool(o.perf)}
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Dir = modDir
	return cmd.Run()
}

// --- closures -------------------------------------------------------------------

type closure struct {
	root     string   // store root: files of /nix/store/x are under root/nix/store/x
	paths    []string // the generated paths
	top      string   // NixOS-shaped top level referencing every path
	all      []string // top, its kernel path and paths
	rawBytes int64    // regular file bytes of all
	dummy    string   // a tiny system, the command-line target of bootserve
	dummyAll []string // its closure
	size     map[string]int64
}

func storePath(name string) string {
	const alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
	sum := sha256.Sum256([]byte(name))
	var h [32]byte
	for i := range h {
		h[i] = alphabet[sum[i]%32]
	}
	return "/nix/store/" + string(h[:]) + "-" + name
}

func writeFile(p string, data []byte, mode fs.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		return err
	}
	return os.Chmod(p, mode)
}

// addSystem writes a NixOS-shaped top level whose files name every path (so
// the scan backend finds them as references) and its own kernel path.
func addSystem(root, tag string, paths []string) (string, []string, error) {
	linux := storePath("linux-" + tag)
	top := storePath("nixos-system-" + tag)
	fsp := func(p string) string { return filepath.Join(root, p) }
	if err := writeFile(fsp(linux)+"/bzImage", bytes.Repeat([]byte("bzImage "+tag+"\n"), 1000), 0o444); err != nil {
		return "", nil, err
	}
	if err := writeFile(fsp(top)+"/init", []byte("#!/bin/sh\necho "+tag+"\n"), 0o555); err != nil {
		return "", nil, err
	}
	if err := writeFile(fsp(top)+"/kernel-params", []byte("console=ttyS0\n"), 0o444); err != nil {
		return "", nil, err
	}
	if err := writeFile(fsp(top)+"/sw/references", []byte(strings.Join(paths, "\n")+"\n"), 0o444); err != nil {
		return "", nil, err
	}
	if err := os.Symlink(linux+"/bzImage", fsp(top)+"/kernel"); err != nil {
		return "", nil, err
	}
	return top, append([]string{top, linux}, paths...), nil
}

func treeBytes(root string, paths []string) (map[string]int64, int64) {
	sizes := map[string]int64{}
	var total int64
	for _, p := range paths {
		filepath.WalkDir(filepath.Join(root, p), func(q string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if fi, err := d.Info(); err == nil {
					sizes[p] += fi.Size()
					total += fi.Size()
				}
			}
			return nil
		})
	}
	return sizes, total
}

func generate(ctx context.Context, o options, dir string, mb int64, seed int) (*closure, error) {
	cmd := exec.CommandContext(ctx, o.gensynth, "-dir", dir, "-paths", strconv.Itoa(o.paths),
		"-mb", strconv.FormatInt(mb, 10), "-seed", strconv.Itoa(seed))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("gensynth: %w\n%s", err, stderr.Bytes())
	}
	c := &closure{root: dir, paths: strings.Fields(string(out))}
	if c.top, c.all, err = addSystem(dir, fmt.Sprintf("bench-%d", seed), c.paths); err != nil {
		return nil, err
	}
	if c.dummy, c.dummyAll, err = addSystem(dir, fmt.Sprintf("dummy-%d", seed), nil); err != nil {
		return nil, err
	}
	c.size, c.rawBytes = treeBytes(dir, c.all)
	syscall.Sync() // no writeback of the new tree during measurements
	return c, nil
}

// variant copies store path src to a new store path with the same name and
// changed content (bytes in the middle of its largest file), as a rebuild of
// a changed package would produce.
func variant(root, src, tag string) (string, error) {
	dst := storePath(tag + "-" + path.Base(src)[33:])
	if err := exec.Command("cp", "-a", filepath.Join(root, src), filepath.Join(root, dst)).Run(); err != nil {
		return "", fmt.Errorf("copy %s: %w", src, err)
	}
	var largest string
	var size int64 = -1
	filepath.WalkDir(filepath.Join(root, dst), func(q string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil && fi.Size() > size {
				largest, size = q, fi.Size()
			}
		}
		return nil
	})
	if largest == "" {
		return dst, nil
	}
	os.Chmod(largest, 0o644)
	f, err := os.OpenFile(largest, os.O_WRONLY, 0)
	if err != nil {
		return "", err
	}
	_, err = f.WriteAt([]byte("changed by "+tag), size/2)
	return dst, errors.Join(err, f.Close(), os.Chmod(largest, 0o444))
}

// registerChroot makes the store root a chroot store with a Nix database
// that registers the closure (the registration the scan backend computes,
// loaded with nix-store --load-db), so bootserve can also run with
// --store-backend cli on the same files. The database is given to nobody,
// whom bootserve serves as.
func registerChroot(ctx context.Context, c *closure) error {
	st, err := nixstore.New(nixstore.Options{Backend: nixstore.BackendScan, Root: c.root})
	if err != nil {
		return err
	}
	reg, err := st.Registration(ctx, append(slices.Clone(c.all), c.dummyAll...))
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "nix-store", "--store", c.root, "--load-db")
	cmd.Stdin = bytes.NewReader(reg)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nix-store --load-db: %w\n%s", err, out)
	}
	return filepath.WalkDir(filepath.Join(c.root, "nix/var"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, 65534, 65534)
	})
}

// fileServer is the reference for warm streaming: Go's own file server
// (sendfile) serving one file, run as a process of its own as bootserve is.
func fileServer(addr, dir string) error {
	return http.ListenAndServe(addr, http.FileServer(http.Dir(dir)))
}

// --- the pipeline ---------------------------------------------------------------

// pipeline archives paths (under root) with find | cpio | zstd into out,
// fsynced as bootserve's members are, and returns the time and output size.
func pipeline(ctx context.Context, root string, paths []string, zstdArgs, out string) (time.Duration, int64, error) {
	d, _, size, err := pipelineCPU(ctx, root, paths, zstdArgs, out)
	return d, size, err
}

// pipelineCPU is pipeline that also returns the CPU time of the shell and
// everything it ran.
func pipelineCPU(ctx context.Context, root string, paths []string, zstdArgs, out string) (time.Duration, time.Duration, int64, error) {
	list := out + ".list"
	var rel []string
	for _, p := range paths {
		rel = append(rel, strings.TrimPrefix(p, "/"))
	}
	if err := os.WriteFile(list, []byte(strings.Join(rel, "\n")+"\n"), 0o644); err != nil {
		return 0, 0, 0, err
	}
	defer os.Remove(list)
	syscall.Sync()
	script := fmt.Sprintf("find $(cat %s) | cpio -o -H newc --quiet | zstd -q %s -f -o %s && sync %s", list, zstdArgs, out, out)
	cmd := exec.CommandContext(ctx, "sh", "-c", script)
	cmd.Dir = root
	start := time.Now()
	if o, err := cmd.CombinedOutput(); err != nil {
		return 0, 0, 0, fmt.Errorf("pipeline: %w\n%s", err, o)
	}
	d := time.Since(start)
	cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	st, err := os.Stat(out)
	if err != nil {
		return 0, 0, 0, err
	}
	os.Remove(out)
	return d, cpu, st.Size(), nil
}

// --- bootserve --------------------------------------------------------------------

type server struct {
	cmd  *exec.Cmd
	done chan error
	log  string
	url  string
}

func startServer(ctx context.Context, o options, c *closure, backend, cacheDir, logName string) (*server, error) {
	logPath := filepath.Join(o.work, logName)
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	cmd := exec.Command(o.bootserve, "nix", c.dummy, "--store-backend", backend, "--store-root", c.root,
		"--cache-dir", cacheDir, "--cache-size", "100GiB", "--interface", "bsbench0",
		"--listen-addr", "127.0.0.1", "--port", strconv.Itoa(o.port), "--profiles-dir", c.root)
	cmd.Stdout, cmd.Stderr = lf, lf
	// Nix tools run by bootserve (as nobody) read $HOME: give them one
	// nobody can read, not root's.
	home := filepath.Join(o.work, "home")
	if err := os.MkdirAll(home, 0o755); err != nil {
		return nil, err
	}
	if err := os.Chown(home, 65534, 65534); err != nil {
		return nil, err
	}
	cmd.Env = append(os.Environ(), "HOME="+home)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{cmd: cmd, done: make(chan error, 1), log: logPath, url: fmt.Sprintf("http://127.0.0.1:%d", o.port)}
	go func() { s.done <- cmd.Wait() }()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		b, _ := os.ReadFile(logPath)
		if bytes.Contains(b, []byte("bootserve ready")) {
			return s, nil
		}
		select {
		case err := <-s.done:
			return nil, fmt.Errorf("bootserve exited (%v):\n%s", err, b)
		case <-ctx.Done():
			s.stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("bootserve not ready after 2 minutes:\n%s", b)
		}
	}
}

func (s *server) stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

// statusKB reads a "Vm...: N kB" line of the server's /proc status.
func (s *server) statusKB(field string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return -1
}

// cpu returns the CPU time (user + system) the server and its reaped
// children (nix-store) have used so far.
func (s *server) cpu() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	// Fields after the command name, which is in parentheses: utime,
	// stime, cutime and cstime are the 12th to 15th, in clock ticks (100 a
	// second on Linux).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 15 {
		return -1
	}
	var ticks int64
	for _, v := range f[11:15] {
		n, _ := strconv.ParseInt(v, 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

func initrdURL(s *server, top string) string { return s.url + "/boot/" + path.Base(top) + "/initrd" }

// fetch downloads url to nowhere with a Go client and returns the bytes and
// the time from sending the request to the last byte.
func fetch(ctx context.Context, url string) (int64, time.Duration, error) {
	tr := &http.Transport{DisableCompression: true, DisableKeepAlives: true, ReadBufferSize: 256 << 10}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	buf := make([]byte, 1<<20)
	n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, resp.Body, buf)
	d := time.Since(start)
	if err == nil && (resp.StatusCode != 200 || n != resp.ContentLength) {
		err = fmt.Errorf("GET %s: status %d, %d of %d bytes", url, resp.StatusCode, n, resp.ContentLength)
	}
	return n, d, err
}

func curl(ctx context.Context, url string) (int64, time.Duration, error) {
	out, err := exec.CommandContext(ctx, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}", url).CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("curl: %w: %s", err, out)
	}
	var code, n int64
	var secs float64
	if _, err := fmt.Sscan(string(out), &code, &n, &secs); err != nil || code != 200 {
		return 0, 0, fmt.Errorf("curl: %q", out)
	}
	return n, time.Duration(secs * float64(time.Second)), nil
}

// --- statistics and output --------------------------------------------------------

func median[T int64 | float64 | time.Duration](v []T) T {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func secs(ds []time.Duration) string {
	var parts []string
	for _, d := range ds {
		parts = append(parts, fmt.Sprintf("%.2f", d.Seconds()))
	}
	return strings.Join(parts, ", ")
}

func mbps(bytes int64, d time.Duration) float64 { return float64(bytes) / 1e6 / d.Seconds() }

type results struct {
	raw, rawBig                int64
	initrd, pipeOut, pipeOutT0 int64
	coldScan                   []time.Duration // scan backend's own work, in-process
	cold, coldCLI              []time.Duration // scan and cli backends
	pipe, pipeT0               []time.Duration
	coldHWM                    []int64
	coldCPU, coldCLICPU        []time.Duration // server CPU time of the cold runs
	pipeCPU, pipeT0CPU         []time.Duration
	warmCurl, warmGo           []float64 // GB/s, bootserve
	refCurl, refGo             []float64 // GB/s, Go's file server on the same bytes
	warmSize                   int64
	cycle, cyclePipe, cyclePT0 []time.Duration
	changedBytes               []int64
	bigInitrd                  int64
	bigCold                    time.Duration
	bigColdHWM                 int64
	// (d): a new process, all clients at once; and after a warm-up
	// request, with the peak reset.
	herdHWM, herdFDs, streamHWM, streamFDs []int64 // kB, descriptors
	herdWall, streamWall                   []time.Duration
	perf, perfCold                         string
}

// --- the measures -----------------------------------------------------------------

func inner(ctx context.Context, log *slog.Logger, o options) error {
	var r results
	log.Info("generating the closure", "paths", o.paths, "mb", o.mb)
	c, err := generate(ctx, o, filepath.Join(o.work, "store"), o.mb, 1)
	if err != nil {
		return err
	}
	r.raw = c.rawBytes
	haveCLI := false
	if _, err := exec.LookPath("nix-store"); err == nil {
		if err := registerChroot(ctx, c); err != nil {
			return err
		}
		haveCLI = true
	} else {
		log.Warn("nix-store not installed: no cold build with --store-backend cli")
	}
	cacheDir := filepath.Join(o.work, "cache")

	// (a) cold builds, each on an empty cache in a new process, alternating
	// with the pipelines so that machine load hits both alike.
	coldRun := func(backend string, i int) (time.Duration, time.Duration, error) {
		os.RemoveAll(cacheDir)
		syscall.Sync()
		s, err := startServer(ctx, o, c, backend, cacheDir, fmt.Sprintf("cold-%s-%d.log", backend, i))
		if err != nil {
			return 0, 0, err
		}
		cpu0 := s.cpu()
		n, d, err := fetch(ctx, initrdURL(s, c.top))
		cpu := s.cpu() - cpu0
		if backend == "scan" {
			r.coldHWM = append(r.coldHWM, s.statusKB("VmHWM"))
		}
		s.stop()
		r.initrd = n
		log.Info("cold", "backend", backend, "run", i, "seconds", d.Seconds(), "cpu_seconds", cpu.Seconds(), "initrd_bytes", n, "MB/s", mbps(c.rawBytes, d))
		return d, cpu, err
	}
	for i := range o.runs {
		d, cpu, err := coldRun("scan", i)
		if err != nil {
			return err
		}
		r.cold, r.coldCPU = append(r.cold, d), append(r.coldCPU, cpu)
		if haveCLI {
			if d, cpu, err = coldRun("cli", i); err != nil {
				return err
			}
			r.coldCLI, r.coldCLICPU = append(r.coldCLI, d), append(r.coldCLICPU, cpu)
		}

		// The scan backend's own part: closure and registration by
		// NAR-hashing every path, which the cli backend asks Nix for.
		st, err := nixstore.New(nixstore.Options{Backend: nixstore.BackendScan, Root: c.root})
		if err != nil {
			return err
		}
		start := time.Now()
		cl, err := st.Closure(ctx, c.top)
		if err == nil {
			_, err = st.Registration(ctx, cl)
		}
		if err != nil {
			return err
		}
		if len(cl) != len(c.all) {
			return fmt.Errorf("closure of the top level has %d paths, want %d", len(cl), len(c.all))
		}
		r.coldScan = append(r.coldScan, time.Since(start))

		for _, p := range []struct {
			args string
			ds   *[]time.Duration
			cpus *[]time.Duration
			out  *int64
		}{{"-3", &r.pipe, &r.pipeCPU, &r.pipeOut}, {"-T0 -3", &r.pipeT0, &r.pipeT0CPU, &r.pipeOutT0}} {
			d, cpu, size, err := pipelineCPU(ctx, c.root, c.all, p.args, filepath.Join(o.work, "pipeline.cpio.zst"))
			if err != nil {
				return err
			}
			*p.ds, *p.cpus, *p.out = append(*p.ds, d), append(*p.cpus, cpu), size
			log.Info("pipeline", "zstd", p.args, "run", i, "seconds", d.Seconds(), "cpu_seconds", cpu.Seconds(), "MB/s", mbps(c.rawBytes, d))
		}
	}

	if o.perf {
		// One more cold build (cli backend if there is one), profiled;
		// not part of the timings above.
		backend := "scan"
		if haveCLI {
			backend = "cli"
		}
		os.RemoveAll(cacheDir)
		syscall.Sync()
		s, err := startServer(ctx, o, c, backend, cacheDir, "cold-perf.log")
		if err != nil {
			return err
		}
		r.perfCold, err = profilePID(ctx, o, s.cmd.Process.Pid, func() error {
			_, _, err := fetch(ctx, initrdURL(s, c.top))
			return err
		})
		s.stop()
		if err != nil {
			log.Warn("perf", "err", err)
		}
	}

	// (b) warm streaming from a new process (its first request checks the
	// cached members' hashes; not measured), alternating with Go's file
	// server sending the same bytes from one file: the machine's ceiling.
	s, err := startServer(ctx, o, c, "scan", cacheDir, "warm.log")
	if err != nil {
		return err
	}
	defer func() {
		if s != nil {
			s.stop()
		}
	}()
	u := initrdURL(s, c.top)
	if out, err := exec.CommandContext(ctx, "curl", "-sSf", "-o", filepath.Join(o.work, "initrd.img"), u).CombinedOutput(); err != nil {
		return fmt.Errorf("curl: %w: %s", err, out)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	refAddr := fmt.Sprintf("127.0.0.1:%d", o.port+1)
	ref := exec.Command(self, "-fileserver", refAddr, "-work", o.work)
	if err := ref.Start(); err != nil {
		return err
	}
	defer func() { ref.Process.Kill(); ref.Wait() }()
	refURL := "http://" + refAddr + "/initrd.img"
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, _, err := curl(ctx, refURL); err == nil {
			break
		} else if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
	gbps := func(n int64, d time.Duration) float64 { return float64(n) / 1e9 / d.Seconds() }
	for i := range max(o.runs, 5) {
		for _, m := range []struct {
			url string
			get func(context.Context, string) (int64, time.Duration, error)
			out *[]float64
		}{{u, curl, &r.warmCurl}, {refURL, curl, &r.refCurl}, {u, fetch, &r.warmGo}, {refURL, fetch, &r.refGo}} {
			n, d, err := m.get(ctx, m.url)
			if err != nil {
				return err
			}
			r.warmSize = n
			*m.out = append(*m.out, gbps(n, d))
		}
		log.Info("warm", "run", i, "curl_GB/s", r.warmCurl[i], "ref_curl_GB/s", r.refCurl[i], "go_GB/s", r.warmGo[i], "ref_go_GB/s", r.refGo[i])
	}
	if o.perf {
		if r.perf, err = profile(ctx, o, s, u); err != nil {
			log.Warn("perf", "err", err)
		}
	}

	// (c) 3 changed paths: a median, a 90th- and a 98th-percentile path by
	// size, as in cpiocache's BenchmarkChangedClosure.
	bySize := slices.Clone(c.paths)
	slices.SortStableFunc(bySize, func(x, y string) int { return int(c.size[x] - c.size[y]) })
	for i := range o.runs {
		next := slices.Clone(c.paths)
		var changed int64
		for _, k := range []int{len(bySize) / 2, len(bySize) * 90 / 100, len(bySize) * 98 / 100} {
			v, err := variant(c.root, bySize[k], fmt.Sprintf("v%d", i))
			if err != nil {
				return err
			}
			next[slices.Index(c.paths, bySize[k])] = v
			changed += c.size[bySize[k]]
		}
		top, all, err := addSystem(c.root, fmt.Sprintf("bench-v%d", i), next)
		if err != nil {
			return err
		}
		syscall.Sync()
		_, d, err := fetch(ctx, initrdURL(s, top))
		if err != nil {
			return err
		}
		r.cycle = append(r.cycle, d)
		r.changedBytes = append(r.changedBytes, changed)
		log.Info("cycle", "run", i, "seconds", d.Seconds(), "changed_MB", float64(changed)/1e6)
		for _, p := range []struct {
			args string
			ds   *[]time.Duration
		}{{"-3", &r.cyclePipe}, {"-T0 -3", &r.cyclePT0}} {
			d, _, err := pipeline(ctx, c.root, all, p.args, filepath.Join(o.work, "pipeline.cpio.zst"))
			if err != nil {
				return err
			}
			*p.ds = append(*p.ds, d)
		}
	}
	s.stop()
	s = nil

	// (d) memory while clients stream the big closure at once.
	if o.bigMB > 0 {
		if err := memory(ctx, log, o, &r); err != nil {
			return err
		}
	}
	printResults(o, r, haveCLI)
	return nil
}

// countFDs counts the server's open descriptors.
func (s *server) countFDs() int64 {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", s.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	return int64(len(ents))
}

// clients has n clients fetch url at once and returns when all are done.
func clients(ctx context.Context, n int, url string, want int64) (time.Duration, error) {
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for k := range n {
		wg.Go(func() {
			got, _, err := fetch(ctx, url)
			if err == nil && got != want {
				err = fmt.Errorf("client %d got %d bytes, want %d", k, got, want)
			}
			errs[k] = err
		})
	}
	wg.Wait()
	return time.Since(start), errors.Join(errs...)
}

func memory(ctx context.Context, log *slog.Logger, o options, r *results) error {
	log.Info("generating the big closure", "paths", o.paths, "mb", o.bigMB)
	c, err := generate(ctx, o, filepath.Join(o.work, "store-big"), o.bigMB, 2)
	if err != nil {
		return err
	}
	r.rawBig = c.rawBytes
	cacheDir := filepath.Join(o.work, "cache-big")
	s, err := startServer(ctx, o, c, "scan", cacheDir, "big-cold.log")
	if err != nil {
		return err
	}
	n, d, err := fetch(ctx, initrdURL(s, c.top))
	r.bigColdHWM = s.statusKB("VmHWM")
	s.stop()
	if err != nil {
		return err
	}
	r.bigInitrd, r.bigCold = n, d
	log.Info("big closure cold", "seconds", d.Seconds(), "initrd_bytes", n, "VmHWM_kB", r.bigColdHWM)
	u := initrdURL(s, c.top)
	sampleFDs := func(s *server) func() int64 {
		var peak int64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				peak = max(peak, s.countFDs())
				select {
				case <-stop:
					return
				case <-time.After(5 * time.Millisecond):
				}
			}
		})
		return func() int64 { close(stop); wg.Wait(); return peak }
	}
	for i := range o.runs {
		// A new process: every client arrives before anything is in
		// memory (closure, registration, base member).
		s, err := startServer(ctx, o, c, "scan", cacheDir, fmt.Sprintf("big-herd-%d.log", i))
		if err != nil {
			return err
		}
		peakFDs := sampleFDs(s)
		wall, err := clients(ctx, o.clients, u, r.bigInitrd)
		fds := peakFDs()
		herd := s.statusKB("VmHWM")
		s.stop()
		if err != nil {
			return err
		}
		r.herdHWM, r.herdFDs, r.herdWall = append(r.herdHWM, herd), append(r.herdFDs, fds), append(r.herdWall, wall)

		// A new process that has booted the system once (one client),
		// its peak then reset (clear_refs 5): what the clients' streams
		// themselves cost.
		s, err = startServer(ctx, o, c, "scan", cacheDir, fmt.Sprintf("big-stream-%d.log", i))
		if err != nil {
			return err
		}
		if _, _, err := fetch(ctx, u); err != nil {
			s.stop()
			return err
		}
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", s.cmd.Process.Pid), []byte("5"), 0); err != nil {
			s.stop()
			return fmt.Errorf("reset the peak RSS: %w", err)
		}
		peakFDs = sampleFDs(s)
		wall2, err := clients(ctx, o.clients, u, r.bigInitrd)
		fds2 := peakFDs()
		stream := s.statusKB("VmHWM")
		s.stop()
		if err != nil {
			return err
		}
		r.streamHWM, r.streamFDs, r.streamWall = append(r.streamHWM, stream), append(r.streamFDs, fds2), append(r.streamWall, wall2)
		log.Info("memory", "run", i, "herd_VmHWM_kB", herd, "herd_peak_fds", fds, "herd_seconds", wall.Seconds(),
			"stream_VmHWM_kB", stream, "stream_peak_fds", fds2, "stream_seconds", wall2.Seconds(),
			"aggregate_GB/s", float64(r.bigInitrd)*float64(o.clients)/1e9/wall2.Seconds())
	}
	return nil
}

// profilePID records process pid with perf while f runs and returns the
// shares by object and the top symbols.
func profilePID(ctx context.Context, o options, pid int, f func() error) (string, error) {
	data := filepath.Join(o.work, "perf-cold.data")
	rec := exec.CommandContext(ctx, "perf", "record", "-g", "-F", "499", "-p", strconv.Itoa(pid), "-o", data)
	var recOut bytes.Buffer
	rec.Stdout, rec.Stderr = &recOut, &recOut
	if err := rec.Start(); err != nil {
		return "", err
	}
	time.Sleep(300 * time.Millisecond) // perf attaches
	ferr := f()
	rec.Process.Signal(os.Interrupt)
	// perf exits by the interrupt; what matters is that it wrote its data.
	if err := rec.Wait(); ferr == nil && !bytes.Contains(recOut.Bytes(), []byte("Captured and wrote")) {
		ferr = fmt.Errorf("perf record: %v\n%s", err, recOut.Bytes())
	}
	if ferr != nil {
		return "", ferr
	}
	return perfReport(ctx, data, [][]string{
		{"--sort", "dso", "--percent-limit", "2"},
		{"--sort", "sym", "--percent-limit", "2"},
	})
}

func perfReport(ctx context.Context, data string, reports [][]string) (string, error) {
	var b strings.Builder
	for _, args := range reports {
		out, err := exec.CommandContext(ctx, "perf", append([]string{"report", "-i", data, "--stdio", "--no-children", "-g", "none"}, args...)...).Output()
		if err != nil {
			return "", fmt.Errorf("perf report: %w", err)
		}
		fmt.Fprintf(&b, "$ perf report %s\n", strings.Join(args, " "))
		for _, l := range strings.Split(string(out), "\n") {
			if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "#") {
				b.WriteString(l + "\n")
			}
		}
	}
	return b.String(), nil
}

// profile records the whole system (server and client share 2 cores) while
// curl streams the warm initrd, and returns perf's shares by process and
// object, and bootserve's top symbols.
func profile(ctx context.Context, o options, s *server, url string) (string, error) {
	data := filepath.Join(o.work, "perf.data")
	rec := exec.CommandContext(ctx, "perf", "record", "-a", "-g", "-F", "499", "-o", data, "--", "sleep", "4")
	var recOut bytes.Buffer
	rec.Stdout, rec.Stderr = &recOut, &recOut
	if err := rec.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- rec.Wait() }()
	for loop := true; loop; {
		if _, _, err := curl(ctx, url); err != nil {
			return "", err
		}
		select {
		case err := <-done:
			if err != nil {
				return "", fmt.Errorf("perf record: %w\n%s", err, recOut.Bytes())
			}
			loop = false
		default:
		}
	}
	return perfReport(ctx, data, [][]string{
		{"--sort", "comm,dso", "--percent-limit", "2"},
		{"--comms", "bootserve", "--percentage", "relative", "--sort", "dso,sym", "--percent-limit", "2"},
	})
}

func printResults(o options, r results, haveCLI bool) {
	host, _ := os.Hostname()
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	var uts syscall.Utsname
	syscall.Uname(&uts)
	load, _ := os.ReadFile("/proc/loadavg")
	cold, pipe, pipeT0 := median(r.cold), median(r.pipe), median(r.pipeT0)
	cycle, cyclePipe, cyclePT0 := median(r.cycle), median(r.cyclePipe), median(r.cyclePT0)
	fmt.Printf("Run %s on %s: %d cores (%s), Linux %s, %s; load average at the end %s; %d runs per measure, medians; MB = 10^6 bytes, GB = 10^9.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), host, runtime.NumCPU(), cpu, unameString(uts.Release[:]), runtime.Version(),
		strings.Join(strings.Fields(string(load))[:3], " "), o.runs)
	fmt.Printf("Closure: %d store paths + top level and kernel, %.0f MB of files; initrd %.0f MB; `find | cpio | zstd -3` output %.0f MB, `zstd -T0 -3` %.0f MB.\n\n",
		o.paths, float64(r.raw)/1e6, float64(r.initrd)/1e6, float64(r.pipeOut)/1e6, float64(r.pipeOutT0)/1e6)
	fmt.Println("| measure | bootserve | find \\| cpio \\| zstd -3 | zstd -T0 -3 | ratio (pipeline time / bootserve time) | target |")
	fmt.Println("|---|---|---|---|---|---|")
	coldRow := func(what string, d time.Duration) {
		fmt.Printf("| %s | %.2f s (%.0f MB/s) | %.2f s (%.0f MB/s) | %.2f s (%.0f MB/s) | %.2f× / %.2f× | ≥ 1.5× |\n",
			what, d.Seconds(), mbps(r.raw, d), pipe.Seconds(), mbps(r.raw, pipe), pipeT0.Seconds(), mbps(r.raw, pipeT0),
			pipe.Seconds()/d.Seconds(), pipeT0.Seconds()/d.Seconds())
	}
	coldRow("(a) cold, `--store-backend scan`: request → last byte", cold)
	if haveCLI {
		coldRow("(a) cold, `--store-backend cli`: request → last byte", median(r.coldCLI))
	}
	fmt.Printf("| (b) warm initrd streaming, loopback | curl %.2f GB/s, Go client %.2f GB/s | Go's file server, same bytes: curl %.2f, Go %.2f GB/s | | %.2f× / %.2f× of the file server | ≥ 2 GB/s |\n",
		median(r.warmCurl), median(r.warmGo), median(r.refCurl), median(r.refGo),
		median(r.warmCurl)/median(r.refCurl), median(r.warmGo)/median(r.refGo))
	fmt.Printf("| (c) 3 paths changed: request → last byte | %.2f s | %.2f s | %.2f s | %.1f× / %.1f× | ≤ 1 s |\n",
		cycle.Seconds(), cyclePipe.Seconds(), cyclePT0.Seconds(), cyclePipe.Seconds()/cycle.Seconds(), cyclePT0.Seconds()/cycle.Seconds())
	if len(r.herdHWM) > 0 {
		fmt.Printf("| (d) peak RSS, %d clients at once × %.0f MB initrd (%.0f MB closure), new process | %.1f MB VmHWM | | | | ≤ 100 MB |\n",
			o.clients, float64(r.bigInitrd)/1e6, float64(r.rawBig)/1e6, float64(median(r.herdHWM))/1024)
		fmt.Printf("| (d) the same, process that has served the system once (peak reset before the clients) | %.1f MB VmHWM | | | | ≤ 100 MB |\n",
			float64(median(r.streamHWM))/1024)
	}
	fmt.Println()
	fmt.Println("Each run (seconds unless said):")
	fmt.Printf("- (a) wall: scan backend %s; cli backend %s; the scan backend's own closure + registration (in-process, alone) %s; pipeline -3 %s; -T0 -3 %s\n",
		secs(r.cold), secs(r.coldCLI), secs(r.coldScan), secs(r.pipe), secs(r.pipeT0))
	fmt.Printf("- (a) CPU time: scan backend %s; cli backend %s; pipeline -3 %s; -T0 -3 %s (medians: bootserve cli %.0f MB per CPU second, pipeline -3 %.0f, -T0 -3 %.0f)\n",
		secs(r.coldCPU), secs(r.coldCLICPU), secs(r.pipeCPU), secs(r.pipeT0CPU),
		mbps(r.raw, median(r.coldCLICPU)), mbps(r.raw, median(r.pipeCPU)), mbps(r.raw, median(r.pipeT0CPU)))
	fmt.Printf("- (a) bootserve VmHWM after a cold build (scan backend) %s kB\n", ints(r.coldHWM))
	fmt.Printf("- (b) %.0f MB initrd: bootserve curl %s, Go %s GB/s; file server curl %s, Go %s GB/s\n", float64(r.warmSize)/1e6,
		floats(r.warmCurl), floats(r.warmGo), floats(r.refCurl), floats(r.refGo))
	fmt.Printf("- (c) bootserve %s (changed paths: %s MB); pipeline -3 %s; -T0 -3 %s\n", secs(r.cycle), mbs(r.changedBytes), secs(r.cyclePipe), secs(r.cyclePT0))
	if len(r.herdHWM) > 0 {
		fmt.Printf("- (d) new process: VmHWM %s kB, peak descriptors %s, wall %s; served once before: VmHWM %s kB, peak descriptors %s, wall %s (%d × %.0f MB each); the cold build of that closure took %.1f s with VmHWM %d kB\n",
			ints(r.herdHWM), ints(r.herdFDs), secs(r.herdWall), ints(r.streamHWM), ints(r.streamFDs), secs(r.streamWall), o.clients, float64(r.bigInitrd)/1e6, r.bigCold.Seconds(), r.bigColdHWM)
	}
	if r.perfCold != "" {
		fmt.Printf("\nperf of bootserve during a cold build (an extra run, not timed):\n\n```\n%s```\n", r.perfCold)
	}
	if r.perf != "" {
		fmt.Printf("\nperf, system-wide while curl streams the warm initrd:\n\n```\n%s```\n", r.perf)
	}
}

func unameString(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

func ints(v []int64) string {
	var p []string
	for _, x := range v {
		p = append(p, strconv.FormatInt(x, 10))
	}
	return strings.Join(p, ", ")
}

func mbs(v []int64) string {
	var p []string
	for _, x := range v {
		p = append(p, fmt.Sprintf("%.1f", float64(x)/1e6))
	}
	return strings.Join(p, ", ")
}

func floats(v []float64) string {
	var p []string
	for _, x := range v {
		p = append(p, fmt.Sprintf("%.2f", x))
	}
	return strings.Join(p, ", ")
}
