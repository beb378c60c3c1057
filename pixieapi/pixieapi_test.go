package pixieapi

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/template"
	"time"

	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/machines"
)

var testMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

// logBuf collects a logger's output from many goroutines.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) warns() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var w []string
	for line := range strings.Lines(l.b.String()) {
		if strings.Contains(line, "level=WARN") {
			w = append(w, line)
		}
	}
	return w
}

func (l *logBuf) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// clock is a settable time source for cache expiry.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// counting wraps a handler and counts the requests it gets.
type counting struct {
	n atomic.Int64
	h http.HandlerFunc
}

func (c *counting) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.n.Add(1)
	c.h(w, r)
}

func serve(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func newBooter(t *testing.T, cfg Config) *Booter {
	t.Helper()
	b, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return b
}

// jsonAt answers body for the boot path of testMAC under /baz, 404 elsewhere.
func jsonAt(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/baz/v1/boot/"+testMAC.String() {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, body)
	}
}

func TestAnswers(t *testing.T) {
	tests := []struct {
		name string
		body string
		want func(srv string) *machines.Target
	}{
		{"kernel only", `{"kernel": "http://files.example/vmlinuz"}`, func(string) *machines.Target {
			return &machines.Target{Kind: machines.KindKernel, Name: "api", Kernel: "http://files.example/vmlinuz"}
		}},
		{"kernel and initrds over https", `{"kernel": "https://files.example/k", "initrd": ["https://files.example/i0", "https://files.example/i1"]}`, func(string) *machines.Target {
			return &machines.Target{Kind: machines.KindKernel, Name: "api", Kernel: "https://files.example/k",
				Initrds: []string{"https://files.example/i0", "https://files.example/i1"}}
		}},
		{"relative URLs", `{"kernel": "/kernel", "initrd": ["/initrd.0", "initrd.1", "../up", "//other.example:8080/x?y=1", "?q=1"]}`, func(srv string) *machines.Target {
			return &machines.Target{Kind: machines.KindKernel, Name: "api", Kernel: srv + "/kernel",
				Initrds: []string{srv + "/initrd.0", srv + "/baz/initrd.1", srv + "/up", "http://other.example:8080/x?y=1", srv + "/baz/v1?q=1"}}
		}},
		{"file URLs", `{"kernel": "file:///mnt/data/kernel", "initrd": ["file://localhost/mnt/data/initrd%20x"]}`, func(string) *machines.Target {
			return &machines.Target{Kind: machines.KindKernel, Name: "api", Kernel: "/mnt/data/kernel", Initrds: []string{"/mnt/data/initrd x"}}
		}},
		{"plain string cmdline", `{"kernel": "/k", "cmdline": "selinux=1 coreos.autologin"}`, func(srv string) *machines.Target {
			return &machines.Target{Kind: machines.KindKernel, Name: "api", Kernel: srv + "/k", Cmdline: "selinux=1 coreos.autologin"}
		}},
		{"string cmdline with URL", `{"kernel": "/k", "cmdline": "cloud-config-url={{ URL \"/cc\" }} non-proxied-url=https://files.example/x {{ .MAC }}"}`, func(srv string) *machines.Target {
			return &machines.Target{Kind: machines.KindKernel, Name: "api", Kernel: srv + "/k",
				Cmdline: `cloud-config-url={{ URL "` + srv + `/cc" }} non-proxied-url=https://files.example/x {{ .MAC }}`}
		}},
		{"object cmdline", `{"kernel": "/k", "cmdline": {"quiet": true, "console": "ttyS0", "cc": {"url": "/cc"}, "splash": false, "msg": "two words", "n": 3, "f": {"url": "file:///srv/f"}}}`, func(srv string) *machines.Target {
			return &machines.Target{Kind: machines.KindKernel, Name: "api", Kernel: srv + "/k",
				Cmdline: `cc={{ URL "` + srv + `/cc" }} console=ttyS0 f={{ URL "/srv/f" }} msg="two words" n=3 quiet`}
		}},
		{"message", `{"kernel": "/k", "message": "Booting\nthe installer"}`, func(srv string) *machines.Target {
			return &machines.Target{Kind: machines.KindKernel, Name: "api", Kernel: srv + "/k", Message: "Booting the installer"}
		}},
		{"ipxe-script", `{"ipxe-script": "#!ipxe\nchain http://boot.example/menu\n"}`, func(string) *machines.Target {
			return &machines.Target{Kind: machines.KindIPXEScript, Name: "api", IPXEScript: "#!ipxe\nchain http://boot.example/menu\n", Verbatim: true}
		}},
		{"ipxe-script wins over kernel", `{"ipxe-script": "#!ipxe\nexit\n", "kernel": "/k", "message": "m"}`, func(string) *machines.Target {
			return &machines.Target{Kind: machines.KindIPXEScript, Name: "api", IPXEScript: "#!ipxe\nexit\n", Verbatim: true}
		}},
		{"unknown keys ignored", `{"kernel": "/k", "future": [1, 2]}`, func(srv string) *machines.Target {
			return &machines.Target{Kind: machines.KindKernel, Name: "api", Kernel: srv + "/k"}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs logBuf
			srv := serve(t, jsonAt(tc.body))
			b := newBooter(t, Config{URL: srv.URL + "/baz", Logger: logs.logger()})
			got, err := b.Target(t.Context(), machines.Identity{MAC: testMAC})
			if err != nil {
				t.Fatalf("Target: %v", err)
			}
			if want := tc.want(srv.URL); !reflect.DeepEqual(got, want) {
				t.Errorf("got  %#v\nwant %#v", got, want)
			}
			if w := logs.warns(); len(w) != 0 {
				t.Errorf("warnings for a good answer: %q", w)
			}
		})
	}
}

