package httpboot

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/machines"
)

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type fixture struct {
	srv  *Server
	url  string // http://127.0.0.1:port
	logs *logBuffer
	dir  string
}

func newFixture(t *testing.T, b machines.Booter) *fixture {
	t.Helper()
	return newFixtureWith(t, b, nil)
}

// newFixtureWith lets a test set options (event hooks, limits) before the
// server starts.
func newFixtureWith(t *testing.T, b machines.Booter, setOpts func(*Options)) *fixture {
	t.Helper()
	logs := &logBuffer{}
	dir := t.TempDir()
	fwdir := t.TempDir()
	for _, n := range []string{firmware.UndionlyKPXE, firmware.SNPOnlyEFI} {
		os.WriteFile(filepath.Join(fwdir, n), []byte("firmware "+n), 0o644)
	}
	fw, err := firmware.Load(firmware.Config{SearchDir: fwdir})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	opts := Options{Port: port, Logger: slog.New(slog.NewTextHandler(logs, nil))}
	if setOpts != nil {
		setOpts(&opts)
	}
	srv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv.SetPolicy(&Policy{Booter: b, Firmware: fw})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &fixture{srv: srv, url: fmt.Sprintf("http://127.0.0.1:%d", port), logs: logs, dir: dir}
}

func get(t *testing.T, url string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

var urlRE = regexp.MustCompile(`http://\S+`)

func TestKernelScriptAndFiles(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinuz")
	initrd := filepath.Join(dir, "initrd.gz")
	initrd2 := filepath.Join(t.TempDir(), "initrd.gz") // same base name
	kdata := make([]byte, 3<<20+17)
	rand.Read(kdata)
	os.WriteFile(kernel, kdata, 0o644)
	os.WriteFile(initrd, []byte("first initrd"), 0o644)
	os.WriteFile(initrd2, []byte("second initrd"), 0o644)
	f := newFixture(t, machines.Static{T: machines.Target{
		Kind: machines.KindKernel, Name: "demo", Kernel: kernel, Initrds: []string{initrd, initrd2},
		Cmdline: "console=ttyS0 mac={{.MAC}} arch={{.Arch}} uuid={{.UUID}} ip={{.IP}} url={{.URL}}",
	}})
	scriptURL := f.srv.ScriptURL(netip.MustParseAddr("127.0.0.1"), machines.Identity{
		MAC: net.HardwareAddr{0x52, 0x54, 0, 1, 2, 3}, Arch: firmware.EFIX64, UUID: "8c2c8a3e-1f2b-4c5d-9e6f-0a1b2c3d4e5f"})
	if !strings.Contains(scriptURL, "mac=52:54:00:01:02:03") || !strings.Contains(scriptURL, "arch=efi-x64") {
		t.Errorf("script URL %s", scriptURL)
	}
	resp, body := get(t, scriptURL)
	script := string(body)
	if resp.StatusCode != 200 || !strings.HasPrefix(script, "#!ipxe\n") {
		t.Fatalf("script %d:\n%s", resp.StatusCode, script)
	}
	lines := strings.Split(script, "\n")
	var kernelLine string
	var initrdLines []string
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "kernel "):
			kernelLine = l
		case strings.HasPrefix(l, "initrd "):
			initrdLines = append(initrdLines, l)
		}
	}
	wantArgs := fmt.Sprintf(" initrd=initrd.gz initrd=1-initrd.gz console=ttyS0 mac=52:54:00:01:02:03 arch=efi-x64 uuid=8c2c8a3e-1f2b-4c5d-9e6f-0a1b2c3d4e5f ip=127.0.0.1 url=%s || goto failed", f.url)
	if !strings.HasSuffix(kernelLine, wantArgs) || !strings.Contains(kernelLine, "/vmlinuz ") {
		t.Errorf("kernel line:\n%s\nwant suffix:\n%s", kernelLine, wantArgs)
	}
	if len(initrdLines) != 2 || !strings.Contains(initrdLines[0], "/initrd.gz ") || !strings.Contains(initrdLines[1], "/1-initrd.gz ") {
		t.Errorf("initrd lines %q", initrdLines)
	}
	if !strings.Contains(script, ":failed\n") || !strings.Contains(script, "chain --autofree "+scriptURL) {
		t.Errorf("no retry tail:\n%s", script)
	}
	// Every URL the script names serves the right bytes.
	kURL := urlRE.FindString(kernelLine)
	resp, got := get(t, kURL)
	if resp.StatusCode != 200 || !bytes.Equal(got, kdata) || resp.ContentLength != int64(len(kdata)) {
		t.Fatalf("kernel: %d, %d bytes, content-length %d", resp.StatusCode, len(got), resp.ContentLength)
	}
	for i, want := range []string{"first initrd", "second initrd"} {
		resp, got := get(t, urlRE.FindString(initrdLines[i]))
		if resp.StatusCode != 200 || string(got) != want {
			t.Errorf("initrd %d: %d %q", i, resp.StatusCode, got)
		}
	}
	// HEAD gives the length without a body; Range gives a slice.
	hr, err := http.Head(kURL)
	if err != nil || hr.StatusCode != 200 || hr.ContentLength != int64(len(kdata)) || hr.Header.Get("Accept-Ranges") != "bytes" {
		t.Errorf("HEAD: %v %v", hr, err)
	}
	for _, c := range []struct {
		hdr        string
		code       int
		start, end int // expected slice
	}{
		{"bytes=0-0", 206, 0, 1},
		{"bytes=1000-1999", 206, 1000, 2000},
		{"bytes=3145700-", 206, 3145700, len(kdata)},
		{"bytes=-10", 206, len(kdata) - 10, len(kdata)},
		{"bytes=5-999999999", 206, 5, len(kdata)},
		{"bytes=0-1,5-9", 200, 0, len(kdata)}, // several ranges: whole file
		{"bytes=99999999-", 416, 0, 0},
	} {
		resp, got := get(t, kURL, "Range", c.hdr)
		if resp.StatusCode != c.code {
			t.Errorf("Range %s: status %d, want %d", c.hdr, resp.StatusCode, c.code)
			continue
		}
		if c.code == 416 {
			if resp.Header.Get("Content-Range") != fmt.Sprintf("bytes */%d", len(kdata)) {
				t.Errorf("416 Content-Range %q", resp.Header.Get("Content-Range"))
			}
			continue
		}
		if !bytes.Equal(got, kdata[c.start:c.end]) {
			t.Errorf("Range %s: got %d bytes, want [%d,%d)", c.hdr, len(got), c.start, c.end)
		}
	}
	// Metrics counted the script and the file requests.
	if n := testutil.ToFloat64(f.srv.m.Requests.WithLabelValues("script", "200")); n != 1 {
		t.Errorf("script requests counted %v", n)
	}
	if n := testutil.ToFloat64(f.srv.m.Bytes.WithLabelValues("file")); n < float64(2*len(kdata)) {
		t.Errorf("file bytes counted %v", n)
	}
	if !regexp.MustCompile(`msg=http method=GET path="/ipxe\?[^"]*" status=200 .*route=script`).MatchString(f.logs.String()) {
		t.Errorf("no access log line for the script:\n%s", f.logs)
	}
}

