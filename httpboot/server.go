// Package httpboot is bootserve's HTTP side: the per-machine iPXE scripts,
// the boot programs for UEFI HTTP Boot, and the kernels and initrds the
// scripts name, served with Content-Length, HEAD and Range, with timeouts,
// an access log and metrics.
package httpboot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/machines"
)

// Policy is the part of the server's setup that a config reload replaces.
type Policy struct {
	Booter   machines.Booter
	Firmware *firmware.Set
	// HTTPClient, if set, fetches remote files instead of the server's
	// own client (an API server's trust settings, say).
	HTTPClient *http.Client
}

// bootForgetter is a Booter that caches an answer for the length of a
// boot; it is told when the boot no longer needs it (the script was served).
type bootForgetter interface {
	Forget(mac net.HardwareAddr)
}

// requestAuthorizer is a Booter that must see the requests bootserve
// makes for the files it named (credentials for its own server).
type requestAuthorizer interface {
	AuthorizeRequest(req *http.Request)
}

// Stage names what a request was for, on the status page and in metrics.
type Stage string

// Stages of a boot as seen over HTTP.
const (
	StageScript   Stage = "script"
	StageFirmware Stage = "firmware"
	StageKernel   Stage = "kernel"
	StageInitrd   Stage = "initrd"
	StageFile     Stage = "file"
)

// Event reports the start, progress and end of a request for the status
// page. MAC is set when the URL says which machine it is for.
type Event struct {
	Time   time.Time
	Stage  Stage
	Phase  string // "start", "progress", "done"
	MAC    string
	IP     netip.Addr
	Name   string
	Target string
	Bytes  int64 // sent so far
	Size   int64 // total, when known
	Status int
	Err    string
	// Start is set on a "done" event that had no "start" event: when the
	// transfer began.
	Start time.Time
}

// Metrics counts requests and bytes by route.
type Metrics struct {
	Requests *prometheus.CounterVec
	Bytes    *prometheus.CounterVec
}

// NewMetrics makes the HTTP metrics and registers them with reg (which may
// be nil, for tests).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bootserve_http_requests_total",
			Help: "HTTP requests by route and status code.",
		}, []string{"route", "code"}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bootserve_http_response_bytes_total",
			Help: "HTTP response body bytes sent, by route.",
		}, []string{"route"}),
	}
	if reg != nil {
		reg.MustRegister(m.Requests, m.Bytes)
	}
	return m
}

// Options configures a Server.
type Options struct {
	// Port is the TCP port clients reach the server on, used in the URLs
	// put in DHCP replies (0 means 80).
	Port    int
	Logger  *slog.Logger
	Metrics *Metrics
	OnEvent func(Event)
	// IdleTimeout cuts off a client that reads nothing for this long
	// (default 60s); ReadHeaderTimeout bounds a slow request (default 10s).
	IdleTimeout       time.Duration
	ReadHeaderTimeout time.Duration
	// MaxTransfers bounds file transfers (kernels, initrds, proxied files)
	// in progress; more are answered 503 with Retry-After, so slow or stuck
	// clients cannot pile up without limit. Default 512.
	MaxTransfers int
	// HTTPClient fetches remote files named by signed URLs.
	HTTPClient *http.Client
}

// Server serves boot scripts and files.
type Server struct {
	opts   Options
	log    *slog.Logger
	m      *Metrics
	signer *signer
	policy atomic.Pointer[Policy]
	mux    *http.ServeMux
	nix    *Nix
	slots  chan struct{}
}