// execute runs a target's template the way httpboot does, with a URL
// function that marks what it was given.
func execute(t *testing.T, text string) string {
	t.Helper()
	tm, err := template.New("x").Option("missingkey=error").Funcs(template.FuncMap{
		"URL": func(s string) string { return "<" + s + ">" },
	}).Parse(text)
	if err != nil {
		t.Fatalf("parse %q: %v", text, err)
	}
	var out strings.Builder
	if err := tm.Execute(&out, struct{ MAC string }{testMAC.String()}); err != nil {
		t.Fatalf("execute %q: %v", text, err)
	}
	return out.String()
}

func TestTemplatesKeepTheirMeaning(t *testing.T) {
	tests := []struct {
		name string
		body string
		want func(srv string) string
	}{
		{"URL literal forms", `{"kernel": "/k", "cmdline": "a={{ URL \"/x\" }} b={{ \"/y\" | URL }} c={{ URL (printf \"%s\" \"http://z/\") }} d= {{- URL ` + "`y`" + ` -}} e {{/* note */}}{{ .MAC }} {{ if true }}{{ URL \"f\" }}{{ end }}"}`,
			func(srv string) string {
				return "a=<" + srv + "/x> b=<" + srv + "/y> c=<http://z/> d=<" + srv + "/baz/y>e 52:54:00:12:34:56 <" + srv + "/baz/f>"
			}},
		{"define and template", `{"kernel": "/k", "cmdline": "{{ define \"u\" }}{{ URL \"/q\" }}{{ end }}x={{ template \"u\" }}"}`,
			func(srv string) string { return "x=<" + srv + "/q>" }},
		{"object values cannot break out", `{"kernel": "/k", "cmdline": {"k{{": "v}}{{.MAC}}", "u": {"url": "http://h/x?q=\"}}{{.MAC}}"}}}`,
			func(string) string { return `k{{=v}}{{.MAC}} u=<http://h/x?q="}}{{.MAC}}>` }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := serve(t, jsonAt(tc.body))
			b := newBooter(t, Config{URL: srv.URL + "/baz"})
			got, err := b.Target(t.Context(), machines.Identity{MAC: testMAC})
			if err != nil {
				t.Fatalf("Target: %v", err)
			}
			if out, want := execute(t, got.Cmdline), tc.want(srv.URL); out != want {
				t.Errorf("cmdline %q\nexpands to %q\nwant       %q", got.Cmdline, out, want)
			}
		})
	}

	t.Run("ipxe-script is verbatim", func(t *testing.T) {
		script := "#!ipxe\necho {{ .MAC }} \"q\" `b` }} {{\n\tünï\\x ${net0/mac}\r\n:end\n"
		srv := serve(t, jsonAt(`{"ipxe-script": `+jsonString(t, script)+`}`))
		b := newBooter(t, Config{URL: srv.URL + "/baz"})
		got, err := b.Target(t.Context(), machines.Identity{MAC: testMAC})
		if err != nil {
			t.Fatalf("Target: %v", err)
		}
		if !got.Verbatim || got.IPXEScript != script {
			t.Errorf("script %q (verbatim %v), want %q kept verbatim", got.IPXEScript, got.Verbatim, script)
		}
	})
}

