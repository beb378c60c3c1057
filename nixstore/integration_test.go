package nixstore

// Integration tests against a real Nix store, built offline (see testdata/closure.nix).
// They need nix-store and nix-build: skipped without them unless BOOTSERVE_REQUIRE_NIX is set.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// nixCmd runs a Nix tool and returns its stdout; stderr (with the harmless nixbld group
// warning) only shows when the command fails.
func nixCmd(t *testing.T, stdin []byte, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// buildTestClosure builds testdata/closure.nix with a GC root in a temp dir and returns
// the top store path.
func buildTestClosure(t *testing.T) string {
	t.Helper()
	requireNix(t)
	link := filepath.Join(t.TempDir(), "result")
	args := append(slices.Clone(offlineBuildArgs), "--out-link", link, "testdata/closure.nix")
	out := strings.TrimSpace(string(nixCmd(t, nil, "nix-build", args...)))
	if !strings.HasPrefix(out, "/nix/store/") || strings.Contains(out, "\n") {
		t.Fatalf("nix-build printed %q", out)
	}
	return out
}

func newCLIStore(t *testing.T, opts Options) *Store {
	t.Helper()
	opts.Backend = BackendCLI
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestNixClosureAndRegistration(t *testing.T) {
	top := buildTestClosure(t)
	ctx := context.Background()
	cli := newCLIStore(t, Options{})

	closure, err := cli.Closure(ctx, top)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Fields(string(nixCmd(t, nil, "nix-store", "--query", "--requisites", top)))
	slices.Sort(want)
	if !slices.Equal(closure, want) || len(closure) != 3 {
		t.Fatalf("Closure = %v\nnix-store -qR = %v (want 3 paths)", closure, want)
	}
	if byName, err := cli.Closure(ctx, filepath.Base(top)); err != nil || !slices.Equal(byName, closure) {
		t.Errorf("Closure by basename = %v, %v", byName, err)
	}

	reg, err := cli.Registration(ctx, closure)
	if err != nil {
		t.Fatal(err)
	}
	dump := nixCmd(t, nil, "nix-store", append([]string{"--dump-db"}, closure...)...)
	if !bytes.Equal(reg, dump) {
		t.Fatalf("Registration differs from nix-store --dump-db:\n%s\nvs\n%s", reg, dump)
	}
	// Split over several nix-store calls (one path each), the output is the same.
	batched := newCLIStore(t, Options{})
	batched.dumpArgBytes = 1
	if got, err := batched.Registration(ctx, closure); err != nil || !bytes.Equal(got, dump) {
		t.Errorf("batched Registration differs (%v):\n%s", err, got)
	}

	// The scan backend, from the files alone, must produce the very same bytes: same NAR
	// hashes and sizes, same references (top refers to itself), same derivers.
	scan, err := New(Options{Backend: BackendScan})
	if err != nil {
		t.Fatal(err)
	}
	scanClosure, err := scan.Closure(ctx, top)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(scanClosure, closure) {
		t.Errorf("scan Closure = %v, want %v", scanClosure, closure)
	}
	scanReg, err := scan.Registration(ctx, closure)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(scanReg, dump) {
		t.Fatalf("scan Registration differs from nix-store --dump-db:\n%s\nvs\n%s", scanReg, dump)
	}

	// Our NAR serialisation is byte for byte nix-store --dump's.
	for _, p := range closure {
		var nar bytes.Buffer
		if err := writeNAR(ctx, &nar, p); err != nil {
			t.Fatal(err)
		}
		if want := nixCmd(t, nil, "nix-store", "--dump", p); !bytes.Equal(nar.Bytes(), want) {
			t.Errorf("writeNAR(%s) differs from nix-store --dump at byte %d", p, firstDiff(nar.Bytes(), want))
		}
	}

	// PathInfos agrees with nix path-info --json, an independent reading of the database.
	infos, err := cli.PathInfos(ctx, closure)
	if err != nil {
		t.Fatal(err)
	}
	var pi []struct {
		Path       string   `json:"path"`
		NarHash    string   `json:"narHash"`
		NarSize    uint64   `json:"narSize"`
		References []string `json:"references"`
		Deriver    string   `json:"deriver"`
	}
	raw := nixCmd(t, nil, "nix", append([]string{"--extra-experimental-features", "nix-command", "path-info", "--json"}, closure...)...)
	if err := json.Unmarshal(raw, &pi); err != nil {
		t.Fatalf("nix path-info --json: %v\n%s", err, raw)
	}
	if len(pi) != len(infos) {
		t.Fatalf("nix path-info gave %d entries, PathInfos %d", len(pi), len(infos))
	}
	for _, want := range pi {
		i := slices.IndexFunc(infos, func(in PathInfo) bool { return in.Path == want.Path })
		if i < 0 {
			t.Fatalf("PathInfos lacks %s", want.Path)
		}
		got := infos[i]
		sri, ok := strings.CutPrefix(want.NarHash, "sha256-")
		digest, err := base64.StdEncoding.DecodeString(sri)
		if !ok || err != nil {
			t.Fatalf("unexpected narHash %q from nix path-info", want.NarHash)
		}
		slices.Sort(want.References)
		if got.NARHash != hex.EncodeToString(digest) || got.NARSize != want.NarSize || got.Deriver != want.Deriver ||
			!slices.Equal(got.References, want.References) {
			t.Errorf("PathInfos %+v\nnix path-info %+v", got, want)
		}
	}
}

// TestNixLoadDBIntoFreshStore copies the closure into a fresh chroot store, loads our
// registration with nix-store --load-db and has Nix verify the result.
func TestNixLoadDBIntoFreshStore(t *testing.T) {
	top := buildTestClosure(t)
	ctx := context.Background()
	closure, err := newCLIStore(t, Options{}).Closure(ctx, top)
	if err != nil {
		t.Fatal(err)
	}
	scan, err := New(Options{Backend: BackendScan})
	if err != nil {
		t.Fatal(err)
	}
	// The scan backend's registration: Nix has to accept what we computed ourselves.
	reg, err := scan.Registration(ctx, closure)
	if err != nil {
		t.Fatal(err)
	}
	infos, err := ParseRegistration(reg)
	if err != nil {
		t.Fatal(err)
	}

	newChroot := func() string {
		root := filepath.Join(t.TempDir(), "chroot")
		if err := os.MkdirAll(root+"/nix/store", 0o755); err != nil {
			t.Fatal(err)
		}
		for _, p := range closure {
			if out, err := exec.Command("cp", "-a", p, root+"/nix/store/").CombinedOutput(); err != nil {
				t.Fatalf("cp -a %s: %v\n%s", p, err, out)
			}
		}
		return root
	}
	root := newChroot()
	nixCmd(t, reg, "nix-store", "--store", root, "--load-db")
	for _, in := range infos {
		nixCmd(t, nil, "nix-store", "--store", root, "--verify-path", in.Path)
		refs := strings.Fields(string(nixCmd(t, nil, "nix-store", "--store", root, "--query", "--references", in.Path)))
		slices.Sort(refs)
		if !slices.Equal(refs, in.References) {
			t.Errorf("%s: chroot store references %v, registration says %v", in.Path, refs, in.References)
		}
	}

	// The CLI backend on the chroot store (Root) answers as on the host store.
	chroot := newCLIStore(t, Options{Root: root})
	got, err := chroot.Closure(ctx, top)
	if err != nil || !slices.Equal(got, closure) {
		t.Errorf("chroot Closure = %v, %v; want %v", got, err, closure)
	}
	if got, err := chroot.Registration(ctx, closure); err != nil || !bytes.Equal(got, reg) {
		t.Errorf("chroot Registration differs (%v):\n%s\nvs\n%s", err, got, reg)
	}
	// A path that is on disk but not in the database is not found.
	fake := root + "/nix/store/" + fakeHash("unregistered") + "-unregistered"
	if err := os.Mkdir(fake, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := chroot.Closure(ctx, filepath.Base(fake)); !errors.Is(err, ErrNotFound) {
		t.Errorf("Closure of an unregistered path: err = %v, want ErrNotFound", err)
	}

	// verify-path really checks our hashes: a registration with one wrong hash loads, but
	// that path then fails verification.
	bad := bytes.Replace(reg, []byte(infos[0].NARHash), []byte(strings.Repeat("0", 64)), 1)
	root2 := newChroot()
	nixCmd(t, bad, "nix-store", "--store", root2, "--load-db")
	if err := exec.Command("nix-store", "--store", root2, "--verify-path", infos[0].Path).Run(); err == nil {
		t.Errorf("verify-path accepted a wrong NAR hash: the check above proves nothing")
	}
}

// BenchmarkCLIClosure measures one uncached closure query (a nix-store process).
func BenchmarkCLIClosure(b *testing.B) {
	top := strings.TrimSpace(string(benchBuild(b)))
	s, err := New(Options{Backend: BackendCLI, ClosureCacheEntries: 1})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		s.closures = newLRU[[]string](1) // defeat the cache
		if _, err := s.Closure(context.Background(), top); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCLIRegistration measures nix-store --dump-db for the test closure.
func BenchmarkCLIRegistration(b *testing.B) {
	top := strings.TrimSpace(string(benchBuild(b)))
	s, err := New(Options{Backend: BackendCLI})
	if err != nil {
		b.Fatal(err)
	}
	closure, err := s.Closure(context.Background(), top)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := s.Registration(context.Background(), closure); err != nil {
			b.Fatal(err)
		}
	}
}

func benchBuild(b *testing.B) []byte {
	b.Helper()
	if _, err := exec.LookPath("nix-build"); err != nil {
		b.Skip("nix-build not installed")
	}
	args := append(slices.Clone(offlineBuildArgs), "--out-link", filepath.Join(b.TempDir(), "result"), "testdata/closure.nix")
	out, err := exec.Command("nix-build", args...).Output()
	if err != nil {
		b.Fatal(err)
	}
	return out
}