// New makes a server. Call SetPolicy before serving.
func New(opts Options) (*Server, error) {
	sg, err := newSigner()
	if err != nil {
		return nil, err
	}
	if opts.Port == 0 {
		opts.Port = 80
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = 60 * time.Second
	}
	if opts.ReadHeaderTimeout == 0 {
		opts.ReadHeaderTimeout = 10 * time.Second
	}
	if opts.MaxTransfers <= 0 {
		opts.MaxTransfers = 512
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Timeout: 0, Transport: &http.Transport{
			ResponseHeaderTimeout: 30 * time.Second,
			IdleConnTimeout:       90 * time.Second,
		}}
	}
	s := &Server{opts: opts, log: opts.Logger, m: opts.Metrics, signer: sg, mux: http.NewServeMux(), slots: make(chan struct{}, opts.MaxTransfers)}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.m == nil {
		s.m = NewMetrics(nil)
	}
	s.mux.HandleFunc("GET /ipxe", s.handleScript)
	s.mux.HandleFunc("GET /firmware/{name...}", s.handleFirmware)
	s.mux.HandleFunc("GET /f/{token}/{name}", s.handleFile)
	return s, nil
}

// Handle adds a route for another package's pages (status, metrics);
// route names it in metrics and logs. Routes whose name is in quietRoutes
// are logged at debug level: a status page polling or streaming would
// otherwise fill the log.
func (s *Server) Handle(pattern, route string, h http.Handler) {
	s.mux.Handle(pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		setRoute(w, route)
		h.ServeHTTP(w, r)
	}))
}

func quietRoute(name string) bool { return name == "status" || name == "metrics" }

// SetPolicy installs what the server answers with; safe at any time.
func (s *Server) SetPolicy(p *Policy) { s.policy.Store(p) }

func (s *Server) hostPort(host string) string {
	if s.opts.Port == 80 {
		return host
	}
	return net.JoinHostPort(host, strconv.Itoa(s.opts.Port))
}

// ScriptURL is the URL of a machine's iPXE script, for DHCP replies to iPXE
// clients. The identity is carried in the query so the script can be made
// without any server-side state.
func (s *Server) ScriptURL(host netip.Addr, id machines.Identity) string {
	return "http://" + s.hostPort(host.String()) + "/ipxe?" + encodeQuery(scriptQuery(id))
}

// scriptQuery is the identity a script URL carries.
func scriptQuery(id machines.Identity) url.Values {
	q := url.Values{}
	if id.MAC != nil {
		q.Set("mac", id.MAC.String())
	}
	if id.Arch != firmware.ArchUnknown {
		q.Set("arch", id.Arch.String())
	}
	if id.UUID != "" {
		q.Set("uuid", id.UUID)
	}
	for _, l := range id.Labels {
		q.Add("label", l)
	}
	return q
}

// encodeQuery keeps ':' readable in MACs; iPXE sends the URL as is.
func encodeQuery(q url.Values) string {
	return strings.ReplaceAll(q.Encode(), "%3A", ":")
}

// memdisk is syslinux's memdisk when configured.
func (s *Server) memdisk() *firmware.Binary {
	if p := s.policy.Load(); p != nil && p.Firmware != nil {
		return p.Firmware.Memdisk()
	}
	return nil
}

// FirmwareURL is the URL of a boot program, for UEFI HTTP Boot clients.
func (s *Server) FirmwareURL(host netip.Addr, name string) string {
	return "http://" + s.hostPort(host.String()) + "/firmware/" + name
}

// Serve serves HTTP on ln until ctx is cancelled, then shuts down,
// giving in-flight transfers a few seconds.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s,
		MaxHeaderBytes:    16 << 10,
		ReadHeaderTimeout: s.opts.ReadHeaderTimeout,
		ReadTimeout:       s.opts.ReadHeaderTimeout + 20*time.Second,
		IdleTimeout:       2 * s.opts.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// setRoute names the route a request took, for metrics and the access log.
// The name rides on the request's writer, which ServeHTTP made.
func setRoute(w http.ResponseWriter, name string) {
	if tw, ok := w.(*trackingWriter); ok {
		tw.route = name
	}
}