// jsonString quotes s as a JSON string.
func jsonString(t *testing.T, s string) string {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestIgnoredMachines(t *testing.T) {
	status := func(code int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", code) }
	}
	big := `{"kernel": "/k", "message": "` + strings.Repeat("x", maxAnswer) + `"}`
	tests := []struct {
		name   string
		h      http.HandlerFunc
		reason string
	}{
		{"404", status(404), "api server said 404 Not Found for 52:54:00:12:34:56"},
		{"500", status(500), "api server said 500 Internal Server Error"},
		{"malformed JSON", jsonAt(`{"kernel": `), "not a JSON boot spec"},
		{"trailing garbage", jsonAt(`{"kernel": "/k"} x`), "not a JSON boot spec"},
		{"empty object", jsonAt(`{}`), `neither "kernel" nor "ipxe-script"`},
		{"null", jsonAt(`null`), `neither "kernel" nor "ipxe-script"`},
		{"empty ipxe-script", jsonAt(`{"ipxe-script": ""}`), `neither "kernel" nor "ipxe-script"`},
		{"kernel not a string", jsonAt(`{"kernel": 3}`), "not a JSON boot spec"},
		{"unsupported scheme", jsonAt(`{"kernel": "ftp://files.example/k"}`), `scheme "ftp" is not supported`},
		{"relative file URL", jsonAt(`{"kernel": "file:k"}`), "not an absolute file:// URL"},
		{"empty initrd", jsonAt(`{"kernel": "/k", "initrd": [""]}`), "initrd[0]: empty URL"},
		{"cmdline array", jsonAt(`{"kernel": "/k", "cmdline": ["a"]}`), "must be a string or an object"},
		{"cmdline bad template", jsonAt(`{"kernel": "/k", "cmdline": "{{ URL "}`), "not a valid template"},
		{"cmdline bad URL literal", jsonAt(`{"kernel": "/k", "cmdline": "{{ URL \"gopher://x/\" }}"}`), `scheme "gopher"`},
		{"cmdline object null", jsonAt(`{"kernel": "/k", "cmdline": {"a": null}}`), `key "a": value null`},
		{"cmdline object without url", jsonAt(`{"kernel": "/k", "cmdline": {"a": {"href": "/x"}}}`), `needs a "url" string`},
		{"cmdline object quote", jsonAt(`{"kernel": "/k", "cmdline": {"a": "x\"y"}}`), "quote or control character"},
		{"cmdline object key with space", jsonAt(`{"kernel": "/k", "cmdline": {"a b": true}}`), "not a kernel parameter name"},
		{"too large", jsonAt(big), "larger than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs logBuf
			srv := serve(t, tc.h)
			b := newBooter(t, Config{URL: srv.URL + "/baz", Logger: logs.logger()})
			got, err := b.Target(t.Context(), machines.Identity{MAC: testMAC})
			if !errors.Is(err, machines.ErrNoTarget) {
				t.Fatalf("Target = %+v, %v; want an error wrapping ErrNoTarget", got, err)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("error %q does not say %q", err, tc.reason)
			}
			w := logs.warns()
			if len(w) != 1 {
				t.Fatalf("%d warning lines, want 1: %q", len(w), w)
			}
			if !strings.Contains(w[0], "ignoring the machine") || !strings.Contains(w[0], testMAC.String()) {
				t.Errorf("warning %q does not name the machine and the consequence", w[0])
			}
		})
	}
}

