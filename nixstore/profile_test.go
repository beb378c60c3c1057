package nixstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func TestResolveProfile(t *testing.T) {
	for _, chroot := range []bool{false, true} {
		t.Run(fmt.Sprint("chroot=", chroot), func(t *testing.T) {
			profiles := t.TempDir()
			f := newFakeStore(t, chroot, Options{ProfilesDir: profiles})
			sys42, sys43 := f.path("nixos-system-42"), f.path("nixos-system-43")
			f.write(sys42+"/init", "", 0o555)
			f.write(sys43+"/init", "", 0o555)
			alias := f.path("alias")
			f.symlink(sys43, alias)
			link := func(target, name string) {
				t.Helper()
				if err := os.Symlink(target, filepath.Join(profiles, name)); err != nil {
					t.Fatal(err)
				}
			}
			// NixOS-style chain: system -> system-42-link -> /nix/store/...
			link(sys42, "system-42-link")
			link("system-42-link", "system")
			link(filepath.Join(profiles, "system"), "abs-chain")
			link(alias, "via-alias")
			link(f.path("deleted"), "dangling")
			link("nowhere", "dangling-rel")
			link(t.TempDir(), "escape")
			link("/etc/hostname", "escape-file")
			link(sys42+"/init", "inside")
			link(f.dir, "storedir")
			link("loop-b", "loop-a")
			link("loop-a", "loop-b")
			if err := os.Mkdir(filepath.Join(profiles, "per-user"), 0o755); err != nil {
				t.Fatal(err)
			}
			if chroot {
				// A link to the host file of a chroot store path is understood too.
				link(f.fs(sys42), "host-path")
			}

			tests := []struct {
				name string
				want string
				kind error
			}{
				{"system", sys42, nil},
				{"system-42-link", sys42, nil},
				{"abs-chain", sys42, nil},
				{"via-alias", sys43, nil},
				{"dangling", "", ErrNotFound},
				{"dangling-rel", "", ErrNotFound},
				{"missing", "", ErrNotFound},
				{"escape", "", ErrInvalidPath},
				{"escape-file", "", ErrInvalidPath},
				{"inside", "", ErrInvalidPath},
				{"storedir", "", ErrInvalidPath},
				{"loop-a", "", ErrInvalidPath},
				{"per-user", "", ErrInvalidPath},
				{"..", "", ErrInvalidPath},
				{"../profiles/system", "", ErrInvalidPath},
				{".hidden", "", ErrInvalidPath},
				{"a/b", "", ErrInvalidPath},
				{"", "", ErrInvalidPath},
			}
			if chroot {
				tests = append(tests, struct {
					name string
					want string
					kind error
				}{"host-path", sys42, nil})
			}
			for _, tc := range tests {
				got, err := f.s.ResolveProfile(tc.name)
				if tc.kind == nil {
					if err != nil || got != tc.want {
						t.Errorf("ResolveProfile(%q) = %q, %v; want %q", tc.name, got, err, tc.want)
					}
				} else if !errors.Is(err, tc.kind) {
					t.Errorf("ResolveProfile(%q) = %q, %v; want an error matching %v", tc.name, got, err, tc.kind)
				}
			}

			// Resolved at every call: repointing the profile takes effect at once.
			if err := os.Remove(filepath.Join(profiles, "system")); err != nil {
				t.Fatal(err)
			}
			link(sys43, "system")
			if got, err := f.s.ResolveProfile("system"); err != nil || got != sys43 {
				t.Errorf("after repointing: ResolveProfile = %q, %v; want %q", got, err, sys43)
			}
		})
	}
}

func TestProfilesNotConfigured(t *testing.T) {
	f := newFakeStore(t, false, Options{})
	if _, err := f.s.ResolveProfile("system"); !errors.Is(err, ErrNotConfigured) {
		t.Errorf("ResolveProfile without a profiles dir: err = %v, want ErrNotConfigured", err)
	}
}
