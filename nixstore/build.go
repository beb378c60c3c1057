package nixstore

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// buildLinkPrefix starts the names of per-build out-links in the GC roots dir. Names of
// configurations cannot start with '.', so these never collide with per-configuration
// roots.
const buildLinkPrefix = ".build-"

// rootUpdateTimeout bounds the nix-store call that moves a per-configuration root.
const rootUpdateTimeout = time.Minute

// buildState tracks configuration builds.
type buildState struct {
	mu     sync.Mutex
	seq    uint64            // numbers builds in the order they start
	rooted map[string]uint64 // configuration -> seq of the build its root names
	active map[string]bool   // out-link basenames of builds still running
}

// BuildError is a configuration build that failed or was cancelled.
type BuildError struct {
	Configuration string
	// Reason is one line: Nix's last "error:" line, e.g. "error: builder for
	// '/nix/store/...-x.drv' failed with exit code 1".
	Reason string
	// Log is the tail of nix-build's output (its stderr, where build logs go), at most
	// 30 lines, for the server's log.
	Log []string
	// Err is the exit status, or the context's error when cancelled.
	Err error
}

func (e *BuildError) Error() string {
	return fmt.Sprintf("build configuration %s: %s", q(e.Configuration), e.Reason)
}

func (e *BuildError) Unwrap() error { return e.Err }

// BuildConfiguration builds <ConfigurationsDir>/<name>/default.nix with nix-build — at
// every call, so that every boot gets a fresh evaluation — and returns the store path
// that this very build produced.
//
// Why a boot can neither get another boot's build nor lose its own to the garbage
// collector:
//   - Each build has its own out-link, <GCRootsDir>/.build-<name>-<time>-<n>-<random>.
//     The path returned is the one nix-build printed for this build (checked against that
//     out-link); nothing shared is read back after the build. (nix-netboot-serve re-reads
//     the shared <name> link after building, so a machine whose slow build finishes after
//     a faster, newer one boots the newer configuration.)
//   - Then <GCRootsDir>/<name> is pointed at the result with `nix-store --realise <path>
//     --add-root`: Nix writes a temporary link, renames it over the old one (atomic) and
//     registers it as an indirect root. A build that started before another build of the
//     same configuration which has already updated the root leaves the root alone, so
//     <name> always names the newest configuration that was built.
//   - Each per-build out-link stays a GC root for Options.BuildRootGrace (default 1h)
//     after its build: the machine downloads kernel and initrd within that time even if a
//     newer build has moved <name>. Expired ones are removed when later builds start.
//
// Concurrent builds of one configuration are independent nix-build processes; each gets
// its own result. Errors: ErrNotConfigured, ErrInvalidPath (name), ErrNotFound (no
// default.nix), *BuildError (nix-build failed or ctx was cancelled: the process group
// gets SIGTERM, so Nix stops its builders).
func (s *Store) BuildConfiguration(ctx context.Context, name string) (string, error) {
	if s.configs == "" {
		return "", notConfiguredf("configurations are not enabled on this server: set a configurations dir")
	}
	if err := validName("configuration", name); err != nil {
		return "", err
	}
	file := filepath.Join(s.configs, name, "default.nix")
	if fi, err := os.Stat(file); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", notFoundf(err, "configuration %s does not exist: no %s", q(name), file)
		}
		return "", fmt.Errorf("configuration %s: %w", q(name), err)
	} else if !fi.Mode().IsRegular() {
		return "", notFoundf(nil, "configuration %s: %s is not a regular file", q(name), file)
	}
	if s.nixBuild.err != nil {
		return "", fmt.Errorf("build configuration %s: %w", q(name), s.nixBuild.err)
	}
	if err := os.MkdirAll(s.gcRoots, 0o755); err != nil {
		return "", fmt.Errorf("build configuration %s: create gc roots dir: %w", q(name), err)
	}

	s.pruneBuildRoots()
	link, seq := s.startBuild(name)
	defer s.endBuild(link)

	start := time.Now()
	args := append(s.storeArgs(), s.buildArgs...)
	args = append(args, "--out-link", link, file)
	out, err := s.run(ctx, s.nixBuild, args)
	if err != nil {
		s.removeBuildLinks(link)
		be := &BuildError{Configuration: name, Err: err, Reason: err.Error()}
		var ce *CommandError
		if errors.As(err, &ce) {
			be.Err, be.Log = ce.Err, ce.Stderr
			if r := lastErrorLine(ce.Stderr); r != "" {
				be.Reason = r
			}
		}
		if ctx.Err() != nil {
			be.Err, be.Reason = ctx.Err(), "cancelled: "+ctx.Err().Error()
		}
		return "", be
	}

	paths := nonEmptyLines(out)
	if len(paths) != 1 {
		s.removeBuildLinks(link)
		return "", &BuildError{Configuration: name, Err: errors.New("not one output"),
			Reason: fmt.Sprintf("default.nix must evaluate to one derivation with one output; nix-build produced %d paths", len(paths))}
	}
	p := paths[0]
	if _, err := s.parseStorePath(p); err != nil {
		s.removeBuildLinks(link)
		return "", &BuildError{Configuration: name, Err: err, Reason: "nix-build printed " + err.Error()}
	}
	if t, err := os.Readlink(link); err != nil || t != p {
		s.removeBuildLinks(link)
		return "", fmt.Errorf("build configuration %s: out-link %s does not name %s (%q, %v)", q(name), link, p, t, err)
	}
	s.updateConfigRoot(name, p, seq)
	s.log.Info("built configuration", "configuration", name, "path", p, "duration", time.Since(start).Round(time.Millisecond))
	return p, nil
}

