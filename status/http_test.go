package status

import (
	"bufio"
	"context"
	"encoding/json"
	"html"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bootserve/bootserve/dhcpproxy"
	"github.com/bootserve/bootserve/httpboot"
)

const hostile = `<script>alert(1)</script><img src=x onerror=alert(2)>`

// newServer serves h on loopback until the test and its streams end.
func newServer(t *testing.T, h http.Handler) *httptest.Server {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// stream reads server-sent events from a real HTTP connection.
type stream struct {
	t      *testing.T
	resp   *http.Response
	cancel context.CancelFunc
	lines  chan string
}

func openStream(t *testing.T, url string) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	s := &stream{t: t, resp: resp, cancel: cancel, lines: make(chan string, 1024)}
	if resp.StatusCode != http.StatusOK {
		return s
	}
	go func() {
		defer close(s.lines)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		for sc.Scan() {
			select {
			case s.lines <- sc.Text():
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *stream) close() {
	s.cancel()
	s.resp.Body.Close()
}

// next returns the next line starting with prefix, skipping others.
func (s *stream) next(prefix string, timeout time.Duration) (string, bool) {
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				return "", false
			}
			if rest, ok := strings.CutPrefix(l, prefix); ok {
				return rest, true
			}
		case <-deadline:
			return "", false
		}
	}
}

func (s *stream) snapshot(timeout time.Duration) Snapshot {
	s.t.Helper()
	data, ok := s.next("data: ", timeout)
	if !ok {
		s.t.Fatal("no update on the stream")
	}
	var snap Snapshot
	if err := json.Unmarshal([]byte(data), &snap); err != nil {
		s.t.Fatalf("bad update %q: %v", data, err)
	}
	return snap
}

func hostileEvent(t *testing.T) dhcpproxy.Event {
	return dhcpproxy.Event{Time: time.Now(), MAC: mustMAC(t, "52:54:00:66:66:66"), ArchName: hostile, Hostname: hostile,
		UserClass: hostile, VendorClass: hostile, MsgType: "discover", Port: 67, Outcome: dhcpproxy.IgnoredNoTarget, Reason: hostile}
}

func TestSnapshotJSON(t *testing.T) {
	tr := New(Options{})
	tr.SetConfigSummary(ConfigSummary{Version: "v1.2.3", Interface: "eth0", Address: "10.0.0.1",
		Services: []Service{{Name: "ProxyDHCP", Ports: []int{67, 4011}}}, Rules: 3})
	b := newBoot(t, tr, "52:54:00:00:00:50", "10.0.0.50", time.Now())
	b.dhcp(0, "discover", "", false, dhcpproxy.Answered)
	srv := newServer(t, tr.Handler())

	resp, body := get(t, srv.URL+"/status.json")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("%d %v", resp.StatusCode, resp.Header)
	}
	var s Snapshot
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	if time.Since(s.Now) > time.Minute || s.Version == 0 || s.Config.Version != "v1.2.3" || s.Config.Services[0].Ports[1] != 4011 ||
		len(s.Machines) != 1 || s.Machines[0].MAC != "52:54:00:00:00:50" || s.Machines[0].Stage != StageOffered ||
		s.Machines[0].Hostname != "node1" || len(s.Events) != 1 {
		t.Fatalf("%+v", s)
	}
	// The version moves with each change, and the cached JSON with it.
	b.script(1)
	_, body = get(t, srv.URL+"/status.json")
	var s2 Snapshot
	json.Unmarshal([]byte(body), &s2)
	if s2.Version <= s.Version || s2.Machines[0].Stage != StageScript {
		t.Fatalf("after a change: %+v", s2)
	}
}

func TestStreamDeliversUpdates(t *testing.T) {
	tr := New(Options{Heartbeat: 200 * time.Millisecond})
	srv := newServer(t, tr.Handler())
	s := openStream(t, srv.URL+"/events")
	if s.resp.StatusCode != 200 || s.resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("%d %v", s.resp.StatusCode, s.resp.Header)
	}
	if first := s.snapshot(5 * time.Second); len(first.Machines) != 0 {
		t.Fatalf("first message: %+v", first)
	}
	b := newBoot(t, tr, "52:54:00:00:00:60", "10.0.0.60", time.Now())
	b.dhcp(0, "discover", "iPXE", false, dhcpproxy.Answered)
	snap := s.snapshot(5 * time.Second)
	if len(snap.Machines) != 1 || snap.Machines[0].MAC != "52:54:00:00:00:60" || snap.Machines[0].Stage != StageOffered {
		t.Fatalf("%+v", snap)
	}
	// Idle: only heartbeats.
	if _, ok := s.next(": heartbeat", 5*time.Second); !ok {
		t.Fatal("no heartbeat on an idle stream")
	}
}

