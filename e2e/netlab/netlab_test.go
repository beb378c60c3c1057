package netlab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

func netnsExists(name string) bool {
	_, err := os.Stat(filepath.Join(netnsDir, name))
	return err == nil
}

// ping sends one ICMP echo from inside h to dst and waits for the reply.
func ping(t *testing.T, h *Host, dst netip.Addr) {
	t.Helper()
	var c *icmp.PacketConn
	if err := h.Do(func() (err error) {
		c, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	}); err != nil {
		t.Fatalf("icmp socket in %s: %v", h.Netns, err)
	}
	defer c.Close()
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: os.Getpid() & 0xffff, Seq: 1, Data: []byte("netlab")}}
	b, _ := msg.Marshal(nil)
	if _, err := c.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		t.Fatalf("ping %s from %s: %v", dst, h.Role, err)
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			t.Fatalf("ping %s from %s: no reply: %v", dst, h.Role, err)
		}
		rm, err := icmp.ParseMessage(1, buf[:n])
		if err == nil && rm.Type == ipv4.ICMPTypeEchoReply && from.String() == dst.String() {
			return
		}
	}
}

// dhcpDiscover broadcasts a DHCPDISCOVER (broadcast flag set, so that the answer is broadcast
// too) from h's LAN interface and returns the first OFFER.
func dhcpDiscover(h *Host, timeout time.Duration) (*dhcpv4.DHCPv4, error) {
	var ifi *net.Interface
	var conn net.PacketConn
	err := h.Do(func() (err error) {
		if ifi, err = net.InterfaceByName(h.Iface); err != nil {
			return err
		}
		lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				// No routes to 255.255.255.255 in the lab: name the interface.
				serr = errors.Join(unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1),
					unix.BindToDevice(int(fd), h.Iface))
			})
			return errors.Join(err, serr)
		}}
		conn, err = lc.ListenPacket(context.Background(), "udp4", "0.0.0.0:68")
		return err
	})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	req, err := dhcpv4.NewDiscovery(ifi.HardwareAddr, dhcpv4.WithBroadcast(true))
	if err != nil {
		return nil, err
	}
	if _, err := conn.WriteTo(req.ToBytes(), &net.UDPAddr{IP: net.IPv4bcast, Port: 67}); err != nil {
		return nil, err
	}
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 1500)
	for {
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			return nil, err
		}
		m, err := dhcpv4.FromBytes(buf[:n])
		if err == nil && m.TransactionID == req.TransactionID && m.MessageType() == dhcpv4.MessageTypeOffer {
			return m, nil
		}
	}
}

// TestLab builds a lab without VMs: server and router reach each other, the router leases
// addresses, the in-namespace HTTP server answers a LAN client, and Close removes everything.
func TestLab(t *testing.T) {
	lab := New(t, Options{SecondServer: true})
	hosts := []*Host{lab.LAN(), lab.Server(), lab.Server2(), lab.Router()}
	for _, h := range hosts {
		if !netnsExists(h.Netns) {
			t.Fatalf("namespace %s missing", h.Netns)
		}
	}
	if got, want := lab.ServerIP(), lab.Subnet().Addr().Next(); got != want {
		t.Errorf("ServerIP = %s, want %s", got, want)
	}
	if !lab.Subnet().Contains(lab.RouterIP()) || lab.RouterIP().As4()[3] != 254 {
		t.Errorf("RouterIP = %s, want .254 of %s", lab.RouterIP(), lab.Subnet())
	}

	ping(t, lab.Server(), lab.RouterIP())
	ping(t, lab.Router(), lab.Server2().IP)

	// The router offers a plain lease from .100-.199, without boot options.
	offer, err := dhcpDiscover(lab.Server2(), 5*time.Second)
	if err != nil {
		t.Fatalf("no DHCP offer from the router: %v", err)
	}
	ip, ok := netip.AddrFromSlice(offer.YourIPAddr.To4())
	if !ok || !lab.Subnet().Contains(ip) || ip.As4()[3] < 100 || ip.As4()[3] > 199 {
		t.Errorf("offered %s, want 100-199 of %s", offer.YourIPAddr, lab.Subnet())
	}
	if offer.BootFileName != "" || offer.Options.Has(dhcpv4.OptionClassIdentifier) {
		t.Errorf("router's offer carries boot options: file %q", offer.BootFileName)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	// A process in the server namespace sees only the lab's interfaces.
	out, err := lab.ServerCmd(ctx, "cat", "/proc/net/dev").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), lab.ServerIface()+":") || strings.Count(string(out), ":") != 2 {
		t.Errorf("server namespace interfaces:\n%s\nwant lo and %s only", out, lab.ServerIface())
	}
	p := lab.Start(t, lab.ServerCmd(context.Background(), "sleep", "60"))

	// The HTTP server's socket is in the server namespace; the router fetches from it.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("hello from the lab\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := lab.StartStaticHTTP(t, nil, dir)
	resp, err := lab.Router().HTTPClient().Get(srv.URL + "/hello.txt")
	if err != nil {
		t.Fatalf("GET from router: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hello from the lab\n" {
		t.Errorf("GET %s/hello.txt = %q", srv.URL, body)
	}
	// Nothing can leave the lab: every namespace has only its connected route.
	for _, h := range hosts {
		out, err := exec.Command(lab.tools.ip, "-n", h.Netns, "-4", "route", "show", "table", "all").CombinedOutput()
		if err != nil {
			t.Fatalf("routes of %s: %v: %s", h.Netns, err, out)
		}
		for _, r := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if strings.HasPrefix(r, "default") || (r != "" && !strings.Contains(r, lab.Subnet().String()) && !strings.Contains(r, "table local")) {
				t.Errorf("namespace %s has route %q", h.Netns, r)
			}
		}
	}

	if err := lab.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := lab.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	for _, h := range hosts {
		if netnsExists(h.Netns) {
			t.Errorf("namespace %s still exists after Close", h.Netns)
		}
	}
	select {
	case <-p.Done():
	default:
		t.Errorf("process %d still running after Close", p.Cmd.Process.Pid)
	}
	if _, err := os.Stat(lab.meta); !os.IsNotExist(err) {
		t.Errorf("lab record %s still exists after Close", lab.meta)
	}
	if _, err := lab.NewTap(); err == nil {
		t.Errorf("NewTap on a closed lab succeeded")
	}
}

