package cpiocache

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// tEntry is one parsed newc entry, with every header field, parsed here
// independently of the cpio library under test.
type tEntry struct {
	name                string
	ino, mode, uid, gid uint32
	nlink, mtime        uint32
	devMaj, devMin      uint32
	rdevMaj, rdevMin    uint32
	body                []byte
}

func (e tEntry) isDir() bool { return e.mode&0o170000 == 0o040000 }

// parseNewc parses one newc archive at the start of b, up to and including
// its trailer, and returns its entries and the bytes after it.
func parseNewc(b []byte) ([]tEntry, []byte, error) {
	var out []tEntry
	start := len(b)
	pad := func(n int) int { return (4 - n%4) % 4 }
	for {
		if len(b) < 110 {
			return nil, nil, errors.New("short header")
		}
		if string(b[:6]) != "070701" {
			return nil, nil, fmt.Errorf("bad magic %q at offset %d", b[:6], start-len(b))
		}
		var f [13]uint32
		for i := range f {
			v, err := strconv.ParseUint(string(b[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				return nil, nil, err
			}
			f[i] = uint32(v)
		}
		size, namesize := int(f[6]), int(f[11])
		if f[12] != 0 {
			return nil, nil, errors.New("check field set")
		}
		hl := 110 + namesize
		hl += pad(hl)
		if len(b) < hl+size || namesize < 1 {
			return nil, nil, errors.New("truncated entry")
		}
		name := string(b[110 : 110+namesize-1])
		if b[110+namesize-1] != 0 {
			return nil, nil, errors.New("name not NUL-terminated")
		}
		body := b[hl : hl+size]
		b = b[hl+size+pad(size):]
		if name == "TRAILER!!!" {
			return out, b, nil
		}
		out = append(out, tEntry{name: name, ino: f[0], mode: f[1], uid: f[2], gid: f[3], nlink: f[4], mtime: f[5],
			devMaj: f[7], devMin: f[8], rdevMaj: f[9], rdevMin: f[10], body: body})
	}
}

// zstdFrameLen returns the length of the zstd frame at the start of b by
// walking its header and block headers, as a decoder that stops at the end
// of a frame must.
func zstdFrameLen(b []byte) (int, error) {
	if len(b) < 6 || binary.LittleEndian.Uint32(b) != 0xFD2FB528 {
		return 0, errors.New("no zstd frame magic")
	}
	fhd := b[4]
	single := fhd&0x20 != 0
	n := 5
	if !single {
		n++ // window descriptor
	}
	n += []int{0, 1, 2, 4}[fhd&3] // dictionary ID
	fcs := []int{0, 2, 4, 8}[fhd>>6]
	if fcs == 0 && single {
		fcs = 1
	}
	n += fcs
	for {
		if len(b) < n+3 {
			return 0, errors.New("truncated zstd frame")
		}
		h := uint32(b[n]) | uint32(b[n+1])<<8 | uint32(b[n+2])<<16
		n += 3
		size := int(h >> 3)
		if (h>>1)&3 == 1 { // RLE block: one byte
			size = 1
		}
		n += size
		if h&1 != 0 {
			break
		}
	}
	if fhd&4 != 0 {
		n += 4
	}
	if n > len(b) {
		return 0, errors.New("truncated zstd frame")
	}
	return n, nil
}

// decodeOne decodes the one compressed stream at the start of b and returns
// the decompressed bytes and the stream's length.
func decodeOne(b []byte) ([]byte, int, error) {
	switch {
	case len(b) >= 4 && binary.LittleEndian.Uint32(b) == 0xFD2FB528:
		n, err := zstdFrameLen(b)
		if err != nil {
			return nil, 0, err
		}
		d, err := zstd.NewReader(nil, zstd.WithDecoderMaxWindow(128<<20))
		if err != nil {
			return nil, 0, err
		}
		defer d.Close()
		out, err := d.DecodeAll(b[:n], nil)
		return out, n, err
	case len(b) >= 2 && b[0] == 0x1f && b[1] == 0x8b:
		r := bytes.NewReader(b)
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, 0, err
		}
		zr.Multistream(false)
		out, err := io.ReadAll(zr)
		return out, len(b) - r.Len(), err
	}
	return nil, 0, fmt.Errorf("unknown member magic % x", b[:min(4, len(b))])
}

// unpackInitrd unpacks a concatenated initrd the way the kernel's
// unpack_to_rootfs does: zero bytes are skipped, an uncompressed archive
// must start 4-byte aligned, a compressed member is one stream holding one
// complete archive, and later entries replace earlier ones.
func unpackInitrd(b []byte) (map[string]tEntry, int, error) {
	files := map[string]tEntry{}
	members := 0
	for off := 0; off < len(b); {
		if b[off] == 0 {
			off++
			continue
		}
		var entries []tEntry
		if bytes.HasPrefix(b[off:], []byte("070701")) {
			if off%4 != 0 {
				return nil, 0, fmt.Errorf("uncompressed member at unaligned offset %d", off)
			}
			es, rest, err := parseNewc(b[off:])
			if err != nil {
				return nil, 0, fmt.Errorf("member at %d: %w", off, err)
			}
			entries = es
			off = len(b) - len(rest)
		} else {
			raw, n, err := decodeOne(b[off:])
			if err != nil {
				return nil, 0, fmt.Errorf("member at %d: %w", off, err)
			}
			es, rest, err := parseNewc(raw)
			if err != nil {
				return nil, 0, fmt.Errorf("member at %d: %w", off, err)
			}
			if len(bytes.Trim(rest, "\x00")) != 0 {
				return nil, 0, fmt.Errorf("member at %d: junk after the archive in the stream", off)
			}
			entries = es
			off += n
		}
		members++
		for _, e := range entries {
			files[e.name] = e
		}
	}
	return files, members, nil
}

// expectTree lists the source tree of storePath under fsRoot as entries
// (name, mode, body or link target), for comparison with archives.
func expectTree(t *testing.T, fsRoot, storePath string) map[string]tEntry {
	t.Helper()
	out := map[string]tEntry{}
	top := filepath.Join(fsRoot, storePath)
	err := filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(top, p)
		name := strings.TrimPrefix(storePath, "/")
		if rel != "." {
			name += "/" + rel
		}
		// The raw st_mode, independent of the code under test.
		e := tEntry{name: name, mode: st.Sys().(*syscall.Stat_t).Mode}
		switch {
		case st.Mode()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			e.body = []byte(l)
		case st.Mode().IsRegular():
			if e.body, err = os.ReadFile(p); err != nil {
				return err
			}
		}
		out[name] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkEntries compares archive entries for the tree of storePath with the
// source tree.
func checkEntries(t *testing.T, got map[string]tEntry, fsRoot, storePath string) {
	t.Helper()
	want := expectTree(t, fsRoot, storePath)
	for name, w := range want {
		g, ok := got[name]
		if !ok {
			t.Errorf("%s missing from the archive", name)
			continue
		}
		if g.mode != w.mode {
			t.Errorf("%s: mode %o, want %o", name, g.mode, w.mode)
		}
		if !bytes.Equal(g.body, w.body) {
			t.Errorf("%s: body differs (%d bytes, want %d)", name, len(g.body), len(w.body))
		}
	}
	prefix := strings.TrimPrefix(storePath, "/")
	for name := range got {
		if (name == prefix || strings.HasPrefix(name, prefix+"/")) && want[name].name == "" {
			t.Errorf("%s in the archive but not in the source", name)
		}
	}
}

// readMember returns the member bytes of a cache file.
func readMember(t *testing.T, m Member) []byte {
	t.Helper()
	b, err := os.ReadFile(m.File)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(b)) < m.Size {
		t.Fatalf("%s: %d bytes, member size %d", m.File, len(b), m.Size)
	}
	return b[:m.Size]
}

// memberEntries decodes a member and returns its entries in order.
func memberEntries(t *testing.T, data []byte) []tEntry {
	t.Helper()
	raw := data
	if !bytes.HasPrefix(data, []byte("070701")) {
		var n int
		var err error
		raw, n, err = decodeOne(data)
		if err != nil {
			t.Fatal(err)
		}
		if n != len(data) {
			t.Fatalf("member is %d bytes but its stream ends at %d", len(data), n)
		}
	}
	es, rest, err := parseNewc(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(rest) != 0 {
		t.Fatalf("%d bytes after the trailer", len(rest))
	}
	return es
}

func entryMap(es []tEntry) map[string]tEntry {
	m := map[string]tEntry{}
	for _, e := range es {
		m[e.name] = e
	}
	return m
}