// ServeHTTP logs and counts every request, then routes it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	reserveStack()
	start := time.Now()
	tw := newTrackingWriter(w, s.opts.IdleTimeout)
	s.mux.ServeHTTP(tw, r)
	code := tw.status
	if code == 0 {
		code = http.StatusOK
	}
	s.m.Requests.WithLabelValues(tw.route, strconv.Itoa(code)).Inc()
	s.m.Bytes.WithLabelValues(tw.route).Add(float64(tw.bytes))
	lvl := slog.LevelInfo
	switch {
	case code >= 400:
		lvl = slog.LevelWarn
	case quietRoute(tw.route):
		lvl = slog.LevelDebug
	}
	// The record is made here rather than by Logger.Log, which walks the
	// stack for a source line the access log does not show.
	if h := s.log.Handler(); h.Enabled(r.Context(), lvl) {
		rec := slog.NewRecord(time.Now(), lvl, "http", 0)
		rec.AddAttrs(slog.String("method", r.Method), slog.String("path", logPath(r.URL)), slog.Int("status", code),
			slog.Int64("bytes", tw.bytes), slog.Duration("duration", time.Since(start).Round(time.Microsecond)),
			slog.String("remote", r.RemoteAddr), slog.String("route", tw.route))
		_ = h.Handle(r.Context(), rec)
	}
}

// reserveStack grows the request goroutine's stack to 16 KB in one step.
// net/http serves each connection on a new goroutine with the runtime's
// starting stack (2 KB until a GC has measured a better size); a file
// request runs ~10 KB deep, so the stack would be doubled, copied and its
// frames re-walked three times per connection. One copy at the top, while
// the stack is shallow, costs least; the request would use the memory
// anyway. Measured: 3 → 2 stack copies per request, see docs/benchmarks.md.
//
//go:noinline
func reserveStack() {
	var frame [8 << 10]byte
	touchStack(frame[:])
}

// touchStack keeps reserveStack's frame from being optimized away.
//
//go:noinline
func touchStack(b []byte) { b[len(b)-1] = 1 }

// logPath shortens file tokens, which are long and secret-ish, in logs.
func logPath(u *url.URL) string {
	p := u.Path
	if rest, ok := strings.CutPrefix(p, "/f/"); ok {
		if i := strings.IndexByte(rest, '/'); i > 12 {
			p = "/f/" + rest[:12] + "…" + rest[i:]
		}
	}
	if u.RawQuery != "" {
		p += "?" + u.RawQuery
	}
	return p
}

// base is the URL prefix the client used to reach us, so URLs in scripts
// work whatever address or name the client connected to.
func base(r *http.Request) string {
	return "http://" + r.Host
}

func remoteAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// identity reads the machine identity a script URL carries.
func identity(r *http.Request) (machines.Identity, error) {
	q := r.URL.Query()
	id := machines.Identity{IP: remoteAddr(r)}
	mac, err := machines.ParseMAC(q.Get("mac"))
	if err != nil {
		return id, fmt.Errorf("mac: %w", err)
	}
	id.MAC = mac
	if a := q.Get("arch"); a != "" {
		if id.Arch, err = firmware.ParseArch(a); err != nil {
			return id, fmt.Errorf("arch: %w", err)
		}
	}
	if u := q.Get("uuid"); u != "" {
		if id.UUID, err = machines.ParseUUID(u); err != nil {
			return id, fmt.Errorf("uuid: %w", err)
		}
	}
	for _, l := range q["label"] {
		if l == "" || len(l) > 64 || strings.ContainsAny(l, " \t\r\n") {
			return id, fmt.Errorf("label %q: want one short word", l)
		}
		id.Labels = append(id.Labels, l)
	}
	if h, ok := strings.CutPrefix(labelValue(id.Labels, "hostname="), "hostname="); ok {
		id.Hostname = h
	}
	return id, nil
}

