package nixstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// confEnv is a configurations dir, a gc roots dir and a Store using them, with a nonce so
// that every test run builds fresh derivations.
type confEnv struct {
	t       *testing.T
	s       *Store
	configs string
	roots   string
	tmp     string
	nonce   string
}

func newConfEnv(t *testing.T, opts Options) *confEnv {
	t.Helper()
	requireNix(t)
	e := &confEnv{t: t, tmp: t.TempDir()}
	e.configs = filepath.Join(e.tmp, "configurations")
	e.roots = filepath.Join(e.tmp, "gc-roots")
	var b [6]byte
	rand.Read(b[:])
	e.nonce = hex.EncodeToString(b[:])
	opts.ConfigurationsDir, opts.GCRootsDir = e.configs, e.roots
	opts.BuildArgs = offlineBuildArgs
	e.s = newCLIStore(t, opts)
	return e
}

// conf writes <configurations>/<name>/default.nix: a derivation whose output holds marker,
// after running wait (shell code) in the builder.
func (e *confEnv) conf(name, marker, wait string) {
	e.t.Helper()
	expr := fmt.Sprintf(`builtins.derivation {
  name = "bootserve-conf-%s";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" %q ];
}
`, marker, "export PATH=/usr/bin:/bin; "+wait+" mkdir -p $out; echo "+marker+" > $out/marker")
	e.writeConf(name, expr)
}

func (e *confEnv) writeConf(name, expr string) {
	e.t.Helper()
	dir := filepath.Join(e.configs, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.t.Fatal(err)
	}
	// Write and rename, as an editor would, so nix-build never reads half a file.
	tmp := filepath.Join(dir, ".default.nix.tmp")
	if err := os.WriteFile(tmp, []byte(expr), 0o644); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "default.nix")); err != nil {
		e.t.Fatal(err)
	}
}

// waitUntil is shell code that signals it started, then waits for release (at most 120 s).
func waitUntil(signal, release string) string {
	return fmt.Sprintf("touch %s; i=0; while [ ! -e %s ]; do sleep 0.1; i=$((i+1)); [ $i -lt 1200 ] || exit 1; done;", signal, release)
}

