// Package netlab builds throwaway network-boot labs for bootserve's end-to-end tests: an isolated
// LAN made of Linux network namespaces (a bridge as the switch, a server, a plain DHCP router) on
// which real firmware (SeaBIOS + iPXE ROM, OVMF, OVMF with Secure Boot) boots under QEMU.
//
// Layout of one lab (names carry a random lab ID, so labs can coexist):
//
//	netlab-<id>-lan   bridge br0 (the switch), one tap per VM (QEMU runs here), tcpdump runs here
//	netlab-<id>-srv   eth0 = 10.99.N.1/24: the server under test
//	netlab-<id>-srv2  eth0 = 10.99.N.2/24: optional second server
//	netlab-<id>-rtr   eth0 = 10.99.N.254/24: dnsmasq as a plain DHCP server (.100-.199) + IPv6 RA
//
// Nothing has a default route and nothing is attached to the host's interfaces, so no packet
// leaves the lab. Everything is removed by Lab.Close (run by t.Cleanup); a detached reaper
// process also removes the lab if the test binary dies without cleaning up (panic on -timeout,
// SIGKILL), and CleanStale removes labs whose creator is gone.
//
// Environment:
//
//	BOOTSERVE_E2E=1          run end-to-end tests at all (root; see Require for the packages)
//	NETLAB_KEEP=DIR          keep each lab's logs, serial logs and captures in DIR/<test>-<id>
//	NETLAB_MAX_VMS=N         QEMU VMs at once on this machine, across test binaries (default: CPUs)
//	BOOTSERVE_E2E_ASSETS=DIR where Assets builds kernel and initrd (default /var/tmp/bootserve-e2e)
//	NETLAB_SELFTEST=1        also run this package's own VM boots (with BOOTSERVE_E2E=1)
//
// Example: sudo BOOTSERVE_E2E=1 NETLAB_SELFTEST=1 go test -v ./e2e/netlab/
package netlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	nsPrefix = "netlab-"
	// metaRoot holds one directory per live lab (owner PID, subnet) and the lock files shared by
	// all test processes of the machine. /run is cleared at boot, like /run/netns.
	metaRoot = "/run/netlab"
	// netnsDir is where `ip netns` keeps its named namespaces.
	netnsDir = "/run/netns"
)

// Options configures a lab. The zero value gives server + router (DHCP and RA).
type Options struct {
	// NoRouter leaves the router namespace out, for tests in which the server under test is the
	// LAN's DHCP server.
	NoRouter bool
	// RouterDnsmasq adds lines (dnsmasq.conf syntax, e.g. "dhcp-option=42,10.99.7.254"; "{server}"
	// stands for the server's address, e.g. "dhcp-boot=pxe.efi,,{server}" for next-server) to the
	// router's dnsmasq configuration.
	RouterDnsmasq []string
	// NoRouterRA turns the router's IPv6 Router Advertisements off. Without RA iPXE waits
	// ~13 s per stage for IPv6 router discovery, so only tests of exactly that want this.
	NoRouterRA bool
	// SecondServer adds a second server namespace with address .2 (Lab.Server2).
	SecondServer bool
	// ServerIPv6 keeps IPv6 on in the server namespaces (off by default: less noise).
	ServerIPv6 bool
	// Logger receives the lab's progress; default: the test log.
	Logger *slog.Logger
	// Dir receives logs, serial logs and captures. Default: $NETLAB_KEEP/<test>-<id> when
	// NETLAB_KEEP is set (kept after the test), else a t.TempDir().
	Dir string
}

// Host is one namespace of the lab with its address on the LAN.
type Host struct {
	lab *Lab
	// Role is "server", "server2", "router" or "lan".
	Role string
	// Netns is the network namespace name, for `ip netns exec`.
	Netns string
	// Iface is the host's interface on the LAN ("br0" for the lan namespace).
	Iface string
	// IP is the host's IPv4 address (invalid for the lan namespace, which has none).
	IP netip.Addr
}

// Lab is one isolated LAN. Create it with New; it is removed at the end of the test.
type Lab struct {
	// ID is the random suffix of the lab's namespace names.
	ID string

	t      testing.TB
	log    *slog.Logger
	tools  tools
	dir    string
	meta   string
	subnet netip.Prefix

	lan, server, server2, router *Host
	hosts                        []*Host // in creation order

	reaper  *exec.Cmd
	reaperW *os.File

	mu       sync.Mutex
	closed   bool // no new VMs, taps or processes
	quiet    bool // Close finished: the test may be over, so no more t.Log
	procs    []*Proc
	machines []*Machine
	nextTap  int
	nextVM   int
	names    map[string]bool

	closeOnce sync.Once
	closeErr  error
}

