package tftpd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"strings"
	"syscall"
)

// File is an open file being served. ReadAt rather than Read+Seek lets a
// transfer re-read any block (retransmissions, and later RFC 7440 windows)
// without shared seek state; *os.File, *bytes.Reader and embed.FS files have it.
type File interface {
	io.ReaderAt
	io.Closer
}

// Source resolves the file names clients ask for.
//
// The server hands Open a canonical name: one leading "/" stripped (clients
// commonly ask for "/undionly.kpxe" or "/grub/grub.cfg" meaning the TFTP
// root), then checked with [fs.ValidPath], so it has no leading slash, no "."
// or ".." element, no empty element and no NUL. Backslashes are ordinary
// characters: "..\\x" names a file literally called that.
//
// Open returns the file and its exact size: the server sends exactly size
// bytes and announces that size as tsize. Errors matching [fs.ErrNotExist]
// mean "not here" (TFTP error 1, and [Chain] tries the next source); errors
// matching [ErrInvalidName] or [fs.ErrPermission] refuse the request; any
// other error fails it. Open must be safe for concurrent use.
type Source interface {
	Open(ctx context.Context, name string, client netip.Addr) (File, int64, error)
}

// SourceFunc adapts a function, e.g. one generating per-client files, to Source.
type SourceFunc func(ctx context.Context, name string, client netip.Addr) (File, int64, error)

// Open calls f.
func (f SourceFunc) Open(ctx context.Context, name string, client netip.Addr) (File, int64, error) {
	return f(ctx, name, client)
}

// ErrInvalidName is returned (wrapped) for a name that is not a canonical
// relative path, e.g. one that tries to leave the root.
var ErrInvalidName = errors.New("invalid file name")

// cleanName maps the name in a read request to the canonical name sources see.
func cleanName(requested string) (string, error) {
	// Exactly one slash: "//etc/passwd" stays absolute and is refused.
	name := strings.TrimPrefix(requested, "/")
	if err := checkName(name); err != nil {
		return "", err
	}
	return name, nil
}

func checkName(name string) error {
	// fs.ValidPath accepts "." (the root itself), which is no file.
	if name == "." || !fs.ValidPath(name) || strings.IndexByte(name, 0) >= 0 {
		return fmt.Errorf("%w: %q", ErrInvalidName, name)
	}
	return nil
}

// Bytes returns an in-memory File over b; its size is len(b).
func Bytes(b []byte) File { return bytesFile{bytes.NewReader(b)} }

type bytesFile struct{ *bytes.Reader }

func (bytesFile) Close() error { return nil }

// Map is an in-memory Source: canonical name → contents. It must not be
// modified while a server uses it.
type Map map[string][]byte

// Open returns the entry for name.
func (m Map) Open(_ context.Context, name string, _ netip.Addr) (File, int64, error) {
	b, ok := m[name]
	if !ok {
		return nil, 0, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return Bytes(b), int64(len(b)), nil
}

// Dir serves the regular files under root. The root is opened per request as
// an [os.Root], so a name, or a symlink inside the tree, that resolves outside
// root is refused by the kernel-backed walk rather than by string checks
// alone; symlinks within the tree work (relative ones only: os.Root refuses
// absolute symlinks). Directories, FIFOs and devices are reported as not
// found. Opening the root per request costs two syscalls and means a
// recreated directory is picked up without a restart.
func Dir(root string) Source { return dirSource(root) }

type dirSource string

func (d dirSource) Open(_ context.Context, name string, _ netip.Addr) (File, int64, error) {
	// Sources may be called directly, not only through the server: check again.
	if err := checkName(name); err != nil {
		return nil, 0, err
	}
	root, err := os.OpenRoot(string(d))
	if err != nil {
		// %v, not %w: a missing root is a configuration error and must not
		// read as "file not found", which Chain would silently skip.
		return nil, 0, fmt.Errorf("open TFTP root directory: %v: check that it exists and is readable", err)
	}
	defer root.Close()
	// O_NONBLOCK so that a FIFO planted in the tree cannot hang the open; it
	// has no effect on regular files.
	f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("TFTP root %s: %w", string(d), err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("TFTP root %s: %w", string(d), err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("TFTP root %s: %s is not a regular file (%s): %w", string(d), name, st.Mode().Type(), fs.ErrNotExist)
	}
	return f, st.Size(), nil
}

// Chain tries each source in order: a not-found answer falls through to the
// next one, any other answer (a file or an error) is final.
func Chain(sources ...Source) Source { return chain(sources) }

type chain []Source

func (c chain) Open(ctx context.Context, name string, client netip.Addr) (File, int64, error) {
	for _, s := range c {
		f, size, err := s.Open(ctx, name, client)
		if err == nil || !errors.Is(err, fs.ErrNotExist) {
			return f, size, err
		}
	}
	return nil, 0, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
}
