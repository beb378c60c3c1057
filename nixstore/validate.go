package nixstore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"
)

// Store path name grammar (Nix 2.8, libstore/path.cc): a 32-character hash in Nix's
// base32 alphabet, a dash, and a name of at most 211 characters from [A-Za-z0-9+-._?=]
// that does not start with a dot (newer Nix refuses those; "." and ".." are among them).
const (
	hashLen        = 32
	maxNameLen     = 211
	maxBaseNameLen = hashLen + 1 + maxNameLen
	// maxSymlinks matches Linux's limit on symlinks followed in one lookup.
	maxSymlinks = 40
)

// isBase32 reports whether c is in Nix's base32 alphabet "0123456789abcdfghijklmnpqrsvwxyz"
// (no e, o, t, u).
func isBase32(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'z' && c != 'e' && c != 'o' && c != 't' && c != 'u'
}

func isStoreNameChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '+' || c == '-' || c == '.' || c == '_' || c == '?' || c == '='
}

// ValidateBaseName checks that name is the last component of a store path, such as
// "pwsz3b0hn5zl1b21scwl8nmbz392db72-leaf". Nothing is decoded: a name is taken byte for
// byte, so "%2e%2e" is refused for its '%', and "/" or NUL can never pass.
func ValidateBaseName(name string) error {
	switch {
	case name == "":
		return invalidf("store path name is empty")
	case len(name) > maxBaseNameLen:
		return invalidf("store path name %s is longer than %d bytes", q(name), maxBaseNameLen)
	case len(name) < hashLen+2:
		return invalidf("store path name %s is too short: want <32-character hash>-<name>", q(name))
	case name[hashLen] != '-':
		return invalidf("store path name %s: want <32-character hash>-<name>", q(name))
	}
	for i := 0; i < hashLen; i++ {
		if !isBase32(name[i]) {
			return invalidf("store path name %s: hash part has %q, which is not in Nix's base32 alphabet", q(name), name[i])
		}
	}
	rest := name[hashLen+1:]
	if rest[0] == '.' {
		return invalidf("store path name %s: name part starts with a dot", q(name))
	}
	for i := 0; i < len(rest); i++ {
		if !isStoreNameChar(rest[i]) {
			return invalidf("store path name %s: name part has %q, allowed are A-Z a-z 0-9 + - . _ ? =", q(name), rest[i])
		}
	}
	return nil
}

// hashPart returns the hash of a valid store path basename.
func hashPart(base string) string { return base[:hashLen] }

// namePart returns the name of a valid store path basename.
func namePart(base string) string { return base[hashLen+1:] }

// validName checks a profile or configuration name: 1-255 bytes of [A-Za-z0-9._+-],
// not starting with '.' or '-'. That rules out "/", "..", hidden files, NUL and anything
// a shell, URL or Nix option parser could read differently.
func validName(kind, name string) error {
	switch {
	case name == "":
		return invalidf("%s name is empty", kind)
	case len(name) > 255:
		return invalidf("%s name %s is longer than 255 bytes", kind, q(name))
	case name[0] == '.' || name[0] == '-':
		return invalidf("%s name %s starts with %q", kind, q(name), name[0])
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '+' || c == '-'
		if !ok {
			return invalidf("%s name %s has %q, allowed are A-Z a-z 0-9 . _ + -", kind, q(name), c)
		}
	}
	return nil
}

// parseStorePath checks that p is exactly <store dir>/<valid basename> (no trailing
// slash, no extra components, nothing to clean) and returns the basename.
func (s *Store) parseStorePath(p string) (string, error) {
	base, ok := strings.CutPrefix(p, s.storeDir+"/")
	if !ok {
		return "", invalidf("%s is not in the store %s", q(p), s.storeDir)
	}
	if strings.Contains(base, "/") {
		return "", invalidf("%s is not a direct child of %s", q(p), s.storeDir)
	}
	if err := ValidateBaseName(base); err != nil {
		return "", err
	}
	return base, nil
}

