package nixstore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ResolveProfile resolves <ProfilesDir>/<name>, a symlink or a chain of them such as
// NixOS's system -> system-42-link -> /nix/store/...-nixos-system-..., and returns the
// store path it ends at, which must be a direct child of the store dir. It reads the links
// afresh at every call, so repointing a profile takes effect at the next boot.
//
// Links are followed on the host until a target lies in the store (/nix/store/..., or
// <Root>/nix/store/... for a chroot store); from there on they are followed inside the
// store as Lookup does. Errors: ErrNotConfigured without a profiles dir, ErrInvalidPath
// for a bad name or a chain that ends outside the store or inside a store path,
// ErrNotFound for a missing profile or a dangling chain.
func (s *Store) ResolveProfile(name string) (string, error) {
	if s.profiles == "" {
		return "", notConfiguredf("profiles are not enabled on this server: set a profiles dir")
	}
	if err := validName("profile", name); err != nil {
		return "", err
	}
	cur := filepath.Join(s.profiles, name)
	for hops := 0; ; hops++ {
		if hops > maxSymlinks {
			return "", invalidf("profile %s: too many levels of symbolic links", q(name))
		}
		if logical, ok := s.storeRef(cur); ok {
			return s.profileTarget(name, logical)
		}
		fi, err := os.Lstat(cur)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				if hops == 0 {
					return "", notFoundf(err, "profile %s does not exist", q(name))
				}
				return "", notFoundf(err, "profile %s is dangling: %s does not exist", q(name), cur)
			}
			return "", fmt.Errorf("profile %s: %w", q(name), err)
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			return "", invalidf("profile %s resolves to %s, which is not in the store %s", q(name), cur, s.storeDir)
		}
		t, err := os.Readlink(cur)
		if err != nil {
			return "", fmt.Errorf("profile %s: %w", q(name), err)
		}
		if !filepath.IsAbs(t) {
			t = filepath.Join(filepath.Dir(cur), t)
		}
		cur = filepath.Clean(t)
	}
}

// profileTarget finishes a profile chain that reached logical, a path in the store.
func (s *Store) profileTarget(name, logical string) (string, error) {
	if _, err := s.parseStorePath(logical); err != nil {
		return "", invalidf("profile %s resolves to %s, which is not a top-level store path", q(name), q(logical))
	}
	resolved, _, err := s.resolve(logical)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return "", notFoundf(err, "profile %s is dangling: %v", q(name), err)
		}
		return "", invalidf("profile %s: %v", q(name), err)
	}
	if _, err := s.parseStorePath(resolved); err != nil {
		return "", invalidf("profile %s resolves to %s, which is not a top-level store path", q(name), resolved)
	}
	return resolved, nil
}

// storeRef maps a host path to the logical store path it names, if it lies in the store:
// <StoreDir>/... as Nix writes link targets, or <Root><StoreDir>/... for a chroot store.
func (s *Store) storeRef(p string) (string, bool) {
	if s.root != "" {
		if rest, ok := strings.CutPrefix(p, s.root+s.storeDir+"/"); ok {
			return s.storeDir + "/" + rest, true
		}
	}
	if strings.HasPrefix(p, s.storeDir+"/") {
		return p, true
	}
	return "", false
}
