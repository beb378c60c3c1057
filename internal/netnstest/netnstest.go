// Package netnstest gives tests a private two-host Ethernet segment: two
// network namespaces joined by a veth pair, created for one test and removed
// after it. Code runs "on" a host through Do, which moves the calling OS
// thread into the namespace; sockets opened there stay in it, so a server can
// be started inside and then driven from ordinary goroutines.
package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Host is one end of the segment.
type Host struct {
	NS    string     // namespace name
	Iface string     // interface name inside the namespace
	Addr  netip.Addr // its IPv4 address (a /24)
}

// Pair is a two-host segment.
type Pair struct {
	Server, Client Host
}

// Require skips the test unless it can create namespaces (root, ip(8)), and
// fails it instead when BOOTSERVE_REQUIRE_NETNS=1, so CI never skips silently.
func Require(t testing.TB) {
	t.Helper()
	var why string
	if os.Geteuid() != 0 {
		why = "needs root to create network namespaces"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "needs ip(8) from Debian's iproute2"
	}
	if why == "" {
		return
	}
	if os.Getenv("BOOTSERVE_REQUIRE_NETNS") == "1" {
		t.Fatal(why)
	}
	t.Skip(why)
}

func run(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// New creates the segment; the server gets 10.<n>.0.1/24 and the client
// 10.<n>.0.2/24 with n random, so parallel tests stay apart.
func New(t testing.TB) *Pair {
	t.Helper()
	Require(t)
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	id := hex.EncodeToString(b[:])
	n := 100 + int(b[0])%100
	p := &Pair{
		Server: Host{NS: "bst-s-" + id, Iface: "vs" + id, Addr: netip.AddrFrom4([4]byte{10, byte(n), 0, 1})},
		Client: Host{NS: "bst-c-" + id, Iface: "vc" + id, Addr: netip.AddrFrom4([4]byte{10, byte(n), 0, 2})},
	}
	t.Cleanup(func() {
		for _, ns := range []string{p.Server.NS, p.Client.NS} {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	for _, h := range []Host{p.Server, p.Client} {
		run(t, "netns", "add", h.NS)
		run(t, "-n", h.NS, "link", "set", "lo", "up")
	}
	run(t, "link", "add", p.Server.Iface, "netns", p.Server.NS, "type", "veth", "peer", "name", p.Client.Iface, "netns", p.Client.NS)
	for _, h := range []Host{p.Server, p.Client} {
		run(t, "-n", h.NS, "addr", "add", h.Addr.String()+"/24", "dev", h.Iface)
		run(t, "-n", h.NS, "link", "set", h.Iface, "up")
	}
	return p
}

// Do runs f with the calling goroutine's thread inside the host's network
// namespace. Sockets f opens belong to that namespace for their lifetime.
func (h Host) Do(t testing.TB, f func()) {
	t.Helper()
	err := func() error {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid()))
		if err != nil {
			return err
		}
		defer orig.Close()
		target, err := os.Open("/var/run/netns/" + h.NS)
		if err != nil {
			return err
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("setns %s: %w", h.NS, err)
		}
		defer func() {
			if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
				// The thread is in the wrong namespace: never reuse it.
				panic(fmt.Sprintf("setns back: %v", err))
			}
		}()
		f()
		return nil
	}()
	if err != nil {
		t.Fatal(err)
	}
}