func TestTimeoutAndUnreachable(t *testing.T) {
	release := make(chan struct{})
	slow := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release) }) // runs before slow.Close

	var logs logBuf
	b := newBooter(t, Config{URL: slow.URL, Timeout: 200 * time.Millisecond, Logger: logs.logger()})
	_, err := b.Target(t.Context(), machines.Identity{MAC: testMAC})
	if !errors.Is(err, machines.ErrNoTarget) || !strings.Contains(err.Error(), "no answer within 200ms") {
		t.Errorf("slow server: err = %v, want ErrNoTarget saying it timed out", err)
	}
	if w := logs.warns(); len(w) != 1 {
		t.Errorf("slow server: %d warning lines, want 1: %q", len(w), w)
	}

	// A port nothing listens on any more.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var logs2 logBuf
	b = newBooter(t, Config{URL: "http://" + addr, Logger: logs2.logger()})
	_, err = b.Target(t.Context(), machines.Identity{MAC: testMAC})
	if !errors.Is(err, machines.ErrNoTarget) || !strings.Contains(err.Error(), "refused") {
		t.Errorf("closed port: err = %v, want ErrNoTarget saying connection refused", err)
	}
	if w := logs2.warns(); len(w) != 1 {
		t.Errorf("closed port: %d warning lines, want 1: %q", len(w), w)
	}
}

// seen records what the API server received.
type seen struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (s *seen) handler(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.reqs = append(s.reqs, r.Clone(context.Background()))
		s.mu.Unlock()
		next(w, r)
	}
}

func (s *seen) last(t *testing.T) *http.Request {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.reqs) == 0 {
		t.Fatal("the server got no request")
	}
	return s.reqs[len(s.reqs)-1]
}

func (s *seen) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.reqs)
}

