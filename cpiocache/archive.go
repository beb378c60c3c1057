package cpiocache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cavaliergopher/cpio"
)

// Every entry gets this mtime so that archives do not depend on when the
// store path was copied to this host (the store itself uses 1 as well).
var fixedMTime = time.Unix(1, 0)

// newc stores sizes and name lengths in 8 hex digits, and the kernel ignores
// names and symlink targets longer than PATH_MAX.
const (
	maxNewcSize = 1<<32 - 1
	maxPathLen  = 4096
)

// srcEntry is one file system object of a store path, in archive order.
type srcEntry struct {
	name   string // archive name, no leading slash
	fsPath string // where to read it ("" for the synthetic parent dirs)
	mode   fs.FileMode
	size   int64  // regular files only
	link   string // symlink target
}

// collectTree lists storePath (read from fsRoot+storePath) and the parent
// directories of storePath, sorted by name in byte order. Sorting the full
// list, not per directory, is what makes the order independent of the file
// system; a directory still precedes its contents because it is their prefix.
func collectTree(fsRoot, storePath string) ([]srcEntry, error) {
	var out []srcEntry
	// Parent directories ("nix", "nix/store") so that members unpack in
	// any order.
	for d := path.Dir(storePath); d != "/"; d = path.Dir(d) {
		out = append(out, srcEntry{name: d[1:], mode: fs.ModeDir | 0o755})
	}
	slices.Reverse(out)

	top := filepath.Join(fsRoot, filepath.FromSlash(storePath))
	err := filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(top, p)
		if err != nil {
			return err
		}
		name := storePath[1:]
		if rel != "." {
			name += "/" + filepath.ToSlash(rel)
		}
		if len(name) >= maxPathLen {
			return fmt.Errorf("%s: name longer than %d bytes cannot go into an initramfs", p, maxPathLen-1)
		}
		e := srcEntry{name: name, fsPath: p, mode: info.Mode()}
		switch info.Mode().Type() {
		case 0:
			if info.Size() > maxNewcSize {
				return fmt.Errorf("%s: %d bytes is over the 4 GiB limit of newc cpio", p, info.Size())
			}
			e.size = info.Size()
		case fs.ModeDir:
		case fs.ModeSymlink:
			if e.link, err = os.Readlink(p); err != nil {
				return err
			}
			if len(e.link) >= maxPathLen {
				return fmt.Errorf("%s: symlink target longer than %d bytes", p, maxPathLen-1)
			}
		default:
			return fmt.Errorf("%s: unsupported file type %v in store path (only regular files, directories and symlinks can be archived)", p, info.Mode().Type())
		}
		out = append(out, e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b srcEntry) int { return strings.Compare(a.name, b.name) })
	return out, nil
}

// cpioMode converts a Go file mode into the newc mode field, keeping the
// permission, setuid, setgid and sticky bits.
func cpioMode(m fs.FileMode) cpio.FileMode {
	c := cpio.FileMode(m.Perm())
	if m&fs.ModeSetuid != 0 {
		c |= cpio.ModeSetuid
	}
	if m&fs.ModeSetgid != 0 {
		c |= cpio.ModeSetgid
	}
	if m&fs.ModeSticky != 0 {
		c |= cpio.ModeSticky
	}
	switch m.Type() {
	case fs.ModeDir:
		c |= cpio.TypeDir
	case fs.ModeSymlink:
		c |= cpio.TypeSymlink
	case fs.ModeDevice | fs.ModeCharDevice:
		c |= cpio.TypeChar
	default:
		c |= cpio.TypeReg
	}
	return c
}

// header returns the deterministic header of e with inode number ino. The
// Checksum field must stay zero (see nix-facts.md: setting it switches the
// library to the 070702 format for the whole process).
func header(name string, mode fs.FileMode, size int64, ino int64) *cpio.Header {
	links := 1
	if mode.IsDir() {
		links = 2
	}
	return &cpio.Header{
		Name:    name,
		Mode:    cpioMode(mode),
		Inode:   ino,
		Links:   links,
		ModTime: fixedMTime,
		Size:    size,
	}
}

