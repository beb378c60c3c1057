package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"

	"github.com/bootserve/bootserve/cpiocache"
	"github.com/bootserve/bootserve/httpboot"
	"github.com/bootserve/bootserve/machines"
)

// nixTargets lists the Nix targets of a booter (rules, default, menu
// entries), for warming.
func nixTargets(b machines.Booter) []*machines.Target {
	var all []*machines.Target
	switch t := b.(type) {
	case machines.Static:
		all = append(all, &t.T)
	case *machines.Table:
		for i := range t.Rules {
			all = append(all, &t.Rules[i].Target)
		}
		if t.Default != nil {
			all = append(all, t.Default)
		}
	}
	var out []*machines.Target
	for _, t := range all {
		if t.Kind == machines.KindMenu {
			for i := range t.Menu.Entries {
				all = append(all, &t.Menu.Entries[i].Target)
			}
			continue
		}
		switch t.Kind {
		case machines.KindNix, machines.KindNixProfile, machines.KindNixConfiguration:
			out = append(out, t)
		}
	}
	return out
}

// warmAll builds every archive the Nix targets need now: store paths as
// they are, profiles as they resolve now, configurations built now.
func warmAll(ctx context.Context, log *slog.Logger, nx *httpboot.Nix, b machines.Booter, out io.Writer) error {
	seen := map[string]bool{}
	var errs []error
	for _, t := range nixTargets(b) {
		var top string
		var err error
		switch t.Kind {
		case machines.KindNix:
			top, err = nx.Store.Lookup(t.Nix)
		case machines.KindNixProfile:
			top, err = nx.Store.ResolveProfile(t.Nix)
		case machines.KindNixConfiguration:
			log.Info("building configuration", "configuration", t.Nix)
			top, err = nx.Store.BuildConfiguration(ctx, t.Nix)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", t.Kind, t.Nix, err))
			continue
		}
		if seen[top] {
			continue
		}
		seen[top] = true
		closure, err := nx.Store.Closure(ctx, top)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		p := newProgress(out, log, top)
		err = nx.Cache.Warm(ctx, closure, p.report)
		p.finish(err)
		if err != nil {
			errs = append(errs, fmt.Errorf("archives of %s: %w", top, err))
		}
	}
	return errors.Join(errs...)
}

// progress shows a Warm call: a bar redrawn in place on a terminal, or a
// log line every few seconds otherwise (a service's journal).
type progress struct {
	out      io.Writer
	log      *slog.Logger
	name     string
	tty      bool
	mu       sync.Mutex
	last     cpiocache.Progress
	lastDraw time.Time
}

func newProgress(out io.Writer, log *slog.Logger, top string) *progress {
	p := &progress{out: out, log: log, name: top}
	if f, ok := out.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
	}
	log.Info("preparing archives", "system", top)
	return p
}

func (p *progress) report(pr cpiocache.Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.last = pr
	every := 5 * time.Second
	if p.tty {
		every = 100 * time.Millisecond
	}
	if time.Since(p.lastDraw) < every && pr.Done != pr.Total {
		return
	}
	p.lastDraw = time.Now()
	if p.tty {
		fmt.Fprintf(p.out, "\r%s", progressLine(pr, 30))
		return
	}
	p.log.Info("preparing archives", "done", pr.Done, "total", pr.Total, "built", pr.Built,
		"mb", pr.Bytes>>20, "mb_per_s", fmt.Sprintf("%.1f", rate(pr)), "eta", eta(pr).Round(time.Second))
}

func (p *progress) finish(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty {
		fmt.Fprintln(p.out)
	}
	if err == nil {
		p.log.Info("archives ready", "system", p.name, "paths", p.last.Total, "built", p.last.Built,
			"mb", p.last.Bytes>>20, "duration", p.last.Elapsed.Round(time.Millisecond))
	}
}

func rate(pr cpiocache.Progress) float64 {
	if pr.Elapsed <= 0 {
		return 0
	}
	return float64(pr.Bytes) / (1 << 20) / pr.Elapsed.Seconds()
}

// eta extrapolates from the paths done so far.
func eta(pr cpiocache.Progress) time.Duration {
	if pr.Done == 0 || pr.Done >= pr.Total {
		return 0
	}
	return time.Duration(float64(pr.Elapsed) * float64(pr.Total-pr.Done) / float64(pr.Done))
}

// progressLine is one line of the terminal progress bar.
func progressLine(pr cpiocache.Progress, width int) string {
	filled := 0
	if pr.Total > 0 {
		filled = width * pr.Done / pr.Total
	}
	bar := strings.Repeat("=", filled) + strings.Repeat(" ", width-filled)
	return fmt.Sprintf("[%s] %d/%d paths  %.1f MB  %.1f MB/s  ETA %s ", bar, pr.Done, pr.Total,
		float64(pr.Bytes)/(1<<20), rate(pr), eta(pr).Round(time.Second))
}
