package nixstore

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

const (
	// commandTailLines is how much stderr a failed command keeps for its error.
	commandTailLines = 30
	// killGrace is how long a cancelled Nix command gets to stop its builders after
	// SIGTERM before it is killed.
	killGrace = 10 * time.Second
)

// CommandError is a Nix command that failed. Its Error text is one line; Stderr keeps the
// last lines of the command's stderr for logs.
type CommandError struct {
	Command string   // the command line, shortened
	Err     error    // the exit status, or the context's error when cancelled
	Stderr  []string // last lines of stderr (warnings included)
}

func (e *CommandError) Error() string {
	msg := e.Command + ": " + e.Err.Error()
	if r := lastErrorLine(e.Stderr); r != "" {
		msg += ": " + r
	}
	return msg
}

func (e *CommandError) Unwrap() error { return e.Err }

// lastErrorLine picks the line that best says why Nix failed: the last one starting with
// "error:" (Nix's own format), else the last non-empty one.
func lastErrorLine(lines []string) string {
	last := ""
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if strings.HasPrefix(l, "error:") {
			return shorten(l, 300)
		}
		if last == "" && l != "" {
			last = l
		}
	}
	return shorten(last, 300)
}

// run runs a Nix tool and returns its stdout. stderr is kept (last lines) for the error.
// Cancelling ctx sends SIGTERM to the tool's process group — Nix then stops its builders
// itself — and SIGKILL after killGrace.
func (s *Store) run(ctx context.Context, t tool, args []string) ([]byte, error) {
	if t.err != nil {
		return nil, t.err
	}
	cmd := exec.CommandContext(ctx, t.path, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	}
	cmd.WaitDelay = killGrace
	var stdout bytes.Buffer
	tail := &lineTail{max: commandTailLines}
	cmd.Stdout = &stdout
	cmd.Stderr = tail
	start := time.Now()
	err := cmd.Run()
	line := joinArgs(t.name, args)
	s.log.Debug("nix command", "cmd", line, "duration", time.Since(start), "err", err)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			err = ctxErr
		}
		return stdout.Bytes(), &CommandError{Command: line, Err: err, Stderr: tail.lines()}
	}
	return stdout.Bytes(), nil
}

// stderrLine returns the first stderr line of a failed command that contains substr.
func stderrLine(err error, substr string) (string, bool) {
	var ce *CommandError
	if !errors.As(err, &ce) {
		return "", false
	}
	for _, l := range ce.Stderr {
		if strings.Contains(l, substr) {
			return strings.TrimSpace(l), true
		}
	}
	return "", false
}

// lineTail is an io.Writer that keeps the last max lines written to it, each cut to
// maxLineLen bytes, with terminal escape sequences removed.
type lineTail struct {
	max     int
	buf     []string
	partial []byte
}

const maxLineLen = 4096

func (t *lineTail) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			t.partial = appendCapped(t.partial, p)
			break
		}
		t.partial = appendCapped(t.partial, p[:i])
		t.push(string(t.partial))
		t.partial = t.partial[:0]
		p = p[i+1:]
	}
	return n, nil
}

func appendCapped(dst, src []byte) []byte {
	if room := maxLineLen - len(dst); room < len(src) {
		src = src[:max(room, 0)]
	}
	return append(dst, src...)
}

func (t *lineTail) push(l string) {
	t.buf = append(t.buf, stripEscapes(strings.TrimRight(l, "\r")))
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
}

func (t *lineTail) lines() []string {
	out := append([]string(nil), t.buf...)
	if len(t.partial) > 0 {
		out = append(out, stripEscapes(string(t.partial)))
		if len(out) > t.max {
			out = out[len(out)-t.max:]
		}
	}
	return out
}

// stripEscapes removes ANSI CSI sequences (ESC [ ... final byte), which Nix may use for
// colours, so that log lines stay readable.
func stripEscapes(s string) string {
	if !strings.Contains(s, "\x1b") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == 0x1b && i+1 < len(s) && s[i+1] == '[' {
			j := i + 2
			for j < len(s) && (s[j] < 0x40 || s[j] > 0x7e) {
				j++
			}
			i = j
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// nonEmptyLines splits command output into trimmed non-empty lines.
func nonEmptyLines(b []byte) []string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
