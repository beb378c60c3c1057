package status

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"math"
	"net/http"
	"path"
	"strings"
	"time"
)

// assets is the page: everything it loads comes from here, so it works on a
// network without Internet access and under a strict CSP.
//
//go:embed assets
var assets embed.FS

// contentSecurityPolicy allows only this server's own files: no inline
// script or style, no other origin. Data from the network is rendered as
// text (html/template here, textContent in app.js), and the CSP is the second
// line of defence.
const contentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Handler serves the status page. Its URLs are relative, so it can be
// mounted under a prefix: mux.Handle("/status/", http.StripPrefix("/status", t.Handler())).
//
//	/             the page (rendered on the server, then kept live by app.js)
//	/status.json  a Snapshot
//	/events       server-sent events: a Snapshot per change, at most
//	              1/Options.SSEInterval per client, a comment line as heartbeat
//	/static/...   app.js, app.css, icon.png
func (t *Tracker) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", t.servePage)
	mux.HandleFunc("GET /status.json", t.serveJSON)
	mux.HandleFunc("GET /events", t.serveEvents)
	mux.Handle("GET /static/{name}", staticHandler())
	return securityHeaders(mux)
}

func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", contentSecurityPolicy)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("X-Frame-Options", "DENY")
		h.ServeHTTP(w, r)
	})
}

func (t *Tracker) servePage(w http.ResponseWriter, r *http.Request) {
	var b bytes.Buffer
	if err := t.page.ExecuteTemplate(&b, "page.html", t.Snapshot()); err != nil {
		t.log.Error("render status page", "err", err)
		http.Error(w, "cannot render the status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(b.Bytes())
}

func (t *Tracker) serveJSON(w http.ResponseWriter, r *http.Request) {
	js, _, _ := t.current(0)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(withNow(js, time.Now()))
	w.Write([]byte("\n"))
}

// current returns the snapshot JSON (without "now"), its version and the
// channel that is closed at the next change. The JSON is made once per
// version however many clients watch, and, when maxAge > 0, at most once
// per maxAge: streams then get a JSON up to maxAge old, with the (closed)
// channel of its version, so they come back for the newer state.
func (t *Tracker) current(maxAge time.Duration) (js []byte, ver uint64, changed <-chan struct{}) {
	t.mu.Lock()
	ver = t.version
	t.cacheMu.Lock()
	if t.cacheJS != nil && (t.cacheVer == ver || time.Since(t.cacheAt) < maxAge) {
		js, ver, changed = t.cacheJS, t.cacheVer, t.cacheChanged
		t.cacheMu.Unlock()
		t.mu.Unlock()
		return js, ver, changed
	}
	t.cacheMu.Unlock()
	t.mu.Unlock()
	recs := t.leaseRecords()
	t.mu.Lock()
	ver, changed = t.version, t.changedLocked()
	s := t.snapshotLocked(recs)
	t.mu.Unlock()
	s.Now = time.Time{}
	js, err := json.Marshal(s)
	if err != nil {
		// Only plain values are in a Snapshot; this cannot happen.
		panic(fmt.Sprintf("status: marshal snapshot: %v", err))
	}
	t.cacheMu.Lock()
	if ver >= t.cacheVer {
		t.cacheVer, t.cacheJS, t.cacheChanged, t.cacheAt = ver, js, changed, time.Now()
	}
	t.cacheMu.Unlock()
	return js, ver, changed
}

// withNow puts the server time first in a snapshot object.
func withNow(js []byte, now time.Time) []byte {
	b := make([]byte, 0, len(js)+48)
	b = append(b, `{"now":"`...)
	b = now.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `",`...)
	return append(b, js[1:]...)
}

func (t *Tracker) serveEvents(w http.ResponseWriter, r *http.Request) {
	select {
	case t.sse <- struct{}{}:
	default:
		w.Header().Set("Retry-After", "30")
		http.Error(w, "too many open status streams; the page polls /status.json instead", http.StatusServiceUnavailable)
		t.log.Debug("status stream refused: limit reached", "limit", cap(t.sse), "remote", r.RemoteAddr)
		return
	}
	defer func() { <-t.sse }()

	rc := http.NewResponseController(w)
	// A server WriteTimeout would end the stream: each write pushes the
	// deadline past the next heartbeat instead. Errors mean "unsupported by
	// this writer" and change nothing.
	defer rc.SetWriteDeadline(time.Time{})
	send := func(p []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(t.opts.Heartbeat + 10*time.Second))
		if _, err := w.Write(p); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	if !send([]byte("retry: 2000\n\n")) {
		return
	}
	ctx := r.Context()
	hb := time.NewTicker(t.opts.Heartbeat)
	defer hb.Stop()
	for {
		// Half the interval: with many streams, at most two JSON builds per
		// interval, whatever the number of clients and events.
		js, ver, changed := t.current(t.opts.SSEInterval / 2)
		var msg bytes.Buffer
		fmt.Fprintf(&msg, "id: %d\ndata: ", ver)
		msg.Write(withNow(js, time.Now()))
		msg.WriteString("\n\n")
		if !send(msg.Bytes()) {
			return
		}
		sent := time.Now()
		hb.Reset(t.opts.Heartbeat)
	wait:
		for {
			select {
			case <-ctx.Done():
				return
			case <-hb.C:
				if !send([]byte(": heartbeat\n\n")) {
					return
				}
			case <-changed:
				break wait
			}
		}
		// Throttle: changes during the pause are merged into one update.
		if d := t.opts.SSEInterval - time.Since(sent); d > 0 {
			pause := time.NewTimer(d)
			select {
			case <-ctx.Done():
				pause.Stop()
				return
			case <-pause.C:
			}
		}
	}
}

// staticHandler serves the embedded files under assets/static, and nothing
// else (no directory listings).
func staticHandler() http.Handler {
	type file struct {
		data  []byte
		ctype string
		etag  string
	}
	files := map[string]file{}
	types := map[string]string{".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png"}
	entries, _ := fs.ReadDir(assets, "assets/static")
	for _, e := range entries {
		data, err := fs.ReadFile(assets, "assets/static/"+e.Name())
		if err != nil {
			continue
		}
		sum := sha256.Sum256(data)
		files[e.Name()] = file{data: data, ctype: types[path.Ext(e.Name())], etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, ok := files[r.PathValue("name")]
		if !ok || f.ctype == "" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", f.ctype)
		w.Header().Set("ETag", f.etag)
		w.Header().Set("Cache-Control", "no-cache")
		if r.Header.Get("If-None-Match") == f.etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Write(f.data)
	})
}

// parsePage parses the page template; the template is part of the binary,
// so an error is a build mistake that every test catches.
func parsePage() *template.Template {
	return template.Must(template.New("page.html").Funcs(template.FuncMap{
		"clock": func(t time.Time) string {
			if t.IsZero() {
				return ""
			}
			return t.Local().Format("15:04:05")
		},
		"iso":     func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) },
		"seconds": durText,
		"elapsed": func(m Machine, now time.Time) string {
			if m.BootSeconds > 0 {
				return durText(m.BootSeconds)
			}
			return durText(now.Sub(m.Start).Seconds())
		},
		"rel":        func(at, now time.Time) string { return relText(at.Sub(now).Seconds()) },
		"size":       sizeText,
		"xfer":       transferText,
		"pct":        func(x *Transfer) int64 { return percent(x) },
		"stageClass": stageClass,
		"stageName": func(s Stage) string {
			if s == "" {
				return "seen"
			}
			return string(s)
		},
		"live": func(m Machine) bool { return m.Stage != StageBooted && m.Stage != StageIgnored },
		"join": func(ports []int) string {
			var p []string
			for _, n := range ports {
				p = append(p, fmt.Sprint(n))
			}
			return strings.Join(p, ", ")
		},
	}).ParseFS(assets, "assets/page.html"))
}