func TestRequest(t *testing.T) {
	var rec seen
	srv := serve(t, rec.handler(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"kernel": "/k"}`)
	}))
	b := newBooter(t, Config{
		URL: srv.URL + "/baz?site=syd1", Hostname: "pxe01", Username: "boot", Password: "s3cret",
		ServerIP: func() netip.Addr { return netip.MustParseAddr("192.0.2.7") },
	})
	if _, err := b.Target(t.Context(), machines.Identity{MAC: testMAC, Arch: firmware.EFIX64, UUID: "0fc4c3b3-1c0e-4c4f-9d5a-6c1b2a3d4e5f"}); err != nil {
		t.Fatal(err)
	}
	r := rec.last(t)
	if r.Method != http.MethodGet || r.URL.Path != "/baz/v1/boot/52:54:00:12:34:56" {
		t.Errorf("request %s %s, want GET /baz/v1/boot/52:54:00:12:34:56", r.Method, r.URL.Path)
	}
	q := r.URL.Query()
	if q.Get("arch") != "efi-x64" || q.Get("uuid") != "0fc4c3b3-1c0e-4c4f-9d5a-6c1b2a3d4e5f" || q.Get("site") != "syd1" || len(q) != 3 {
		t.Errorf("query %q, want arch, uuid and the api url's own site", r.URL.RawQuery)
	}
	if got := r.Header.Get(HeaderIP); got != "192.0.2.7" {
		t.Errorf("%s = %q, want 192.0.2.7", HeaderIP, got)
	}
	if got := r.Header.Get(HeaderHostname); got != "pxe01" {
		t.Errorf("%s = %q, want pxe01", HeaderHostname, got)
	}
	if u, p, ok := r.BasicAuth(); !ok || u != "boot" || p != "s3cret" {
		t.Errorf("basic auth = %q %q %v, want boot s3cret", u, p, ok)
	}

	// Unknown arch and UUID are left out; X-Pixiecore-IP defaults to the
	// address used to reach the API server; credentials may come in the URL.
	b = newBooter(t, Config{URL: strings.Replace(srv.URL, "http://", "http://u:p@", 1)})
	if _, err := b.Target(t.Context(), machines.Identity{MAC: testMAC}); err != nil {
		t.Fatal(err)
	}
	r = rec.last(t)
	if r.URL.RawQuery != "" {
		t.Errorf("query %q, want none for an unknown arch and UUID", r.URL.RawQuery)
	}
	if got := r.Header.Get(HeaderIP); got != "127.0.0.1" {
		t.Errorf("default %s = %q, want 127.0.0.1", HeaderIP, got)
	}
	if h, _ := os.Hostname(); r.Header.Get(HeaderHostname) != h {
		t.Errorf("default %s = %q, want the system's %q", HeaderHostname, r.Header.Get(HeaderHostname), h)
	}
	if u, p, ok := r.BasicAuth(); !ok || u != "u" || p != "p" {
		t.Errorf("basic auth from the URL = %q %q %v, want u p", u, p, ok)
	}
}

func TestCredentialsStayOnTheAPIServer(t *testing.T) {
	var other seen
	elsewhere := serve(t, other.handler(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"kernel": "/k"}`)
	}))
	var api seen
	var apiURL string
	srv := serve(t, api.handler(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/boot/" + testMAC.String():
			http.Redirect(w, r, "/v1/again", http.StatusFound)
		case "/v1/again":
			http.Redirect(w, r, elsewhere.URL+"/v1/boot", http.StatusFound)
		case "/files/k":
			http.Redirect(w, r, elsewhere.URL+"/k", http.StatusFound)
		default:
			fmt.Fprint(w, "file")
		}
	}))
	apiURL = srv.URL
	b := newBooter(t, Config{URL: apiURL, Username: "boot", Password: "s3cret"})

	check := func(what string, r *http.Request, want bool) {
		t.Helper()
		_, _, auth := r.BasicAuth()
		hasIP, hasName := r.Header.Get(HeaderIP) != "", r.Header.Get(HeaderHostname) != ""
		if auth != want || hasIP != want || hasName != want {
			t.Errorf("%s: auth %v, %s %v, %s %v; want all %v", what, auth, HeaderIP, hasIP, HeaderHostname, hasName, want)
		}
	}

	// The API call redirects on the API server, then to another port of
	// the same host: net/http alone would keep the credentials there.
	if _, err := b.Target(t.Context(), machines.Identity{MAC: testMAC}); err != nil {
		t.Fatal(err)
	}
	if api.count() != 2 || other.count() != 1 {
		t.Fatalf("api got %d requests, other got %d; want 2 and 1", api.count(), other.count())
	}
	check("redirect on the api server", api.last(t), true)
	check("redirect to another server", other.last(t), false)

	// File fetches on behalf of the API, as httpboot will make them.
	c := &http.Client{CheckRedirect: b.CheckRedirect}
	get := func(u string, preset bool) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
		if err != nil {
			t.Fatal(err)
		}
		if preset {
			req.Header.Set("Authorization", "Basic bm9wZTpub3Bl")
			req.Header.Set(HeaderIP, "192.0.2.1")
		}
		b.AuthorizeRequest(req)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	get(apiURL+"/files/kernel", false)
	check("file on the api server", api.last(t), true)
	get(elsewhere.URL+"/kernel", true)
	check("file on another server", other.last(t), false)
	get(apiURL+"/files/k", false)
	check("file redirected off the api server", other.last(t), false)

	for _, tc := range []struct {
		api, u string
		same   bool
	}{
		{"http://api.example/baz", "http://API.example:80/files/k", true},
		{"https://api.example/baz", "https://api.example:443/k", true},
		{"https://api.example/baz", "http://api.example/k", false},
		{"http://api.example:8080/", "http://api.example/k", false},
		{"http://api.example/", "http://files.api.example/k", false},
		{"http://[::1]:81/", "http://[::1]:81/k", true},
	} {
		b := newBooter(t, Config{URL: tc.api})
		req, _ := http.NewRequest(http.MethodGet, tc.u, nil)
		if got := b.sameOrigin(req.URL); got != tc.same {
			t.Errorf("api %s, url %s: same origin %v, want %v", tc.api, tc.u, got, tc.same)
		}
	}
}