// TestNoRouter: without router there is no DHCP server on the LAN and no router namespace.
func TestNoRouter(t *testing.T) {
	lab := New(t, Options{NoRouter: true})
	if lab.Router() != nil || lab.RouterIP().IsValid() {
		t.Fatalf("router present with NoRouter")
	}
	if netnsExists(nsPrefix + lab.ID + "-rtr") {
		t.Fatalf("router namespace exists with NoRouter")
	}
	offer, err := dhcpDiscover(lab.Server(), 2*time.Second)
	if err == nil {
		t.Fatalf("got a DHCP offer on a LAN without router: %s", offer.Summary())
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("DHCP discover failed for another reason than no answer: %v", err)
	}
}

// TestCleanStale: a lab whose creator is dead is removed with the processes inside it, a live
// one is kept.
func TestCleanStale(t *testing.T) {
	Require(t)
	live := New(t, Options{NoRouter: true})

	// A dead owner: a process that has exited.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	id := "zz" + live.ID[2:]
	ns := nsPrefix + id + "-lan"
	meta := filepath.Join(metaRoot, id)
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", ns).Run()
		os.RemoveAll(meta)
	})
	if err := os.MkdirAll(meta, 0o755); err != nil {
		t.Fatal(err)
	}
	rec := fmt.Sprintf(`{"pid":%d,"start_time":"1","subnet":"10.99.255.0/24"}`, dead.Process.Pid)
	if err := os.WriteFile(filepath.Join(meta, "owner.json"), []byte(rec), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(live.tools.ip, "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	sleeper := exec.Command(live.tools.ip, "netns", "exec", ns, "sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- sleeper.Wait() }()
	t.Cleanup(func() { sleeper.Process.Kill() })

	if err := CleanStale(live.Logger()); err != nil {
		t.Fatalf("CleanStale: %v", err)
	}
	if netnsExists(ns) {
		t.Errorf("stale namespace %s not removed", ns)
	}
	if _, err := os.Stat(meta); !os.IsNotExist(err) {
		t.Errorf("stale record %s not removed", meta)
	}
	select {
	case <-exited:
	case <-time.After(3 * time.Second):
		t.Errorf("process in the stale namespace not killed")
	}
	if !netnsExists(live.Server().Netns) {
		t.Errorf("CleanStale removed the live lab %s", live.ID)
	}
}