func (s *Store) startBuild(name string) (string, uint64) {
	var rnd [4]byte
	rand.Read(rnd[:])
	s.builds.mu.Lock()
	defer s.builds.mu.Unlock()
	s.builds.seq++
	base := fmt.Sprintf("%s%s-%s-%d-%x", buildLinkPrefix, name, time.Now().UTC().Format("20060102T150405"), s.builds.seq, rnd)
	s.builds.active[base] = true
	return filepath.Join(s.gcRoots, base), s.builds.seq
}

func (s *Store) endBuild(link string) {
	s.builds.mu.Lock()
	defer s.builds.mu.Unlock()
	delete(s.builds.active, filepath.Base(link))
}

// removeBuildLinks removes a failed build's out-link and the <link>-<output> links
// nix-build makes for extra outputs.
func (s *Store) removeBuildLinks(link string) {
	extra, _ := filepath.Glob(link + "-*")
	for _, l := range append(extra, link) {
		if err := os.Remove(l); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("remove build out-link", "link", l, "err", err)
		}
	}
}

// pruneBuildRoots removes per-build out-links older than the grace period, except those
// of builds still running.
func (s *Store) pruneBuildRoots() {
	entries, err := os.ReadDir(s.gcRoots)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("list gc roots dir", "dir", s.gcRoots, "err", err)
		}
		return
	}
	now := time.Now()
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, buildLinkPrefix) || s.buildActive(name) {
			continue
		}
		l := filepath.Join(s.gcRoots, name)
		fi, err := os.Lstat(l)
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 || now.Sub(fi.ModTime()) < s.grace {
			continue
		}
		if err := os.Remove(l); err != nil {
			s.log.Warn("remove expired build root", "link", l, "err", err)
			continue
		}
		s.log.Debug("removed expired build root", "link", l)
	}
}

func (s *Store) buildActive(linkName string) bool {
	s.builds.mu.Lock()
	defer s.builds.mu.Unlock()
	for a := range s.builds.active {
		if linkName == a || strings.HasPrefix(linkName, a+"-") {
			return true
		}
	}
	return false
}

// updateConfigRoot points <GCRootsDir>/<name> at p, unless a build that started later has
// already been rooted. Failure is logged, not returned: the build's own out-link still
// protects p for the grace period, and the boot can go on.
func (s *Store) updateConfigRoot(name, p string, seq uint64) {
	s.rootUpdate.Lock()
	defer s.rootUpdate.Unlock()
	s.builds.mu.Lock()
	newer := s.builds.rooted[name] > seq
	s.builds.mu.Unlock()
	if newer {
		s.log.Debug("configuration root already names a newer build", "configuration", name, "path", p)
		return
	}
	// Not the caller's ctx: a client that disconnects must not leave the root stale.
	ctx, cancel := context.WithTimeout(context.Background(), rootUpdateTimeout)
	defer cancel()
	root := filepath.Join(s.gcRoots, name)
	args := append(s.storeArgs(), "--realise", p, "--add-root", root)
	if _, err := s.run(ctx, s.nixStore, args); err != nil {
		s.log.Warn("update configuration gc root; the build stays rooted by its own out-link for the grace period",
			"configuration", name, "root", root, "path", p, "err", err)
		return
	}
	s.builds.mu.Lock()
	s.builds.rooted[name] = seq
	s.builds.mu.Unlock()
}
