package nixstore

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// maxKernelParamsSize bounds kernel-params; a real one is a few hundred bytes and the
// kernel's own command line limit is a few KiB.
const maxKernelParamsSize = 64 << 10

// TopLevel is what netbooting needs from a NixOS system's top-level store path.
// Paths are logical (as Nix names them); open their files with Store.FSPath.
type TopLevel struct {
	// Path is the system's store path.
	Path string
	// Kernel is where <Path>/kernel resolves: the kernel image (bzImage), a regular file
	// inside the store, usually in the kernel's own store path.
	Kernel string
	// Init is <Path>/init, the name to pass as init= (and rdinit=): the kernel runs it
	// from the unpacked closure, where <Path> is an ordinary directory.
	Init string
	// KernelParams is the content of <Path>/kernel-params with surrounding white space
	// trimmed and line breaks made spaces; "" if the file is missing.
	KernelParams string
	// Initrd is where <Path>/initrd resolves, "" if the system has none.
	Initrd string
}

// TopLevel reads the NixOS system at storePath (a basename or a full store path).
// Errors match ErrInvalidPath for a bad name or a file that resolves outside the store,
// ErrNotFound if the path does not exist, and ErrNotSystem (and ErrInvalidPath) if it is
// not a system: not a directory, or no kernel or init.
func (s *Store) TopLevel(storePath string) (TopLevel, error) {
	p, fi, err := s.lookup(storePath)
	if err != nil {
		return TopLevel{}, err
	}
	if !fi.IsDir() {
		return TopLevel{}, notSystemf("%s is not a NixOS system: not a directory", p)
	}
	tl := TopLevel{Path: p, Init: p + "/init"}

	if tl.Kernel, _, err = s.systemFile(p, "kernel"); err != nil {
		return TopLevel{}, err
	}
	if _, fi, err = s.systemFile(p, "init"); err != nil {
		return TopLevel{}, err
	}
	if fi.Mode()&0o111 == 0 {
		return TopLevel{}, notSystemf("%s is not a NixOS system: init is not executable", p)
	}
	// The initrd is informational (netboot serves the closure instead), so a missing or
	// broken one is not an error; one that leads out of the store still is.
	tl.Initrd, _, err = s.systemFile(p, "initrd")
	if errors.Is(err, ErrNotSystem) {
		tl.Initrd = ""
	} else if err != nil {
		return TopLevel{}, err
	}

	params, _, err := s.systemFile(p, "kernel-params")
	switch {
	case errors.Is(err, errMissing):
	case err != nil:
		return TopLevel{}, err
	default:
		if tl.KernelParams, err = s.readKernelParams(p, params); err != nil {
			return TopLevel{}, err
		}
	}
	return tl, nil
}

// errMissing marks a system file that does not exist (as opposed to one that is broken).
var errMissing = errors.New("missing")

// systemFile resolves <p>/<name> inside the store and requires a regular file. A file
// that does not exist yields an error matching ErrNotSystem and errMissing; one that
// resolves outside the store an error matching ErrInvalidPath only.
func (s *Store) systemFile(p, name string) (string, fs.FileInfo, error) {
	f := p + "/" + name
	if _, err := os.Lstat(s.FSPath(f)); errors.Is(err, fs.ErrNotExist) {
		return "", nil, &reqError{
			msg:   fmt.Sprintf("%s is not a NixOS system: it has no %s", p, name),
			kinds: []error{ErrNotSystem, ErrInvalidPath, errMissing},
			err:   err,
		}
	}
	resolved, fi, err := s.resolve(f)
	switch {
	case errors.Is(err, ErrNotFound):
		return "", nil, notSystemf("%s is not a NixOS system: %s is broken: %v", p, name, err)
	case err != nil:
		return "", nil, err
	case !fi.Mode().IsRegular():
		return "", nil, notSystemf("%s is not a NixOS system: %s is not a regular file", p, name)
	}
	return resolved, fi, nil
}

func (s *Store) readKernelParams(p, file string) (string, error) {
	f, err := os.Open(s.FSPath(file))
	if err != nil {
		return "", fmt.Errorf("%s: kernel-params: %w", p, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxKernelParamsSize+1))
	if err != nil {
		return "", fmt.Errorf("%s: kernel-params: %w", p, err)
	}
	if len(b) > maxKernelParamsSize {
		return "", notSystemf("%s: kernel-params is larger than %d bytes", p, maxKernelParamsSize)
	}
	params := strings.TrimSpace(string(b))
	params = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(params)
	return params, nil
}