// owner is what a lab records about its creator in metaRoot/<id>/owner.json, so that CleanStale
// can tell a live lab from the remains of a crashed test.
type owner struct {
	PID       int    `json:"pid"`
	StartTime string `json:"start_time"` // /proc/<pid>/stat field 22: guards against PID reuse
	Subnet    string `json:"subnet"`
	Test      string `json:"test"`
	Created   string `json:"created"`
}

// New creates a lab and registers its removal with t.Cleanup. It calls Require first, so the
// test is skipped unless BOOTSERVE_E2E=1. Failures are fatal to the test.
func New(t testing.TB, opts Options) *Lab {
	t.Helper()
	Require(t)
	tl, missing := findTools()
	if len(missing) > 0 {
		t.Fatalf("netlab: %s", strings.Join(missing, "; "))
	}
	l := &Lab{t: t, tools: tl, names: map[string]bool{}}
	l.log = opts.Logger
	if l.log == nil {
		l.log = slog.New(slog.NewTextHandler(&testWriter{lab: l, w: t.Output()}, nil))
	}
	if err := CleanStale(l.log); err != nil {
		l.log.Warn("cleaning stale labs", "err", err)
	}
	// Go's net package probes IPv6 support once per process; make sure that happens here in the
	// host namespace and not inside a lab namespace where IPv6 is disabled, which would turn
	// IPv6 off for the rest of the test binary.
	if ln, err := net.Listen("tcp", ":0"); err == nil {
		ln.Close()
	}
	// t.TempDir before registering Close: cleanups run last-in first-out, so the directory is
	// removed only after Close has stopped everything writing to it and printed their logs.
	l.dir = opts.Dir
	keep := os.Getenv("NETLAB_KEEP")
	if l.dir == "" && keep == "" {
		l.dir = t.TempDir()
	}
	if err := l.allocate(); err != nil {
		t.Fatalf("netlab: %v", err)
	}
	if l.dir == "" {
		l.dir = filepath.Join(keep, safeName(t.Name())+"-"+l.ID)
	}
	// From here on Close must run, even if the setup below fails half-way.
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("netlab: %v", err)
		}
	})
	if err := l.startReaper(); err != nil {
		t.Fatalf("netlab: %v", err)
	}
	if err := os.MkdirAll(l.dir, 0o755); err != nil {
		t.Fatalf("netlab: create lab dir: %v", err)
	}
	if err := l.setup(opts); err != nil {
		t.Fatalf("netlab: set up lab %s: %v", l.ID, err)
	}
	if !opts.NoRouter {
		if err := l.startRouter(opts); err != nil {
			t.Fatalf("netlab: %v", err)
		}
	}
	l.log.Info("netlab: lab ready", "id", l.ID, "subnet", l.subnet, "server", l.server.IP,
		"router", !opts.NoRouter, "dir", l.dir)
	return l
}

// allocate picks a lab ID whose subnet no live lab uses and records the owner, under the
// machine-wide lock so that two test binaries starting at once cannot pick the same one.
func (l *Lab) allocate() error {
	unlock, err := lockMeta()
	if err != nil {
		return err
	}
	defer unlock()
	used := map[netip.Prefix]bool{}
	if entries, err := os.ReadDir(metaRoot); err == nil {
		for _, e := range entries {
			if o, err := readOwner(filepath.Join(metaRoot, e.Name())); err == nil {
				if p, err := netip.ParsePrefix(o.Subnet); err == nil {
					used[p] = true
				}
			}
		}
	}
	for range 1000 {
		var b [3]byte
		if _, err := rand.Read(b[:]); err != nil {
			return fmt.Errorf("random lab id: %w", err)
		}
		id := fmt.Sprintf("%02x%02x%02x", b[0], b[1], b[2])
		// 10.99.N.0/24 with N from the ID: labs are isolated anyway, distinct subnets only
		// keep logs and captures of parallel labs apart.
		n := 1 + int(b[0]^b[1]^b[2])%254
		subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 99, byte(n), 0}), 24)
		meta := filepath.Join(metaRoot, id)
		if used[subnet] {
			continue
		}
		if _, err := os.Stat(meta); err == nil {
			continue
		}
		st, err := procStartTime(os.Getpid())
		if err != nil {
			return err
		}
		o := owner{PID: os.Getpid(), StartTime: st, Subnet: subnet.String(), Test: l.t.Name(),
			Created: time.Now().Format(time.RFC3339)}
		data, _ := json.Marshal(o)
		if err := os.MkdirAll(meta, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", meta, err)
		}
		if err := os.WriteFile(filepath.Join(meta, "owner.json"), data, 0o644); err != nil {
			return fmt.Errorf("record lab owner: %w", err)
		}
		l.ID, l.meta, l.subnet = id, meta, subnet
		return nil
	}
	return errors.New("no free lab subnet in 10.99.0.0/16: remove stale labs (go run ./e2e/netlab/cmd/netlab-clean)")
}

