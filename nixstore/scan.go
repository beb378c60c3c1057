package nixstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
)

// The scan backend: what Nix would register for a path, computed from the files alone.

// scanIndex is a snapshot of the store directory's entries.
type scanIndex struct {
	hashes *hashSet            // hash part -> basename
	drvs   map[string][]string // derivation name (without ".drv") -> .drv basenames
}

func (s *Store) readScanIndex() (*scanIndex, error) {
	dir := s.FSPath(s.storeDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("scan store: %w", err)
	}
	byHash := make(map[string]string)
	idx := &scanIndex{drvs: make(map[string][]string)}
	for _, e := range entries {
		name := e.Name()
		if ValidateBaseName(name) != nil {
			continue // .links, lock-free junk, anything Nix would not call a store path
		}
		// Nix keeps <path>.lock (and <path>.chroot for sandboxed builds) next to paths it
		// builds; they share the hash. The path itself is the shortest of them.
		h := hashPart(name)
		if old, ok := byHash[h]; !ok || len(name) < len(old) {
			byHash[h] = name
		}
		if dn, ok := strings.CutSuffix(namePart(name), ".drv"); ok {
			idx.drvs[dn] = append(idx.drvs[dn], name)
		}
	}
	idx.hashes = newHashSet(byHash)
	return idx, nil
}

func (s *Store) scanClosure(ctx context.Context, p string) ([]string, error) {
	idx, err := s.readScanIndex()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{p: true}
	queue := []string{p}
	for len(queue) > 0 {
		q := queue[0]
		queue = queue[1:]
		info, err := s.scanPathInfo(ctx, q, idx)
		if err != nil {
			return nil, fmt.Errorf("closure of %s: %w", p, err)
		}
		for _, r := range info.References {
			if !seen[r] {
				seen[r] = true
				queue = append(queue, r)
			}
		}
	}
	out := make([]string, 0, len(seen))
	for q := range seen {
		out = append(out, q)
	}
	return out, nil
}

func (s *Store) scanPathInfos(ctx context.Context, paths []string) ([]PathInfo, error) {
	out := make([]PathInfo, len(paths))
	var idx *scanIndex
	for i, p := range paths {
		if info, ok := s.infos.get(p); ok {
			out[i] = info
			continue
		}
		if idx == nil {
			var err error
			if idx, err = s.readScanIndex(); err != nil {
				return nil, err
			}
		}
		info, err := s.scanPathInfo(ctx, p, idx)
		if err != nil {
			return nil, err
		}
		out[i] = info
	}
	return out, nil
}

type countWriter struct{ n uint64 }

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += uint64(len(p))
	return len(p), nil
}

// scanPathInfo serialises p as a NAR once, hashing, counting and scanning it for the
// hashes in idx at the same time. Results are cached: store paths are immutable.
func (s *Store) scanPathInfo(ctx context.Context, p string, idx *scanIndex) (PathInfo, error) {
	if info, ok := s.infos.get(p); ok {
		return info, nil
	}
	base, err := s.parseStorePath(p)
	if err != nil {
		return PathInfo{}, err
	}
	if _, err := os.Lstat(s.FSPath(p)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return PathInfo{}, notFoundf(err, "%s does not exist", p)
		}
		return PathInfo{}, err
	}
	h := sha256.New()
	var size countWriter
	refs := newRefScanner(idx.hashes)
	if err := writeNAR(ctx, io.MultiWriter(h, &size, refs), s.FSPath(p)); err != nil {
		return PathInfo{}, fmt.Errorf("serialise %s: %w", p, err)
	}
	info := PathInfo{
		Path:       p,
		NARHash:    hex.EncodeToString(h.Sum(nil)),
		NARSize:    size.n,
		References: make([]string, 0, len(refs.found)),
	}
	for b := range refs.found {
		info.References = append(info.References, s.storeDir+"/"+b)
	}
	slices.Sort(info.References)
	info.Deriver = s.findDeriver(p, base, idx)
	s.infos.add(p, info)
	return info, nil
}

// findDeriver looks for the .drv in the store that lists p among its outputs. Output
// "out" of derivation "foo" is named "foo"; any other output "bar" is named "foo-bar";
// so the candidates are foo.drv for every dash-separated prefix foo of p's name. Returns
// "" if there is none (a path added with nix-store --add has none either). When several
// derivations produce the same output path, which Nix records depends on which one built
// it; this picks the first by name.
func (s *Store) findDeriver(p, base string, idx *scanIndex) string {
	name := namePart(base)
	if strings.HasSuffix(name, ".drv") {
		return ""
	}
	cands := slices.Clone(idx.drvs[name])
	for i := len(name) - 1; i > 0; i-- {
		if name[i] == '-' {
			cands = append(cands, idx.drvs[name[:i]]...)
		}
	}
	for _, c := range cands {
		drv := s.storeDir + "/" + c
		outs, err := readDrvOutputs(s.FSPath(drv))
		if err != nil {
			s.log.Debug("skip unreadable derivation", "drv", drv, "err", err)
			continue
		}
		if slices.Contains(outs, p) {
			return drv
		}
	}
	return ""
}

// maxDrvSize bounds how much of a .drv file is read.
const maxDrvSize = 64 << 20

// readDrvOutputs returns the output paths of a derivation file in Nix's ATerm format:
// Derive([("out","/nix/store/...-foo","",""),...],...).
func readDrvOutputs(fsPath string) ([]string, error) {
	f, err := os.Open(fsPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxDrvSize))
	if err != nil {
		return nil, err
	}
	return parseDrvOutputs(string(b))
}

func parseDrvOutputs(d string) ([]string, error) {
	rest, ok := strings.CutPrefix(d, "Derive([")
	if !ok {
		return nil, errors.New("not a Derive(...) ATerm")
	}
	var outs []string
	for {
		if strings.HasPrefix(rest, "]") {
			return outs, nil
		}
		if rest, ok = strings.CutPrefix(rest, "("); !ok {
			return nil, errors.New("malformed output list")
		}
		var fields [4]string
		for i := range fields {
			var err error
			if fields[i], rest, err = atermString(rest); err != nil {
				return nil, err
			}
			sep := ","
			if i == len(fields)-1 {
				sep = ")"
			}
			if rest, ok = strings.CutPrefix(rest, sep); !ok {
				return nil, errors.New("malformed output tuple")
			}
		}
		outs = append(outs, fields[1])
		rest, _ = strings.CutPrefix(rest, ",")
	}
}

// atermString reads a quoted ATerm string at the start of s, returning its (unescaped)
// value and what follows it.
func atermString(s string) (string, string, error) {
	if !strings.HasPrefix(s, `"`) {
		return "", "", errors.New("want a quoted string")
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			return b.String(), s[i+1:], nil
		case '\\':
			i++
			if i == len(s) {
				return "", "", errors.New("unterminated escape")
			}
			switch s[i] {
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			default:
				b.WriteByte(s[i])
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", "", errors.New("unterminated string")
}
