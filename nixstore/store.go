// Package nixstore is bootserve's only door to Nix: it validates the store paths that
// requests name, finds closures, produces the Nix database registration for a closure,
// reads NixOS top levels, resolves profiles and builds configurations. It serves no HTTP
// and writes no archives; other packages do that with what this one returns.
//
// Every path that comes from a request is checked against the store path grammar and
// resolved without leaving the store before anything else touches it. Errors that a
// request can cause match ErrInvalidPath, ErrNotFound, ErrNotSystem or ErrNotConfigured
// (errors.Is), and their text is a one-line reason that is safe to send back.
package nixstore

import (
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// Backend selects how closures and registrations are computed.
type Backend int

const (
	// BackendUnset is the zero value. New refuses it so that the choice between a real
	// Nix database and a scan is always made on purpose.
	BackendUnset Backend = iota
	// BackendCLI asks Nix (nix-store) for closures and registrations. Use it for a real store.
	BackendCLI
	// BackendScan needs no Nix tools and no Nix database: it finds references by scanning
	// each path's NAR serialisation for the hash parts of the other entries in the store
	// directory (how Nix itself detects references after a build), and computes NAR hashes
	// and sizes itself. Meant for fake stores in tests; on a real store it reports a
	// reference wherever a known hash appears, which Nix would only do for the inputs of
	// the build.
	BackendScan
)

func (b Backend) String() string {
	switch b {
	case BackendCLI:
		return "cli"
	case BackendScan:
		return "scan"
	default:
		return fmt.Sprintf("Backend(%d)", int(b))
	}
}

// Defaults for Options.
const (
	DefaultStoreDir             = "/nix/store"
	DefaultBuildRootGrace       = time.Hour
	DefaultClosureCacheEntries  = 256
	DefaultPathInfoCacheEntries = 8192
)

// Options configures a Store. Only Backend is required.
type Options struct {
	// StoreDir is the logical store directory that store paths are named under.
	// Default /nix/store. With BackendCLI it must be the store dir Nix itself uses.
	StoreDir string
	// Root is an optional filesystem prefix: files of /nix/store/x live at
	// Root/nix/store/x while the path is still called /nix/store/x (a chroot store,
	// `nix-store --store Root`). With BackendCLI, Root is passed to Nix as --store.
	Root string
	// Backend must be BackendCLI or BackendScan.
	Backend Backend
	// NixStore and NixBuild are the tools to run; default: found on PATH.
	NixStore string
	NixBuild string
	// BuildArgs are extra nix-build arguments, e.g. `--option sandbox false --option
	// build-users-group ""` for single-user Nix without a nixbld group, or
	// `--option substituters ""` when no binary cache is reachable.
	BuildArgs []string
	// ProfilesDir holds profile symlinks (ResolveProfile). Empty disables profiles.
	ProfilesDir string
	// ConfigurationsDir holds <name>/default.nix (BuildConfiguration). Empty disables
	// configurations; when set, GCRootsDir is required.
	ConfigurationsDir string
	// GCRootsDir receives the GC roots of configuration builds.
	GCRootsDir string
	// BuildRootGrace is how long the root of each individual configuration build is kept
	// (so that a machine still downloading that build keeps it alive). Default 1h.
	BuildRootGrace time.Duration
	// ClosureCacheEntries bounds the in-memory closure cache (entries, one per store path
	// asked for). Default 256.
	ClosureCacheEntries int
	// PathInfoCacheEntries bounds the BackendScan per-path cache. Default 8192.
	PathInfoCacheEntries int
	// Logger receives debug logs of Nix commands and warnings; default: discard.
	Logger *slog.Logger
}

// Store answers questions about one Nix store. It is safe for concurrent use.
type Store struct {
	storeDir   string
	root       string
	backend    Backend
	nixStore   tool
	nixBuild   tool
	buildArgs  []string
	profiles   string
	configs    string
	gcRoots    string
	grace      time.Duration
	log        *slog.Logger
	closures   *lru[[]string]
	infos      *lru[PathInfo]
	closureSF  singleflight.Group
	builds     buildState
	rootUpdate sync.Mutex // serialises updates of per-configuration roots
	// dumpArgBytes bounds the paths passed to one nix-store --dump-db (maxDumpArgBytes;
	// tests lower it to exercise batching).
	dumpArgBytes int
}

// tool is an executable resolved at New; err says why it is unusable.
type tool struct {
	name string
	path string
	err  error
}

func findTool(name, configured string) tool {
	if configured != "" {
		// LookPath on a path with a slash checks that it is an executable file.
		p, err := exec.LookPath(configured)
		if err != nil {
			return tool{name: name, err: fmt.Errorf("%s %s: %w", name, configured, err)}
		}
		return tool{name: name, path: p}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return tool{name: name, err: fmt.Errorf("%s not found on PATH: install Nix or set its path in the options", name)}
	}
	return tool{name: name, path: p}
}

// New checks opts and returns a Store. It touches no store files.
func New(opts Options) (*Store, error) {
	s := &Store{
		backend:   opts.Backend,
		buildArgs: append([]string(nil), opts.BuildArgs...),
		grace:     opts.BuildRootGrace,
		log:       opts.Logger,

		dumpArgBytes: maxDumpArgBytes,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.backend != BackendCLI && s.backend != BackendScan {
		return nil, errors.New("nixstore: Options.Backend not set: use BackendCLI for a real Nix store or BackendScan for a store without a Nix database")
	}

	s.storeDir = opts.StoreDir
	if s.storeDir == "" {
		s.storeDir = DefaultStoreDir
	}
	if !filepath.IsAbs(s.storeDir) || filepath.Clean(s.storeDir) != s.storeDir || s.storeDir == "/" {
		return nil, fmt.Errorf("nixstore: store dir %q must be a clean absolute path below /", s.storeDir)
	}
	if opts.Root != "" {
		root, err := filepath.Abs(opts.Root)
		if err != nil {
			return nil, fmt.Errorf("nixstore: root %q: %w", opts.Root, err)
		}
		if root != "/" {
			s.root = root
		}
	}

	var err error
	if s.profiles, err = absOrEmpty("profiles dir", opts.ProfilesDir); err != nil {
		return nil, err
	}
	if s.configs, err = absOrEmpty("configurations dir", opts.ConfigurationsDir); err != nil {
		return nil, err
	}
	if s.gcRoots, err = absOrEmpty("gc roots dir", opts.GCRootsDir); err != nil {
		return nil, err
	}
	if s.configs != "" && s.gcRoots == "" {
		return nil, errors.New("nixstore: a configurations dir needs a gc roots dir: set GCRootsDir so that builds are not garbage-collected while they boot")
	}
	if s.grace <= 0 {
		s.grace = DefaultBuildRootGrace
	}

	s.nixStore = findTool("nix-store", opts.NixStore)
	s.nixBuild = findTool("nix-build", opts.NixBuild)
	if s.backend == BackendCLI && s.nixStore.err != nil {
		return nil, fmt.Errorf("nixstore: backend cli: %w (or choose BackendScan for a store without Nix)", s.nixStore.err)
	}

	n := opts.ClosureCacheEntries
	if n <= 0 {
		n = DefaultClosureCacheEntries
	}
	s.closures = newLRU[[]string](n)
	n = opts.PathInfoCacheEntries
	if n <= 0 {
		n = DefaultPathInfoCacheEntries
	}
	s.infos = newLRU[PathInfo](n)
	s.builds.rooted = make(map[string]uint64)
	s.builds.active = make(map[string]bool)
	return s, nil
}

func absOrEmpty(what, p string) (string, error) {
	if p == "" {
		return "", nil
	}
	a, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("nixstore: %s %q: %w", what, p, err)
	}
	return a, nil
}

// StoreDir returns the logical store directory, e.g. /nix/store.
func (s *Store) StoreDir() string { return s.storeDir }

// Backend returns the configured backend.
func (s *Store) Backend() Backend { return s.backend }

// FSPath maps a logical path (as Nix names it) to the file that holds it on this machine:
// Root + p. Use it to open files of paths this package returned.
func (s *Store) FSPath(p string) string { return s.root + p }

// storeArgs are the arguments that point Nix at a chroot store.
func (s *Store) storeArgs() []string {
	if s.root == "" {
		return nil
	}
	return []string{"--store", s.root}
}

// Errors that requests can cause. Match them with errors.Is; the error text is the reason.
var (
	// ErrInvalidPath: a name or path breaks the grammar, or resolves outside the store.
	ErrInvalidPath = errors.New("invalid path")
	// ErrNotFound: the path, profile or configuration does not exist.
	ErrNotFound = errors.New("not found")
	// ErrNotSystem: a store path is not a NixOS system (no kernel or init). Such errors
	// also match ErrInvalidPath.
	ErrNotSystem = errors.New("not a NixOS system")
	// ErrNotConfigured: profiles or configurations are asked for but no directory is set.
	ErrNotConfigured = errors.New("not configured")
)

// reqError is an error caused by a request: its text is a one-line reason and it matches
// one or more of the sentinel errors above.
type reqError struct {
	msg   string
	kinds []error
	err   error // underlying cause, if any
}

func (e *reqError) Error() string { return e.msg }
func (e *reqError) Unwrap() error { return e.err }
func (e *reqError) Is(target error) bool {
	for _, k := range e.kinds {
		if k == target {
			return true
		}
	}
	return false
}

func invalidf(format string, a ...any) error {
	return &reqError{msg: fmt.Sprintf(format, a...), kinds: []error{ErrInvalidPath}}
}

func notFoundf(cause error, format string, a ...any) error {
	return &reqError{msg: fmt.Sprintf(format, a...), kinds: []error{ErrNotFound}, err: cause}
}

func notSystemf(format string, a ...any) error {
	return &reqError{msg: fmt.Sprintf(format, a...), kinds: []error{ErrNotSystem, ErrInvalidPath}}
}

func notConfiguredf(format string, a ...any) error {
	return &reqError{msg: fmt.Sprintf(format, a...), kinds: []error{ErrNotConfigured}}
}

// q quotes a name from a request for an error message, cut so one hostile name cannot
// flood a log line.
func q(s string) string {
	const max = 96
	if len(s) > max {
		return fmt.Sprintf("%q...", s[:max])
	}
	return fmt.Sprintf("%q", s)
}

// shorten cuts a string for messages.
func shorten(s string, max int) string {
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}

// joinArgs renders a command line for messages.
func joinArgs(name string, args []string) string {
	return shorten(strings.Join(append([]string{name}, args...), " "), 240)
}
