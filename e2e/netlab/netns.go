package netlab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Do runs fn on an OS thread that has entered the host's network namespace. Sockets created in fn
// stay in that namespace for their whole life and may be used from any goroutine afterwards, so
// this is how a test serves or dials from inside the lab without a helper process. fn must not
// start goroutines or processes that expect to be in the namespace: only its own thread is.
func (h *Host) Do(fn func() error) error {
	target, err := unix.Open(filepath.Join(netnsDir, h.Netns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", h.Netns, err)
	}
	defer unix.Close(target)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", h.Netns, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// The thread is stuck in the lab: leave it locked so that the runtime destroys it
			// when this goroutine ends instead of reusing it for other code.
			errc <- errors.Join(ferr, fmt.Errorf("leave netns %s: %w", h.Netns, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Listen opens a stream listener inside the host's namespace (e.g. "tcp", "10.99.7.1:80").
func (h *Host) Listen(network, address string) (net.Listener, error) {
	var ln net.Listener
	err := h.Do(func() (err error) {
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// ListenPacket opens a packet socket inside the host's namespace (e.g. "udp4", ":67").
func (h *Host) ListenPacket(network, address string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := h.Do(func() (err error) {
		pc, err = net.ListenPacket(network, address)
		return err
	})
	return pc, err
}

// DialContext connects from inside the host's namespace. address must be an IP literal: name
// resolution would happen outside the namespace.
func (h *Host) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// HTTPClient returns an HTTP client whose connections start inside the host's namespace, e.g.
// lab.Router().HTTPClient() to fetch from the server as a machine on the LAN would.
func (h *Host) HTTPClient() *http.Client {
	return &http.Client{
		Timeout: time.Minute,
		Transport: &http.Transport{
			DialContext:       h.DialContext,
			DisableKeepAlives: true,
			Proxy:             nil, // never an environment proxy: it would lead out of the lab
		},
	}
}

// netnsPIDs lists the processes whose network namespace is the named one (like `ip netns pids`),
// leaving out this process.
func netnsPIDs(name string) ([]int, error) {
	var want unix.Stat_t
	if err := unix.Stat(filepath.Join(netnsDir, name), &want); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, os.ErrNotExist
		}
		return nil, fmt.Errorf("stat netns %s: %w", name, err)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(filepath.Join("/proc", e.Name(), "ns/net"), &st) != nil {
			continue
		}
		if st.Dev == want.Dev && st.Ino == want.Ino {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// lockMeta takes the machine-wide lock that serialises lab allocation and stale cleanup.
func lockMeta() (unlock func(), err error) {
	if err := os.MkdirAll(metaRoot, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w (netlab needs root)", metaRoot, err)
	}
	f, err := os.OpenFile(filepath.Join(metaRoot, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lab lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}

func readOwner(metaDir string) (owner, error) {
	var o owner
	data, err := os.ReadFile(filepath.Join(metaDir, "owner.json"))
	if err != nil {
		return o, err
	}
	err = json.Unmarshal(data, &o)
	return o, err
}

// procStartTime returns field 22 of /proc/<pid>/stat (start time in clock ticks since boot).
func procStartTime(pid int) (string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	// The command name (field 2) may contain spaces; fields after it are plain.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return "", fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 20 {
		return "", fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return f[19], nil
}

// ownerAlive reports whether the process that created a lab still runs.
func ownerAlive(o owner) bool {
	st, err := procStartTime(o.PID)
	return err == nil && st == o.StartTime
}

// CleanStale removes labs whose creating process is gone: it kills the processes left in their
// namespaces, deletes the namespaces and their records. Labs of live processes are left alone.
// New calls it; `go run ./e2e/netlab/cmd/netlab-clean` runs it by hand.
func CleanStale(log *slog.Logger) error {
	unlock, err := lockMeta()
	if err != nil {
		return err
	}
	defer unlock()
	ids := map[string][]string{} // lab ID -> its namespaces
	if entries, err := os.ReadDir(netnsDir); err == nil {
		for _, e := range entries {
			name := e.Name()
			if !strings.HasPrefix(name, nsPrefix) {
				continue
			}
			rest := strings.TrimPrefix(name, nsPrefix)
			id, _, ok := strings.Cut(rest, "-")
			if !ok {
				continue
			}
			ids[id] = append(ids[id], name)
		}
	}
	if entries, err := os.ReadDir(metaRoot); err == nil {
		for _, e := range entries {
			if e.IsDir() {
				if _, ok := ids[e.Name()]; !ok {
					ids[e.Name()] = nil
				}
			}
		}
	}
	var errs []error
	for id, nss := range ids {
		meta := filepath.Join(metaRoot, id)
		if o, err := readOwner(meta); err == nil && ownerAlive(o) {
			continue
		}
		// The record is written before any namespace exists, so namespaces without a live
		// owner are leftovers.
		log.Info("netlab: removing stale lab", "id", id, "netns", nss)
		for _, ns := range nss {
			pids, _ := netnsPIDs(ns)
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		for _, ns := range nss {
			// What `ip netns del` does: detach the bind mount that keeps the namespace alive.
			p := filepath.Join(netnsDir, ns)
			if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
				continue
			}
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		if err := os.RemoveAll(meta); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
