package httpboot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/bootserve/bootserve/cpiocache"
	"github.com/bootserve/bootserve/machines"
	"github.com/bootserve/bootserve/nixstore"
)

// Nix boots NixOS systems from a Nix store, with nix-netboot-serve's URL
// scheme so existing chain URLs keep working:
//
//	/boot/<store path basename>/netboot.ipxe   the script (?cmdline_prefix_args= ?cmdline_suffix_args=)
//	/boot/<store path basename>/bzImage        the system's kernel
//	/boot/<store path basename>/initrd         base member + one archive per closure path
//	/dispatch/profile/<name>                   the script of the profile's current system
//	/dispatch/configuration/<name>             build <name>/default.nix now, then its script
type Nix struct {
	Store *nixstore.Store
	Cache *cpiocache.Cache
	// Compression of the base member (members use the cache's).
	Compression cpiocache.Compression

	mu      sync.Mutex
	base    map[string][]byte // top level → base member; immutable once built
	shared  map[string]*sharedInitrd
	pending map[string]*pendingInitrd // being assembled: later clients wait for it
}

// pendingInitrd is an assembly in progress. Twenty machines that ask for a
// system's initrd at once must cost one closure query, one registration and
// one set of open files, not twenty (that is most of a fresh process's
// memory peak).
type pendingInitrd struct {
	done chan struct{}
	err  error // set before done is closed
}

// sharedInitrd is one assembled initrd used by every client booting the
// same system at once: a Concat holds one open file per store path, and a
// boot storm of one closure should cost those descriptors once, not once
// per client.
type sharedInitrd struct {
	c     *cpiocache.Concat
	users int
}

// maxBases bounds the base members kept in memory (a few KB to a few MB
// each: mostly the closure's registration).
const maxBases = 64

// baseMember is the leading archive of a system's initrd: the Nix database
// registration of its closure with the register script at the path
// nix-netboot-serve uses (NixOS configurations call it), and /init, so the
// kernel runs the system's init straight from the unpacked closure.
func (n *Nix) baseMember(ctx context.Context, top string, closure []string) ([]byte, error) {
	n.mu.Lock()
	b, ok := n.base[top]
	n.mu.Unlock()
	if ok {
		return b, nil
	}
	reg, err := n.Store.Registration(ctx, closure)
	if err != nil {
		return nil, fmt.Errorf("registration of %s: %w", top, err)
	}
	b, err = cpiocache.BaseMember([]cpiocache.Entry{
		{Name: strings.TrimPrefix(nixstore.RegistrationFile, "/"), Mode: 0o444, Body: reg},
		{Name: strings.TrimPrefix(nixstore.RegisterScriptFile, "/"), Mode: 0o555, Body: nixstore.RegisterScript("")},
		{Name: "init", Linkname: top + "/init"},
	}, n.Compression)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	if n.base == nil || len(n.base) >= maxBases {
		n.base = map[string][]byte{}
	}
	n.base[top] = b
	n.mu.Unlock()
	return b, nil
}

// assemble builds a system's initrd; the caller closes it.
func (n *Nix) assemble(ctx context.Context, top string) (*cpiocache.Concat, error) {
	closure, err := n.Store.Closure(ctx, top)
	if err != nil {
		return nil, err
	}
	base, err := n.baseMember(ctx, top, closure)
	if err != nil {
		return nil, err
	}
	return n.Cache.Initrd(ctx, base, closure)
}

// initrd returns the system's initrd, shared with other clients booting it
// now; call release when done with it.
func (n *Nix) initrd(ctx context.Context, top string) (c *cpiocache.Concat, release func(), err error) {
	for {
		n.mu.Lock()
		if sh, ok := n.shared[top]; ok {
			sh.users++
			n.mu.Unlock()
			return sh.c, func() { n.release(top, sh) }, nil
		}
		p, ok := n.pending[top]
		if !ok {
			break // with n.mu held: this client assembles it
		}
		n.mu.Unlock()
		select {
		case <-p.done:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
		// The assembler's own client may have gone away: that is no
		// answer for this one, which tries again.
		if p.err != nil && !errors.Is(p.err, context.Canceled) && !errors.Is(p.err, context.DeadlineExceeded) {
			return nil, nil, p.err
		}
	}
	p := &pendingInitrd{done: make(chan struct{})}
	if n.pending == nil {
		n.pending = map[string]*pendingInitrd{}
	}
	n.pending[top] = p
	n.mu.Unlock()

	c, err = n.assemble(ctx, top)

	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.pending, top)
	p.err = err
	close(p.done)
	if err != nil {
		return nil, nil, err
	}
	if n.shared == nil {
		n.shared = map[string]*sharedInitrd{}
	}
	sh := &sharedInitrd{c: c, users: 1}
	n.shared[top] = sh
	return c, func() { n.release(top, sh) }, nil
}