// TestReaper: a test binary that dies without cleanup (as on a -timeout panic) leaves nothing.
func TestReaper(t *testing.T) {
	if os.Getenv("NETLAB_REAPER_CHILD") == "1" {
		lab := New(t, Options{})
		lab.Start(t, lab.ServerCmd(context.Background(), "sleep", "60"))
		fmt.Printf("LAB %s\n", lab.ID)
		os.Exit(3) // no t.Cleanup
	}
	Require(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestReaper$", "-test.v")
	cmd.Env = append(os.Environ(), "NETLAB_REAPER_CHILD=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var id string
	var out strings.Builder
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		out.WriteString(sc.Text() + "\n")
		if s, ok := strings.CutPrefix(sc.Text(), "LAB "); ok {
			id = s
		}
	}
	_ = cmd.Wait()
	if id == "" {
		t.Fatalf("child did not create a lab:\n%s", out.String())
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		left, _ := filepath.Glob(filepath.Join(netnsDir, nsPrefix+id+"-*"))
		_, metaErr := os.Stat(filepath.Join(metaRoot, id))
		if len(left) == 0 && os.IsNotExist(metaErr) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("lab %s of the dead child not removed: %v", id, left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSelfTestBoot boots BIOS and UEFI VMs from the dnsmasq peer, one after the other and then
// both at once, and checks that each reached the initrd with its own command line. It repeats
// what bootserve's own e2e tests do, so it runs only with NETLAB_SELFTEST=1.
func TestSelfTestBoot(t *testing.T) {
	Require(t)
	if os.Getenv("NETLAB_SELFTEST") != "1" {
		t.Skip("set NETLAB_SELFTEST=1 to boot VMs against the dnsmasq peer")
	}
	assets := Assets(t)
	lab := New(t, Options{})
	peer := lab.StartDnsmasqPeer(t, PeerOptions{Assets: assets, Cmdline: "netlab.token=${platform}-${net0/mac:hexhyp}"})
	ctx := context.Background()

	check := func(t *testing.T, r *Result, platform string) {
		t.Helper()
		token := "netlab.token=" + platform + "-" + strings.ReplaceAll(r.MAC, ":", "-")
		if !strings.Contains(r.MarkerLine, token) {
			t.Errorf("VM %s: marker line %q lacks %q", r.Name, r.MarkerLine, token)
		}
		if _, ok := r.Find(Text("netlab: iPXE script platform=" + platform)); !ok {
			t.Errorf("VM %s: iPXE script line not seen", r.Name)
		}
		if st, err := os.Stat(r.Pcap); err != nil || st.Size() < 1000 {
			t.Errorf("VM %s: capture %s missing or empty", r.Name, r.Pcap)
		}
		reqs := strings.Join(peer.HTTP.Requests(), " ")
		for _, want := range []string{"GET /boot.ipxe", "GET /vmlinuz", "GET /initrd.gz"} {
			if !strings.Contains(reqs, want) {
				t.Errorf("HTTP requests %q lack %q", reqs, want)
			}
		}
		t.Logf("%s: %.3f s to marker: %s", r.Name, r.Seconds(), r.MarkerLine)
	}
	t.Run("BIOS", func(t *testing.T) {
		r := lab.MustBoot(t, ctx, VM{Name: "bios", Firmware: BIOS})
		check(t, r, "pcbios")
	})
	t.Run("UEFI", func(t *testing.T) {
		r := lab.MustBoot(t, ctx, VM{Name: "uefi", Firmware: UEFI, UUID: "8f2c4b1e-1d2a-4c3b-9e8f-0a1b2c3d4e5f"})
		check(t, r, "efi")
	})
	t.Run("Both", func(t *testing.T) {
		// Two VMs on the LAN at the same time; the second one is also followed line by line.
		m2, err := lab.StartVM(ctx, VM{Name: "uefi-2", Firmware: UEFI})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var r1 *Result
		wg.Add(1)
		go func() {
			defer wg.Done()
			r1, _ = lab.Boot(ctx, VM{Name: "bios-2", Firmware: BIOS})
		}()
		ectx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		for _, p := range []Pattern{Text(">>Start PXE over IPv4"), Text("iPXE initialising"), Text("netlab: iPXE script"), Regexp(`^NETBOOT-OK .*netlab\.token=efi-`)} {
			l, err := m2.Expect(ectx, p)
			if err != nil {
				t.Fatalf("%v; last lines:\n%s", err, m2.Stop().Tail(20))
			}
			t.Logf("uefi-2 %s", l)
		}
		r2 := m2.Wait()
		wg.Wait()
		if r1 == nil || !r1.MarkerSeen {
			t.Fatalf("bios-2 did not boot while uefi-2 ran")
		}
		check(t, r1, "pcbios")
		check(t, r2, "efi")
	})
	t.Run("SecureBootRefusesUnsigned", func(t *testing.T) {
		// OVMF with Secure Boot downloads snponly.efi over PXE but must refuse to run it
		// (Debian's iPXE is not signed): iPXE must never start.
		var ipxeRan bool
		r, err := lab.Boot(ctx, VM{Name: "sb", Firmware: UEFISecureBoot,
			Marker: Regexp(`Access Denied|Security Violation`), Timeout: 150 * time.Second,
			OnLine: func(l Line) { ipxeRan = ipxeRan || strings.Contains(l.Text, "iPXE initialising") }})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := r.Find(Text("NBP file downloaded successfully")); !ok {
			t.Fatalf("the Secure Boot VM did not download its NBP; last lines:\n%s", r.Tail(20))
		}
		if !r.MarkerSeen || ipxeRan {
			t.Fatalf("unsigned iPXE was not refused (refused: %v, iPXE ran: %v); last lines:\n%s", r.MarkerSeen, ipxeRan, r.Tail(20))
		}
		t.Logf("sb: refused after %.3f s: %s", r.Seconds(), r.MarkerLine)
	})
}
