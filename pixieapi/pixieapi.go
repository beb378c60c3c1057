// Package pixieapi asks a pixiecore API server what a machine boots. It
// speaks pixiecore's documented API unchanged (GET <api>/v1/boot/<mac>,
// answered with JSON), so an existing pixiecore API server works with
// bootserve as is, and it asks once per boot rather than once per packet.
//
// Beyond pixiecore, each call carries the machine's architecture and UUID as
// query parameters (?arch=efi-x64&uuid=...), omitted when unknown; servers
// that do not know them ignore them.
package pixieapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/machines"
)

// Defaults for the zero values of Config.
const (
	DefaultTimeout     = 5 * time.Second
	DefaultCacheTTL    = 2 * time.Minute
	DefaultNegativeTTL = 10 * time.Second
	DefaultCacheSize   = 4096
)

// maxAnswer bounds the API's answer: a boot spec or an iPXE script is a
// few kilobytes, and a runaway server must not fill our memory.
const maxAnswer = 1 << 20

// The headers pixiecore sends to its API server.
const (
	HeaderIP       = "X-Pixiecore-IP"
	HeaderHostname = "X-Pixiecore-Hostname"
)

// Config configures a Booter.
type Config struct {
	// URL is the API server's prefix, as given to `pixiecore api`:
	// http(s)://host[:port][/path]. Credentials in it (user:pass@) are
	// used as Username and Password when those are empty.
	URL string
	// Timeout bounds one API call, answer included (default 5s).
	Timeout time.Duration
	// CacheTTL is how long an answer is reused for the same MAC, so one
	// boot (several DHCP packets, then the script request) asks once
	// (default 2m; negative: never cache).
	CacheTTL time.Duration
	// NegativeTTL is how long a refusal (non-200, bad answer, timeout)
	// is reused: long enough to absorb a DHCP retry storm, short enough
	// that a machine the operator just enabled boots soon (default 10s;
	// negative: never cache refusals).
	NegativeTTL time.Duration
	// CacheSize bounds the number of MACs remembered (default 4096).
	CacheSize int
	// Hostname is sent as X-Pixiecore-Hostname (default: the system's).
	Hostname string
	// ServerIP gives X-Pixiecore-IP. When nil or when it returns an
	// invalid address, the local address this host uses to reach the API
	// server is sent, as pixiecore does without --listen-addr.
	ServerIP func() netip.Addr
	// Username and Password are sent as HTTP basic auth, only to the API
	// server itself (same scheme, host and port as URL).
	Username, Password string
	// CACertFile is a PEM file of CA certificates trusted for the API
	// server's certificate instead of the system roots.
	CACertFile string
	Logger     *slog.Logger
	// HTTPClient replaces the client (and with it CACertFile's transport
	// setting), for tests. Its CheckRedirect is replaced by one that keeps
	// credentials on the API server.
	HTTPClient *http.Client
}

// Booter is a machines.Booter backed by a pixiecore API server. It is safe
// for concurrent use.
type Booter struct {
	api     *url.URL // the prefix, without credentials
	base    *url.URL // what relative URLs in answers resolve against
	logURL  string   // api without query, for logs
	client  *http.Client
	tls     *tls.Config
	timeout time.Duration
	ttl     time.Duration
	negTTL  time.Duration
	size    int

	hostname   string
	serverIP   func() netip.Addr
	user, pass string
	auth       bool
	log        *slog.Logger
	now        func() time.Time // a field so tests can move time

	mu      sync.Mutex
	cache   map[string]entry
	flights map[string]*flight
}

// entry is a remembered answer: a target or a refusal.
type entry struct {
	t       *machines.Target
	err     error
	expires time.Time
}

// flight is one API call in progress; every caller asking about the same
// MAC meanwhile waits for it instead of calling again.
type flight struct {
	done    chan struct{}
	t       *machines.Target
	err     error
	waiters int  // for tests
	forgot  bool // Forget was called: do not cache the answer
}