// addr returns the lab subnet's address with the given last byte.
func (l *Lab) addr(last byte) netip.Addr {
	a := l.subnet.Addr().As4()
	a[3] = last
	return netip.AddrFrom4(a)
}

func (l *Lab) nsName(role string) string { return nsPrefix + l.ID + "-" + role }

// setup creates the namespaces, the bridge and the veth pairs.
func (l *Lab) setup(opts Options) error {
	l.lan = &Host{lab: l, Role: "lan", Netns: l.nsName("lan"), Iface: "br0"}
	l.server = &Host{lab: l, Role: "server", Netns: l.nsName("srv"), Iface: "eth0", IP: l.addr(1)}
	l.hosts = []*Host{l.lan, l.server}
	if opts.SecondServer {
		l.server2 = &Host{lab: l, Role: "server2", Netns: l.nsName("srv2"), Iface: "eth0", IP: l.addr(2)}
		l.hosts = append(l.hosts, l.server2)
	}
	if !opts.NoRouter {
		l.router = &Host{lab: l, Role: "router", Netns: l.nsName("rtr"), Iface: "eth0", IP: l.addr(254)}
		l.hosts = append(l.hosts, l.router)
	}
	for _, h := range l.hosts {
		if err := l.ip("netns", "add", h.Netns); err != nil {
			return err
		}
		if err := l.ip("-n", h.Netns, "link", "set", "lo", "up"); err != nil {
			return err
		}
		// IPv6 stays on only where it is wanted: the router (RA) and, on request, the servers.
		// Set "default" before the LAN interfaces exist so they inherit it.
		v6 := h == l.router || (opts.ServerIPv6 && (h == l.server || h == l.server2))
		sysctls := map[string]string{}
		if !v6 {
			sysctls["net/ipv6/conf/all/disable_ipv6"] = "1"
			sysctls["net/ipv6/conf/default/disable_ipv6"] = "1"
		} else {
			// No duplicate address detection: addresses are usable at once.
			sysctls["net/ipv6/conf/default/accept_dad"] = "0"
		}
		if err := h.sysctl(sysctls); err != nil {
			return err
		}
	}
	lan := l.lan.Netns
	if err := l.ip("-n", lan, "link", "add", "br0", "type", "bridge",
		"stp_state", "0", "forward_delay", "0", "mcast_snooping", "0"); err != nil {
		return err
	}
	if err := l.ip("-n", lan, "link", "set", "br0", "up"); err != nil {
		return err
	}
	ports := map[string]string{"server": "srv", "server2": "srv2", "router": "rtr"}
	for _, h := range l.hosts[1:] {
		port := ports[h.Role]
		// Created inside the lan namespace with the peer put straight into the host's
		// namespace, so no interface name ever appears in the root namespace.
		steps := [][]string{
			{"-n", lan, "link", "add", port, "type", "veth", "peer", "name", h.Iface, "netns", h.Netns},
			{"-n", lan, "link", "set", port, "master", "br0", "up"},
			{"-n", h.Netns, "addr", "add", h.IP.String() + "/24", "dev", h.Iface},
			{"-n", h.Netns, "link", "set", h.Iface, "up"},
		}
		if h == l.router {
			steps = append(steps, []string{"-n", h.Netns, "addr", "add", l.routerIPv6() + "/64", "dev", h.Iface, "nodad"})
		}
		for _, s := range steps {
			if err := l.ip(s...); err != nil {
				return err
			}
		}
	}
	return nil
}

// routerIPv6 is the router's ULA, the source of its Router Advertisements.
func (l *Lab) routerIPv6() string {
	return fmt.Sprintf("fd99:%d::fe", l.subnet.Addr().As4()[2])
}

