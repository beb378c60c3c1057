package cpiocache

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

const testHash = "0123456789abcdfghijklmnpqrsvwxyz"

// fixture writes a store path with the cases that matter for archiving under
// root and returns its logical path.
func fixture(t *testing.T, root, name string) string {
	t.Helper()
	sp := "/nix/store/" + testHash + "-" + name
	top := filepath.Join(root, sp)
	rng := rand.New(rand.NewPCG(1, 2))
	big := make([]byte, 3<<20)
	for i := range big {
		big[i] = byte(rng.IntN(40)) // compressible, spans several zstd blocks
	}
	files := []struct {
		rel  string
		mode fs.FileMode
		body []byte
	}{
		{"bin/hello", 0o555, []byte("#!/bin/sh\necho hello\n")},
		{"bin/rw-exec", 0o755, []byte("x")},
		{"lib/libx.so.1.0", 0o444, big},
		{"share/empty", 0o444, nil},
		{"share/odd", 0o444, []byte("12345")},
		{"a-c", 0o644, []byte("sorts before a/b")},
		{"a/b", 0o600, []byte("in a dir")},
		{"setuid-like", fs.ModeSetuid | fs.ModeSticky | 0o711, []byte("all 12 permission bits kept")},
	}
	for _, f := range files {
		p := filepath.Join(top, f.rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, f.body, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"emptydir", "ro"} {
		if err := os.MkdirAll(filepath.Join(top, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{
		"lib/libx.so": "libx.so.1.0",
		"bin/abs":     "/nix/store/" + testHash + "-other/bin/x",
		"dangling":    "does/not/exist",
		"up-link":     "bin/hello",
	}
	for l, target := range links {
		if err := os.Symlink(target, filepath.Join(top, l)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(top, "ro"), 0o555); err != nil {
		t.Fatal(err)
	}
	return sp
}

func openCache(t *testing.T, opts Options) *Cache {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	c, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestMemberContents(t *testing.T) {
	for _, comp := range []Compression{Zstd, Gzip, None} {
		t.Run(comp.String(), func(t *testing.T) {
			root := t.TempDir()
			sp := fixture(t, root, "pkg-1.0")
			c := openCache(t, Options{FSRoot: root, Compression: comp})
			m, err := c.Member(context.Background(), sp)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasSuffix(m.File, "/"+testHash+"-pkg-1.0"+comp.Suffix()) {
				t.Errorf("file %s", m.File)
			}
			es := memberEntries(t, readMember(t, m))
			if len(es) < 2 || es[0].name != "nix" || es[1].name != "nix/store" ||
				es[0].mode != 0o40755 || es[1].mode != 0o40755 {
				t.Fatalf("archive does not start with the nix and nix/store directories: %+v", es[:2])
			}
			names := make([]string, len(es))
			for i, e := range es {
				names[i] = e.name
				if e.uid != 0 || e.gid != 0 || e.mtime != 1 || e.ino != uint32(i+1) ||
					e.devMaj != 0 || e.devMin != 0 || e.rdevMaj != 0 || e.rdevMin != 0 {
					t.Errorf("%s: header %+v", e.name, e)
				}
				if !e.isDir() && e.nlink != 1 {
					t.Errorf("%s: nlink %d", e.name, e.nlink)
				}
			}
			if !slices.IsSorted(names) {
				t.Errorf("entries not sorted: %q", names)
			}
			checkEntries(t, entryMap(es), root, sp)
		})
	}
}

// TestMemberExtractsWithGNUCpio checks the archive with a real cpio: the
// extracted tree equals the source tree in contents, modes and symlinks.
func TestMemberExtractsWithGNUCpio(t *testing.T) {
	cpioBin, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("cpio not installed")
	}
	root := t.TempDir()
	sp := fixture(t, root, "pkg-1.0")
	c := openCache(t, Options{FSRoot: root, Compression: None})
	m, err := c.Member(context.Background(), sp)
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cmd := exec.Command(cpioBin, "-idm", "--quiet", "--no-absolute-filenames")
	cmd.Dir = out
	cmd.Stdin = bytes.NewReader(readMember(t, m))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -idm: %v\n%s", err, b)
	}
	got := expectTree(t, out, sp)
	checkEntries(t, got, root, sp)
	st, err := os.Lstat(filepath.Join(out, sp, "bin/hello"))
	if err != nil {
		t.Fatal(err)
	}
	if !st.ModTime().Equal(time.Unix(1, 0)) {
		t.Errorf("mtime %v, want 1", st.ModTime())
	}
}

func TestMemberDeterministic(t *testing.T) {
	root := t.TempDir()
	sp := fixture(t, root, "pkg-1.0")
	// The same tree elsewhere: other inodes, owners, mtimes, and directory
	// order (files created in another order).
	root2 := t.TempDir()
	if b, err := exec.Command("cp", "-a", filepath.Join(root, "nix"), root2).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, b)
	}
	dir := filepath.Join(root2, sp, "share")
	os.Rename(filepath.Join(dir, "empty"), filepath.Join(dir, "x"))
	os.Rename(filepath.Join(dir, "x"), filepath.Join(dir, "empty"))
	other := time.Now().Add(-time.Hour)
	err := filepath.WalkDir(root2, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if err := os.Lchown(p, 1000, 1000); err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		// chown clears setuid; put the mode back.
		return errors.Join(os.Chmod(p, st.Mode()), os.Chtimes(p, other, other))
	})
	if err != nil {
		t.Fatal(err)
	}

	for _, comp := range []Compression{Zstd, Gzip} {
		var got [][]byte
		var files [][]byte
		for _, r := range []string{root, root, root2} {
			c := openCache(t, Options{FSRoot: r, Compression: comp})
			m, err := c.Member(context.Background(), sp)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, readMember(t, m))
			f, _ := os.ReadFile(m.File)
			files = append(files, f)
		}
		for i := 1; i < len(got); i++ {
			if !bytes.Equal(got[0], got[i]) || !bytes.Equal(files[0], files[i]) {
				t.Errorf("%v: build %d differs from build 0", comp, i)
			}
		}
	}
}

