// Package browsertest loads a page in headless Chromium (Debian's chromium
// package) and waits, without reloading, until a condition holds in its DOM,
// then saves a full-page screenshot: the end-to-end check that bootserve's
// status page really updates live in a browser.
//
// Chromium is started with a fresh profile and a dead proxy for every host
// but the page's own, so a test never sends traffic anywhere else.
package browsertest

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// ErrNoChromium means no Chromium binary was found.
var ErrNoChromium = errors.New("chromium not found: install it (apt-get install -y chromium) or set Options.ExecPath")

// Options says what to load and what to wait for.
type Options struct {
	URL string
	// Until is a JavaScript expression polled until it is truthy, e.g.
	// MachineStage("52:54:00:12:34:56", "booted").
	Until string
	// Screenshot is where the full-page PNG goes; empty for none.
	Screenshot string
	// Timeout bounds the whole run (default 60s).
	Timeout time.Duration
	// Width and Height are the viewport in CSS pixels (default 1280×800);
	// use e.g. 390×844 for a phone.
	Width, Height int
	// ExecPath is the browser binary (default: chromium or chromium-browser
	// from PATH).
	ExecPath string
}

// Result is what the page did while it was watched.
type Result struct {
	// Console holds console messages, uncaught exceptions and browser log
	// entries (CSP violations show up here), in order.
	Console []string
	// Problems is the subset that is an error or a warning.
	Problems []string
	// Elapsed is the time from the page's load to the condition.
	Elapsed time.Duration
}

// FindChromium returns the path of the Chromium binary.
func FindChromium() (string, error) {
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", ErrNoChromium
}

// MachineStage is a condition for Options.Until: the status page's row for
// mac shows stage.
func MachineStage(mac, stage string) string {
	m, _ := json.Marshal(strings.ToLower(mac))
	s, _ := json.Marshal(stage)
	return fmt.Sprintf(`Array.from(document.querySelectorAll('#machines tr')).some(function (r) {
		return r.dataset.mac === %s && r.dataset.stage === %s &&
			r.querySelector('.pill') !== null && r.querySelector('.pill').textContent === %s;
	})`, m, s, s)
}

// Run opens o.URL in a new headless Chromium, waits until o.Until holds on
// that same page load (a reload is an error: the page must update live),
// saves the screenshot and closes the browser.
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.Timeout <= 0 {
		o.Timeout = 60 * time.Second
	}
	if o.Width <= 0 || o.Height <= 0 {
		o.Width, o.Height = 1280, 800
	}
	if o.ExecPath == "" {
		p, err := FindChromium()
		if err != nil {
			return nil, err
		}
		o.ExecPath = p
	}
	u, err := url.Parse(o.URL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("browsertest: bad URL %q: want http://host:port/path", o.URL)
	}
	profile, err := os.MkdirTemp("", "browsertest-profile-")
	if err != nil {
		return nil, fmt.Errorf("browsertest: make a browser profile directory: %w", err)
	}
	defer os.RemoveAll(profile)

	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(o.ExecPath),
		chromedp.UserDataDir(profile),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true), // tests run as root
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("no-default-browser-check", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("mute-audio", true),
		// Only the page's host is reached directly; anything else would go
		// through a proxy on a loopback port nobody listens on, and fail.
		chromedp.Flag("proxy-server", "http://127.0.0.1:9"),
		chromedp.Flag("proxy-bypass-list", bypassHost(u)),
		chromedp.WindowSize(o.Width, o.Height),
	)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(allocCtx)
	defer cancelBrowser()

	res := &Result{}
	var mu sync.Mutex
	note := func(problem bool, format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		line := fmt.Sprintf(format, args...)
		res.Console = append(res.Console, line)
		if problem {
			res.Problems = append(res.Problems, line)
		}
	}
	chromedp.ListenTarget(bctx, func(ev any) {
		switch e := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			var parts []string
			for _, a := range e.Args {
				if a.Value != nil {
					parts = append(parts, string(a.Value))
				} else {
					parts = append(parts, a.Description)
				}
			}
			note(e.Type == runtime.APITypeError || e.Type == runtime.APITypeWarning, "console.%s: %s", e.Type, strings.Join(parts, " "))
		case *runtime.EventExceptionThrown:
			msg := e.ExceptionDetails.Text
			if e.ExceptionDetails.Exception != nil {
				msg += " " + e.ExceptionDetails.Exception.Description
			}
			note(true, "exception: %s", msg)
		case *log.EventEntryAdded:
			note(e.Entry.Level == log.LevelError || e.Entry.Level == log.LevelWarning, "%s %s: %s %s", e.Entry.Source, e.Entry.Level, e.Entry.Text, e.Entry.URL)
		}
	})

	mark := rand.Text()
	if err := chromedp.Run(bctx,
		log.Enable(),
		runtime.Enable(),
		chromedp.EmulateViewport(int64(o.Width), int64(o.Height)),
		chromedp.Navigate(o.URL),
		// The mark lives as long as this page load: a reload loses it.
		chromedp.Evaluate(fmt.Sprintf("window.__browsertestMark = %q", mark), nil),
	); err != nil {
		return res, fmt.Errorf("browsertest: open %s in %s: %w", o.URL, o.ExecPath, err)
	}
	loaded := time.Now()

	if o.Until != "" {
		probe := fmt.Sprintf(`(function () {
			if (window.__browsertestMark !== %q) return "reloaded";
			try { return (%s) ? "yes" : "no"; } catch (e) { return "error: " + e; }
		})()`, mark, o.Until)
		for {
			var got string
			if err := chromedp.Run(bctx, chromedp.Evaluate(probe, &got)); err != nil {
				return res, fmt.Errorf("browsertest: evaluate the condition: %w", err)
			}
			switch {
			case got == "yes":
			case got == "reloaded":
				return res, errors.New("browsertest: the page reloaded while waiting: it must update in place")
			case strings.HasPrefix(got, "error"):
				return res, fmt.Errorf("browsertest: condition %s: %s", o.Until, got)
			default:
				select {
				case <-bctx.Done():
					return res, fmt.Errorf("browsertest: condition not met within %s: %s", o.Timeout, o.Until)
				case <-time.After(100 * time.Millisecond):
				}
				continue
			}
			break
		}
		res.Elapsed = time.Since(loaded)
	}

	if o.Screenshot != "" {
		var png []byte
		if err := chromedp.Run(bctx, chromedp.FullScreenshot(&png, 100)); err != nil {
			return res, fmt.Errorf("browsertest: screenshot: %w", err)
		}
		if err := os.WriteFile(o.Screenshot, png, 0o644); err != nil {
			return res, fmt.Errorf("browsertest: save screenshot: %w", err)
		}
	}
	// Close the browser now, so its profile directory can be removed.
	if err := chromedp.Cancel(bctx); err != nil && !errors.Is(err, context.Canceled) {
		return res, fmt.Errorf("browsertest: close the browser: %w", err)
	}
	return res, nil
}

// bypassHost is the proxy bypass entry for the page's host.
func bypassHost(u *url.URL) string {
	h := u.Hostname()
	if ip := net.ParseIP(h); ip != nil && ip.To4() == nil {
		h = "[" + h + "]"
	}
	return h
}
