package dhcpserver

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/bootserve/bootserve/internal/netnstest"
	"github.com/bootserve/bootserve/machines"
)

// lanClient is a DHCP client socket (port 68) on a host of a test segment.
type lanClient struct {
	conn *net.UDPConn
}

func newLANClient(t *testing.T, h netnstest.Host) *lanClient {
	t.Helper()
	var c *net.UDPConn
	h.Do(t, func() {
		lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = errors.Join(unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1),
					unix.BindToDevice(int(fd), h.Iface))
			})
			return errors.Join(err, serr)
		}}
		pc, err := lc.ListenPacket(context.Background(), "udp4", "0.0.0.0:68")
		if err != nil {
			t.Fatal(err)
		}
		c = pc.(*net.UDPConn)
	})
	t.Cleanup(func() { c.Close() })
	return &lanClient{conn: c}
}

func (l *lanClient) send(t *testing.T, p *dhcpv4.DHCPv4, to string) {
	t.Helper()
	if _, err := l.conn.WriteToUDP(p.ToBytes(), net.UDPAddrFromAddrPort(netip.MustParseAddrPort(to))); err != nil {
		t.Fatal(err)
	}
}

// recv returns the next reply for xid, and the address it was sent to, or
// nil after the timeout.
func (l *lanClient) recv(t *testing.T, xid dhcpv4.TransactionID, timeout time.Duration) *dhcpv4.DHCPv4 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 1500)
	for {
		l.conn.SetReadDeadline(deadline)
		n, _, err := l.conn.ReadFromUDP(buf)
		if err != nil {
			return nil
		}
		p, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || p.TransactionID != xid || p.OpCode != dhcpv4.OpcodeBootReply {
			continue
		}
		return p
	}
}

// dora runs DISCOVER, OFFER, REQUEST, ACK and returns offer and ack.
func (l *lanClient) dora(t *testing.T, hw net.HardwareAddr, mods ...dhcpv4.Modifier) (*dhcpv4.DHCPv4, *dhcpv4.DHCPv4) {
	t.Helper()
	d := discover(t, hw, mods...)
	l.send(t, d, "255.255.255.255:67")
	offer := l.recv(t, d.TransactionID, 3*time.Second)
	if offer == nil || offer.MessageType() != dhcpv4.MessageTypeOffer {
		t.Fatalf("%v: no OFFER: %v", hw, offer)
	}
	l.send(t, requestFor(t, d, offer), "255.255.255.255:67")
	ack := l.recv(t, d.TransactionID, 3*time.Second)
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck || !ack.YourIPAddr.Equal(offer.YourIPAddr) {
		t.Fatalf("%v: no ACK for %v: %v", hw, offer.YourIPAddr, ack)
	}
	return offer, ack
}

// hostAddr is host n of the segment's /24.
func hostAddr(lan *netnstest.Pair, n byte) netip.Addr {
	b := lan.Server.Addr.As4()
	b[3] = n
	return netip.AddrFrom4(b)
}

func lanConfig(lan *netnstest.Pair) Config {
	return Config{
		PoolStart: hostAddr(lan, 100), PoolEnd: hostAddr(lan, 110),
		Routers: []netip.Addr{hostAddr(lan, 254)}, DNS: []netip.Addr{hostAddr(lan, 53)}, DomainName: "lab.example",
	}
}

