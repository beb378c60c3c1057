package httpboot

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/bootserve/bootserve/cpiocache"
	"github.com/bootserve/bootserve/machines"
	"github.com/bootserve/bootserve/nixstore"
	"github.com/bootserve/bootserve/nixstore/nixtest"
)

// --- a fake Nix store on disk -------------------------------------------------

// fakeStore writes store paths under root+"/nix/store". References are made
// the way Nix sees them: by the store path appearing in a file or a symlink
// target, which the scan backend finds.
type fakeStore struct {
	t    *testing.T
	root string
	rng  *rand.Rand
}

func newFakeStore(t *testing.T) *fakeStore {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "nix/store"), 0o755); err != nil {
		t.Fatal(err)
	}
	return &fakeStore{t: t, root: root, rng: rand.New(rand.NewPCG(1, 2))}
}

// storePath names a path: a hash in Nix's base32 alphabet derived from name.
func (s *fakeStore) storePath(name string) string {
	const alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
	sum := sha256.Sum256([]byte(name))
	var h [32]byte
	for i := range h {
		h[i] = alphabet[sum[i]%32]
	}
	return "/nix/store/" + string(h[:]) + "-" + name
}

func (s *fakeStore) fsPath(p string) string { return filepath.Join(s.root, filepath.FromSlash(p)) }

// file writes p/rel (rel "" makes p itself a file).
func (s *fakeStore) file(p, rel string, data []byte, mode fs.FileMode) {
	s.t.Helper()
	f := filepath.Join(s.fsPath(p), rel)
	if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
		s.t.Fatal(err)
	}
	if err := os.WriteFile(f, data, mode); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Chmod(f, mode); err != nil {
		s.t.Fatal(err)
	}
}

// symlink makes p/rel a symlink to target (rel "" makes p itself one).
func (s *fakeStore) symlink(p, rel, target string) {
	s.t.Helper()
	f := filepath.Join(s.fsPath(p), rel)
	if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Symlink(target, f); err != nil {
		s.t.Fatal(err)
	}
}

func (s *fakeStore) random(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(s.rng.Uint32())
	}
	return b
}

func (s *fakeStore) text(n int) []byte {
	words := []string{"static", "int", "return", "the", "boot", "kernel", "store", "path", "{", "}", ";", "\n"}
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[s.rng.IntN(len(words))])
		b.WriteByte(' ')
	}
	return b.Bytes()[:n]
}

// system is a NixOS-shaped top level and what its closure must be.
type system struct {
	top     string
	kernel  string // the bzImage file's logical path
	params  string
	closure []string // sorted
}

// addSystem writes a system named nixos-system-<tag> with a closure of
// kernel, libc, shell, a firmware blob of firmwareBytes, nPkgs small
// packages chained by references, a single-file path and a symlink path.
// Paths whose names do not include tag are shared between systems.
func (s *fakeStore) addSystem(tag string, nPkgs, firmwareBytes int) system {
	linux := s.storePath("linux-6.1.0")
	glibc := s.storePath("glibc-2.40")
	bash := s.storePath("bash-5.2")
	firmware := s.storePath("firmware-" + tag)
	patch := s.storePath("fix-" + tag + ".patch")
	alias := s.storePath("bash-alias-" + tag)
	etc := s.storePath("etc-" + tag)
	top := s.storePath("nixos-system-" + tag + "-24.11")
	if _, err := os.Lstat(s.fsPath(linux)); err != nil {
		s.file(linux, "bzImage", s.random(3<<20+17), 0o444)
		s.file(linux, "lib/modules/6.1.0/modules.dep", s.text(20<<10), 0o444)
		s.file(glibc, "lib/libc.so.6", append(s.random(150<<10), s.text(100<<10)...), 0o555)
		s.symlink(glibc, "lib/libc.so", "libc.so.6")
		s.file(glibc, "share/locale/de/LC_MESSAGES/libc.mo", s.text(30<<10), 0o444)
		s.file(bash, "bin/bash", append(s.text(50<<10), []byte("\x00"+glibc+"/lib/libc.so.6\x00")...), 0o555)
		s.symlink(bash, "bin/sh", "bash")
	}
	s.file(firmware, "lib/firmware/blob.bin", s.random(firmwareBytes), 0o444)
	s.file(patch, "", []byte("--- a\n+++ b\n@@ "+tag+" @@\n"), 0o444)
	s.symlink(alias, "", bash+"/bin/bash") // a store path that is itself a symlink
	var pkgs []string
	for i := range nPkgs {
		pkgs = append(pkgs, s.storePath(fmt.Sprintf("pkg%02d-%s-1.0", i, tag)))
	}
	for i, p := range pkgs {
		ref := ""
		if i+1 < len(pkgs) {
			ref = pkgs[i+1] // a chain: only pkgs[0] is referenced by the top level
		}
		s.file(p, "share/"+path.Base(p)+"/README", append(s.text(2<<10+i*97), ref...), 0o444)
		s.file(p, "bin/tool", append(s.text(1<<10), glibc...), 0o555)
		s.symlink(p, "lib/libtool.so", "libtool.so.1")
		s.file(p, "lib/libtool.so.1", s.random(4<<10), 0o444)
		// A symlink out of the store inside a path is archived as a symlink, never followed.
		s.symlink(p, "etc/passwd-link", "/etc/passwd")
	}
	s.file(etc, "etc/hostname", []byte(tag+"\n"), 0o444)
	s.file(etc, "etc/nix-patch", []byte(patch+"\n"), 0o444)
	params := "console=ttyS0 loglevel=4 system=" + tag
	s.file(top, "init", []byte("#! "+bash+"/bin/sh\necho booting "+tag+"\n"), 0o555)
	s.symlink(top, "kernel", linux+"/bzImage")
	s.file(top, "kernel-params", []byte(params+"\n"), 0o444)
	s.symlink(top, "firmware", firmware+"/lib/firmware")
	s.symlink(top, "etc", etc+"/etc")
	s.symlink(top, "sh", alias)
	if len(pkgs) > 0 {
		s.symlink(top, "sw", pkgs[0])
	}
	closure := append([]string{top, linux, glibc, bash, firmware, patch, alias, etc}, pkgs...)
	slices.Sort(closure)
	return system{top: top, kernel: linux + "/bzImage", params: params, closure: closure}
}

// --- server fixture -----------------------------------------------------------

type nixFixture struct {
	*fixture
	store *fakeStore
	st    *nixstore.Store
	cache *cpiocache.Cache
	nix   *Nix
}