func TestMemberSingleFileAndSymlinkPaths(t *testing.T) {
	root := t.TempDir()
	store := filepath.Join(root, "nix/store")
	os.MkdirAll(store, 0o755)
	file := "/nix/store/" + testHash + "-builder.sh"
	link := "/nix/store/" + testHash + "-link"
	os.WriteFile(filepath.Join(root, file), []byte("echo hi\n"), 0o444)
	os.Symlink("/nix/store/"+testHash+"-builder.sh", filepath.Join(root, link))
	c := openCache(t, Options{FSRoot: root})
	for _, sp := range []string{file, link} {
		m, err := c.Member(context.Background(), sp)
		if err != nil {
			t.Fatal(err)
		}
		es := memberEntries(t, readMember(t, m))
		if len(es) != 3 || es[2].name != sp[1:] {
			t.Fatalf("%s: entries %+v", sp, es)
		}
		checkEntries(t, entryMap(es), root, sp)
	}
}

func TestMemberRejectsSpecialFiles(t *testing.T) {
	root := t.TempDir()
	sp := fixture(t, root, "pkg-1.0")
	fifo := filepath.Join(root, sp, "share/fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	c := openCache(t, Options{FSRoot: root})
	_, err := c.Member(context.Background(), sp)
	if err == nil || !strings.Contains(err.Error(), fifo) {
		t.Fatalf("error %v does not name %s", err, fifo)
	}
	if s := c.Stats(); s.BuildErrors != 1 || s.Members != 0 {
		t.Errorf("stats %+v", s)
	}
	leftovers, _ := filepath.Glob(filepath.Join(c.dir, tmpPrefix+"*"))
	if len(leftovers) != 0 {
		t.Errorf("temporary files left: %q", leftovers)
	}
}

func TestStorePathChecks(t *testing.T) {
	c := openCache(t, Options{FSRoot: t.TempDir()})
	for _, p := range []string{"", "nix/store/x", "/nix/store/../etc", "/nix/store/x/", "/", "/nix/store/.tmp-x",
		"/nix/store/x/..", "/nix//store/x", "/nix/store/a\x00b"} {
		if _, err := c.Member(context.Background(), p); err == nil {
			t.Errorf("Member(%q) succeeded", p)
		}
	}
	_, err := c.Member(context.Background(), "/nix/store/"+testHash+"-missing")
	if err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing path: %v", err)
	}
}