// writeTree writes the entries as one complete newc archive (with trailer) to
// w. buf is the copy buffer. ctx is checked between files.
func writeTree(ctx context.Context, w io.Writer, entries []srcEntry, buf []byte) error {
	cw := cpio.NewWriter(w)
	for i, e := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		// Inode numbers are the position in the sorted list: stable, unique
		// within the member, unrelated to the host's file system. nlink is 1,
		// so the kernel never links files across (or within) members.
		ino := int64(i + 1)
		switch e.mode.Type() {
		case fs.ModeDir:
			if err := cw.WriteHeader(header(e.name, e.mode, 0, ino)); err != nil {
				return err
			}
		case fs.ModeSymlink:
			// The library writes no target unless it is the body.
			if err := cw.WriteHeader(header(e.name, e.mode, int64(len(e.link)), ino)); err != nil {
				return err
			}
			if _, err := io.WriteString(cw, e.link); err != nil {
				return err
			}
		default:
			if err := copyFile(cw, e, ino, buf); err != nil {
				return err
			}
		}
	}
	return cw.Close()
}

func copyFile(cw *cpio.Writer, e srcEntry, ino int64, buf []byte) error {
	f, err := os.Open(e.fsPath)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := cw.WriteHeader(header(e.name, e.mode, e.size, ino)); err != nil {
		return err
	}
	n, err := io.CopyBuffer(cw, io.LimitReader(f, e.size), buf)
	if err != nil {
		return fmt.Errorf("read %s: %w", e.fsPath, err)
	}
	if n != e.size {
		return fmt.Errorf("read %s: file shrank from %d to %d bytes while being archived", e.fsPath, e.size, n)
	}
	return nil
}

// Entry is one object of the base member. Exactly one of Dir, Linkname != ""
// or a regular file (Body) is meant. Name is relative to the initramfs root,
// without leading slash ("nix/.nix-netboot-serve-db/register").
type Entry struct {
	Name string
	// Mode holds permission bits (including fs.ModeSticky etc.); 0 means
	// 0644 for files and 0755 for directories. Symlinks are always 0777.
	Mode     fs.FileMode
	Body     []byte
	Linkname string
	Dir      bool
}

// The base member always holds these, so the booted kernel finds a console
// and the usual mount points even before the closure's own files arrive.
func defaultBaseEntries() []Entry {
	return []Entry{
		{Name: "dev", Dir: true},
		{Name: "dev/console", Mode: 0o600}, // made a char device 5:1 below
		{Name: "proc", Dir: true},
		{Name: "sys", Dir: true},
		{Name: "tmp", Dir: true, Mode: fs.ModeSticky | 0o777},
		{Name: "run", Dir: true},
		{Name: "nix", Dir: true},
		{Name: "nix/store", Dir: true},
	}
}

const consoleName = "dev/console"

