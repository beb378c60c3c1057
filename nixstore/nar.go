package nixstore

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// NAR (Nix ARchive) serialisation, as Nix 2.8 writes it (libutil/archive.cc). Every token
// is a "string": a little-endian uint64 length, the bytes, then zero padding to a multiple
// of 8. The archive is the string "nix-archive-1" followed by one node:
//
//	node      = "(" "type" ( regular | symlink | directory ) ")"
//	regular   = "regular" [ "executable" "" ] "contents" <file bytes as one string>
//	symlink   = "symlink" "target" <target>
//	directory = "directory" { "entry" "(" "name" <name> "node" node ")" }
//
// Directory entries are sorted by name, byte-wise. A file is executable when its owner
// execute bit is set. Nothing else (owner, times, other permission bits) is recorded, which
// is why the SHA-256 of this stream identifies a store path's contents.

const narMagic = "nix-archive-1"

type narWriter struct {
	ctx context.Context
	w   *bufio.Writer
	buf [8]byte
}

// writeNAR writes the NAR serialisation of the file tree at fsPath to w.
func writeNAR(ctx context.Context, w io.Writer, fsPath string) error {
	n := &narWriter{ctx: ctx, w: bufio.NewWriterSize(w, 64<<10)}
	n.str(narMagic)
	if err := n.node(fsPath); err != nil {
		return err
	}
	return n.w.Flush()
}

func (n *narWriter) u64(v uint64) {
	binary.LittleEndian.PutUint64(n.buf[:], v)
	n.w.Write(n.buf[:]) // bufio.Writer keeps the first error; Flush reports it
}

func (n *narWriter) pad(size uint64) {
	if r := size % 8; r != 0 {
		clear(n.buf[:])
		n.w.Write(n.buf[:8-r])
	}
}

func (n *narWriter) str(s string) {
	n.u64(uint64(len(s)))
	n.w.WriteString(s)
	n.pad(uint64(len(s)))
}

func (n *narWriter) node(p string) error {
	if err := n.ctx.Err(); err != nil {
		return err
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	n.str("(")
	n.str("type")
	switch mode := fi.Mode(); {
	case mode.IsRegular():
		n.str("regular")
		if mode&0o100 != 0 {
			n.str("executable")
			n.str("")
		}
		n.str("contents")
		if err := n.contents(p, fi.Size()); err != nil {
			return err
		}
	case mode&fs.ModeSymlink != 0:
		t, err := os.Readlink(p)
		if err != nil {
			return err
		}
		n.str("symlink")
		n.str("target")
		n.str(t)
	case mode.IsDir():
		n.str("directory")
		entries, err := os.ReadDir(p) // sorted by name, byte-wise, like Nix
		if err != nil {
			return err
		}
		for _, e := range entries {
			n.str("entry")
			n.str("(")
			n.str("name")
			n.str(e.Name())
			n.str("node")
			if err := n.node(filepath.Join(p, e.Name())); err != nil {
				return err
			}
			n.str(")")
		}
	default:
		return fmt.Errorf("%s: file type %v cannot be stored in a NAR", p, mode.Type())
	}
	n.str(")")
	return nil
}

func (n *narWriter) contents(p string, size int64) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	n.u64(uint64(size))
	copied, err := io.Copy(n.w, io.LimitReader(f, size))
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	if copied != size {
		return fmt.Errorf("read %s: file shrank from %d to %d bytes while archiving", p, size, copied)
	}
	n.pad(uint64(size))
	return nil
}

// hashSet is a set of store path hash parts with a cheap pre-filter: a bitmap of the
// first three characters (5 low bits each), so that most 32-byte windows are rejected
// before a map lookup.
type hashSet struct {
	bases  map[string]string // hash part -> basename
	prefix [1 << 15 / 64]uint64
}

func newHashSet(bases map[string]string) *hashSet {
	h := &hashSet{bases: bases}
	for k := range bases {
		i := prefixKey(k)
		h.prefix[i/64] |= 1 << (i % 64)
	}
	return h
}

func prefixKey[T string | []byte](b T) uint {
	return uint(b[0]&31)<<10 | uint(b[1]&31)<<5 | uint(b[2]&31)
}

func (h *hashSet) lookup(window []byte) (string, bool) {
	i := prefixKey(window)
	if h.prefix[i/64]&(1<<(i%64)) == 0 {
		return "", false
	}
	base, ok := h.bases[string(window)]
	return base, ok
}

// refScanner is an io.Writer that records which hash parts of a hashSet occur in the
// bytes written to it, like Nix's RefScanSink: any run of 32 base32 characters that is a
// known hash counts, wherever it occurs (contents, names, symlink targets), including
// across Write boundaries.
type refScanner struct {
	hashes *hashSet
	found  map[string]bool // basenames seen
	tail   []byte          // last hashLen-1 bytes written, for matches across writes
}

func newRefScanner(hashes *hashSet) *refScanner {
	return &refScanner{hashes: hashes, found: make(map[string]bool)}
}

func (r *refScanner) Write(p []byte) (int, error) {
	if len(r.tail) > 0 {
		// Only windows that straddle the boundary: the rest are scanned on their own.
		seam := append(r.tail[:len(r.tail):len(r.tail)], p[:min(len(p), hashLen-1)]...)
		r.scan(seam)
	}
	r.scan(p)
	if len(p) >= hashLen-1 {
		r.tail = append(r.tail[:0], p[len(p)-(hashLen-1):]...)
	} else {
		r.tail = append(r.tail, p...)
		if len(r.tail) > hashLen-1 {
			r.tail = append(r.tail[:0], r.tail[len(r.tail)-(hashLen-1):]...)
		}
	}
	return len(p), nil
}

// scan checks every window of hashLen base32 characters in b, tracking the length of the
// current run of base32 characters so that each byte is classified once.
func (r *refScanner) scan(b []byte) {
	run := 0
	for j := 0; j < len(b); j++ {
		if !isBase32(b[j]) {
			run = 0
			continue
		}
		if run++; run >= hashLen {
			if base, ok := r.hashes.lookup(b[j+1-hashLen : j+1]); ok {
				r.found[base] = true
			}
		}
	}
}
