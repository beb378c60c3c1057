package netlab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Proc is a process started by the lab, with its output in a log file.
type Proc struct {
	// Name is a short label (the program's name), used in the log file name.
	Name string
	// Cmd is the running command.
	Cmd *exec.Cmd
	// LogPath holds the process's stdout and stderr (unless the caller set them).
	LogPath string

	logFile  *os.File
	internal bool // started by the lab itself (router, tcpdump), not through Start
	done     chan struct{}
	err      error
	stopOnce sync.Once
}

// Start starts cmd (typically from Host.Command or Lab.ServerCmd), sends its stdout and stderr
// to a file in the lab directory unless they are already set, and stops it when t ends (SIGTERM,
// SIGKILL after 5 s); if t failed, the tail of its output goes to the test log. Failure to start
// is fatal to the test.
func (l *Lab) Start(t testing.TB, cmd *exec.Cmd) *Proc {
	t.Helper()
	p, err := l.startProc(progName(cmd), cmd, false)
	if err != nil {
		t.Fatalf("netlab: %v", err)
	}
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() && p.LogPath != "" {
			t.Logf("netlab: %s (pid %d, %s) log %s, last lines:\n%s", p.Name, p.Cmd.Process.Pid, p.ExitStatus(), p.LogPath, p.Tail(30))
		}
	})
	return p
}

// progName is the program a command runs, looking through `ip netns exec NS`.
func progName(cmd *exec.Cmd) string {
	args := cmd.Args
	if len(args) >= 4 && filepath.Base(args[0]) == "ip" && args[1] == "netns" && args[2] == "exec" {
		args = args[4:]
	}
	if len(args) == 0 {
		return "proc"
	}
	return filepath.Base(args[0])
}

func (l *Lab) startProc(name string, cmd *exec.Cmd, internal bool) (*Proc, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, errors.New("lab is closed")
	}
	seq := len(l.procs)
	l.mu.Unlock()
	p := &Proc{Name: name, Cmd: cmd, internal: internal, done: make(chan struct{})}
	if cmd.Stdout == nil && cmd.Stderr == nil {
		p.LogPath = filepath.Join(l.dir, fmt.Sprintf("%02d-%s.log", seq, safeName(name)))
		f, err := os.Create(p.LogPath)
		if err != nil {
			return nil, fmt.Errorf("create log for %s: %w", name, err)
		}
		p.logFile = f
		cmd.Stdout, cmd.Stderr = f, f
	}
	if cmd.SysProcAttr == nil {
		// Dies with the test binary even if nobody cleans up (belt and braces: the reaper
		// also kills everything left in the lab's namespaces).
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		if p.logFile != nil {
			p.logFile.Close()
		}
		return nil, fmt.Errorf("start %s: %w", strings.Join(cmd.Args, " "), err)
	}
	go func() {
		p.err = cmd.Wait()
		if p.logFile != nil {
			p.logFile.Close()
		}
		close(p.done)
	}()
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return p, nil
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the process's exit error (nil for exit status 0); valid after Done.
func (p *Proc) Err() error {
	<-p.done
	return p.err
}

// ExitStatus describes the process state: "running", "exit status 1", "signal: terminated".
func (p *Proc) ExitStatus() string {
	select {
	case <-p.done:
		if p.Cmd.ProcessState != nil {
			return p.Cmd.ProcessState.String()
		}
		return fmt.Sprint(p.err)
	default:
		return "running"
	}
}

// Stop ends the process (SIGTERM, then SIGKILL after 5 s) and waits for it. Idempotent.
func (p *Proc) Stop() {
	p.stopOnce.Do(func() {
		select {
		case <-p.done:
			return
		default:
		}
		_ = p.Cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			_ = p.Cmd.Process.Kill()
			<-p.done
		}
	})
	<-p.done
}

// Output returns what the process wrote to its log so far.
func (p *Proc) Output() string {
	if p.LogPath == "" {
		return ""
	}
	data, _ := os.ReadFile(p.LogPath)
	return string(data)
}

// Tail returns the last n lines of the process's log.
func (p *Proc) Tail(n int) string { return tailLines(p.Output(), n) }

// WaitLog waits until the process's log contains a line matching pat. It fails if the process
// exits first or ctx ends.
func (p *Proc) WaitLog(ctx context.Context, pat Pattern) error {
	if p.LogPath == "" {
		return errors.New("process output is not captured by the lab")
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		// Read the state before the log: a line written just before exit is still seen.
		exited := false
		select {
		case <-p.done:
			exited = true
		default:
		}
		for _, line := range strings.Split(p.Output(), "\n") {
			if pat.Match(line) {
				return nil
			}
		}
		if exited {
			return fmt.Errorf("%s exited (%s) before logging %s", p.Name, p.ExitStatus(), pat)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: waiting for %s: %w", p.Name, pat, ctx.Err())
		case <-tick.C:
		}
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