// Lookup checks a store path named by a request — a basename or a full path directly
// under the store dir — and returns its full logical path. The entry must exist; if it
// is a symlink, its target must resolve inside the store. Errors match ErrInvalidPath or
// ErrNotFound.
func (s *Store) Lookup(ref string) (string, error) {
	p, _, err := s.lookup(ref)
	return p, err
}

// lookup is Lookup that also returns the Lstat info of where the path resolves.
func (s *Store) lookup(ref string) (string, fs.FileInfo, error) {
	base := ref
	if strings.HasPrefix(ref, "/") {
		b, err := s.parseStorePath(ref)
		if err != nil {
			return "", nil, err
		}
		base = b
	} else if err := ValidateBaseName(ref); err != nil {
		return "", nil, err
	}
	p := s.storeDir + "/" + base
	_, fi, err := s.resolve(p)
	if err != nil {
		return "", nil, err
	}
	return p, fi, nil
}

// splitPath splits a slash path into components, dropping empty ones and ".".
func splitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

// trimStoreDir returns the components of absolute symlink target t below the store dir,
// or false if t does not name something below it without "..".
func (s *Store) trimStoreDir(t string) ([]string, bool) {
	want := splitPath(s.storeDir)
	got := splitPath(t)
	if len(got) <= len(want) {
		return nil, false
	}
	for i, c := range want {
		if got[i] != c {
			return nil, false
		}
	}
	return got[len(want):], true
}

// resolve follows every symlink in p, a logical path below the store dir, the way the
// kernel would inside a root where the store lives at Root+StoreDir, and refuses any step
// that leaves the store dir (an absolute target elsewhere, or ".." above it). It returns
// the resolved logical path and its Lstat info (never a symlink).
//
// This is done by hand rather than with filepath.EvalSymlinks because targets such as
// /nix/store/x must be read relative to Root, not to the host's /.
func (s *Store) resolve(p string) (string, fs.FileInfo, error) {
	rest, ok := strings.CutPrefix(p, s.storeDir+"/")
	if !ok {
		return "", nil, invalidf("%s is not in the store %s", q(p), s.storeDir)
	}
	cur := s.storeDir
	todo := splitPath(rest)
	links := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		if c == ".." {
			if cur == s.storeDir {
				return "", nil, invalidf("%s leads out of %s through \"..\"", q(p), s.storeDir)
			}
			cur = path.Dir(cur)
			continue
		}
		next := cur + "/" + c
		fi, err := os.Lstat(s.FSPath(next))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				if next == p {
					return "", nil, notFoundf(err, "%s does not exist", q(p))
				}
				return "", nil, notFoundf(err, "%s: %s does not exist", q(p), next)
			}
			return "", nil, fmt.Errorf("resolve %s: %w", p, err)
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			links++
			if links > maxSymlinks {
				return "", nil, invalidf("%s: too many levels of symbolic links", q(p))
			}
			t, err := os.Readlink(s.FSPath(next))
			if err != nil {
				return "", nil, fmt.Errorf("resolve %s: %w", p, err)
			}
			if path.IsAbs(t) {
				below, ok := s.trimStoreDir(t)
				if !ok {
					if next == p {
						return "", nil, invalidf("%s points to %s, outside %s", p, q(t), s.storeDir)
					}
					return "", nil, invalidf("%s: %s points to %s, outside %s", q(p), next, q(t), s.storeDir)
				}
				cur = s.storeDir
				todo = append(below, todo...)
			} else {
				todo = append(splitPath(t), todo...)
			}
			continue
		}
		if len(todo) > 0 && !fi.IsDir() {
			return "", nil, notFoundf(nil, "%s: %s is not a directory", q(p), next)
		}
		cur = next
	}
	if cur == s.storeDir {
		return "", nil, invalidf("%s resolves to the store directory itself", q(p))
	}
	fi, err := os.Lstat(s.FSPath(cur))
	if err != nil {
		return "", nil, fmt.Errorf("resolve %s: %w", p, err)
	}
	return cur, fi, nil
}
