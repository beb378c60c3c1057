package nixstore

import (
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// fakeStore is a store directory in a temp dir, with no Nix database: what the scan
// backend and the pure file logic are tested on. With chroot, files live under a root
// prefix and paths are named /nix/store/..., as in a chroot store.
type fakeStore struct {
	t    *testing.T
	root string // filesystem prefix, "" if none
	dir  string // logical store dir
	s    *Store
}

func newFakeStore(t *testing.T, chroot bool, opts Options) *fakeStore {
	t.Helper()
	tmp := t.TempDir()
	f := &fakeStore{t: t}
	if chroot {
		f.root = filepath.Join(tmp, "root")
		f.dir = "/nix/store"
	} else {
		f.dir = filepath.Join(tmp, "store")
	}
	if err := os.MkdirAll(f.fs(f.dir), 0o755); err != nil {
		t.Fatal(err)
	}
	opts.StoreDir, opts.Root = f.dir, f.root
	if opts.Backend == BackendUnset {
		opts.Backend = BackendScan
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	f.s = s
	return f
}

// fs maps a logical path to the file holding it.
func (f *fakeStore) fs(p string) string { return f.root + p }

// fakeHash derives a valid, stable 32-character Nix base32 hash from a name.
func fakeHash(name string) string {
	const alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
	sum := sha256.Sum256([]byte(name))
	b := make([]byte, hashLen)
	for i := range b {
		b[i] = alphabet[sum[i]%32]
	}
	return string(b)
}

// path returns the logical store path for name (not created).
func (f *fakeStore) path(name string) string { return f.dir + "/" + fakeHash(name) + "-" + name }

func (f *fakeStore) mkdir(p string) {
	f.t.Helper()
	if err := os.MkdirAll(f.fs(p), 0o755); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeStore) write(p, content string, mode os.FileMode) {
	f.t.Helper()
	f.mkdir(filepath.Dir(p))
	if err := os.WriteFile(f.fs(p), []byte(content), mode); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Chmod(f.fs(p), mode); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeStore) symlink(target, p string) {
	f.t.Helper()
	f.mkdir(filepath.Dir(p))
	if err := os.Symlink(target, f.fs(p)); err != nil {
		f.t.Fatal(err)
	}
}

// requireNix skips a test that needs the Nix tools when they are missing, unless
// BOOTSERVE_REQUIRE_NIX is set (CI), where a missing Nix is a failure.
func requireNix(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"nix-store", "nix-build"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("BOOTSERVE_REQUIRE_NIX") != "" {
				t.Fatalf("%s not found and BOOTSERVE_REQUIRE_NIX is set: %v", tool, err)
			}
			t.Skipf("%s not installed (Debian: apt-get install nix-bin); set BOOTSERVE_REQUIRE_NIX=1 to fail instead", tool)
		}
	}
}

// offlineBuildArgs are the nix-build options for single-user Nix as root, with no nixbld
// group, no sandbox and no reachable binary cache.
var offlineBuildArgs = []string{
	"--option", "sandbox", "false",
	"--option", "build-users-group", "",
	"--option", "substituters", "",
}