// New checks the configuration and makes a Booter.
func New(cfg Config) (*Booter, error) {
	raw := strings.TrimSpace(cfg.URL)
	if raw == "" {
		return nil, errors.New("pixiecore api url is empty: set it to the API server's prefix, e.g. http://api.example/pixiecore")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("pixiecore api url %q: %v: want http(s)://host[:port][/path]", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("pixiecore api url %q: scheme %q is not supported: use http:// or https://", raw, u.Scheme)
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, fmt.Errorf("pixiecore api url %q has no host: want http(s)://host[:port][/path]", raw)
	}
	if u.Fragment != "" || u.RawFragment != "" {
		return nil, fmt.Errorf("pixiecore api url %q has a #fragment, which is never sent to a server: remove it", raw)
	}
	user, pass := cfg.Username, cfg.Password
	if u.User != nil {
		if user == "" {
			user = u.User.Username()
			if p, ok := u.User.Password(); ok && pass == "" {
				pass = p
			}
		}
		u.User = nil
	}
	if user == "" && pass != "" {
		return nil, errors.New("pixiecore api: a password is set but no username: set the username too")
	}

	b := &Booter{
		api:      u,
		base:     u.JoinPath("v1"),
		timeout:  cfg.Timeout,
		ttl:      cfg.CacheTTL,
		negTTL:   cfg.NegativeTTL,
		size:     cfg.CacheSize,
		hostname: cfg.Hostname,
		serverIP: cfg.ServerIP,
		user:     user,
		pass:     pass,
		auth:     user != "",
		log:      cfg.Logger,
		now:      time.Now,
		cache:    map[string]entry{},
		flights:  map[string]*flight{},
	}
	// Relative URLs in answers resolve against <api>/v1, as pixiecore
	// resolves them: "/foo" is rooted at the host, "foo" lands next to v1.
	b.base.RawQuery = ""
	lu := *u
	lu.RawQuery = ""
	b.logURL = lu.String()
	if b.timeout <= 0 {
		b.timeout = DefaultTimeout
	}
	if b.ttl == 0 {
		b.ttl = DefaultCacheTTL
	}
	if b.negTTL == 0 {
		b.negTTL = DefaultNegativeTTL
	}
	if b.size <= 0 {
		b.size = DefaultCacheSize
	}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if b.hostname == "" {
		if h, err := os.Hostname(); err == nil {
			b.hostname = h
		}
	}

	if cfg.CACertFile != "" {
		pem, err := os.ReadFile(cfg.CACertFile)
		if err != nil {
			return nil, fmt.Errorf("pixiecore api ca cert file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("pixiecore api ca cert file %s: no PEM certificate found in it: give a file of -----BEGIN CERTIFICATE----- blocks", cfg.CACertFile)
		}
		b.tls = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	if cfg.HTTPClient != nil {
		c := *cfg.HTTPClient
		b.client = &c
	} else {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		if b.tls != nil {
			tr.TLSClientConfig = b.tls.Clone()
		}
		b.client = &http.Client{Transport: tr}
	}
	b.client.CheckRedirect = b.CheckRedirect

	if b.auth && u.Scheme == "http" {
		b.log.Warn("pixiecore api: basic auth credentials are sent over plain http: anyone on the path can read them; use an https:// api url", "api", b.logURL)
	}
	return b, nil
}

// Target asks the API server what the machine boots, or reuses the answer
// given for this MAC within CacheTTL (NegativeTTL for a refusal). A refusal
// is an error wrapping machines.ErrNoTarget. Concurrent calls for one MAC
// share one API call; ctx only stops this caller's wait.
func (b *Booter) Target(ctx context.Context, id machines.Identity) (*machines.Target, error) {
	if len(id.MAC) == 0 {
		return nil, fmt.Errorf("%w: no MAC address to ask the pixiecore api about", machines.ErrNoTarget)
	}
	key := id.MAC.String()
	b.mu.Lock()
	if e, ok := b.cache[key]; ok {
		if b.now().Before(e.expires) {
			b.mu.Unlock()
			return result(e.t, e.err)
		}
		delete(b.cache, key)
	}
	f := b.flights[key]
	if f == nil {
		f = &flight{done: make(chan struct{})}
		b.flights[key] = f
		// Detached from ctx: the call is shared, and bounded by Timeout.
		go b.fly(key, id, f)
	}
	f.waiters++
	b.mu.Unlock()
	select {
	case <-f.done:
		return result(f.t, f.err)
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for the pixiecore api's answer for %s: %w", key, context.Cause(ctx))
	}
}

// result hands out a copy, so callers may change what they get.
func result(t *machines.Target, err error) (*machines.Target, error) {
	if err != nil {
		return nil, err
	}
	return t.Clone(), nil
}

func (b *Booter) fly(key string, id machines.Identity, f *flight) {
	t, err := b.ask(id)
	b.mu.Lock()
	f.t, f.err = t, err
	if b.flights[key] == f {
		delete(b.flights, key)
	}
	if !f.forgot {
		ttl := b.ttl
		if err != nil {
			ttl = b.negTTL
		}
		if ttl > 0 {
			b.store(key, entry{t: t, err: err, expires: b.now().Add(ttl)})
		}
	}
	b.mu.Unlock()
	close(f.done)
}

// store remembers an answer; b.mu is held. When the cache is full, expired
// entries go first, then the one closest to expiring.
func (b *Booter) store(key string, e entry) {
	if _, ok := b.cache[key]; !ok && len(b.cache) >= b.size {
		now := b.now()
		for k, old := range b.cache {
			if !now.Before(old.expires) {
				delete(b.cache, k)
			}
		}
		for len(b.cache) >= b.size {
			var victim string
			var first time.Time
			for k, old := range b.cache {
				if victim == "" || old.expires.Before(first) {
					victim, first = k, old.expires
				}
			}
			delete(b.cache, victim)
		}
	}
	b.cache[key] = e
}

// Forget drops what is remembered about a MAC, including an answer still on
// its way, so the machine's next boot asks the API again even within
// CacheTTL. The HTTP side calls it once it has served the machine's script:
// that is the last time this boot needs the answer.
func (b *Booter) Forget(mac net.HardwareAddr) {
	key := mac.String()
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.cache, key)
	if f := b.flights[key]; f != nil {
		f.forgot = true
		delete(b.flights, key)
	}
}

// bootURL is <api>/v1/boot/<mac>, with arch and uuid when known.
func (b *Booter) bootURL(id machines.Identity) string {
	u := b.api.JoinPath("v1", "boot", id.MAC.String())
	q := u.Query()
	if id.Arch != firmware.ArchUnknown {
		q.Set("arch", id.Arch.String())
	}
	if id.UUID != "" {
		q.Set("uuid", id.UUID)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// ask makes one API call. Every refusal is logged here, once.
func (b *Booter) ask(id machines.Identity) (*machines.Target, error) {
	mac := id.MAC.String()
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.bootURL(id), nil)
	if err != nil {
		return nil, b.refuse(mac, fmt.Sprintf("cannot make the api request for %s: %v", mac, err))
	}
	req.Header.Set("Accept", "application/json")
	b.AuthorizeRequest(req)
	resp, err := b.client.Do(req)
	if err != nil {
		return nil, b.refuse(mac, fmt.Sprintf("api server did not answer for %s: %s", mac, b.why(err)))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// Drain a little so the connection can be reused.
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return nil, b.refuse(mac, fmt.Sprintf("api server said %s for %s", resp.Status, mac))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return nil, b.refuse(mac, fmt.Sprintf("api server's answer for %s was cut off: %s", mac, b.why(err)))
	}
	if len(body) > maxAnswer {
		return nil, b.refuse(mac, fmt.Sprintf("api server's answer for %s is larger than %d bytes", mac, maxAnswer))
	}
	t, err := b.target(body)
	if err != nil {
		return nil, b.refuse(mac, fmt.Sprintf("api server's answer for %s is malformed: %v", mac, err))
	}
	b.log.Info("pixiecore api answered", "mac", mac, "kind", t.Kind.String(), "kernel", t.Kernel, "initrds", len(t.Initrds))
	return t, nil
}

// why words a transport error without repeating the URL (which may carry
// a token in its query).
func (b *Booter) why(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Sprintf("no answer within %s (raise the api timeout if the server is just slow)", b.timeout)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return err.Error()
}

// refuse logs why a machine is ignored and returns the error saying so.
func (b *Booter) refuse(mac, reason string) error {
	b.log.Warn(reason+": ignoring the machine", "mac", mac, "api", b.logURL)
	return fmt.Errorf("%w: %s", machines.ErrNoTarget, reason)
}

// sameOrigin reports whether u is on the API server: same scheme, host and
// port (default ports made explicit).
func (b *Booter) sameOrigin(u *url.URL) bool {
	if u == nil || !strings.EqualFold(u.Scheme, b.api.Scheme) || !strings.EqualFold(u.Hostname(), b.api.Hostname()) {
		return false
	}
	return port(u) == port(b.api)
}

func port(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if strings.EqualFold(u.Scheme, "https") {
		return "443"
	}
	return "80"
}

// AuthorizeRequest prepares a request bootserve makes on the API's behalf
// (the API call itself, or fetching a kernel or initrd the answer named).
// When req.URL is on the API server (same scheme, host and port as the API
// URL), it sets X-Pixiecore-IP, X-Pixiecore-Hostname and the basic auth
// credentials; otherwise it removes them, so neither credentials nor these
// headers ever reach another host.
func (b *Booter) AuthorizeRequest(req *http.Request) {
	if !b.sameOrigin(req.URL) {
		req.Header.Del(HeaderIP)
		req.Header.Del(HeaderHostname)
		if b.auth {
			req.Header.Del("Authorization")
		}
		return
	}
	if ip := b.localIP(req.Context()); ip.IsValid() {
		req.Header.Set(HeaderIP, ip.String())
	}
	if b.hostname != "" {
		req.Header.Set(HeaderHostname, b.hostname)
	}
	if b.auth {
		req.SetBasicAuth(b.user, b.pass)
	}
}

// CheckRedirect is an http.Client CheckRedirect that re-applies
// AuthorizeRequest at each hop, so a redirect off the API server loses the
// credentials and headers (net/http alone keeps them for subdomains and
// keeps X-Pixiecore-* everywhere). Use it for clients that fetch files the
// API named.
func (b *Booter) CheckRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	b.AuthorizeRequest(req)
	return nil
}

// TLSConfig is the TLS setup for the API server (its CA certificates), or
// nil for the system defaults. pixiecore uses it for every server it
// fetches from in API mode.
func (b *Booter) TLSConfig() *tls.Config {
	if b.tls == nil {
		return nil
	}
	return b.tls.Clone()
}

// localIP is X-Pixiecore-IP: the configured address, or the source address
// this host would use to reach the API server. Connecting a UDP socket
// sends nothing; it only asks the kernel for the route.
func (b *Booter) localIP(ctx context.Context) netip.Addr {
	if b.serverIP != nil {
		if ip := b.serverIP(); ip.IsValid() {
			return ip
		}
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", net.JoinHostPort(b.api.Hostname(), port(b.api)))
	if err != nil {
		return netip.Addr{}
	}
	defer c.Close()
	if a, ok := c.LocalAddr().(*net.UDPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}