// A client gets at most one update per SSEInterval however fast events
// come, and the last update holds the last state.
func TestStreamThrottles(t *testing.T) {
	tr := New(Options{SSEInterval: 250 * time.Millisecond})
	srv := newServer(t, tr.Handler())
	s := openStream(t, srv.URL+"/events")
	s.snapshot(5 * time.Second)

	b := newBoot(t, tr, "52:54:00:00:00:61", "10.0.0.61", time.Now())
	b.dhcp(0, "discover", "iPXE", false, dhcpproxy.Answered)
	mac := b.mac.String()
	tr.HTTP(httpboot.Event{Stage: httpboot.StageInitrd, Phase: "start", MAC: mac, Name: "initrd", Size: 1 << 30})
	start := time.Now()
	var sent int64
	for time.Since(start) < time.Second {
		sent += 1 << 20
		tr.HTTP(httpboot.Event{Stage: httpboot.StageInitrd, Phase: "progress", MAC: mac, Name: "initrd", Size: 1 << 30, Bytes: sent})
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	var got []Snapshot
	for {
		data, ok := s.next("data: ", 600*time.Millisecond)
		if !ok {
			break
		}
		var snap Snapshot
		json.Unmarshal([]byte(data), &snap)
		got = append(got, snap)
	}
	max := int(elapsed/(250*time.Millisecond)) + 2
	if len(got) < 2 || len(got) > max {
		t.Fatalf("%d updates for %s of events at 1 kHz, want 2..%d", len(got), elapsed, max)
	}
	last := got[len(got)-1].Machines[0].Transfer
	if last == nil || last.Bytes != sent {
		t.Fatalf("last update has %+v, want %d bytes", last, sent)
	}
}

// Server timeouts meant for boot files must not cut the stream.
func TestStreamOutlivesServerTimeouts(t *testing.T) {
	tr := New(Options{Heartbeat: 100 * time.Millisecond})
	srv := httptest.NewUnstartedServer(tr.Handler())
	srv.Config.ReadTimeout = 300 * time.Millisecond
	srv.Config.WriteTimeout = 300 * time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	s := openStream(t, srv.URL+"/events")
	s.snapshot(5 * time.Second)
	for i := range 15 { // 1.5s: five times each timeout
		if _, ok := s.next(": heartbeat", 2*time.Second); !ok {
			t.Fatalf("stream ended after %d heartbeats", i)
		}
	}
	tr.Error("test", "still here")
	if snap := s.snapshot(5 * time.Second); len(snap.Errors) != 1 {
		t.Fatalf("%+v", snap)
	}
}

func TestStreamClientLimit(t *testing.T) {
	tr := New(Options{MaxSSEClients: 2})
	srv := newServer(t, tr.Handler())
	a := openStream(t, srv.URL+"/events")
	b := openStream(t, srv.URL+"/events")
	a.snapshot(5 * time.Second)
	b.snapshot(5 * time.Second)
	c := openStream(t, srv.URL+"/events")
	c.resp.Body.Close()
	if c.resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("third stream: %d", c.resp.StatusCode)
	}
	// A client that goes away frees its slot.
	a.close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		d := openStream(t, srv.URL+"/events")
		if d.resp.StatusCode == http.StatusOK {
			d.snapshot(5 * time.Second)
			break
		}
		d.resp.Body.Close()
		if time.Now().After(deadline) {
			t.Fatal("the slot of a disconnected client was not freed")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPageEscapesNetworkData(t *testing.T) {
	tr := New(Options{})
	tr.DHCP(hostileEvent(t))
	tr.HTTP(httpboot.Event{Stage: httpboot.StageScript, Phase: "done", MAC: "52:54:00:66:66:66", Target: hostile, Status: 200})
	tr.HTTP(httpboot.Event{Stage: httpboot.StageInitrd, Phase: "start", MAC: "52:54:00:66:66:66", Name: hostile, Size: 10})
	tr.Error(hostile, hostile)
	srv := newServer(t, tr.Handler())

	resp, page := get(t, srv.URL+"/")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("%d %v", resp.StatusCode, resp.Header)
	}
	for _, bad := range []string{"<script>alert", "<img", "onerror=alert(2)>"} {
		if strings.Contains(page, bad) {
			t.Fatalf("page contains %q unescaped:\n%s", bad, page)
		}
	}
	escaped := html.EscapeString(hostile) // &lt;script&gt;...
	// hostname, user class, reason, target, file name, error source and message
	if n := strings.Count(page, escaped); n < 6 {
		t.Fatalf("escaped text appears %d times, want it in every field:\n%s", n, page)
	}
	// The arch detail sits in an attribute.
	if !strings.Contains(page, `title="`+escaped+`"`) {
		t.Fatalf("attribute not escaped as expected:\n%s", page)
	}

	resp, body := get(t, srv.URL+"/status.json")
	if strings.Contains(body, "<script>") || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("JSON carries raw markup or a wrong type: %v %s", resp.Header, body)
	}
	var s Snapshot
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatal(err)
	}
	if m := s.Machines[0]; m.Hostname != hostile || m.UserClass != hostile || m.Target != hostile || m.Transfer.Name != hostile {
		t.Fatalf("JSON must carry the data as sent: %+v", m)
	}
}