func TestBaseMember(t *testing.T) {
	extra := []Entry{
		{Name: "nix/.nix-netboot-serve-db/registration", Body: []byte("/nix/store/x\n\n0\n")},
		{Name: "nix/.nix-netboot-serve-db/register", Mode: 0o755, Body: []byte("#!/bin/sh\nnix-store --load-db\n")},
		{Name: "init", Linkname: "/nix/store/" + testHash + "-system/init"},
		{Name: "run", Dir: true, Mode: 0o700}, // replaces the default
	}
	for _, comp := range []Compression{None, Zstd, Gzip} {
		b, err := BaseMember(extra, comp)
		if err != nil {
			t.Fatal(err)
		}
		b2, _ := BaseMember(extra, comp)
		if !bytes.Equal(b, b2) {
			t.Errorf("%v: base member not deterministic", comp)
		}
		es := memberEntries(t, b)
		got := entryMap(es)
		want := map[string]uint32{
			"dev": 0o40755, "dev/console": 0o20600, "proc": 0o40755, "sys": 0o40755, "tmp": 0o41777,
			"run": 0o40700, "nix": 0o40755, "nix/store": 0o40755, "nix/.nix-netboot-serve-db": 0o40755,
			"nix/.nix-netboot-serve-db/registration": 0o100644, "nix/.nix-netboot-serve-db/register": 0o100755,
			"init": 0o120777,
		}
		if len(got) != len(want) {
			t.Errorf("%v: %d entries, want %d", comp, len(got), len(want))
		}
		for n, mode := range want {
			if got[n].mode != mode {
				t.Errorf("%v: %s mode %o, want %o", comp, n, got[n].mode, mode)
			}
		}
		con := got["dev/console"]
		if con.rdevMaj != 5 || con.rdevMin != 1 || len(con.body) != 0 {
			t.Errorf("%v: dev/console rdev %d:%d", comp, con.rdevMaj, con.rdevMin)
		}
		if string(got["init"].body) != extra[2].Linkname || string(got["nix/.nix-netboot-serve-db/register"].body) != string(extra[1].Body) {
			t.Errorf("%v: bodies wrong", comp)
		}
		for _, e := range es {
			if e.name != "dev/console" && (e.rdevMaj != 0 || e.rdevMin != 0) {
				t.Errorf("%s has rdev", e.name)
			}
		}
	}

	// GNU cpio's listing shows the device numbers.
	if _, err := exec.LookPath("cpio"); err == nil {
		b, _ := BaseMember(extra, None)
		cmd := exec.Command("cpio", "-itv", "--quiet")
		cmd.Stdin = bytes.NewReader(b)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("cpio -itv: %v\n%s", err, out)
		}
		var line string
		for l := range strings.Lines(string(out)) {
			if strings.HasSuffix(strings.TrimSpace(l), " dev/console") {
				line = l
			}
		}
		if !strings.HasPrefix(line, "crw-------") || !regexp.MustCompile(` 5,\s+1 `).MatchString(line) {
			t.Errorf("cpio -itv shows dev/console as %q", line)
		}
		if !strings.Contains(string(out), "init -> /nix/store/") {
			t.Errorf("cpio -itv does not show the init symlink:\n%s", out)
		}
	}

	for _, bad := range [][]Entry{
		{{Name: "/abs", Body: []byte("x")}},
		{{Name: "a/../b"}},
		{{Name: "x", Dir: true, Body: []byte("x")}},
		{{Name: "x", Linkname: "y", Body: []byte("x")}},
		{{Name: "x", Mode: fs.ModeDir | 0o755}},
		{{Name: "x"}, {Name: "x"}},
		{{Name: "f", Body: []byte("x")}, {Name: "f/g", Body: []byte("y")}},
	} {
		if _, err := BaseMember(bad, None); err == nil {
			t.Errorf("BaseMember(%+v) succeeded", bad)
		}
	}
}

// TestZstdFramesWithZstdTool checks members with the zstd CLI: one frame,
// window at most 8 MiB, and a valid file as a whole (the footer is a
// skippable frame).
func TestZstdFramesWithZstdTool(t *testing.T) {
	zstdBin, err := exec.LookPath("zstd")
	if err != nil {
		t.Skip("zstd not installed")
	}
	root := t.TempDir()
	small := fixture(t, root, "small")
	bigPath := "/nix/store/" + testHash + "-big"
	rng := rand.New(rand.NewPCG(3, 4))
	big := make([]byte, 24<<20) // several windows
	for i := range big {
		big[i] = byte(rng.IntN(4)) + 'a'
	}
	os.MkdirAll(filepath.Join(root, bigPath), 0o755)
	os.WriteFile(filepath.Join(root, bigPath, "data"), big, 0o444)

	c := openCache(t, Options{FSRoot: root})
	for _, sp := range []string{small, bigPath} {
		m, err := c.Member(context.Background(), sp)
		if err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(zstdBin, "-t", "-q", m.File).CombinedOutput(); err != nil {
			t.Errorf("zstd -t %s: %v\n%s", m.File, err, out)
		}
		only := filepath.Join(t.TempDir(), "member.zst")
		os.WriteFile(only, readMember(t, m), 0o644)
		out, err := exec.Command(zstdBin, "-lv", only).CombinedOutput()
		if err != nil {
			t.Fatalf("zstd -lv: %v\n%s", err, out)
		}
		s := string(out)
		if !strings.Contains(s, "# Zstandard Frames: 1") || strings.Contains(s, "Skippable") {
			t.Errorf("%s: not exactly one zstd frame:\n%s", sp, s)
		}
		if !strings.Contains(s, "Check: XXH64") {
			t.Errorf("%s: no checksum:\n%s", sp, s)
		}
		// Streamed frames carry a window descriptor; zstd -lv prints it.
		if sp == bigPath {
			var win string
			for l := range strings.Lines(s) {
				if strings.Contains(l, "Window Size:") {
					win = strings.TrimSpace(l)
				}
			}
			if win != "Window Size: 8.00 MiB (8388608 B)" {
				t.Errorf("%s: %q, want an 8 MiB window", sp, win)
			}
		}
	}
}
