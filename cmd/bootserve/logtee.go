package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
)

// errorSink receives warnings and errors for the status page.
type errorSink interface {
	Error(source, message string)
}

// teeHandler passes every record on, and copies warnings and errors to the
// status page's "last errors" list, so an operator sees them without the
// journal.
type teeHandler struct {
	next   slog.Handler
	sink   errorSink
	source string
	attrs  []slog.Attr
}

func newTee(next slog.Handler, sink errorSink) slog.Handler {
	return &teeHandler{next: next, sink: sink, source: "bootserve"}
}

func (h *teeHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h *teeHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		var b strings.Builder
		b.WriteString(r.Message)
		add := func(a slog.Attr) bool {
			if a.Key != "server" && a.Key != "part" {
				fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
			}
			return true
		}
		for _, a := range h.attrs {
			add(a)
		}
		r.Attrs(add)
		h.sink.Error(h.source, b.String())
	}
	return h.next.Handle(ctx, r)
}

func (h *teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(as)
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	for _, a := range as {
		if a.Key == "server" || a.Key == "part" {
			c.source = a.Value.String()
		}
	}
	return &c
}

func (h *teeHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.next = h.next.WithGroup(name)
	return &c
}