func TestSecurityHeadersAndAssets(t *testing.T) {
	tr := New(Options{})
	srv := newServer(t, tr.Handler())
	for path, ctype := range map[string]string{
		"/":                "text/html; charset=utf-8",
		"/status.json":     "application/json",
		"/static/app.js":   "text/javascript; charset=utf-8",
		"/static/app.css":  "text/css; charset=utf-8",
		"/static/icon.png": "image/png",
	} {
		resp, body := get(t, srv.URL+path)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != ctype || body == "" {
			t.Errorf("%s: %d %q", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		csp := resp.Header.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("%s: CSP %q lacks %q", path, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe") {
			t.Errorf("%s: CSP allows unsafe sources: %q", path, csp)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: no nosniff", path)
		}
	}
	for _, path := range []string{"/static/", "/static/page.html", "/static/../page.html", "/nope"} {
		if resp, _ := get(t, srv.URL+path); resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", path, resp.StatusCode)
		}
	}
	// Revalidation of the static files.
	req, _ := http.NewRequest("GET", srv.URL+"/static/app.js", nil)
	resp, _ := get(t, srv.URL+"/static/app.js")
	req.Header.Set("If-None-Match", resp.Header.Get("ETag"))
	r2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match: %d", r2.StatusCode)
	}
}

// The page must work with no Internet access and under the CSP: no
// external URL, no inline script or style, no HTML built from strings.
func TestAssetsAreSelfContained(t *testing.T) {
	external := regexp.MustCompile(`(?i)https?:|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(`)
	err := fs.WalkDir(assets, "assets", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(assets, path)
		if err != nil {
			return err
		}
		if loc := external.FindIndex(b); loc != nil {
			t.Errorf("%s refers to something outside the server: %q", path, b[loc[0]:min(len(b), loc[1]+40)])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	js, _ := fs.ReadFile(assets, "assets/static/app.js")
	for _, sink := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"} {
		if strings.Contains(string(js), sink) {
			t.Errorf("app.js uses %s: build DOM with textContent", sink)
		}
	}

	tr := New(Options{})
	b := newBoot(t, tr, "52:54:00:00:00:70", "10.0.0.70", time.Now())
	b.dhcp(0, "discover", "", false, dhcpproxy.Answered) // boot file without a URL
	b.script(1)
	tr.HTTP(httpboot.Event{Stage: httpboot.StageInitrd, Phase: "start", MAC: b.mac.String(), Name: "initrd", Size: 10})
	srv := newServer(t, tr.Handler())
	_, page := get(t, srv.URL+"/")
	for _, tag := range regexp.MustCompile(`<script[^>]*>`).FindAllString(page, -1) {
		if !strings.Contains(tag, `src="static/app.js"`) {
			t.Errorf("inline or foreign script: %s", tag)
		}
	}
	if strings.Contains(page, "<style") || regexp.MustCompile(`\s(style|on[a-z]+)=`).MatchString(page) {
		t.Errorf("inline style or event handler in the page, which the CSP blocks")
	}
	if !strings.Contains(page, `<meta name="viewport"`) || !strings.Contains(page, `<progress max="100" value="0">`) {
		t.Errorf("page lacks the viewport or the progress bar:\n%s", page)
	}
	if external.MatchString(page) {
		t.Errorf("rendered page refers to another server:\n%s", page)
	}
}

// Mounted under a prefix, the page's relative URLs still resolve.
func TestHandlerUnderPrefix(t *testing.T) {
	tr := New(Options{})
	mux := http.NewServeMux()
	mux.Handle("/status/", http.StripPrefix("/status", tr.Handler()))
	srv := newServer(t, mux)
	for _, p := range []string{"/status/", "/status/static/app.js", "/status/status.json"} {
		if resp, _ := get(t, srv.URL+p); resp.StatusCode != 200 {
			t.Errorf("%s: %d", p, resp.StatusCode)
		}
	}
	s := openStream(t, srv.URL+"/status/events")
	s.snapshot(5 * time.Second)
}

func TestDurText(t *testing.T) {
	for sec, want := range map[float64]string{-1: "0.00s", 0: "0.00s", 4.214: "4.21s", 42.12: "42.1s", 60: "1m00s", 187.9: "3m07s", 3600: "60m00s"} {
		if got := durText(sec); got != want {
			t.Errorf("durText(%v) = %q, want %q", sec, got, want)
		}
	}
}