func (n *Nix) release(top string, sh *sharedInitrd) {
	n.mu.Lock()
	sh.users--
	last := sh.users == 0
	if last && n.shared[top] == sh {
		delete(n.shared, top)
	}
	n.mu.Unlock()
	if last {
		sh.c.Close()
	}
}

// SetNix enables the Nix routes and targets.
func (s *Server) SetNix(n *Nix) {
	s.nix = n
	s.mux.HandleFunc("GET /boot/{name}/{file}", s.handleNixBoot)
	s.mux.HandleFunc("GET /dispatch/profile/{name}", s.handleDispatch)
	s.mux.HandleFunc("GET /dispatch/configuration/{name}", s.handleDispatch)
}

// nixHTTPError maps nixstore errors to a status and a one-line reason.
func nixHTTPError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, nixstore.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, nixstore.ErrInvalidPath):
		code = http.StatusBadRequest
	}
	msg := err.Error()
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	http.Error(w, msg, code)
}

func (s *Server) handleNixBoot(w http.ResponseWriter, r *http.Request) {
	name, file := r.PathValue("name"), r.PathValue("file")
	top, err := s.nix.Store.Lookup(name)
	if err != nil {
		setRoute(w, "nix")
		s.log.Info("refused nix request", "path", r.URL.Path, "err", err)
		nixHTTPError(w, err)
		return
	}
	switch file {
	case "netboot.ipxe":
		setRoute(w, "nix_script")
		script, err := s.nixScript(base(r), top, r.URL.Query())
		if err != nil {
			nixHTTPError(w, err)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write(script)
	case "bzImage":
		setRoute(w, "nix_kernel")
		tl, err := s.nix.Store.TopLevel(top)
		if err != nil {
			nixHTTPError(w, err)
			return
		}
		f, err := os.Open(s.nix.Store.FSPath(tl.Kernel))
		if err != nil {
			s.log.Warn("open kernel", "path", tl.Kernel, "err", err)
			http.Error(w, "kernel not readable", http.StatusNotFound)
			return
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		// Store paths are immutable: the path names the content.
		s.serveTracked(w, r, fileBody{f: f, size: st.Size()}, s.nixEvent(r, StageKernel, "bzImage"), `"`+path.Base(tl.Kernel)+`"`, time.Time{})
	case "initrd":
		setRoute(w, "nix_initrd")
		c, release, err := s.nix.initrd(r.Context(), top)
		if err != nil {
			s.log.Warn("assemble initrd", "system", top, "err", err)
			nixHTTPError(w, err)
			return
		}
		defer release()
		s.serveTracked(w, r, concatBody{c}, s.nixEvent(r, StageInitrd, "initrd"), `"`+name+"-"+s.nix.Compression.String()+`"`, time.Time{})
	default:
		setRoute(w, "nix")
		http.NotFound(w, r)
	}
}

// nixEvent starts a status event for a Nix file; the MAC is not in these
// URLs (nix-netboot-serve's scheme, and iPXE names images after the URL),
// so the status page correlates by IP.
func (s *Server) nixEvent(r *http.Request, st Stage, name string) Event {
	return Event{Stage: st, IP: remoteAddr(r), Name: name}
}

type concatBody struct{ c *cpiocache.Concat }

func (b concatBody) Size() int64 { return b.c.Size() }

func (b concatBody) WriteRange(w io.Writer, off, n int64) error {
	_, err := b.c.WriteRange(w, off, n)
	return err
}

// nixCmdline is the kernel command line of a system: its own init and
// kernel-params, nix-netboot-serve's prefix and suffix arguments, and
// initrd=initrd for Debian's EFI iPXE.
func nixCmdline(tl nixstore.TopLevel, prefix, suffix string) string {
	args := []string{"init=" + tl.Init}
	for _, a := range []string{prefix, tl.KernelParams, suffix} {
		if a = strings.TrimSpace(a); a != "" {
			args = append(args, a)
		}
	}
	return strings.Join(append(args, "initrd=initrd"), " ")
}

// nixLines writes the kernel/initrd/boot lines for a system.
func (s *Server) nixLines(b *scriptBuilder, base, top string, q url.Values) error {
	tl, err := s.nix.Store.TopLevel(top)
	if err != nil {
		return err
	}
	prefix, suffix := q.Get("cmdline_prefix_args"), q.Get("cmdline_suffix_args")
	if err := oneLine("cmdline_prefix_args", prefix); err != nil {
		return fmt.Errorf("%w: %w", nixstore.ErrInvalidPath, err)
	}
	if err := oneLine("cmdline_suffix_args", suffix); err != nil {
		return fmt.Errorf("%w: %w", nixstore.ErrInvalidPath, err)
	}
	dir := base + "/boot/" + path.Base(top) + "/"
	b.line("kernel %sbzImage %s || goto failed", dir, nixCmdline(tl, prefix, suffix))
	b.line("initrd %sinitrd || goto failed", dir)
	b.line("boot || goto failed")
	// Build the members now, while the client fetches the kernel.
	go s.warm(top)
	return nil
}

// warm builds a system's initrd members ahead of the request for them.
func (s *Server) warm(top string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c, err := s.nix.assemble(ctx, top)
	if err != nil {
		s.log.Warn("prepare initrd", "system", top, "err", err)
		return
	}
	c.Close()
}

// nixScript is netboot.ipxe for a store path.
func (s *Server) nixScript(base, top string, q url.Values) ([]byte, error) {
	var b scriptBuilder
	b.line("#!ipxe")
	b.line("echo bootserve: booting %s", path.Base(top))
	if err := s.nixLines(&b, base, top, q); err != nil {
		return nil, err
	}
	// The retry keeps the query: a retried boot gets the same command line.
	retryTail(&b, base+(&url.URL{Path: "/boot/" + path.Base(top) + "/netboot.ipxe", RawQuery: q.Encode()}).String())
	return b.Bytes(), nil
}

// resolveNix turns a Nix target into the store path this boot gets: a
// profile is resolved now, a configuration built now. The store path is
// returned to the caller and put in the script's URLs, so a later change of
// the profile or configuration cannot swap the system under this boot
// (nix-netboot-serve's documented race).
func (s *Server) resolveNix(ctx context.Context, t *machines.Target) (string, error) {
	if s.nix == nil {
		return "", fmt.Errorf("%w: target %q needs Nix, and no [nix] store is configured", errScript, t.Name)
	}
	switch t.Kind {
	case machines.KindNix:
		return s.nix.Store.Lookup(t.Nix)
	case machines.KindNixProfile:
		return s.nix.Store.ResolveProfile(t.Nix)
	case machines.KindNixConfiguration:
		start := time.Now()
		p, err := s.nix.Store.BuildConfiguration(ctx, t.Nix)
		if err != nil {
			var be *nixstore.BuildError
			if errors.As(err, &be) {
				s.log.Warn("configuration build failed", "configuration", t.Nix, "reason", be.Reason, "log_tail", strings.Join(be.Log, "\n"))
			}
			return "", err
		}
		s.log.Info("configuration built", "configuration", t.Nix, "system", p, "duration", time.Since(start).Round(time.Millisecond))
		return p, nil
	}
	return "", fmt.Errorf("%w: not a Nix target", errScript)
}

func (s *Server) handleDispatch(w http.ResponseWriter, r *http.Request) {
	setRoute(w, "nix_dispatch")
	name := r.PathValue("name")
	t := &machines.Target{Kind: machines.KindNixProfile, Nix: name, Name: "profile " + name}
	if strings.HasPrefix(r.URL.Path, "/dispatch/configuration/") {
		t = &machines.Target{Kind: machines.KindNixConfiguration, Nix: name, Name: "configuration " + name}
	}
	self := base(r) + r.URL.RequestURI()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	top, err := s.resolveNix(r.Context(), t)
	if err != nil {
		if errors.Is(err, nixstore.ErrInvalidPath) || errors.Is(err, nixstore.ErrNotFound) {
			nixHTTPError(w, err)
			return
		}
		// A failed build: tell iPXE and retry in 5 s.
		w.Write(errorScript(t.Name+": "+firstLine(err.Error()), self))
		return
	}
	var b scriptBuilder
	b.line("#!ipxe")
	b.line("echo bootserve: booting %s (%s)", path.Base(top), t.Name)
	if err := s.nixLines(&b, base(r), top, r.URL.Query()); err != nil {
		nixHTTPError(w, err)
		return
	}
	retryTail(&b, self)
	w.Write(b.Bytes())
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