func TestTamperedAndMissingFiles(t *testing.T) {
	dir := t.TempDir()
	k := filepath.Join(dir, "vmlinuz")
	os.WriteFile(k, []byte("kernel"), 0o644)
	f := newFixture(t, machines.Static{T: machines.Target{Kind: machines.KindKernel, Name: "x", Kernel: k}})
	good := f.srv.fileURL(f.url, k, "vmlinuz", "")
	if resp, _ := get(t, good); resp.StatusCode != 200 {
		t.Fatalf("good URL: %d", resp.StatusCode)
	}
	tok := strings.Split(strings.TrimPrefix(good, f.url+"/f/"), "/")[0]
	payload, sig, _ := strings.Cut(tok, ".")
	other := f.srv.signer.sign(fileRef{Src: "/etc/passwd"})
	otherPayload, _, _ := strings.Cut(other, ".")
	for name, u := range map[string]string{
		"no signature":    f.url + "/f/" + payload + "/vmlinuz",
		"swapped payload": f.url + "/f/" + otherPayload + "." + sig + "/passwd",
		"garbage":         f.url + "/f/abc.def/x",
		"empty signature": f.url + "/f/" + payload + "./vmlinuz",
	} {
		if resp, _ := get(t, u); resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: status %d, want 403", name, resp.StatusCode)
		}
	}
	os.Remove(k)
	if resp, _ := get(t, good); resp.StatusCode != 404 {
		t.Errorf("missing file: %d", resp.StatusCode)
	}
	if !strings.Contains(f.logs.String(), "open boot file") {
		t.Error("no log line for the missing file")
	}
	// Bad script requests get a clear 400.
	if resp, body := get(t, f.url+"/ipxe?mac=zz"); resp.StatusCode != 400 || !strings.Contains(string(body), "not a MAC") {
		t.Errorf("bad mac: %d %s", resp.StatusCode, body)
	}
}

