package tftpd

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

var testClient = netip.MustParseAddr("127.0.0.1")

func TestCleanName(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want "" means refused
	}{
		{"undionly.kpxe", "undionly.kpxe"},
		{"/undionly.kpxe", "undionly.kpxe"},
		{"/grub/grub.cfg", "grub/grub.cfg"},
		{"pxelinux.cfg/01-52-54-00-12-34-56", "pxelinux.cfg/01-52-54-00-12-34-56"},
		{`..\x`, `..\x`},         // a literal name on Linux
		{"%2e%2e/x", "%2e%2e/x"}, // not URL-decoded
		{"//etc/passwd", ""},     // only one slash is stripped
		{"../x", ""},
		{"/../x", ""},
		{"a/../../x", ""},
		{"a/../b", ""},
		{"./a", ""},
		{"a//b", ""},
		{"a/", ""},
		{"", ""},
		{"/", ""},
		{".", ""},
		{"a\x00b", ""},
		{"\xff\xfe", ""}, // not UTF-8
	} {
		got, err := cleanName(tc.in)
		if tc.want == "" {
			if err == nil || !errors.Is(err, ErrInvalidName) {
				t.Errorf("cleanName(%q) = %q, %v; want ErrInvalidName", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("cleanName(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// traversalTree makes <tmp>/secret.txt and a root <tmp>/root with a file, a
// subdirectory, symlinks inside and out, a directory and a FIFO.
func traversalTree(t *testing.T) (root string) {
	t.Helper()
	tmp := t.TempDir()
	root = filepath.Join(tmp, "root")
	mustWrite(t, filepath.Join(tmp, "secret.txt"), []byte("secret"))
	mustWrite(t, filepath.Join(root, "ok.bin"), []byte("ok"))
	mustWrite(t, filepath.Join(root, "sub", "deep.bin"), []byte("deep"))
	for link, target := range map[string]string{
		"escape":     "../secret.txt",
		"sub/escape": "../../secret.txt",
		"abs":        filepath.Join(tmp, "secret.txt"),
		"inside":     "sub/deep.bin",
	} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

func mustWrite(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func readAll(t *testing.T, f File, size int64) string {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(f, 0, size))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDir(t *testing.T) {
	src := Dir(traversalTree(t))
	ctx := context.Background()
	for name, want := range map[string]string{"ok.bin": "ok", "sub/deep.bin": "deep", "inside": "deep"} {
		f, size, err := src.Open(ctx, name, testClient)
		if err != nil {
			t.Errorf("Open(%q): %v", name, err)
			continue
		}
		if got := readAll(t, f, size); got != want || size != int64(len(want)) {
			t.Errorf("Open(%q) = %q (size %d), want %q", name, got, size, want)
		}
		f.Close()
	}

	for _, tc := range []struct {
		name     string
		notExist bool // else: any error but not-exist (so Chain stops too)
	}{
		{"../secret.txt", false},
		{"/etc/passwd", false},
		{"a/../../secret.txt", false},
		{"sub/../../secret.txt", false},
		{"escape", false},     // symlink to outside
		{"sub/escape", false}, // symlink to outside, one level down
		{"abs", false},        // absolute symlink
		{"a\x00b", false},
		{`..\secret.txt`, true}, // literal name
		{"%2e%2e/secret.txt", true},
		{"missing", true},
		{"sub", true},  // a directory
		{"fifo", true}, // must not hang waiting for a writer
	} {
		done := make(chan struct{})
		go func() {
			defer close(done)
			f, _, err := src.Open(ctx, tc.name, testClient)
			if err == nil {
				f.Close()
				t.Errorf("Open(%q) succeeded, want an error", tc.name)
				return
			}
			if got := errors.Is(err, fs.ErrNotExist); got != tc.notExist {
				t.Errorf("Open(%q): %v; not-exist = %v, want %v", tc.name, err, got, tc.notExist)
			}
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("Open(%q) hangs", tc.name)
		}
	}

	if _, _, err := Dir(filepath.Join(t.TempDir(), "nope")).Open(ctx, "x", testClient); err == nil || errors.Is(err, fs.ErrNotExist) {
		// A missing root is a configuration error, not a missing file:
		// Chain must not fall through it silently.
		t.Errorf("missing root: %v, want an error that is not ErrNotExist", err)
	}
}

func TestMapAndChain(t *testing.T) {
	ctx := context.Background()
	errBroken := errors.New("broken")
	broken := SourceFunc(func(context.Context, string, netip.Addr) (File, int64, error) { return nil, 0, errBroken })
	var sawClient netip.Addr
	perClient := SourceFunc(func(_ context.Context, name string, client netip.Addr) (File, int64, error) {
		sawClient = client
		if name != "grub/grub.cfg" {
			return nil, 0, fs.ErrNotExist
		}
		b := []byte("set timeout=0\n")
		return Bytes(b), int64(len(b)), nil
	})
	src := Chain(Map{"a": []byte("first")}, perClient, Map{"a": []byte("shadowed"), "b": []byte("second")}, broken, Map{"c": []byte("unreachable")})

	for name, want := range map[string]string{"a": "first", "grub/grub.cfg": "set timeout=0\n", "b": "second"} {
		f, size, err := src.Open(ctx, name, testClient)
		if err != nil {
			t.Fatalf("Open(%q): %v", name, err)
		}
		if got := readAll(t, f, size); got != want {
			t.Errorf("Open(%q) = %q, want %q", name, got, want)
		}
	}
	if sawClient != testClient {
		t.Errorf("source saw client %v, want %v", sawClient, testClient)
	}
	if _, _, err := src.Open(ctx, "c", testClient); !errors.Is(err, errBroken) {
		t.Errorf("Open(c) = %v: an error other than not-found must stop the chain", err)
	}
	if _, _, err := Chain(Map{}, Map{}).Open(ctx, "x", testClient); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("empty chain: %v, want ErrNotExist", err)
	}
}