func labelValue(labels []string, prefix string) string {
	for _, l := range labels {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

func (s *Server) emit(e Event) {
	if s.opts.OnEvent != nil {
		e.Time = time.Now()
		s.opts.OnEvent(e)
	}
}

func (s *Server) handleScript(w http.ResponseWriter, r *http.Request) {
	setRoute(w, "script")
	id, err := identity(r)
	if err != nil {
		http.Error(w, "bad script request: "+err.Error(), http.StatusBadRequest)
		return
	}
	pol := s.policy.Load()
	if pol == nil {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
		return
	}
	self := base(r) + r.URL.RequestURI()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	t, err := pol.Booter.Target(r.Context(), id)
	if err != nil {
		if errors.Is(err, machines.ErrNoTarget) {
			s.log.Info("no boot target for machine", "mac", id.MAC.String(), "arch", id.Arch, "uuid", id.UUID)
			http.Error(w, "no boot target for "+id.MAC.String(), http.StatusNotFound)
			return
		}
		s.log.Warn("choose boot target", "mac", id.MAC.String(), "err", err)
		w.Write(errorScript("cannot choose a boot target: "+err.Error(), self))
		return
	}
	if e := r.URL.Query().Get("entry"); e != "" {
		// A menu entry someone chose: boot that entry's target.
		i, err := strconv.Atoi(e)
		if err != nil || t.Menu == nil || i < 0 || i >= len(t.Menu.Entries) {
			http.Error(w, "no such menu entry: "+e, http.StatusNotFound)
			return
		}
		t = t.Menu.Entries[i].Target.Clone()
	}
	script, err := s.machineScript(r.Context(), base(r), self, id, t)
	if err != nil {
		s.log.Warn("make boot script", "mac", id.MAC.String(), "target", t.Name, "err", err)
		script = errorScript(err.Error(), self)
	}
	s.emit(Event{Stage: StageScript, Phase: "done", MAC: id.MAC.String(), IP: id.IP, Name: "script", Target: t.Name, Status: http.StatusOK})
	w.Write(script)
	if f, ok := pol.Booter.(bootForgetter); ok {
		f.Forget(id.MAC)
	}
}

func (s *Server) handleFirmware(w http.ResponseWriter, r *http.Request) {
	setRoute(w, "firmware")
	pol := s.policy.Load()
	if pol == nil {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
		return
	}
	b, ok := pol.Firmware.Lookup(r.PathValue("name"))
	if !ok {
		http.NotFound(w, r)
		return
	}
	s.emit(Event{Stage: StageFirmware, Phase: "start", IP: remoteAddr(r), Name: b.Name, Size: int64(len(b.Data))})
	http.ServeContent(w, r, b.Name, time.Time{}, b.Reader())
	s.emit(Event{Stage: StageFirmware, Phase: "done", IP: remoteAddr(r), Name: b.Name, Size: int64(len(b.Data)), Bytes: int64(len(b.Data)), Status: http.StatusOK})
}

// stageOf guesses what a file is for from its name, for the status page.
func stageOf(name string) Stage {
	n := strings.ToLower(name)
	switch {
	case strings.Contains(n, "initrd") || strings.Contains(n, "initramfs") || strings.HasSuffix(n, ".cpio") || strings.HasSuffix(n, ".gz") || strings.HasSuffix(n, ".zst"):
		return StageInitrd
	case strings.Contains(n, "vmlinuz") || strings.Contains(n, "bzimage") || strings.Contains(n, "kernel") || strings.Contains(n, "linux"):
		return StageKernel
	}
	return StageFile
}

func (s *Server) handleFile(w http.ResponseWriter, r *http.Request) {
	setRoute(w, "file")
	ref, err := s.signer.verify(r.PathValue("token"))
	if err != nil {
		s.log.Warn("refused file request with a bad token", "remote", r.RemoteAddr, "path", logPath(r.URL))
		http.Error(w, "forbidden: this URL was not issued by this bootserve (or it restarted since)", http.StatusForbidden)
		return
	}
	name := r.PathValue("name")
	ev := Event{Stage: stageOf(name), MAC: ref.MAC, IP: remoteAddr(r), Name: name}
	if strings.HasPrefix(ref.Src, "http://") || strings.HasPrefix(ref.Src, "https://") {
		s.serveRemote(w, r, ref.Src, ev)
		return
	}
	f, err := os.Open(ref.Src)
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, fs.ErrNotExist) {
			code = http.StatusNotFound
		}
		s.log.Warn("open boot file", "path", ref.Src, "err", err)
		http.Error(w, http.StatusText(code), code)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		s.log.Warn("boot file is not a regular file", "path", ref.Src, "err", err)
		http.Error(w, "not a regular file", http.StatusNotFound)
		return
	}
	etag := `"` + strconv.FormatInt(st.Size(), 16) + "-" + strconv.FormatInt(st.ModTime().UnixNano(), 16) + `"`
	s.serveTracked(w, r, fileBody{f: f, size: st.Size()}, ev, etag, st.ModTime())
}