func TestOneCallPerBoot(t *testing.T) {
	api := &counting{h: jsonAt(`{"kernel": "/k", "initrd": ["/i"]}`)}
	srv := serve(t, api)
	var logs logBuf
	b := newBooter(t, Config{URL: srv.URL + "/baz", Logger: logs.logger()})
	clk := &clock{t: time.Unix(1_000_000, 0)}
	b.now = clk.now
	id := machines.Identity{MAC: testMAC, Arch: firmware.BIOS}

	// A boot: DHCP discover and request on 67, request on 4011, iPXE's own
	// DHCP, then the script over HTTP.
	for range 5 {
		clk.add(time.Second)
		got, err := b.Target(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		got.Initrds[0] = "changed by a caller"
	}
	if got, err := b.Target(t.Context(), id); err != nil || got.Initrds[0] != srv.URL+"/i" {
		t.Fatalf("script request: %+v, %v; want the API's target, unchanged", got, err)
	}
	if n := api.n.Load(); n != 1 {
		t.Fatalf("one boot made %d API calls, want 1", n)
	}

	b.Forget(testMAC)
	if _, err := b.Target(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	if n := api.n.Load(); n != 2 {
		t.Fatalf("after Forget: %d API calls, want 2", n)
	}

	clk.add(DefaultCacheTTL - time.Second)
	if _, err := b.Target(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	if n := api.n.Load(); n != 2 {
		t.Fatalf("within the TTL: %d API calls, want 2", n)
	}
	clk.add(2 * time.Second)
	if _, err := b.Target(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	if n := api.n.Load(); n != 3 {
		t.Fatalf("after the TTL: %d API calls, want 3", n)
	}

	// Refusals are remembered for NegativeTTL.
	other := machines.Identity{MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}}
	for range 5 {
		if _, err := b.Target(t.Context(), other); !errors.Is(err, machines.ErrNoTarget) {
			t.Fatalf("unknown machine: %v, want ErrNoTarget", err)
		}
	}
	if n := api.n.Load(); n != 4 {
		t.Fatalf("refused machine asked 5 times: %d API calls in all, want 4", n)
	}
	if w := logs.warns(); len(w) != 1 {
		t.Fatalf("%d warning lines for one refusal, want 1: %q", len(w), w)
	}
	clk.add(DefaultNegativeTTL - time.Second)
	b.Target(t.Context(), other)
	if n := api.n.Load(); n != 4 {
		t.Fatalf("within the negative TTL: %d API calls, want 4", n)
	}
	clk.add(2 * time.Second)
	b.Target(t.Context(), other)
	if n := api.n.Load(); n != 5 {
		t.Fatalf("after the negative TTL: %d API calls, want 5", n)
	}
	if w := logs.warns(); len(w) != 2 {
		t.Fatalf("%d warning lines for two refusals, want 2", len(w))
	}
}

func TestCacheOff(t *testing.T) {
	api := &counting{h: func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }}
	srv := serve(t, api)
	b := newBooter(t, Config{URL: srv.URL, CacheTTL: -1, NegativeTTL: -1})
	for range 3 {
		b.Target(t.Context(), machines.Identity{MAC: testMAC})
	}
	if n := api.n.Load(); n != 3 {
		t.Fatalf("without a cache: %d API calls for 3 asks, want 3", n)
	}
}

func TestCacheIsBounded(t *testing.T) {
	api := &counting{h: func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, `{"kernel": "/k"}`) }}
	srv := serve(t, api)
	b := newBooter(t, Config{URL: srv.URL, CacheSize: 3})
	clk := &clock{t: time.Unix(1_000_000, 0)}
	b.now = clk.now
	var last net.HardwareAddr
	for i := range 10 {
		clk.add(time.Second)
		last = net.HardwareAddr{2, 0, 0, 0, 0, byte(i)}
		if _, err := b.Target(t.Context(), machines.Identity{MAC: last}); err != nil {
			t.Fatal(err)
		}
	}
	b.mu.Lock()
	n := len(b.cache)
	b.mu.Unlock()
	if n != 3 {
		t.Errorf("cache holds %d MACs, want 3", n)
	}
	before := api.n.Load()
	b.Target(t.Context(), machines.Identity{MAC: last})
	if api.n.Load() != before {
		t.Error("the newest answer was evicted")
	}
	b.Target(t.Context(), machines.Identity{MAC: net.HardwareAddr{2, 0, 0, 0, 0, 0}})
	if api.n.Load() != before+1 {
		t.Error("the oldest answer was kept")
	}
}