// startRouter runs the LAN's "home router": dnsmasq with plain DHCP leases and no boot options.
func (l *Lab) startRouter(opts Options) error {
	h := l.router
	last := l.subnet.Addr().As4()
	base := fmt.Sprintf("%d.%d.%d.", last[0], last[1], last[2])
	conf := []string{
		"port=0", // no DNS
		"interface=" + h.Iface,
		"bind-interfaces",
		"user=root",
		"pid-file=" + filepath.Join(l.dir, "router.pid"),
		"dhcp-leasefile=" + filepath.Join(l.dir, "router.leases"),
		"dhcp-authoritative",
		"no-ping", // no 3 s ICMP probe before each offer
		"log-dhcp",
		"dhcp-range=" + base + "100," + base + "199,255.255.255.0,1h",
		"dhcp-option=option:router," + h.IP.String(),
	}
	if !opts.NoRouterRA {
		conf = append(conf,
			"enable-ra",
			"dhcp-range=::,constructor:"+h.Iface+",ra-only,64,1h",
			"ra-param="+h.Iface+",10,1800",
		)
	}
	for _, line := range opts.RouterDnsmasq {
		conf = append(conf, strings.ReplaceAll(line, "{server}", l.server.IP.String()))
	}
	path := filepath.Join(l.dir, "router-dnsmasq.conf")
	if err := os.WriteFile(path, []byte(strings.Join(conf, "\n")+"\n"), 0o644); err != nil {
		return fmt.Errorf("write router config: %w", err)
	}
	cmd := h.Command(context.Background(), l.tools.dnsmasq, "--keep-in-foreground", "--log-facility=-", "--conf-file="+path)
	p, err := l.startProc("router-dnsmasq", cmd, true)
	if err != nil {
		return fmt.Errorf("start router dnsmasq: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.WaitLog(ctx, Text("DHCP, IP range")); err != nil {
		return fmt.Errorf("router dnsmasq did not come up (%w); its log:\n%s", err, p.Tail(20))
	}
	return nil
}

// Close stops every VM and process of the lab and deletes its namespaces. It is idempotent and
// runs automatically at the end of the test.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.close() })
	return l.closeErr
}

func (l *Lab) close() error {
	l.mu.Lock()
	l.closed = true
	machines := append([]*Machine(nil), l.machines...)
	procs := append([]*Proc(nil), l.procs...)
	l.mu.Unlock()

	failed := l.t.Failed()
	for _, m := range machines {
		r := m.Stop()
		if failed && r != nil {
			l.t.Logf("netlab: VM %s (%s): %s; serial log %s, last lines:\n%s", r.Name, r.Firmware, r.Summary(), r.SerialLog, r.Tail(25))
		}
	}
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		p.Stop()
		// Processes from Start print their own tail; the router's log helps with DHCP trouble.
		if failed && p.internal && !strings.HasPrefix(p.Name, "tcpdump") {
			l.t.Logf("netlab: %s (%s) log %s, last lines:\n%s", p.Name, p.ExitStatus(), p.LogPath, p.Tail(15))
		}
	}
	var errs []error
	// Anything still inside one of our namespaces was started by this lab.
	for _, h := range l.hosts {
		pids, err := netnsPIDs(h.Netns)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		for _, pid := range pids {
			l.log.Warn("netlab: killing leftover process", "netns", h.Netns, "pid", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for i := len(l.hosts) - 1; i >= 0; i-- {
		h := l.hosts[i]
		if _, err := os.Stat(filepath.Join(netnsDir, h.Netns)); err != nil {
			continue
		}
		if err := l.ip("netns", "del", h.Netns); err != nil {
			errs = append(errs, err)
		}
	}
	if l.reaperW != nil {
		// Tell the reaper that we cleaned up ourselves, then let it exit.
		_, _ = l.reaperW.WriteString("done\n")
		l.reaperW.Close()
		done := make(chan struct{})
		go func() { _ = l.reaper.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = l.reaper.Process.Kill()
		}
	}
	if l.meta != "" {
		if err := os.RemoveAll(l.meta); err != nil {
			errs = append(errs, err)
		}
	}
	l.log.Info("netlab: lab removed", "id", l.ID)
	l.mu.Lock()
	l.quiet = true
	l.mu.Unlock()
	if len(errs) > 0 {
		return fmt.Errorf("remove lab %s: %w", l.ID, errors.Join(errs...))
	}
	return nil
}

// startReaper starts a detached shell that removes the lab if this process dies without calling
// Close (go test -timeout panics skip t.Cleanup). It waits on a pipe: EOF means we died,
// "done" means we cleaned up ourselves. setsid keeps it alive through a Ctrl-C of the test run.
func (l *Lab) startReaper() error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("reaper pipe: %w", err)
	}
	defer r.Close()
	const script = `read -r cmd
[ "$cmd" = done ] && exit 0
meta=$1 id=$2
for ns in /run/netns/netlab-"$id"-*; do
	[ -e "$ns" ] || continue
	for p in $(ip netns pids "${ns##*/}" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
done
sleep 0.3
for ns in /run/netns/netlab-"$id"-*; do [ -e "$ns" ] && ip netns del "${ns##*/}"; done
rm -rf "$meta"
`
	cmd := exec.Command("/bin/sh", "-c", script, "netlab-reaper", l.meta, l.ID)
	cmd.Stdin = r
	cmd.Env = append(os.Environ(), "PATH="+os.Getenv("PATH")+":/usr/sbin:/sbin")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("start reaper: %w", err)
	}
	_ = os.WriteFile(filepath.Join(l.meta, "reaper.pid"), fmt.Appendf(nil, "%d\n", cmd.Process.Pid), 0o644)
	l.reaper, l.reaperW = cmd, w
	return nil
}