// takeSlot reserves a transfer slot, or answers 503 and returns false.
func (s *Server) takeSlot(w http.ResponseWriter, r *http.Request) bool {
	select {
	case s.slots <- struct{}{}:
		return true
	default:
		s.log.Debug("too many transfers: refused", "remote", r.RemoteAddr, "path", logPath(r.URL), "max", cap(s.slots))
		w.Header().Set("Retry-After", "5")
		http.Error(w, "too many transfers in progress, retry later", http.StatusServiceUnavailable)
		return false
	}
}

func (s *Server) freeSlot() { <-s.slots }

// serveTracked serves a body and reports start, progress and end. A body
// sent in one piece (one chunk) is reported once, when done, with its start
// time: its start event would be followed at once by the done event, and
// each event is an update of the status page's state.
func (s *Server) serveTracked(w http.ResponseWriter, r *http.Request, b body, ev Event, etag string, mod time.Time) {
	if !s.takeSlot(w, r) {
		return
	}
	defer s.freeSlot()
	ev.Size = b.Size()
	start := time.Now()
	oneChunk := ev.Size <= chunk
	if !oneChunk {
		ev.Phase = "start"
		s.emit(ev)
	}
	if tw, ok := w.(*trackingWriter); ok && s.opts.OnEvent != nil {
		tw.progress = func(sent int64) {
			if sent >= ev.Size {
				return // all sent: the "done" event follows at once
			}
			e := ev
			e.Phase, e.Bytes = "progress", sent
			s.emit(e)
		}
	}
	err := serveBody(w, r, b, "application/octet-stream", etag, mod)
	ev.Phase = "done"
	if oneChunk {
		ev.Start = start
	}
	if tw, ok := w.(*trackingWriter); ok {
		ev.Bytes, ev.Status = tw.bytes, tw.status
	}
	if err != nil {
		ev.Err = err.Error()
		s.log.Info("transfer ended early", "name", ev.Name, "remote", r.RemoteAddr, "sent", ev.Bytes, "size", ev.Size, "err", err)
	}
	s.emit(ev)
}

// serveRemote streams a remote file that a signed URL named. Range is
// passed through so resumable downloads keep working.
func (s *Server) serveRemote(w http.ResponseWriter, r *http.Request, src string, ev Event) {
	if !s.takeSlot(w, r) {
		return
	}
	defer s.freeSlot()
	req, err := http.NewRequestWithContext(r.Context(), r.Method, src, nil)
	if err != nil {
		http.Error(w, "bad upstream URL", http.StatusBadGateway)
		return
	}
	for _, h := range []string{"Range", "If-Range"} {
		if v := r.Header.Get(h); v != "" {
			req.Header.Set(h, v)
		}
	}
	client := s.opts.HTTPClient
	if pol := s.policy.Load(); pol != nil {
		if a, ok := pol.Booter.(requestAuthorizer); ok {
			a.AuthorizeRequest(req)
		}
		if pol.HTTPClient != nil {
			client = pol.HTTPClient
		}
	}
	resp, err := client.Do(req)
	if err != nil {
		s.log.Warn("fetch remote boot file", "url", src, "err", err)
		http.Error(w, "upstream fetch failed", http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for _, h := range []string{"Content-Length", "Content-Range", "Accept-Ranges", "Last-Modified", "ETag"} {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	ev.Size = resp.ContentLength
	ev.Phase = "start"
	s.emit(ev)
	w.WriteHeader(resp.StatusCode)
	n, err := io.Copy(w, resp.Body)
	ev.Phase, ev.Bytes, ev.Status = "done", n, resp.StatusCode
	if err != nil {
		ev.Err = err.Error()
	}
	s.emit(ev)
}