func stageClass(s Stage) string {
	if rank(s) > 0 || s == StageIgnored {
		return "pill s-" + string(s)
	}
	return "pill s-none"
}

func percent(x *Transfer) int64 {
	if x == nil || x.Size <= 0 {
		return 0
	}
	return min(100, x.Bytes*100/x.Size)
}

// transferText is "42.0 / 120.0 MB · 30.1 MB/s"; app.js has the same.
func transferText(x *Transfer) string {
	if x == nil {
		return ""
	}
	var s string
	if x.Size > 0 {
		s = fmt.Sprintf("%.1f / %.1f MB", float64(x.Bytes)/1e6, float64(x.Size)/1e6)
	} else {
		s = fmt.Sprintf("%.1f MB", float64(x.Bytes)/1e6)
	}
	if x.BytesPerSec > 0 {
		s += fmt.Sprintf(" · %.1f MB/s", x.BytesPerSec/1e6)
	}
	return s
}

// durText is "4.21s", "42.1s", "3m07s"; app.js has the same.
func durText(sec float64) string {
	switch {
	case sec < 0:
		sec = 0
	case sec >= 60:
		m := math.Floor(sec / 60)
		return fmt.Sprintf("%.0fm%02.0fs", m, math.Floor(sec-60*m))
	}
	if sec < 10 {
		return fmt.Sprintf("%.2fs", sec)
	}
	return fmt.Sprintf("%.1fs", sec)
}

// relText is "in 59m12s" or "3m07s ago" for a time sec seconds away; app.js
// has the same.
func relText(sec float64) string {
	ago := sec < 0
	n := int64(math.Abs(sec))
	var s string
	switch {
	case n < 60:
		s = fmt.Sprintf("%ds", n)
	case n < 3600:
		s = fmt.Sprintf("%dm%02ds", n/60, n%60)
	case n < 86400:
		s = fmt.Sprintf("%dh%02dm", n/3600, n%3600/60)
	default:
		s = fmt.Sprintf("%dd%02dh", n/86400, n%86400/3600)
	}
	if ago {
		return s + " ago"
	}
	return "in " + s
}
