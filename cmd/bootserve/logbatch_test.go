package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// writeLog records each Write it gets, as the reader of a pipe would see it.
type writeLog struct {
	mu     sync.Mutex
	writes []string
}

func (w *writeLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes = append(w.writes, string(p))
	return len(p), nil
}

func (w *writeLog) get() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.writes...)
}

func TestBatchWriterGathersLines(t *testing.T) {
	var out writeLog
	b := newBatchWriter(&out, time.Hour, 1<<20) // only explicit flushes here
	log, err := newLogger(b, "text", slog.LevelInfo)
	if err != nil {
		t.Fatal(err)
	}
	log = slog.New(flushHandler{log.Handler(), b})
	for i := range 100 {
		log.Info("http", "n", i)
	}
	if w := out.get(); len(w) != 0 {
		t.Fatalf("info lines were written before a flush: %d writes", len(w))
	}
	log.With("part", "x").Warn("disk full")
	w := out.get()
	if len(w) != 1 {
		t.Fatalf("a warning should flush everything in one write; got %d writes", len(w))
	}
	lines := strings.Split(strings.TrimSuffix(w[0], "\n"), "\n")
	if len(lines) != 101 {
		t.Fatalf("got %d lines, want 101", len(lines))
	}
	for i := range 100 {
		if !strings.Contains(lines[i], fmt.Sprintf("n=%d", i)) {
			t.Fatalf("line %d out of order: %q", i, lines[i])
		}
	}
	if !strings.Contains(lines[100], "disk full") || !strings.Contains(lines[100], "part=x") {
		t.Fatalf("last line %q, want the warning", lines[100])
	}

	log.Info("after")
	b.Close()
	log.Info("closed")
	w = out.get()
	if len(w) != 3 || !strings.Contains(w[1], "after") || !strings.Contains(w[2], "closed") {
		t.Fatalf("Close should flush, then let lines through one by one; writes: %q", w[1:])
	}
}

func TestBatchWriterDelayAndLimit(t *testing.T) {
	var out writeLog
	b := newBatchWriter(&out, 20*time.Millisecond, 1000)
	fmt.Fprintln(b, "one")
	fmt.Fprintln(b, "two")
	deadline := time.Now().Add(10 * time.Second)
	for len(out.get()) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if w := out.get(); len(w) != 1 || w[0] != "one\ntwo\n" {
		t.Fatalf("the timer should write both lines in one batch; writes: %q", w)
	}

	// Past the limit, the batch goes out with the write that filled it.
	var out2 writeLog
	b = newBatchWriter(&out2, time.Hour, 1000)
	line := strings.Repeat("x", 99) + "\n"
	for range 9 {
		b.Write([]byte(line))
	}
	if len(out2.get()) != 0 {
		t.Fatal("written below the limit")
	}
	b.Write([]byte(line))
	if w := out2.get(); len(w) != 1 || len(w[0]) != 1000 {
		t.Fatalf("reaching the limit should write the batch; writes: %d", len(w))
	}
}

func TestBatchedLoggerOnlyOffTerminals(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if isTerminal(w) || isTerminal(&bytes.Buffer{}) {
		t.Fatal("a pipe or a buffer is not a terminal")
	}
	_, out, err := newBatchedLogger(w, "text", slog.LevelInfo)
	if err != nil || out == nil {
		t.Fatalf("a pipe should be batched: %v", err)
	}
	out.Close()

	// A pseudo-terminal, as an interactive run has.
	ptm, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	defer ptm.Close()
	if err := unix.IoctlSetPointerInt(int(ptm.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptm.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pts.Close()
	log, out, err := newBatchedLogger(pts, "text", slog.LevelInfo)
	if err != nil || out != nil {
		t.Fatalf("a terminal should get lines at once: batchWriter %v, err %v", out, err)
	}
	log.Info("hello")
	buf := make([]byte, 256)
	ptm.SetReadDeadline(time.Now().Add(10 * time.Second))
	k, err := ptm.Read(buf)
	if err != nil || !strings.Contains(string(buf[:k]), "hello") {
		t.Fatalf("terminal got %q, %v", buf[:k], err)
	}
	out.Flush() // nil batchWriter: no-op
	out.Close()
}