// waitWaiters waits until n callers wait on the API call for mac.
func waitWaiters(t *testing.T, b *Booter, mac net.HardwareAddr, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		b.mu.Lock()
		f := b.flights[mac.String()]
		got := 0
		if f != nil {
			got = f.waiters
		}
		b.mu.Unlock()
		if got == n {
			return
		}
	}
	t.Fatalf("never saw %d callers waiting", n)
}

func TestConcurrentCallsShareOneRequest(t *testing.T) {
	for _, code := range []int{http.StatusOK, http.StatusInternalServerError} {
		t.Run(http.StatusText(code), func(t *testing.T) {
			release := make(chan struct{})
			api := &counting{h: func(w http.ResponseWriter, r *http.Request) {
				<-release
				if code != http.StatusOK {
					http.Error(w, "broken", code)
					return
				}
				fmt.Fprint(w, `{"kernel": "/k"}`)
			}}
			srv := serve(t, api)
			var logs logBuf
			// No cache: only the sharing of the call in flight can
			// keep this to one request.
			b := newBooter(t, Config{URL: srv.URL, CacheTTL: -1, NegativeTTL: -1, Logger: logs.logger()})
			const n = 20
			errs := make(chan error, n)
			for range n {
				go func() {
					_, err := b.Target(context.Background(), machines.Identity{MAC: testMAC})
					errs <- err
				}()
			}
			waitWaiters(t, b, testMAC, n)

			// A caller that gives up does not take the others with it.
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			if _, err := b.Target(ctx, machines.Identity{MAC: testMAC}); !errors.Is(err, context.Canceled) || errors.Is(err, machines.ErrNoTarget) {
				t.Errorf("cancelled caller: %v, want context.Canceled", err)
			}

			close(release)
			for range n {
				err := <-errs
				if code == http.StatusOK && err != nil || code != http.StatusOK && !errors.Is(err, machines.ErrNoTarget) {
					t.Errorf("caller got %v", err)
				}
			}
			if got := api.n.Load(); got != 1 {
				t.Errorf("%d concurrent callers made %d API calls, want 1", n, got)
			}
			if w := logs.warns(); code != http.StatusOK && len(w) != 1 {
				t.Errorf("%d warning lines for one failed call, want 1: %q", len(w), w)
			}
		})
	}
}