func waitForFile(t *testing.T, p string, done <-chan struct{}) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, err := os.Stat(p); err == nil {
			return
		}
		select {
		case <-done:
			t.Fatalf("build finished before %s appeared", p)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", p)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func readMarker(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p + "/marker")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// buildLinks returns the targets of the per-build out-links of configuration name.
func (e *confEnv) buildLinks(name string) []string {
	e.t.Helper()
	matches, err := filepath.Glob(filepath.Join(e.roots, buildLinkPrefix+name+"-*"))
	if err != nil {
		e.t.Fatal(err)
	}
	var targets []string
	for _, m := range matches {
		t, err := os.Readlink(m)
		if err != nil {
			e.t.Fatal(err)
		}
		targets = append(targets, t)
	}
	slices.Sort(targets)
	return targets
}

// deadPaths asks the garbage collector, without deleting anything, which of paths it
// would delete.
func deadPaths(t *testing.T, paths ...string) []string {
	t.Helper()
	dead := strings.Fields(string(nixCmd(t, nil, "nix-store", "--gc", "--print-dead")))
	var out []string
	for _, p := range paths {
		if slices.Contains(dead, p) {
			out = append(out, p)
		}
	}
	return out
}

type buildResult struct {
	path string
	err  error
}

// TestBuildConfigurationRace is nix-netboot-serve's documented race: machine A starts a
// slow build, the configuration changes, machine B builds the new one and boots; then A's
// build finishes. A must get the configuration it started with.
func TestBuildConfigurationRace(t *testing.T) {
	e := newConfEnv(t, Options{})
	ctx := context.Background()
	signal, release := filepath.Join(e.tmp, "a-started"), filepath.Join(e.tmp, "a-release")
	markA, markB := "slow-"+e.nonce, "fast-"+e.nonce
	e.conf("m1.small", markA, waitUntil(signal, release))

	resA := make(chan buildResult, 1)
	doneA := make(chan struct{})
	go func() {
		defer close(doneA)
		p, err := e.s.BuildConfiguration(ctx, "m1.small")
		resA <- buildResult{p, err}
	}()
	waitForFile(t, signal, doneA) // A has evaluated the old file and is building

	e.conf("m1.small", markB, "")
	pathB, err := e.s.BuildConfiguration(ctx, "m1.small")
	if err != nil {
		t.Fatalf("build B: %v", err)
	}
	select {
	case r := <-resA:
		t.Fatalf("build A finished before it was released: %+v", r)
	default:
	}
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	a := <-resA
	if a.err != nil {
		t.Fatalf("build A: %v", a.err)
	}

	if got := readMarker(t, a.path); got != markA {
		t.Errorf("machine A got %s holding %q, want its own build of %q", a.path, got, markA)
	}
	if got := readMarker(t, pathB); got != markB {
		t.Errorf("machine B got %s holding %q, want %q", pathB, got, markB)
	}
	if a.path == pathB {
		t.Errorf("both machines got %s", pathB)
	}
	// The shared root names the newest configuration although A finished last.
	if root, err := os.Readlink(filepath.Join(e.roots, "m1.small")); err != nil || root != pathB {
		t.Errorf("root m1.small -> %q (%v), want %s", root, err, pathB)
	}
	// Each build keeps its own root, so neither can be collected while it boots.
	want := []string{a.path, pathB}
	slices.Sort(want)
	if got := e.buildLinks("m1.small"); !slices.Equal(got, want) {
		t.Errorf("per-build roots point to %v, want %v", got, want)
	}
	if dead := deadPaths(t, a.path, pathB); len(dead) > 0 {
		t.Errorf("the garbage collector would delete %v", dead)
	}
}

func TestBuildConfigurationConcurrentSame(t *testing.T) {
	e := newConfEnv(t, Options{})
	e.conf("same", "same-"+e.nonce, "sleep 1;")
	res := make(chan buildResult, 2)
	for range 2 {
		go func() {
			p, err := e.s.BuildConfiguration(context.Background(), "same")
			res <- buildResult{p, err}
		}()
	}
	r1, r2 := <-res, <-res
	if r1.err != nil || r2.err != nil || r1.path != r2.path {
		t.Fatalf("concurrent builds of one configuration: %+v, %+v", r1, r2)
	}
	if got := e.buildLinks("same"); len(got) != 2 {
		t.Errorf("want two per-build roots, got %v", got)
	}
}

func TestBuildRootsExpire(t *testing.T) {
	e := newConfEnv(t, Options{BuildRootGrace: time.Millisecond})
	ctx := context.Background()
	e.conf("m2", "first-"+e.nonce, "")
	first, err := e.s.BuildConfiguration(ctx, "m2")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // older than the grace period
	e.conf("m2", "second-"+e.nonce, "")
	second, err := e.s.BuildConfiguration(ctx, "m2")
	if err != nil {
		t.Fatal(err)
	}
	if got := e.buildLinks("m2"); !slices.Equal(got, []string{second}) {
		t.Errorf("per-build roots after expiry: %v, want only %s", got, second)
	}
	if root, _ := os.Readlink(filepath.Join(e.roots, "m2")); root != second {
		t.Errorf("root m2 -> %q, want %s", root, second)
	}
	// The first build has lost all its roots: the collector would take it, the second
	// is safe. (This also shows that the dead-path check used above can fail.)
	if dead := deadPaths(t, first, second); !slices.Equal(dead, []string{first}) {
		t.Errorf("dead paths = %v, want only %s", dead, first)
	}
}

func TestBuildConfigurationFailure(t *testing.T) {
	e := newConfEnv(t, Options{})
	ctx := context.Background()
	e.conf("broken", "broken-"+e.nonce, "for i in $(seq 1 50); do echo build-log-line-$i; done; exit 3;")
	_, err := e.s.BuildConfiguration(ctx, "broken")
	var be *BuildError
	if !errors.As(err, &be) {
		t.Fatalf("err = %v, want a *BuildError", err)
	}
	if !strings.Contains(be.Reason, "failed with exit code 3") || strings.Contains(be.Reason, "\n") {
		t.Errorf("Reason = %q, want one line saying the builder failed", be.Reason)
	}
	log := strings.Join(be.Log, "\n")
	if len(be.Log) > 30 || !strings.Contains(log, "build-log-line-50") || strings.Contains(log, "build-log-line-1\n") {
		t.Errorf("Log has %d lines, want the last <=30 with line 50:\n%s", len(be.Log), log)
	}
	if !strings.Contains(err.Error(), "broken") {
		t.Errorf("Error() = %q, want the configuration name", err)
	}
	if got := e.buildLinks("broken"); len(got) != 0 {
		t.Errorf("a failed build left out-links %v", got)
	}

	e.writeConf("syntax", "{ this is not nix")
	_, err = e.s.BuildConfiguration(ctx, "syntax")
	if !errors.As(err, &be) || !strings.HasPrefix(be.Reason, "error:") {
		t.Errorf("syntax error: err = %v, want a *BuildError with Nix's error line", err)
	}

	e.writeConf("two", `[ (builtins.derivation { name = "a-`+e.nonce+`"; system = builtins.currentSystem; builder = "/bin/sh"; args = ["-c" "echo a > $out"]; })
  (builtins.derivation { name = "b-`+e.nonce+`"; system = builtins.currentSystem; builder = "/bin/sh"; args = ["-c" "echo b > $out"]; }) ]`)
	_, err = e.s.BuildConfiguration(ctx, "two")
	if !errors.As(err, &be) || !strings.Contains(be.Reason, "one derivation") {
		t.Errorf("two outputs: err = %v, want a *BuildError about one derivation", err)
	}
	if got, _ := filepath.Glob(filepath.Join(e.roots, buildLinkPrefix+"two-*")); len(got) != 0 {
		t.Errorf("rejected build left out-links %v", got)
	}
}

func TestBuildConfigurationCancel(t *testing.T) {
	e := newConfEnv(t, Options{})
	signal, pidFile := filepath.Join(e.tmp, "started"), filepath.Join(e.tmp, "pid")
	e.conf("hang", "hang-"+e.nonce, fmt.Sprintf("echo $$ > %s; touch %s; exec sleep 600;", pidFile, signal))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res := make(chan buildResult, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		p, err := e.s.BuildConfiguration(ctx, "hang")
		res <- buildResult{p, err}
	}()
	waitForFile(t, signal, done)
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	r := <-res
	var be *BuildError
	if !errors.Is(r.err, context.Canceled) || !errors.As(r.err, &be) {
		t.Fatalf("cancelled build: %+v, want a *BuildError matching context.Canceled", r)
	}
	// Nix stopped its builder: the sleeping process is gone.
	deadline := time.Now().Add(30 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			exec.Command("kill", "-9", strconv.Itoa(pid)).Run()
			t.Fatalf("builder %d still runs after the build was cancelled", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestBuildConfigurationRequestErrors(t *testing.T) {
	f := newFakeStore(t, false, Options{})
	if _, err := f.s.BuildConfiguration(context.Background(), "x"); !errors.Is(err, ErrNotConfigured) {
		t.Errorf("no configurations dir: err = %v, want ErrNotConfigured", err)
	}
	configs := t.TempDir()
	s, err := New(Options{Backend: BackendScan, ConfigurationsDir: configs, GCRootsDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(configs, "dir-only"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, kind := range map[string]error{
		"missing":   ErrNotFound,
		"dir-only":  ErrNotFound,
		"..":        ErrInvalidPath,
		"../x":      ErrInvalidPath,
		".hidden":   ErrInvalidPath,
		"a/b":       ErrInvalidPath,
		"--help":    ErrInvalidPath,
		"":          ErrInvalidPath,
		"%2e%2e":    ErrInvalidPath,
		"bad\x00nm": ErrInvalidPath,
	} {
		if _, err := s.BuildConfiguration(context.Background(), name); !errors.Is(err, kind) {
			t.Errorf("BuildConfiguration(%q): err = %v, want %v", name, err, kind)
		}
	}
}