type nixOpts struct {
	memberComp, baseComp cpiocache.Compression
	profilesDir          string
	cacheDir             string // default: a new temp dir
}

// newNixFixture serves the fake store over real HTTP on loopback.
func newNixFixture(t *testing.T, fs *fakeStore, o nixOpts) *nixFixture {
	t.Helper()
	f := newFixture(t, machines.Static{T: machines.Target{Kind: machines.KindLocal, Name: "local"}})
	st, err := nixstore.New(nixstore.Options{Backend: nixstore.BackendScan, Root: fs.root, ProfilesDir: o.profilesDir})
	if err != nil {
		t.Fatal(err)
	}
	if o.cacheDir == "" {
		o.cacheDir = t.TempDir()
	}
	cache, err := cpiocache.Open(cpiocache.Options{Dir: o.cacheDir, Compression: o.memberComp, FSRoot: fs.root,
		Logger: slog.New(slog.NewTextHandler(f.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	// Registered after the temp dirs, so it runs before they are removed:
	// background builds (the script's warm-up) stop first.
	t.Cleanup(func() { cache.Close() })
	n := &Nix{Store: st, Cache: cache, Compression: o.baseComp}
	f.srv.SetNix(n)
	return &nixFixture{fixture: f, store: fs, st: st, cache: cache, nix: n}
}

func (f *nixFixture) bootURL(top, file string) string {
	return f.url + "/boot/" + path.Base(top) + "/" + file
}

// --- unpacking as the kernel does ---------------------------------------------

// cpioEntry is one newc entry, parsed here without the cpio library.
type cpioEntry struct {
	name             string
	mode             uint32
	nlink            uint32
	rdevMaj, rdevMin uint32
	body             []byte
}

const (
	sIFMT  = 0o170000
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000
	sIFCHR = 0o020000
)

// parseNewcArchive parses one newc archive at the start of b up to its
// trailer and returns the entries and what follows the trailer.
func parseNewcArchive(b []byte) ([]cpioEntry, []byte, error) {
	var out []cpioEntry
	pad4 := func(n int) int { return (4 - n%4) % 4 }
	for {
		if len(b) < 110 {
			return nil, nil, errors.New("truncated newc header")
		}
		if string(b[:6]) != "070701" {
			return nil, nil, fmt.Errorf("bad newc magic %q", b[:6])
		}
		var fld [13]uint64
		for i := range fld {
			v, err := strconv.ParseUint(string(b[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				return nil, nil, fmt.Errorf("newc header field %d: %w", i, err)
			}
			fld[i] = v
		}
		size, nameSize := int(fld[6]), int(fld[11])
		if nameSize < 1 {
			return nil, nil, errors.New("newc entry without a name")
		}
		hdr := 110 + nameSize
		hdr += pad4(hdr)
		if len(b) < hdr+size {
			return nil, nil, errors.New("truncated newc entry")
		}
		if b[110+nameSize-1] != 0 {
			return nil, nil, errors.New("newc name not NUL-terminated")
		}
		e := cpioEntry{name: string(b[110 : 110+nameSize-1]), mode: uint32(fld[1]), nlink: uint32(fld[4]),
			rdevMaj: uint32(fld[9]), rdevMin: uint32(fld[10]), body: b[hdr : hdr+size]}
		b = b[min(len(b), hdr+size+pad4(size)):]
		if e.name == "TRAILER!!!" {
			return out, b, nil
		}
		out = append(out, e)
	}
}

// zstdFrameLen walks the zstd frame at the start of b (RFC 8878) and
// returns its length: a decoder that handles one member at a time must stop
// exactly where the frame ends.
func zstdFrameLen(b []byte) (int, error) {
	if len(b) < 6 || binary.LittleEndian.Uint32(b) != 0xFD2FB528 {
		return 0, errors.New("not a zstd frame")
	}
	fhd := b[4]
	single := fhd&0x20 != 0
	n := 5
	if !single {
		n++
	}
	n += [4]int{0, 1, 2, 4}[fhd&3]
	fcs := [4]int{0, 2, 4, 8}[fhd>>6]
	if fcs == 0 && single {
		fcs = 1
	}
	n += fcs
	for last := false; !last; {
		if len(b) < n+3 {
			return 0, errors.New("truncated zstd frame")
		}
		h := uint32(b[n]) | uint32(b[n+1])<<8 | uint32(b[n+2])<<16
		n += 3
		last = h&1 != 0
		switch (h >> 1) & 3 {
		case 1: // RLE: one byte repeated
			n++
		case 3:
			return 0, errors.New("reserved zstd block type")
		default:
			n += int(h >> 3)
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

type memberInfo struct {
	off, len int
	kind     string // "zstd", "gzip", "newc"
}

// unpackInitrd unpacks a concatenated initrd member by member as Linux's
// unpack_to_rootfs does: zero bytes between members are skipped, an
// uncompressed member must start 4-byte aligned, a compressed member is one
// stream holding one complete archive, later entries replace earlier ones.
func unpackInitrd(b []byte) (map[string]cpioEntry, []memberInfo, error) {
	tree := map[string]cpioEntry{}
	var members []memberInfo
	dec, err := zstd.NewReader(nil, zstd.WithDecoderMaxWindow(128<<20))
	if err != nil {
		return nil, nil, err
	}
	defer dec.Close()
	for off := 0; off < len(b); {
		if b[off] == 0 {
			off++
			continue
		}
		var raw []byte
		m := memberInfo{off: off}
		switch {
		case bytes.HasPrefix(b[off:], []byte("070701")):
			if off%4 != 0 {
				return nil, nil, fmt.Errorf("uncompressed member at unaligned offset %d", off)
			}
			m.kind = "newc"
			_, rest, err := parseNewcArchive(b[off:])
			if err != nil {
				return nil, nil, fmt.Errorf("member at %d: %w", off, err)
			}
			m.len = len(b) - off - len(rest)
			raw = b[off : off+m.len]
		case bytes.HasPrefix(b[off:], []byte{0x28, 0xb5, 0x2f, 0xfd}):
			m.kind = "zstd"
			if m.len, err = zstdFrameLen(b[off:]); err != nil {
				return nil, nil, fmt.Errorf("member at %d: %w", off, err)
			}
			if raw, err = dec.DecodeAll(b[off:off+m.len], nil); err != nil {
				return nil, nil, fmt.Errorf("zstd member at %d: %w", off, err)
			}
		case bytes.HasPrefix(b[off:], []byte{0x1f, 0x8b}):
			m.kind = "gzip"
			r := bytes.NewReader(b[off:])
			zr, err := gzip.NewReader(r)
			if err != nil {
				return nil, nil, fmt.Errorf("gzip member at %d: %w", off, err)
			}
			zr.Multistream(false)
			if raw, err = io.ReadAll(zr); err != nil {
				return nil, nil, fmt.Errorf("gzip member at %d: %w", off, err)
			}
			m.len = len(b) - off - r.Len()
		default:
			return nil, nil, fmt.Errorf("unknown member magic % x at offset %d", b[off:min(off+4, len(b))], off)
		}
		entries, rest, err := parseNewcArchive(raw)
		if err != nil {
			return nil, nil, fmt.Errorf("%s member at %d: %w", m.kind, off, err)
		}
		if len(bytes.Trim(rest, "\x00")) != 0 {
			return nil, nil, fmt.Errorf("%s member at %d: junk after its archive", m.kind, off)
		}
		for _, e := range entries {
			tree[e.name] = e
		}
		members = append(members, m)
		off += m.len
	}
	return tree, members, nil
}

// checkClosureInTree checks that tree holds every file, directory and
// symlink of the closure's paths with the same content, type and
// permissions, read from the store on disk.
func checkClosureInTree(t *testing.T, tree map[string]cpioEntry, s *fakeStore, closure []string) {
	t.Helper()
	checked := 0
	for _, p := range closure {
		top := s.fsPath(p)
		err := filepath.WalkDir(top, func(fp string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(top, fp)
			name := strings.TrimPrefix(path.Join(p, filepath.ToSlash(rel)), "/")
			e, ok := tree[name]
			if !ok {
				t.Errorf("initrd lacks %s", name)
				return nil
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			if perm := uint32(info.Mode().Perm()); info.Mode().Type() != fs.ModeSymlink && e.mode&0o7777 != perm {
				t.Errorf("%s: mode %o, want %o", name, e.mode&0o7777, perm)
			}
			switch info.Mode().Type() {
			case fs.ModeDir:
				if e.mode&sIFMT != sIFDIR {
					t.Errorf("%s: not a directory in the initrd (mode %o)", name, e.mode)
				}
			case fs.ModeSymlink:
				target, _ := os.Readlink(fp)
				if e.mode&sIFMT != sIFLNK || string(e.body) != target {
					t.Errorf("%s: want symlink to %q, got mode %o body %q", name, target, e.mode, e.body)
				}
			default:
				data, err := os.ReadFile(fp)
				if err != nil {
					return err
				}
				if e.mode&sIFMT != sIFREG || !bytes.Equal(e.body, data) {
					t.Errorf("%s: want regular file of %d bytes, got mode %o with %d bytes", name, len(data), e.mode, len(e.body))
				}
			}
			checked++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if checked < len(closure) {
		t.Fatalf("checked %d entries for %d paths", checked, len(closure))
	}
}

// checkBase checks the entries of the base member: /init, the console, the
// registration of exactly the closure and its register script.
func checkBase(t *testing.T, tree map[string]cpioEntry, sys system) {
	t.Helper()
	if e := tree["init"]; e.mode&sIFMT != sIFLNK || string(e.body) != sys.top+"/init" {
		t.Errorf("/init: mode %o target %q, want a symlink to %s/init", e.mode, e.body, sys.top)
	}
	if e, ok := tree["dev/console"]; !ok || e.mode&sIFMT != sIFCHR || e.rdevMaj != 5 || e.rdevMin != 1 {
		t.Errorf("dev/console: %+v, want char device 5:1", e)
	}
	reg, ok := tree["nix/.nix-netboot-serve-db/registration"]
	if !ok {
		t.Fatal("no registration in the initrd")
	}
	infos, err := nixstore.ParseRegistration(reg.body)
	if err != nil {
		t.Fatalf("registration: %v", err)
	}
	var paths []string
	for _, in := range infos {
		paths = append(paths, in.Path)
		if in.Path == sys.top && !slices.Contains(in.References, sys.kernel[:len(sys.kernel)-len("/bzImage")]) {
			t.Errorf("registration: %s does not reference its kernel: %v", sys.top, in.References)
		}
	}
	slices.Sort(paths)
	if !slices.Equal(paths, sys.closure) {
		t.Errorf("registration lists\n%s\nwant the closure\n%s", strings.Join(paths, "\n"), strings.Join(sys.closure, "\n"))
	}
	sc, ok := tree["nix/.nix-netboot-serve-db/register"]
	if !ok || sc.mode&sIFMT != sIFREG || sc.mode&0o111 != 0o111 || !bytes.Contains(sc.body, []byte("nix-store --load-db")) {
		t.Errorf("register script: present %v, mode %o, body %q", ok, sc.mode, sc.body)
	}
}

// --- small HTTP helpers ---------------------------------------------------------

func head(t *testing.T, url string) *http.Response {
	t.Helper()
	resp, err := http.Head(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// checkOneLine checks an error response: the status, and a body that is one
// non-empty line ending in a newline.
func checkOneLine(t *testing.T, what string, resp *http.Response, body []byte, code int) {
	t.Helper()
	if resp.StatusCode != code {
		t.Errorf("%s: status %d, want %d (body %q)", what, resp.StatusCode, code, body)
	}
	s := string(body)
	if !strings.HasSuffix(s, "\n") || strings.Count(s, "\n") != 1 || strings.TrimSpace(s) == "" {
		t.Errorf("%s: body is not one line: %q", what, s)
	}
}

// retryQuery is how a script's retry URL carries the query it was asked with.
func retryQuery(q string) string {
	v, err := url.ParseQuery(strings.TrimPrefix(q, "?"))
	if err != nil || len(v) == 0 {
		return ""
	}
	return "?" + v.Encode()
}

func scriptLines(b []byte) []string { return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") }

// --- tests ----------------------------------------------------------------------

func TestNixScript(t *testing.T) {
	s := newFakeStore(t)
	sys := s.addSystem("alpha", 3, 64<<10)
	f := newNixFixture(t, s, nixOpts{})
	dir := f.url + "/boot/" + path.Base(sys.top) + "/"
	for _, c := range []struct {
		query   string
		cmdline string
	}{
		{"", "init=" + sys.top + "/init " + sys.params + " initrd=initrd"},
		// Prefix before kernel-params, suffix after, both URL-decoded.
		{"?cmdline_prefix_args=ip%3Ddhcp+quiet&cmdline_suffix_args=boot.shell_on_fail%20x%3D%221%22",
			"init=" + sys.top + "/init ip=dhcp quiet " + sys.params + ` boot.shell_on_fail x="1" initrd=initrd`},
		{"?cmdline_suffix_args=last", "init=" + sys.top + "/init " + sys.params + " last initrd=initrd"},
	} {
		resp, body := get(t, dir+"netboot.ipxe"+c.query)
		if resp.StatusCode != 200 {
			t.Fatalf("netboot.ipxe%s: %d %s", c.query, resp.StatusCode, body)
		}
		want := []string{
			"#!ipxe",
			"echo bootserve: booting " + path.Base(sys.top),
			"kernel " + dir + "bzImage " + c.cmdline + " || goto failed",
			"initrd " + dir + "initrd || goto failed",
			"boot || goto failed",
			"exit 0",
			":failed",
			"echo bootserve: boot failed, retrying in 5 seconds",
			"sleep 5",
			"chain --autofree " + dir + "netboot.ipxe" + retryQuery(c.query),
		}
		if got := scriptLines(body); !slices.Equal(got, want) {
			t.Errorf("netboot.ipxe%s:\n%s\nwant:\n%s", c.query, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	// A line break would let a URL inject iPXE commands.
	for _, q := range []string{"?cmdline_prefix_args=a%0Ashell", "?cmdline_suffix_args=a%0D%0Aexit", "?cmdline_prefix_args=%0A"} {
		resp, body := get(t, dir+"netboot.ipxe"+q)
		checkOneLine(t, "netboot.ipxe"+q, resp, body, http.StatusBadRequest)
		if bytes.Contains(body, []byte("#!ipxe")) {
			t.Errorf("netboot.ipxe%s: got a script", q)
		}
	}
}

func TestNixKernel(t *testing.T) {
	s := newFakeStore(t)
	sys := s.addSystem("alpha", 2, 64<<10)
	f := newNixFixture(t, s, nixOpts{})
	want, err := os.ReadFile(s.fsPath(sys.kernel))
	if err != nil {
		t.Fatal(err)
	}
	u := f.bootURL(sys.top, "bzImage")
	resp, got := get(t, u)
	if resp.StatusCode != 200 || !bytes.Equal(got, want) || resp.ContentLength != int64(len(want)) {
		t.Fatalf("bzImage: %d, %d bytes (content-length %d), want %d bytes", resp.StatusCode, len(got), resp.ContentLength, len(want))
	}
	hr := head(t, u)
	if hr.StatusCode != 200 || hr.ContentLength != int64(len(want)) || hr.Header.Get("Accept-Ranges") != "bytes" {
		t.Errorf("HEAD bzImage: %d, content-length %d, accept-ranges %q", hr.StatusCode, hr.ContentLength, hr.Header.Get("Accept-Ranges"))
	}
	for _, r := range []struct {
		hdr        string
		start, end int
	}{{"bytes=0-511", 0, 512}, {"bytes=1048000-2100000", 1048000, 2100001}, {"bytes=-17", len(want) - 17, len(want)}} {
		resp, got := get(t, u, "Range", r.hdr)
		if resp.StatusCode != 206 || !bytes.Equal(got, want[r.start:r.end]) {
			t.Errorf("bzImage Range %s: %d, %d bytes", r.hdr, resp.StatusCode, len(got))
		}
		if cr := fmt.Sprintf("bytes %d-%d/%d", r.start, r.end-1, len(want)); resp.Header.Get("Content-Range") != cr {
			t.Errorf("bzImage Range %s: Content-Range %q, want %q", r.hdr, resp.Header.Get("Content-Range"), cr)
		}
	}
}

func TestNixInitrd(t *testing.T) {
	for _, c := range []struct {
		name              string
		members, base     cpiocache.Compression
		memberKind, base0 string
	}{
		{"zstd members, gzip base", cpiocache.Zstd, cpiocache.Gzip, "zstd", "gzip"},
		{"gzip members, plain base", cpiocache.Gzip, cpiocache.None, "gzip", "newc"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newFakeStore(t)
			sys := s.addSystem("alpha", 5, 1<<20)
			s.addSystem("beta", 2, 1<<10) // shares paths with alpha, adds others: not in alpha's closure
			f := newNixFixture(t, s, nixOpts{memberComp: c.members, baseComp: c.base})
			u := f.bootURL(sys.top, "initrd")

			// Cold cache: HEAD builds every member first, so the length is
			// known before the first byte; GET agrees.
			hr := head(t, u)
			resp, body := get(t, u)
			if resp.StatusCode != 200 || hr.StatusCode != 200 {
				t.Fatalf("initrd: HEAD %d, GET %d %q", hr.StatusCode, resp.StatusCode, body[:min(len(body), 200)])
			}
			if resp.Header.Get("Content-Length") == "" || len(resp.TransferEncoding) != 0 ||
				resp.ContentLength != int64(len(body)) || hr.ContentLength != resp.ContentLength {
				t.Errorf("initrd: GET Content-Length %q (transfer-encoding %v), HEAD %d, body %d bytes",
					resp.Header.Get("Content-Length"), resp.TransferEncoding, hr.ContentLength, len(body))
			}
			if resp.Header.Get("ETag") == "" || resp.Header.Get("ETag") != hr.Header.Get("ETag") {
				t.Errorf("ETag GET %q HEAD %q", resp.Header.Get("ETag"), hr.Header.Get("ETag"))
			}

			tree, members, err := unpackInitrd(body)
			if err != nil {
				t.Fatal(err)
			}
			if len(members) != len(sys.closure)+1 {
				t.Errorf("%d members, want base + %d paths", len(members), len(sys.closure))
			}
			if members[0].kind != c.base0 {
				t.Errorf("base member is %s, want %s", members[0].kind, c.base0)
			}
			for _, m := range members[1:] {
				if m.kind != c.memberKind {
					t.Errorf("member at %d is %s, want %s", m.off, m.kind, c.memberKind)
				}
			}
			checkClosureInTree(t, tree, s, sys.closure)
			checkBase(t, tree, sys)
			for name := range tree {
				if strings.Contains(name, "-beta") {
					t.Errorf("initrd of alpha holds %s", name)
				}
			}

			// A range spanning several members is the same slice of the body.
			if len(members) < 6 {
				t.Fatalf("only %d members", len(members))
			}
			start := members[1].off + members[1].len/2
			end := members[5].off + members[5].len/2
			resp, got := get(t, u, "Range", fmt.Sprintf("bytes=%d-%d", start, end-1))
			if resp.StatusCode != 206 || !bytes.Equal(got, body[start:end]) {
				t.Errorf("Range over members 1-5: %d, %d bytes, equal %v", resp.StatusCode, len(got), bytes.Equal(got, body[start:end]))
			}
			// A range in the padding and base member, and a suffix range.
			for _, r := range [][2]int{{0, 3}, {members[0].len - 2, members[1].off + 9}, {len(body) - 1000, len(body)}} {
				resp, got := get(t, u, "Range", fmt.Sprintf("bytes=%d-%d", r[0], r[1]-1))
				if resp.StatusCode != 206 || !bytes.Equal(got, body[r[0]:r[1]]) {
					t.Errorf("Range %v: %d, %d bytes", r, resp.StatusCode, len(got))
				}
			}
			// Served again from the cache: the same bytes.
			if _, again := get(t, u); !bytes.Equal(again, body) {
				t.Error("a second GET differs from the first")
			}
		})
	}
}

func TestNixBadRequests(t *testing.T) {
	s := newFakeStore(t)
	sys := s.addSystem("alpha", 1, 1<<10)
	// A store entry that is a symlink out of the store, and one that climbs out.
	evil := s.storePath("evil-link")
	s.symlink(evil, "", "/etc")
	climb := s.storePath("climb-link")
	s.symlink(climb, "", "../../../etc")
	// Systems whose kernel points outside the store.
	outK := s.storePath("nixos-system-outkernel")
	s.file(outK, "init", []byte("#!/bin/sh\n"), 0o555)
	hostKernel := filepath.Join(t.TempDir(), "vmlinuz")
	os.WriteFile(hostKernel, []byte("HOST KERNEL, NOT IN THE STORE"), 0o644)
	s.symlink(outK, "kernel", hostKernel)
	relK := s.storePath("nixos-system-relkernel")
	s.file(relK, "init", []byte("#!/bin/sh\n"), 0o555)
	s.symlink(relK, "kernel", "../../../../../../.."+hostKernel)
	f := newNixFixture(t, s, nixOpts{})

	unknown := s.storePath("nixos-system-unknown")
	for _, file := range []string{"netboot.ipxe", "bzImage", "initrd"} {
		resp, body := get(t, f.bootURL(unknown, file))
		checkOneLine(t, "unknown "+file, resp, body, http.StatusNotFound)
	}
	if resp, body := get(t, f.bootURL(sys.top, "vmlinuz")); resp.StatusCode != 404 || strings.Count(string(body), "\n") != 1 {
		t.Errorf("unknown file: %d %q", resp.StatusCode, body)
	}

	h := path.Base(sys.top)[:32]
	for _, name := range []string{
		"%2e%2e",
		"..%2f..%2fetc",
		"%2Fetc%2Fpasswd",
		"%2Fnix%2Fstore%2F..%2F..%2Fetc",
		"%2Fnix%2Fstore%2F" + path.Base(sys.top) + "%2Fkernel", // inside a store path
		h[:31] + "-nixos",                    // hash too short
		h[:31] + "e-nixos",                   // 'e' is not in Nix's base32
		h + "-nixos%20system",                // space
		h + "-nixos;reboot",                  // ';'
		h + "-.hidden",                       // name starts with a dot
		h + "-" + strings.Repeat("x", 300),   // too long
		h + "-nixos%00",                      // NUL
		h,                                    // no name
		"-" + h + "-nixos",                   // shifted
		strings.ToUpper(h) + "-nixos-system", // upper case hash
	} {
		for _, file := range []string{"netboot.ipxe", "initrd"} {
			resp, body := get(t, f.url+"/boot/"+name+"/"+file)
			checkOneLine(t, name+"/"+file, resp, body, http.StatusBadRequest)
		}
	}
	// Refused, not served: symlinks out of the store.
	for what, u := range map[string]string{
		"symlink entry, netboot.ipxe":     f.bootURL(evil, "netboot.ipxe"),
		"symlink entry, initrd":           f.bootURL(evil, "initrd"),
		"climbing entry, initrd":          f.bootURL(climb, "initrd"),
		"kernel outside, netboot.ipxe":    f.bootURL(outK, "netboot.ipxe"),
		"kernel outside, bzImage":         f.bootURL(outK, "bzImage"),
		"kernel climbing out, bzImage":    f.bootURL(relK, "bzImage"),
		"kernel climbing out, netboot":    f.bootURL(relK, "netboot.ipxe"),
		"kernel outside, dispatch script": f.url + "/boot/" + path.Base(outK) + "/netboot.ipxe?cmdline_suffix_args=x",
	} {
		resp, body := get(t, u)
		checkOneLine(t, what, resp, body, http.StatusBadRequest)
		if bytes.Contains(body, []byte("HOST KERNEL")) || bytes.Contains(body, []byte("kernel http")) {
			t.Errorf("%s: served %q", what, body)
		}
	}
	// The path itself, by its own name, is fine.
	if resp, _ := get(t, f.bootURL(sys.top, "netboot.ipxe")); resp.StatusCode != 200 {
		t.Errorf("good path after bad ones: %d", resp.StatusCode)
	}
}

// TestNixCrashSafety damages member files as a crash mid-build or disk
// corruption would, then restarts cache and server: the damaged members are
// rebuilt, never served.
func TestNixCrashSafety(t *testing.T) {
	s := newFakeStore(t)
	sys := s.addSystem("alpha", 4, 2<<20)
	cacheDir := t.TempDir()
	f := newNixFixture(t, s, nixOpts{cacheDir: cacheDir})
	u := f.bootURL(sys.top, "initrd")
	resp, want := get(t, u)
	if resp.StatusCode != 200 {
		t.Fatalf("initrd: %d", resp.StatusCode)
	}
	if err := f.cache.Close(); err != nil {
		t.Fatal(err)
	}
	// Truncate the biggest member (the firmware blob's) and flip a byte in
	// the middle of the kernel's, keeping its length and footer.
	var biggest, kernel string
	var biggestSize int64
	ents, _ := os.ReadDir(cacheDir)
	for _, e := range ents {
		fi, _ := e.Info()
		switch {
		case strings.HasPrefix(e.Name(), "."):
		case strings.Contains(e.Name(), "-linux-"):
			kernel = filepath.Join(cacheDir, e.Name())
		case fi.Size() > biggestSize:
			biggest, biggestSize = filepath.Join(cacheDir, e.Name()), fi.Size()
		}
	}
	if biggest == "" || kernel == "" {
		t.Fatalf("cache dir holds %d files; no firmware or kernel member", len(ents))
	}
	if err := os.Truncate(biggest, biggestSize/2); err != nil {
		t.Fatal(err)
	}
	kf, err := os.OpenFile(kernel, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	kf.ReadAt(b[:], 1<<20)
	b[0] ^= 0x55
	kf.WriteAt(b[:], 1<<20)
	kf.Close()
	// A temporary file left by a build that never finished.
	os.WriteFile(filepath.Join(cacheDir, ".tmp-"+path.Base(sys.top)+".cpio.zst-123"), []byte("partial"), 0o644)

	f2 := newNixFixture(t, s, nixOpts{cacheDir: cacheDir})
	for i := range 2 { // the second time from the rebuilt cache
		resp, got := get(t, f2.bootURL(sys.top, "initrd"))
		if resp.StatusCode != 200 || resp.ContentLength != int64(len(got)) {
			t.Fatalf("after the crash: %d, %d bytes, content-length %d", resp.StatusCode, len(got), resp.ContentLength)
		}
		tree, _, err := unpackInitrd(got)
		if err != nil {
			t.Fatalf("after the crash (GET %d): %v", i, err)
		}
		checkClosureInTree(t, tree, s, sys.closure)
		if !bytes.Equal(got, want) {
			t.Errorf("GET %d after the crash: %d bytes differ from the %d bytes before (members are deterministic)", i, len(got), len(want))
		}
	}
	if st := f2.cache.Stats(); st.Builds != 2 {
		t.Errorf("after the crash %d members were built, want the 2 damaged ones", st.Builds)
	}
	if _, err := os.Stat(filepath.Join(cacheDir, ".tmp-"+path.Base(sys.top)+".cpio.zst-123")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("leftover temporary file: %v", err)
	}
	if !strings.Contains(f2.logs.String(), "corrupt") {
		t.Errorf("no log line about the corrupt member:\n%s", f2.logs)
	}
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// TestNixConcurrentInitrd has 20 clients stream one initrd at once: all get
// the same bytes, and the server holds one set of member files for all of
// them, which it releases at the end.
func TestNixConcurrentInitrd(t *testing.T) {
	const clients = 20
	s := newFakeStore(t)
	sys := s.addSystem("alpha", 40, 24<<20) // bigger than the socket buffers of a client
	f := newNixFixture(t, s, nixOpts{})
	u := f.bootURL(sys.top, "initrd")
	members := len(sys.closure)
	// Build the members first, so build-time descriptors are not counted.
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	resp, err := client.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	want, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("first GET: %d %v", resp.StatusCode, err)
	}
	time.Sleep(50 * time.Millisecond)
	baseline := countFDs(t)

	// Sample the descriptors while the clients connect and assemble.
	stopSampling := make(chan struct{})
	var peak int
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for {
			select {
			case <-stopSampling:
				return
			case <-time.After(time.Millisecond):
				peak = max(peak, countFDs(t))
			}
		}
	})

	started := make(chan struct{}, clients)
	release := make(chan struct{})
	sums := make([][32]byte, clients)
	errs := make([]error, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			resp, err := client.Get(u)
			if err != nil {
				errs[i] = err
				started <- struct{}{}
				return
			}
			defer resp.Body.Close()
			h := sha256.New()
			_, err = io.CopyN(h, resp.Body, 64<<10)
			started <- struct{}{}
			<-release // hold the stream open, part read
			if err == nil {
				_, err = io.Copy(h, resp.Body)
			}
			errs[i] = err
			h.Sum(sums[i][:0])
		})
	}
	for range clients {
		<-started
	}
	time.Sleep(200 * time.Millisecond) // let the server fill the socket buffers and block
	streaming := countFDs(t)
	close(release)
	wg.Wait()
	close(stopSampling)
	sampler.Wait()

	wantSum := sha256.Sum256(want)
	for i := range clients {
		if errs[i] != nil || sums[i] != wantSum {
			t.Errorf("client %d: err %v, same bytes %v", i, errs[i], sums[i] == wantSum)
		}
	}
	// Per client: its socket, the server's socket, and the member file the
	// server is sending from (reopened for its own offset). Plus one shared
	// set of member files. Without sharing it would be clients × members.
	extra := streaming - baseline
	t.Logf("fds: baseline %d, while %d clients stream %d (+%d), peak %d; %d members", baseline, clients, streaming, extra, peak, members)
	if limit := members + 3*clients + 10; extra > limit {
		t.Errorf("%d more descriptors while %d clients stream %d members, want at most %d (one shared set)", extra, clients, members, limit)
	}
	// Assembly is shared too: clients arriving together wait for one
	// assembly instead of each opening every member.
	if limit := members + 3*clients + 10; peak-baseline > limit {
		t.Errorf("peak %d more descriptors while %d clients assemble %d members, want at most %d (one assembly)", peak-baseline, clients, members, limit)
	}
	if extra < members {
		t.Errorf("only %d more descriptors while streaming: were the streams open? (%d members)", extra, members)
	}
	// All released at the end.
	deadline := time.Now().Add(5 * time.Second)
	for countFDs(t) > baseline && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := countFDs(t); n > baseline {
		t.Errorf("%d descriptors after all clients finished, %d before: leak", n, baseline)
	}
	f.nix.mu.Lock()
	if len(f.nix.shared) != 0 {
		t.Errorf("%d shared initrds left after all clients finished", len(f.nix.shared))
	}
	f.nix.mu.Unlock()
}

func TestNixProfiles(t *testing.T) {
	s := newFakeStore(t)
	a := s.addSystem("alpha", 1, 1<<10)
	b := s.addSystem("beta", 1, 1<<10)
	profiles := t.TempDir()
	link := func(name, target string) {
		t.Helper()
		tmp := filepath.Join(profiles, ".tmp-"+name)
		os.Remove(tmp)
		if err := os.Symlink(target, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(profiles, name)); err != nil { // atomic, as nix-env does
			t.Fatal(err)
		}
	}
	// NixOS's shape: system -> system-N-link -> /nix/store/...
	link("system-1-link", a.top)
	link("system-2-link", b.top)
	link("system", "system-1-link")
	// Host path of the store (chroot store) works as a target too.
	link("chroot", filepath.Join(s.root, strings.TrimPrefix(b.top, "/")))
	link("evil", "/etc")
	link("evil-inside", a.top+"/kernel")
	link("evil-chain", "evil")
	link("dangling", s.storePath("nixos-system-gone"))
	f := newNixFixture(t, s, nixOpts{profilesDir: profiles})

	script := func(name string) (string, []string) {
		t.Helper()
		resp, body := get(t, f.url+"/dispatch/profile/"+name)
		if resp.StatusCode != 200 {
			t.Fatalf("profile %s: %d %s", name, resp.StatusCode, body)
		}
		if resp.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("profile %s: Cache-Control %q", name, resp.Header.Get("Cache-Control"))
		}
		return string(body), scriptLines(body)
	}
	checkScript := func(name string, sys system) {
		t.Helper()
		_, lines := script(name)
		dir := f.url + "/boot/" + path.Base(sys.top) + "/"
		want := []string{
			"#!ipxe",
			"echo bootserve: booting " + path.Base(sys.top) + " (profile " + name + ")",
			"kernel " + dir + "bzImage init=" + sys.top + "/init " + sys.params + " initrd=initrd || goto failed",
			"initrd " + dir + "initrd || goto failed",
			"boot || goto failed",
			"exit 0",
			":failed",
			"echo bootserve: boot failed, retrying in 5 seconds",
			"sleep 5",
			"chain --autofree " + f.url + "/dispatch/profile/" + name,
		}
		if !slices.Equal(lines, want) {
			t.Errorf("profile %s:\n%s\nwant:\n%s", name, strings.Join(lines, "\n"), strings.Join(want, "\n"))
		}
	}
	checkScript("system", a)
	// Repointing the profile changes the next boot's script...
	link("system", "system-2-link")
	checkScript("system", b)
	link("system", "system-1-link")
	checkScript("system", a)
	checkScript("chroot", b)
	// ...and the URLs in a script name the store path, so they keep serving
	// what the script was made for.
	body, _ := script("system")
	link("system", "system-2-link")
	kernelURL := urlRE.FindString(body[strings.Index(body, "\nkernel "):])
	if resp, got := get(t, kernelURL); resp.StatusCode != 200 || !bytes.Contains([]byte(kernelURL), []byte(path.Base(a.top))) {
		t.Errorf("kernel of the script made before the change: %d %s (%d bytes)", resp.StatusCode, kernelURL, len(got))
	}

	for name, code := range map[string]int{
		"evil":        http.StatusBadRequest,
		"evil-inside": http.StatusBadRequest,
		"evil-chain":  http.StatusBadRequest,
		"dangling":    http.StatusNotFound,
		"nonexistent": http.StatusNotFound,
		"..":          0, // cleaned by the mux: never reaches the handler
		"%2e%2e":      http.StatusBadRequest,
		".hidden":     http.StatusBadRequest,
		"a%2Fb":       http.StatusBadRequest,
	} {
		resp, body := get(t, f.url+"/dispatch/profile/"+name)
		if code == 0 {
			if resp.StatusCode == 200 && bytes.Contains(body, []byte("#!ipxe")) {
				t.Errorf("profile %s: got a script", name)
			}
			continue
		}
		checkOneLine(t, "profile "+name, resp, body, code)
	}
}

// --- real Nix ---------------------------------------------------------------------

func requireNix(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"nix-store", "nix-build"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("BOOTSERVE_REQUIRE_NIX") == "1" {
				t.Fatalf("%s not found and BOOTSERVE_REQUIRE_NIX=1: %v", tool, err)
			}
			t.Skipf("%s not installed (Debian: apt-get install nix-bin); set BOOTSERVE_REQUIRE_NIX=1 to fail instead", tool)
		}
	}
}

// configNix is a configuration's default.nix: a NixOS-shaped system whose
// name and files carry variant, made unique per test run by nonce. gate,
// if set, makes the builder announce itself by creating gate+".started"
// and wait (at most a minute) for gate+".release".
func configNix(variant, nonce, gate string, fail bool) string {
	wait := ""
	if gate != "" {
		wait = fmt.Sprintf("touch %s.started; i=0; while [ ! -e %s.release ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; ", gate, gate)
	}
	failing := ""
	if fail {
		failing = "echo BOOTSERVE-BUILD-LOG-" + nonce + " >&2; echo second log line >&2; exit 1; "
	}
	return fmt.Sprintf(`let
  mk = name: script: builtins.derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ("export PATH=/usr/bin:/bin; set -e; " + script) ];
  };
  kernel = mk "linux-bootserve-%[2]s" "mkdir -p $out; echo kernel %[2]s > $out/bzImage";
in mk "nixos-system-%[1]s-%[2]s" ''
  %[3]s%[4]smkdir -p $out
  ln -s ${kernel}/bzImage $out/kernel
  printf 'console=ttyS0 variant=%[1]s' > $out/kernel-params
  printf '#!/bin/sh\necho %[1]s\n' > $out/init
  chmod 0555 $out/init
''
`, variant, nonce, wait, failing)
}

type nixResult struct {
	resp *http.Response
	body []byte
	err  error
}

func getAsync(url string) <-chan nixResult {
	ch := make(chan nixResult, 1)
	go func() {
		resp, err := http.Get(url)
		if err != nil {
			ch <- nixResult{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		ch <- nixResult{resp: resp, body: b, err: err}
	}()
	return ch
}

// newConfigurationFixture serves configurations from a new directory
// through the real Nix CLI, built offline, with GC roots in roots; nonce
// keeps this run's store paths apart from earlier runs'.
func newConfigurationFixture(t *testing.T) (f *fixture, configs, roots, nonce string) {
	t.Helper()
	configs, roots = t.TempDir(), t.TempDir()
	nonce = strconv.FormatInt(time.Now().UnixNano(), 36)
	f = newFixture(t, machines.Static{T: machines.Target{Kind: machines.KindLocal, Name: "local"}})
	st, err := nixstore.New(nixstore.Options{Backend: nixstore.BackendCLI, ConfigurationsDir: configs,
		GCRootsDir: roots, BuildArgs: nixtest.OfflineBuildArgs()})
	if err != nil {
		t.Fatal(err)
	}
	cache, err := cpiocache.Open(cpiocache.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	f.srv.SetNix(&Nix{Store: st, Cache: cache})
	return f, configs, roots, nonce
}

// TestNixConfigurationRace is nix-netboot-serve's documented race: machine
// A boots while its configuration builds slowly, the configuration changes,
// machine B boots and its build finishes first. Each must get the system
// built from the configuration as it was when its own boot started.
func TestNixConfigurationRace(t *testing.T) {
	requireNix(t)
	f, configs, roots, nonce := newConfigurationFixture(t)
	gates := t.TempDir()

	write := func(name, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(configs, name), 0o755); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(configs, name, ".default.nix.tmp")
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(configs, name, "default.nix")); err != nil {
			t.Fatal(err)
		}
	}
	gate := filepath.Join(gates, "slow")
	write("race", configNix("slow", nonce, gate, false))
	defer os.WriteFile(gate+".release", nil, 0o644) // never leave a builder waiting
	u := f.url + "/dispatch/configuration/race"

	// Machine A: its build waits at the gate.
	chA := getAsync(u)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, err := os.Stat(gate + ".started"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the slow build never started; server log:\n%s", f.logs)
		}
		select {
		case r := <-chA:
			t.Fatalf("machine A finished before its build started: %v %s", r.err, r.body)
		case <-time.After(50 * time.Millisecond):
		}
	}
	// The configuration changes; machine B boots and its build finishes
	// while A's is still running.
	write("race", configNix("fast", nonce, "", false))
	rB := <-getAsync(u)
	select {
	case r := <-chA:
		t.Fatalf("machine A finished while its build was held: %v %s", r.err, r.body)
	default:
	}
	os.WriteFile(gate+".release", nil, 0o644)
	var rA nixResult
	select {
	case rA = <-chA:
	case <-time.After(2 * time.Minute):
		t.Fatal("machine A never got a script")
	}
	for name, r := range map[string]nixResult{"A": rA, "B": rB} {
		if r.err != nil || r.resp.StatusCode != 200 || !bytes.HasPrefix(r.body, []byte("#!ipxe\n")) {
			t.Fatalf("machine %s: %v %v\n%s\nserver log:\n%s", name, r.err, r.resp, r.body, f.logs)
		}
	}
	sysOf := func(machine string, body []byte) string {
		t.Helper()
		for _, l := range scriptLines(body) {
			if rest, ok := strings.CutPrefix(l, "kernel "+f.url+"/boot/"); ok {
				base, _, _ := strings.Cut(rest, "/")
				return "/nix/store/" + base
			}
		}
		t.Fatalf("machine %s: no kernel line in\n%s", machine, body)
		return ""
	}
	sysA, sysB := sysOf("A", rA.body), sysOf("B", rB.body)
	t.Logf("machine A (slow build, started first) got %s; machine B (fast build) got %s", sysA, sysB)
	for _, c := range []struct{ machine, sys, variant, other string }{{"A", sysA, "slow", "fast"}, {"B", sysB, "fast", "slow"}} {
		if !strings.HasSuffix(c.sys, "-nixos-system-"+c.variant+"-"+nonce) {
			t.Errorf("machine %s got %s, want the %s variant it started with", c.machine, c.sys, c.variant)
		}
		params, err := os.ReadFile(c.sys + "/kernel-params")
		if err != nil || string(params) != "console=ttyS0 variant="+c.variant {
			t.Errorf("machine %s: %s/kernel-params is %q (%v)", c.machine, c.sys, params, err)
		}
		body := map[string][]byte{"A": rA.body, "B": rB.body}[c.machine]
		if !bytes.Contains(body, []byte("variant="+c.variant+" initrd=initrd")) || bytes.Contains(body, []byte(c.other)) {
			t.Errorf("machine %s's script:\n%s", c.machine, body)
		}
		if !bytes.HasSuffix(body, []byte("chain --autofree "+u+"\n")) {
			t.Errorf("machine %s's script does not retry its own URL:\n%s", c.machine, body)
		}
	}
	// The configuration's root names the newer configuration.
	if r, err := os.Readlink(filepath.Join(roots, "race")); err != nil || r != sysB {
		t.Errorf("gc root of the configuration -> %q (%v), want %s", r, err, sysB)
	}
	// A's initrd, through real nix-store, holds A's system and its registration.
	resp, initrd := get(t, f.url+"/boot/"+path.Base(sysA)+"/initrd")
	if resp.StatusCode != 200 {
		t.Fatalf("initrd of A: %d %s", resp.StatusCode, initrd)
	}
	tree, _, err := unpackInitrd(initrd)
	if err != nil {
		t.Fatal(err)
	}
	if e := tree[strings.TrimPrefix(sysA, "/")+"/kernel-params"]; string(e.body) != "console=ttyS0 variant=slow" {
		t.Errorf("initrd of A: kernel-params %q", e.body)
	}
	if infos, err := nixstore.ParseRegistration(tree["nix/.nix-netboot-serve-db/registration"].body); err != nil || len(infos) != 2 {
		t.Errorf("initrd of A: registration of %d paths (%v), want 2", len(infos), err)
	}
}

func TestNixConfigurationBuildFails(t *testing.T) {
	requireNix(t)
	f, configs, roots, nonce := newConfigurationFixture(t)
	os.MkdirAll(filepath.Join(configs, "broken"), 0o755)
	os.WriteFile(filepath.Join(configs, "broken", "default.nix"), []byte(configNix("broken", nonce, "", true)), 0o644)
	os.MkdirAll(filepath.Join(configs, "syntax"), 0o755)
	os.WriteFile(filepath.Join(configs, "syntax", "default.nix"), []byte("let in in { "), 0o644)

	for _, name := range []string{"broken", "syntax"} {
		u := f.url + "/dispatch/configuration/" + name
		resp, body := get(t, u)
		lines := scriptLines(body)
		if resp.StatusCode != 200 || len(lines) < 3 || lines[0] != "#!ipxe" {
			t.Fatalf("%s: %d\n%s", name, resp.StatusCode, body)
		}
		msg := lines[1]
		t.Logf("%s: %s", name, msg)
		if !strings.HasPrefix(msg, "echo bootserve: configuration "+name+": ") || len(msg) > 400 {
			t.Errorf("%s: error line %q: want a short echo", name, msg)
		}
		want := []string{"goto failed", "exit 0", ":failed", "echo bootserve: boot failed, retrying in 5 seconds", "sleep 5", "chain --autofree " + u}
		if !slices.Equal(lines[2:], want) {
			t.Errorf("%s: script\n%s\nwant it to end with\n%s", name, body, strings.Join(want, "\n"))
		}
		if strings.Contains(string(body), "kernel ") {
			t.Errorf("%s: a failed build got a kernel line", name)
		}
	}
	logs := f.logs.String()
	if !strings.Contains(logs, "configuration build failed") || !strings.Contains(logs, "BOOTSERVE-BUILD-LOG-"+nonce) {
		t.Errorf("the build log's tail is not in the server log:\n%s", logs)
	}
	// No per-build roots are left by failed builds.
	if ents, _ := os.ReadDir(roots); len(ents) != 0 {
		t.Errorf("gc roots left by failed builds: %v", ents)
	}
	// Unknown and malformed configuration names are plain errors.
	for name, code := range map[string]int{"nonexistent": 404, "%2e%2e": 400, "a%2Fb": 400} {
		resp, body := get(t, f.url+"/dispatch/configuration/"+name)
		checkOneLine(t, "configuration "+name, resp, body, code)
	}
}