func TestForgetDuringCall(t *testing.T) {
	release := make(chan struct{})
	api := &counting{h: func(w http.ResponseWriter, r *http.Request) {
		<-release
		fmt.Fprint(w, `{"kernel": "/k"}`)
	}}
	srv := serve(t, api)
	b := newBooter(t, Config{URL: srv.URL})
	errs := make(chan error, 1)
	go func() {
		_, err := b.Target(context.Background(), machines.Identity{MAC: testMAC})
		errs <- err
	}()
	waitWaiters(t, b, testMAC, 1)
	b.Forget(testMAC)
	close(release)
	if err := <-errs; err != nil {
		t.Fatalf("caller waiting during Forget: %v", err)
	}
	if _, err := b.Target(t.Context(), machines.Identity{MAC: testMAC}); err != nil {
		t.Fatal(err)
	}
	if n := api.n.Load(); n != 2 {
		t.Errorf("the answer that was in flight at Forget was cached: %d API calls, want 2", n)
	}
}

func TestHTTPSWithCACertFile(t *testing.T) {
	srv := httptest.NewTLSServer(jsonAt(`{"kernel": "/k"}`))
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	b := newBooter(t, Config{URL: srv.URL + "/baz", CACertFile: ca})
	got, err := b.Target(t.Context(), machines.Identity{MAC: testMAC})
	if err != nil {
		t.Fatalf("with the CA: %v", err)
	}
	if got.Kernel != srv.URL+"/k" || !strings.HasPrefix(got.Kernel, "https://") {
		t.Errorf("kernel %q, want %s/k", got.Kernel, srv.URL)
	}
	if b.TLSConfig() == nil || b.TLSConfig().RootCAs == nil {
		t.Error("TLSConfig does not carry the CA for file fetches")
	}

	b = newBooter(t, Config{URL: srv.URL + "/baz"})
	if _, err := b.Target(t.Context(), machines.Identity{MAC: testMAC}); !errors.Is(err, machines.ErrNoTarget) || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("without the CA: %v, want a certificate error", err)
	}
	if b.TLSConfig() != nil {
		t.Error("TLSConfig without a CA file should be nil (system defaults)")
	}
}

func TestNewRefuses(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o644)
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "empty"},
		{Config{URL: "ftp://api.example/"}, `scheme "ftp" is not supported`},
		{Config{URL: "api.example/pixiecore"}, "is not supported: use http:// or https://"},
		{Config{URL: "http:///path"}, "has no host"},
		{Config{URL: "http://api.example/#x"}, "fragment"},
		{Config{URL: "http://a b/"}, "want http(s)://"},
		{Config{URL: "https://api.example/", Password: "x"}, "no username"},
		{Config{URL: "https://api.example/", CACertFile: filepath.Join(dir, "missing.pem")}, "no such file"},
		{Config{URL: "https://api.example/", CACertFile: notPEM}, "no PEM certificate"},
	} {
		if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error saying %q", tc.cfg, err, tc.want)
		}
	}

	var logs logBuf
	newBooter(t, Config{URL: "http://api.example/", Username: "u", Logger: logs.logger()})
	if w := logs.warns(); len(w) != 1 || !strings.Contains(w[0], "plain http") {
		t.Errorf("credentials over http: warnings %q, want one about plain http", w)
	}
}

func BenchmarkTargetCached(b *testing.B) {
	srv := httptest.NewServer(jsonAt(`{"kernel": "/k", "initrd": ["/a", "/b"], "cmdline": "x={{ URL \"/c\" }}"}`))
	defer srv.Close()
	bt, err := New(Config{URL: srv.URL + "/baz"})
	if err != nil {
		b.Fatal(err)
	}
	id := machines.Identity{MAC: testMAC}
	if _, err := bt.Target(context.Background(), id); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := bt.Target(context.Background(), id); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkTargetUncached(b *testing.B) {
	srv := httptest.NewServer(jsonAt(`{"kernel": "/k", "initrd": ["/a", "/b"], "cmdline": "x={{ URL \"/c\" }}"}`))
	defer srv.Close()
	bt, err := New(Config{URL: srv.URL + "/baz", CacheTTL: -1})
	if err != nil {
		b.Fatal(err)
	}
	id := machines.Identity{MAC: testMAC}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := bt.Target(context.Background(), id); err != nil {
			b.Fatal(err)
		}
	}
}