// runServer listens on the server host (with a real probe for other
// servers) and serves until the returned stop is called.
func runServer(t *testing.T, lan *netnstest.Pair, s *Server) (stop func()) {
	t.Helper()
	s.Interface = lan.Server.Iface
	if s.ProbeWait == 0 {
		s.ProbeWait = 300 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(context.Background())
	lan.Server.Do(t, func() {
		if err := s.Listen(ctx); err != nil {
			t.Fatal(err)
		}
	})
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

func TestLANLeasesAndBoot(t *testing.T) {
	lan := netnstest.New(t)
	reg := prometheus.NewRegistry()
	s := &Server{Config: lanConfig(lan), Metrics: NewMetrics(reg)}
	s.SetPolicy(testPolicy(t, byMAC{mac(3).String(): {Kind: machines.KindKernel, Name: "k"}}))
	runServer(t, lan, s)
	if s.Address != lan.Server.Addr {
		t.Fatalf("server address %v, want the interface's %v", s.Address, lan.Server.Addr)
	}
	c := newLANClient(t, lan.Client)

	// Two plain clients get two different addresses, and no boot file.
	_, ack1 := c.dora(t, mac(1))
	_, ack2 := c.dora(t, mac(2))
	if ack1.YourIPAddr.Equal(ack2.YourIPAddr) {
		t.Fatalf("both clients got %v", ack1.YourIPAddr)
	}
	for _, a := range []*dhcpv4.DHCPv4{ack1, ack2} {
		if a.BootFileName != "" || !a.ServerIPAddr.IsUnspecified() || a.IPAddressLeaseTime(0) != time.Hour ||
			!a.ServerIdentifier().Equal(lan.Server.Addr.AsSlice()) || len(a.Router()) != 1 {
			t.Errorf("plain ACK: %s", a.Summary())
		}
	}

	// A PXE client gets an address and its boot file, with siaddr, in the
	// OFFER and the ACK.
	offer, ack := c.dora(t, mac(3), pxe(7)...)
	for _, r := range []*dhcpv4.DHCPv4{offer, ack} {
		if r.YourIPAddr.IsUnspecified() || r.BootFileName != "efi-x64/snponly.efi" ||
			!r.ServerIPAddr.Equal(lan.Server.Addr.AsSlice()) || r.ClassIdentifier() != "PXEClient" {
			t.Errorf("PXE %v: %s", r.MessageType(), r.Summary())
		}
	}

	// Renewal: the client now holds its address, asks by unicast, and is
	// answered by unicast.
	ip := netip.MustParseAddr(ack1.YourIPAddr.String())
	if out, err := exec.Command("ip", "-n", lan.Client.NS, "addr", "add", ip.String()+"/24", "dev", lan.Client.Iface).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	renew, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(1)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithClientIP(ack1.YourIPAddr))
	c.send(t, renew, netip.AddrPortFrom(lan.Server.Addr, 67).String())
	if r := c.recv(t, renew.TransactionID, 3*time.Second); r == nil || r.MessageType() != dhcpv4.MessageTypeAck || !r.YourIPAddr.Equal(ack1.YourIPAddr) || r.IsBroadcast() {
		t.Errorf("renewal: %v", r)
	}

	count := func(typ string, o Outcome) float64 {
		return testutil.ToFloat64(s.Metrics.Packets.WithLabelValues(typ, string(o)))
	}
	if count("discover", Offered) != 3 || count("request", Acked) != 4 {
		t.Errorf("counters: offered %v acked %v", count("discover", Offered), count("request", Acked))
	}
	if n := testutil.ToFloat64(s.Metrics.Leases); n != 3 {
		t.Errorf("leases gauge %v", n)
	}
	if n, err := testutil.GatherAndCount(reg, "bootserve_dhcpserver_packets_total"); err != nil || n == 0 {
		t.Errorf("metrics not registered: %d %v", n, err)
	}
}

func TestLANRestartKeepsAddress(t *testing.T) {
	lan := netnstest.New(t)
	cfg := lanConfig(lan)
	cfg.LeaseFile = filepath.Join(t.TempDir(), "leases.json")
	stop := runServer(t, lan, &Server{Config: cfg})
	c := newLANClient(t, lan.Client)
	c.dora(t, mac(1))
	_, ack := c.dora(t, mac(2))
	stop()

	runServer(t, lan, &Server{Config: cfg})
	// Client 2 first: a server that forgot would give it the pool's first
	// address.
	d := discover(t, mac(2))
	c.send(t, d, "255.255.255.255:67")
	if offer := c.recv(t, d.TransactionID, 3*time.Second); offer == nil || !offer.YourIPAddr.Equal(ack.YourIPAddr) {
		t.Fatalf("after restart: %v, want %v", offer, ack.YourIPAddr)
	}
	// INIT-REBOOT (no server id) of client 2 to its address: ACK.
	reboot, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(2)), dhcpv4.WithBroadcast(true), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ack.YourIPAddr)))
	c.send(t, reboot, "255.255.255.255:67")
	if r := c.recv(t, reboot.TransactionID, 3*time.Second); r == nil || r.MessageType() != dhcpv4.MessageTypeAck {
		t.Errorf("INIT-REBOOT after restart: %v", r)
	}
	// And client 3 gets neither of the two.
	_, ack3 := c.dora(t, mac(3))
	if ack3.YourIPAddr.String() != hostAddr(lan, 102).String() {
		t.Errorf("new client got %v, want %v", ack3.YourIPAddr, hostAddr(lan, 102))
	}
}