func TestRemoteFilesAndSSRF(t *testing.T) {
	var hits atomic.Int32
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.ServeContent(w, r, "k", time.Time{}, strings.NewReader("remote kernel bytes"))
	}))
	defer upstream.Close()
	f := newFixture(t, machines.Static{T: machines.Target{Kind: machines.KindKernel, Name: "remote", Kernel: upstream.URL + "/boot/vmlinuz"}})
	resp, body := get(t, f.srv.ScriptURL(netip.MustParseAddr("127.0.0.1"), machines.Identity{MAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}}))
	u := urlRE.FindString(string(body))
	if resp.StatusCode != 200 || !strings.Contains(u, "/vmlinuz") {
		t.Fatalf("script: %s", body)
	}
	resp, got := get(t, u)
	if resp.StatusCode != 200 || string(got) != "remote kernel bytes" || hits.Load() != 1 {
		t.Fatalf("remote: %d %q hits %d", resp.StatusCode, got, hits.Load())
	}
	resp, got = get(t, u, "Range", "bytes=7-12")
	if resp.StatusCode != 206 || string(got) != "kernel" {
		t.Errorf("remote range: %d %q", resp.StatusCode, got)
	}
	// A URL bootserve did not sign, or one tampered to point elsewhere, is
	// refused before anything is fetched.
	before := hits.Load()
	forged := f.url + "/f/" + base64Ref(upstream.URL+"/secret") + ".AAAAAAAAAAAAAAAAAAAAAA/x"
	tok := strings.Split(strings.TrimPrefix(u, f.url+"/f/"), "/")[0]
	_, sig, _ := strings.Cut(tok, ".")
	tampered := f.url + "/f/" + base64Ref(upstream.URL+"/other") + "." + sig + "/x"
	for _, bad := range []string{forged, tampered} {
		if resp, _ := get(t, bad); resp.StatusCode != http.StatusForbidden {
			t.Errorf("unsigned remote URL: %d", resp.StatusCode)
		}
	}
	if hits.Load() != before {
		t.Errorf("bootserve made %d outgoing requests for forged URLs", hits.Load()-before)
	}
}

// base64Ref is a well-formed token payload for src, for forging tokens.
func base64Ref(src string) string {
	return base64.RawURLEncoding.EncodeToString(encodeRef(fileRef{Src: src}))
}

// TestTransferEvents checks what the status page is told about file
// transfers: a start and a done for every file larger than a chunk, one done
// event with the start time for a smaller one, with the machine, sizes and
// status; progress only while a transfer still has bytes to send.
func TestTransferEvents(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinuz")
	initrd := filepath.Join(dir, "initrd.gz")
	kdata := make([]byte, 3<<20+17)
	rand.Read(kdata)
	os.WriteFile(kernel, kdata, 0o644)
	os.WriteFile(initrd, []byte("small initrd"), 0o644)
	var mu sync.Mutex
	var events []Event
	done := make(chan Event, 16)
	f := newFixtureWith(t, machines.Static{T: machines.Target{Kind: machines.KindKernel, Name: "demo", Kernel: kernel, Initrds: []string{initrd}}},
		func(o *Options) {
			o.OnEvent = func(e Event) {
				if e.Stage == StageScript {
					return
				}
				mu.Lock()
				events = append(events, e)
				mu.Unlock()
				if e.Phase == "done" {
					done <- e
				}
			}
		})
	mac := net.HardwareAddr{0x52, 0x54, 0, 1, 2, 3}
	_, body := get(t, f.srv.ScriptURL(netip.MustParseAddr("127.0.0.1"), machines.Identity{MAC: mac, Arch: firmware.EFIX64}))
	urls := map[string]string{}
	for _, u := range urlRE.FindAllString(string(body), -1) {
		urls[u[strings.LastIndexByte(u, '/')+1:]] = u
	}
	fetch := func(name string, hdr ...string) []Event {
		t.Helper()
		mu.Lock()
		events = nil
		mu.Unlock()
		get(t, urls[name], hdr...)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no done event", name)
		}
		mu.Lock()
		defer mu.Unlock()
		return append([]Event(nil), events...)
	}
	phases := func(evs []Event) string {
		var p []string
		for _, e := range evs {
			p = append(p, e.Phase)
		}
		return strings.Join(p, ",")
	}

	before := time.Now()
	evs := fetch("initrd.gz")
	if got := phases(evs); got != "done" {
		t.Fatalf("small file: phases %s, want done", got)
	}
	last := evs[len(evs)-1]
	if last.MAC != mac.String() || last.Stage != StageInitrd || last.Size != 12 || last.Bytes != 12 || last.Status != 200 || last.Err != "" || !last.IP.IsLoopback() {
		t.Errorf("small file done event %+v", last)
	}
	if last.Start.Before(before) || last.Start.After(time.Now()) {
		t.Errorf("small file done event: start %v, want the time of the request (after %v)", last.Start, before)
	}

	evs = fetch("vmlinuz")
	if got := phases(evs); got != "start,progress,done" {
		t.Fatalf("3 MiB file: phases %s, want start,progress,done (one report per 250 ms)", got)
	}
	if p := evs[1]; p.Bytes != chunk || p.Size != int64(len(kdata)) || p.Stage != StageKernel {
		t.Errorf("progress event %+v, want %d of %d bytes", p, chunk, len(kdata))
	}
	if d := evs[2]; d.Bytes != int64(len(kdata)) || d.Status != 200 || !d.Start.IsZero() {
		t.Errorf("3 MiB file done event %+v (its start came in a start event)", d)
	}

	evs = fetch("vmlinuz", "Range", "bytes=100-109")
	if evs[0].Phase != "start" || evs[len(evs)-1].Phase != "done" {
		t.Fatalf("range: phases %s", phases(evs))
	}
	if d := evs[len(evs)-1]; d.Bytes != 10 || d.Status != http.StatusPartialContent {
		t.Errorf("range done event %+v, want 10 bytes, 206", d)
	}
}
