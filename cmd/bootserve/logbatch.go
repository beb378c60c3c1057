package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Log batching: the server logs a line per request, and each write(2) of a
// line wakes the reader (journald, a pipe's reader) while the client is still
// receiving. On a small machine that wake competes with the transfer: one
// write per request cost 2–3 % of an initrd download's time when measured
// (docs/benchmarks.md). Lines are therefore gathered and written together,
// like nginx's buffered access log: warnings and errors at once (with what
// came before them, in order), the rest within logFlushDelay or once
// logFlushBytes have gathered. A terminal gets every line at once.
const (
	logFlushDelay = 250 * time.Millisecond
	logFlushBytes = 64 << 10
)

// batchWriter gathers writes and passes them on in batches. Each Write is
// kept whole (slog writes one record per call).
type batchWriter struct {
	mu      sync.Mutex
	w       io.Writer
	delay   time.Duration
	limit   int
	buf     []byte
	timer   *time.Timer
	pending bool // timer armed for buf
	closed  bool
}

func newBatchWriter(w io.Writer, delay time.Duration, limit int) *batchWriter {
	b := &batchWriter{w: w, delay: delay, limit: limit}
	b.timer = time.AfterFunc(time.Hour, b.Flush)
	b.timer.Stop()
	return b
}

// Write buffers p; the error of a batch's write is returned by the Write that
// triggers it, or dropped when the timer flushes (a log has nowhere to report
// its own failure).
func (b *batchWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return b.w.Write(p)
	}
	b.buf = append(b.buf, p...)
	if len(b.buf) >= b.limit {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if !b.pending {
		b.pending = true
		b.timer.Reset(b.delay)
	}
	return len(p), nil
}

// Flush writes what is buffered now. A nil batchWriter (a terminal's) has
// nothing buffered.
func (b *batchWriter) Flush() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	_ = b.flushLocked()
}

func (b *batchWriter) flushLocked() error {
	if b.pending {
		b.timer.Stop()
		b.pending = false
	}
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.w.Write(b.buf)
	if cap(b.buf) > 4*b.limit {
		b.buf = nil // a burst's buffer is not kept
	} else {
		b.buf = b.buf[:0]
	}
	return err
}

// Close flushes and makes later writes go straight through.
func (b *batchWriter) Close() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	_ = b.flushLocked()
	b.closed = true
}

// flushHandler flushes its batchWriter after a warning or an error, so they
// are never late.
type flushHandler struct {
	slog.Handler
	out *batchWriter
}

func (h flushHandler) Handle(ctx context.Context, r slog.Record) error {
	err := h.Handler.Handle(ctx, r)
	if r.Level >= slog.LevelWarn {
		h.out.Flush()
	}
	return err
}

func (h flushHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return flushHandler{h.Handler.WithAttrs(as), h.out}
}

func (h flushHandler) WithGroup(name string) slog.Handler {
	return flushHandler{h.Handler.WithGroup(name), h.out}
}

// isTerminal reports whether w is a terminal, where a person watches lines
// as they come.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// newBatchedLogger is newLogger writing through a batchWriter, unless w is a
// terminal (then the batchWriter is nil, and its methods do nothing). Flush
// it after milestones that others wait for, and Close it before returning.
func newBatchedLogger(w io.Writer, format string, level slog.Level) (*slog.Logger, *batchWriter, error) {
	if isTerminal(w) {
		log, err := newLogger(w, format, level)
		return log, nil, err
	}
	out := newBatchWriter(w, logFlushDelay, logFlushBytes)
	log, err := newLogger(out, format, level)
	if err != nil {
		return nil, nil, err
	}
	return slog.New(flushHandler{log.Handler(), out}), out, nil
}