func TestLANSquatterNeverOffered(t *testing.T) {
	lan := netnstest.New(t)
	// A host with a static address inside the pool, not leased: it
	// answers ping.
	squat := hostAddr(lan, 100)
	if out, err := exec.Command("ip", "-n", lan.Client.NS, "addr", "add", squat.String()+"/24", "dev", lan.Client.Iface).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	s := &Server{Config: lanConfig(lan)}
	runServer(t, lan, s)
	c := newLANClient(t, lan.Client)
	for i, mods := range [][]dhcpv4.Modifier{nil, {dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(squat.AsSlice()))}} {
		_, ack := c.dora(t, mac(byte(i+1)), mods...)
		if ack.YourIPAddr.Equal(squat.AsSlice()) {
			t.Fatalf("client %d was given %v, which another host uses", i+1, squat)
		}
	}
	if n := testutil.ToFloat64(s.Metrics.Conflicts.WithLabelValues("ping")); n != 1 {
		t.Errorf("ping conflicts = %v, want 1", n)
	}
	for _, l := range s.Leases() {
		if l.IP == squat && l.State != StateConflict {
			t.Errorf("squatted address recorded as %v", l.State)
		}
	}
}

// startDnsmasq runs dnsmasq as a plain DHCP server on a host of the segment.
func startDnsmasq(t *testing.T, lan *netnstest.Pair) {
	t.Helper()
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Skip("needs dnsmasq (Debian's dnsmasq-base)")
	}
	dir := t.TempDir()
	cmd := exec.Command("ip", "netns", "exec", lan.Client.NS, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
		"--port=0", "--interface="+lan.Client.Iface, "--bind-interfaces", "--no-ping", "--user=root",
		"--dhcp-range="+hostAddr(lan, 150).String()+","+hostAddr(lan, 160).String()+",1h",
		"--dhcp-leasefile="+filepath.Join(dir, "leases"), "--pid-file="+filepath.Join(dir, "pid"), "--log-facility=-")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "DHCP, IP range") {
				close(ready)
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(5 * time.Second):
		t.Fatal("dnsmasq did not start")
	}
}

func TestLANRefusesBesideAnotherServer(t *testing.T) {
	lan := netnstest.New(t)
	startDnsmasq(t, lan)
	s := &Server{Interface: lan.Server.Iface, Config: lanConfig(lan)}
	var err error
	lan.Server.Do(t, func() { err = s.Listen(context.Background()) })
	want := "another DHCP server at " + lan.Client.Addr.String() + " answers on " + lan.Server.Iface + ": use ProxyDHCP mode"
	if err == nil || !strings.Contains(err.Error(), want) {
		s.Close()
		t.Fatalf("Listen beside dnsmasq: %v, want %q", err, want)
	}
	// It bound nothing: a later start in the same namespace works.
	cfg := lanConfig(lan)
	cfg.AllowOtherServers = true
	s2 := &Server{Config: cfg}
	runServer(t, lan, s2)
	c := newLANClient(t, lan.Client)
	// Both servers answer; ours is among them.
	d := discover(t, mac(1))
	c.send(t, d, "255.255.255.255:67")
	deadline := time.Now().Add(3 * time.Second)
	var ours bool
	for !ours && time.Now().Before(deadline) {
		r := c.recv(t, d.TransactionID, time.Until(deadline))
		ours = r != nil && r.ServerIdentifier().Equal(lan.Server.Addr.AsSlice())
	}
	if !ours {
		t.Error("no offer from the server started with allow_other_servers")
	}
}

func TestProbeFindsNothingOnQuietSegment(t *testing.T) {
	lan := netnstest.New(t)
	var found []netip.Addr
	var err error
	lan.Server.Do(t, func() { found, err = ProbeOtherServers(context.Background(), lan.Server.Iface, 500*time.Millisecond) })
	if err != nil || len(found) != 0 {
		t.Fatalf("quiet segment: %v %v", found, err)
	}
}