// ip runs the ip tool and returns its output in the error.
func (l *Lab) ip(args ...string) error {
	out, err := exec.Command(l.tools.ip, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Dir is the directory holding the lab's logs, serial logs and captures.
func (l *Lab) Dir() string { return l.dir }

// Logger is the lab's logger.
func (l *Lab) Logger() *slog.Logger { return l.log }

// Subnet is the lab's IPv4 subnet, 10.99.N.0/24.
func (l *Lab) Subnet() netip.Prefix { return l.subnet }

// LAN is the namespace with the bridge and the VMs' taps.
func (l *Lab) LAN() *Host { return l.lan }

// Server is the namespace of the server under test (address .1).
func (l *Lab) Server() *Host { return l.server }

// Server2 is the second server namespace (address .2), nil unless Options.SecondServer.
func (l *Lab) Server2() *Host { return l.server2 }

// Router is the router namespace (address .254), nil with Options.NoRouter.
func (l *Lab) Router() *Host { return l.router }

// ServerIP is the server's address, 10.99.N.1.
func (l *Lab) ServerIP() netip.Addr { return l.server.IP }

// ServerIface is the server's LAN interface in its namespace ("eth0").
func (l *Lab) ServerIface() string { return l.server.Iface }

// ServerNetns is the server's network namespace name.
func (l *Lab) ServerNetns() string { return l.server.Netns }

// RouterIP is the router's address, 10.99.N.254 (invalid with Options.NoRouter).
func (l *Lab) RouterIP() netip.Addr {
	if l.router == nil {
		return netip.Addr{}
	}
	return l.router.IP
}

// ServerCmd is l.Server().Command: name runs inside the server namespace.
func (l *Lab) ServerCmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	return l.server.Command(ctx, name, args...)
}

// NewTap creates a tap device on the bridge, for a VM's NIC, and returns its name. Boot makes
// one itself when VM.Tap is empty.
func (l *Lab) NewTap() (string, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return "", errors.New("lab is closed")
	}
	name := fmt.Sprintf("tap%d", l.nextTap)
	l.nextTap++
	l.mu.Unlock()
	if err := l.ip("-n", l.lan.Netns, "tuntap", "add", "dev", name, "mode", "tap"); err != nil {
		return "", err
	}
	if err := l.ip("-n", l.lan.Netns, "link", "set", name, "master", "br0", "up"); err != nil {
		return "", err
	}
	return name, nil
}

func (l *Lab) deleteTap(name string) {
	if err := l.ip("-n", l.lan.Netns, "link", "del", name); err != nil {
		l.log.Debug("netlab: delete tap", "err", err)
	}
}

// Command returns a command that runs name inside the host's namespace (via `ip netns exec`,
// which execs it: the process's PID is name's). When ctx ends the process gets SIGTERM, then
// SIGKILL 5 s later.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, h.lab.tools.ip, append([]string{"netns", "exec", h.Netns, name}, args...)...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// sysctl writes net sysctls (keys relative to /proc/sys) inside the host's namespace.
func (h *Host) sysctl(kv map[string]string) error {
	return h.Do(func() error {
		for k, v := range kv {
			if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
				return fmt.Errorf("sysctl %s=%s in %s: %w", k, v, h.Netns, err)
			}
		}
		return nil
	})
}

// testWriter sends the lab's log lines to the test output until Close has finished (after
// which the test may be over and writing to it would panic).
type testWriter struct {
	lab *Lab
	w   io.Writer
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.lab.mu.Lock()
	defer w.lab.mu.Unlock()
	if w.lab.quiet {
		return len(p), nil
	}
	return w.w.Write(p)
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func safeName(s string) string { return unsafeChars.ReplaceAllString(s, "_") }