// BaseMember builds the leading member of an initrd: the default entries
// (dev, dev/console as char device 5:1 mode 0600, proc, sys, tmp 1777, run,
// nix, nix/store) plus extra. An extra entry with the name of a default entry
// replaces it; missing parent directories are added with mode 0755. The
// result is deterministic and compressed with comp (None gives a plain newc
// archive).
func BaseMember(extra []Entry, comp Compression) ([]byte, error) {
	byName := map[string]Entry{}
	for _, e := range defaultBaseEntries() {
		byName[e.Name] = e
	}
	seen := map[string]bool{}
	for _, e := range extra {
		if err := checkEntry(e); err != nil {
			return nil, err
		}
		if seen[e.Name] {
			return nil, fmt.Errorf("base member: entry %q given twice", e.Name)
		}
		seen[e.Name] = true
		byName[e.Name] = e
		for d := path.Dir(e.Name); d != "."; d = path.Dir(d) {
			if _, ok := byName[d]; !ok {
				byName[d] = Entry{Name: d, Dir: true}
			}
		}
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	slices.Sort(names)

	var raw bytes.Buffer
	cw := cpio.NewWriter(&raw)
	for i, n := range names {
		e := byName[n]
		if d, ok := byName[path.Dir(n)]; ok && !d.Dir {
			return nil, fmt.Errorf("base member: %q needs %q to be a directory", n, d.Name)
		}
		ino := int64(i + 1)
		var err error
		switch {
		case n == consoleName && !seen[n]:
			err = writeConsole(cw, &raw, e.Mode, ino)
		case e.Dir:
			mode := e.Mode
			if mode == 0 {
				mode = 0o755
			}
			err = cw.WriteHeader(header(n, fs.ModeDir|mode, 0, ino))
		case e.Linkname != "":
			if err = cw.WriteHeader(header(n, fs.ModeSymlink|0o777, int64(len(e.Linkname)), ino)); err == nil {
				_, err = io.WriteString(cw, e.Linkname)
			}
		default:
			mode := e.Mode
			if mode == 0 {
				mode = 0o644
			}
			if err = cw.WriteHeader(header(n, mode, int64(len(e.Body)), ino)); err == nil {
				_, err = cw.Write(e.Body)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("base member: write %q: %w", n, err)
		}
	}
	if err := cw.Close(); err != nil {
		return nil, fmt.Errorf("base member: %w", err)
	}
	return compressBytes(raw.Bytes(), comp)
}

func checkEntry(e Entry) error {
	switch {
	case e.Name == "" || e.Name == "." || path.Clean(e.Name) != e.Name || path.IsAbs(e.Name) ||
		e.Name == ".." || strings.HasPrefix(e.Name, "../") || strings.ContainsRune(e.Name, 0):
		return fmt.Errorf("base member: entry name %q must be a clean relative path such as \"nix/x\"", e.Name)
	case len(e.Name) >= maxPathLen || len(e.Linkname) >= maxPathLen:
		return fmt.Errorf("base member: entry %q: name or link target too long", e.Name)
	case e.Dir && (e.Linkname != "" || len(e.Body) > 0):
		return fmt.Errorf("base member: entry %q: a directory has no body or link target", e.Name)
	case e.Linkname != "" && len(e.Body) > 0:
		return fmt.Errorf("base member: entry %q: a symlink has no body", e.Name)
	case e.Mode&^(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0:
		return fmt.Errorf("base member: entry %q: Mode %v has type bits; use Dir or Linkname", e.Name, e.Mode)
	case int64(len(e.Body)) > maxNewcSize:
		return fmt.Errorf("base member: entry %q: body over 4 GiB", e.Name)
	}
	return nil
}

// writeConsole writes dev/console as character device 5:1. The cpio library
// has no rdev fields, so the header it wrote into raw is patched in place:
// newc's rdevmajor and rdevminor are the 8-hex-digit fields at offsets 78 and
// 86 of the 110-byte header.
func writeConsole(cw *cpio.Writer, raw *bytes.Buffer, mode fs.FileMode, ino int64) error {
	if mode == 0 {
		mode = 0o600
	}
	// Flush writes the previous entry's padding, so the header starts here.
	if err := cw.Flush(); err != nil {
		return err
	}
	start := raw.Len()
	if err := cw.WriteHeader(header(consoleName, fs.ModeDevice|fs.ModeCharDevice|mode, 0, ino)); err != nil {
		return err
	}
	h := raw.Bytes()[start:]
	if !bytes.HasPrefix(h, []byte("070701")) || !bytes.HasPrefix(h[110:], []byte(consoleName+"\x00")) {
		return errors.New("unexpected header layout from the cpio library")
	}
	copy(h[78:86], fmt.Sprintf("%08X", 5))
	copy(h[86:94], fmt.Sprintf("%08X", 1))
	return nil
}

// compressBytes compresses raw as one complete stream.
func compressBytes(raw []byte, comp Compression) ([]byte, error) {
	if comp == None {
		return raw, nil
	}
	z, err := newCompressor(comp, 0)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	z.Reset(&out)
	if _, err := z.Write(raw); err != nil {
		return nil, err
	}
	if err := z.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
