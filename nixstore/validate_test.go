package nixstore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const goodHash = "pwsz3b0hn5zl1b21scwl8nmbz392db72"

func TestValidateBaseName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{goodHash + "-leaf", true},
		{goodHash + "-nixos-system-m1-21.11pre307912.fe01052444c", true},
		{goodHash + "-a+b_c?d=e.f-G", true},
		{goodHash + "-" + strings.Repeat("x", maxNameLen), true},
		{goodHash + "-" + strings.Repeat("x", maxNameLen+1), false},
		{goodHash + "-x.drv", true},
		{goodHash + "--", true},
		{"", false},
		{"..", false},
		{".", false},
		{goodHash, false},
		{goodHash + "-", false},
		{goodHash + "_leaf", false},
		{goodHash[:31] + "-leaf", false},
		{goodHash + "0-leaf", false},
		{"pwsz3b0hn5zl1b21scwl8nmbz392db7e-leaf", false}, // e is not base32
		{"pwsz3b0hn5zl1b21scwl8nmbz392db7o-leaf", false}, // o
		{"pwsz3b0hn5zl1b21scwl8nmbz392db7t-leaf", false}, // t
		{"pwsz3b0hn5zl1b21scwl8nmbz392db7u-leaf", false}, // u
		{"PWSZ3B0HN5ZL1B21SCWL8NMBZ392DB72-leaf", false}, // upper case
		{goodHash + "-.hidden", false},
		{goodHash + "-..", false},
		{goodHash + "-a/b", false},
		{goodHash + "-a/../b", false},
		{"/nix/store/" + goodHash + "-leaf", false},
		{goodHash + "-%2e%2e", false},
		{"%2e%2e", false},
		{goodHash + "-a%2fb", false},
		{goodHash + "-a\x00b", false},
		{goodHash + "-a b", false},
		{goodHash + "-a\nb", false},
		{goodHash + "-caf\u00e9", false},
		{goodHash + "-a~b", false},
	}
	for _, tc := range tests {
		err := ValidateBaseName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateBaseName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidPath) {
				t.Errorf("ValidateBaseName(%q) error %v does not match ErrInvalidPath", tc.name, err)
			}
			if msg := err.Error(); strings.ContainsAny(msg, "\n\x00") || len(msg) > 300 {
				t.Errorf("ValidateBaseName(%q) error is not one safe line: %q", tc.name, msg)
			}
		}
	}
}

func TestValidName(t *testing.T) {
	for name, ok := range map[string]bool{
		"m1.small":               true,
		"example-host":           true,
		"system-42-link":         true,
		"a_b+c":                  true,
		"":                       false,
		".":                      false,
		"..":                     false,
		".hidden":                false,
		"-rf":                    false,
		"a/b":                    false,
		"../etc":                 false,
		"/etc":                   false,
		"%2e%2e":                 false,
		"a\x00":                  false,
		"a b":                    false,
		"a?b":                    false,
		strings.Repeat("a", 255): true,
		strings.Repeat("a", 256): false,
	} {
		err := validName("profile", name)
		if (err == nil) != ok {
			t.Errorf("validName(%q) = %v, want ok=%v", name, err, ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidPath) {
			t.Errorf("validName(%q) error %v does not match ErrInvalidPath", name, err)
		}
	}
}

func TestLookup(t *testing.T) {
	for _, chroot := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "chroot"}[chroot], func(t *testing.T) {
			f := newFakeStore(t, chroot, Options{})
			outside := t.TempDir()
			if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			dir := f.path("dir")
			f.write(dir+"/file", "x", 0o644)
			toDir := f.path("link-to-dir")
			f.symlink(dir, toDir)
			relToDir := f.path("rel-link-to-dir")
			f.symlink(filepath.Base(dir), relToDir)
			escAbs := f.path("escape-abs")
			f.symlink(filepath.Join(outside, "secret"), escAbs)
			escRel := f.path("escape-rel")
			f.symlink("../../../../../../../../../etc", escRel)
			escHost := f.path("escape-host-store")
			// For a chroot store, the host's own store is outside the store.
			f.symlink(f.root+"/../elsewhere/nix/store/x", escHost)
			dangling := f.path("dangling")
			f.symlink(f.path("missing"), dangling)
			loop := f.path("loop")
			f.symlink(filepath.Base(loop), loop)
			viaDotDot := f.path("dotdot")
			f.symlink("../"+filepath.Base(dir)+"/file", viaDotDot)

			tests := []struct {
				ref  string
				want string
				kind error
			}{
				{filepath.Base(dir), dir, nil},
				{dir, dir, nil},
				{toDir, toDir, nil},
				{relToDir, relToDir, nil},
				{viaDotDot, "", ErrInvalidPath}, // ".." from the store dir itself leaves it
				{f.path("missing"), "", ErrNotFound},
				{dangling, "", ErrNotFound},
				{escAbs, "", ErrInvalidPath},
				{escRel, "", ErrInvalidPath},
				{loop, "", ErrInvalidPath},
				{dir + "/file", "", ErrInvalidPath},
				{dir + "/", "", ErrInvalidPath},
				{f.dir + "//" + filepath.Base(dir), "", ErrInvalidPath},
				{f.dir + "/./" + filepath.Base(dir), "", ErrInvalidPath},
				{f.dir + "/../store/" + filepath.Base(dir), "", ErrInvalidPath},
				{"/etc/passwd", "", ErrInvalidPath},
				{f.dir, "", ErrInvalidPath},
				{"..", "", ErrInvalidPath},
				{"%2e%2e", "", ErrInvalidPath},
				{"", "", ErrInvalidPath},
			}
			if chroot {
				tests = append(tests, struct {
					ref  string
					want string
					kind error
				}{escHost, "", ErrInvalidPath})
			}
			for _, tc := range tests {
				got, err := f.s.Lookup(tc.ref)
				if tc.kind == nil {
					if err != nil || got != tc.want {
						t.Errorf("Lookup(%q) = %q, %v; want %q", tc.ref, got, err, tc.want)
					}
					continue
				}
				if !errors.Is(err, tc.kind) {
					t.Errorf("Lookup(%q) = %q, %v; want an error matching %v", tc.ref, got, err, tc.kind)
				}
			}
		})
	}
}

func TestResolveFollowsLinksInsideStore(t *testing.T) {
	f := newFakeStore(t, true, Options{})
	linux := f.path("linux")
	f.write(linux+"/bzImage", "kernel", 0o444)
	alias := f.path("linux-alias")
	f.symlink(linux, alias) // a store path that is a symlink to another
	sys := f.path("sys")
	f.symlink(alias+"/bzImage", sys+"/kernel")
	// Inside a store path, ".." reaches the store dir and may come back down.
	f.symlink("../"+filepath.Base(alias)+"/./bzImage", sys+"/rel")
	for _, p := range []string{sys + "/kernel", sys + "/rel"} {
		got, fi, err := f.s.resolve(p)
		if err != nil {
			t.Fatal(err)
		}
		if got != linux+"/bzImage" || !fi.Mode().IsRegular() {
			t.Errorf("resolve(%s) = %q (%v), want %q, a regular file", p, got, fi.Mode(), linux+"/bzImage")
		}
	}
	f.symlink("../../etc/passwd", sys+"/up")
	if _, _, err := f.s.resolve(sys + "/up"); !errors.Is(err, ErrInvalidPath) {
		t.Errorf("resolve of a link leaving the store through ..: err = %v, want ErrInvalidPath", err)
	}
}

func TestNewOptions(t *testing.T) {
	if _, err := New(Options{}); err == nil || !strings.Contains(err.Error(), "Backend") {
		t.Errorf("New without a backend: err = %v, want a message about Backend", err)
	}
	if _, err := New(Options{Backend: BackendScan, StoreDir: "nix/store"}); err == nil {
		t.Error("New accepted a relative store dir")
	}
	if _, err := New(Options{Backend: BackendScan, StoreDir: "/nix/store/"}); err == nil {
		t.Error("New accepted a store dir with a trailing slash")
	}
	if _, err := New(Options{Backend: BackendCLI, NixStore: "/nonexistent/nix-store"}); err == nil {
		t.Error("New with BackendCLI accepted a nix-store that does not exist")
	}
	if _, err := New(Options{Backend: BackendScan, ConfigurationsDir: t.TempDir()}); err == nil {
		t.Error("New accepted a configurations dir without a gc roots dir")
	}
	s, err := New(Options{Backend: BackendScan, NixStore: "/nonexistent/nix-store", NixBuild: "/nonexistent/nix-build"})
	if err != nil {
		t.Fatalf("BackendScan must not need nix-store: %v", err)
	}
	if s.StoreDir() != DefaultStoreDir {
		t.Errorf("StoreDir() = %q, want %q", s.StoreDir(), DefaultStoreDir)
	}
}
