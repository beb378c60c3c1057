package dhcpproxy

import (
	"context"
	"crypto/rand"
	"errors"
	"net"
	"net/netip"
	"strconv"
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

// onlyMAC boots one MAC and nothing else.
type onlyMAC struct{ mac string }

func (o onlyMAC) Target(_ context.Context, id machines.Identity) (*machines.Target, error) {
	if id.MAC.String() == o.mac {
		return &machines.Target{Kind: machines.KindKernel, Name: "test"}, nil
	}
	return nil, machines.ErrNoTarget
}

// lanClient is a DHCP client socket on the client host of a test segment.
type lanClient struct {
	conn *net.UDPConn
}

func newLANClient(t *testing.T, h netnstest.Host, port int) *lanClient {
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
		pc, err := lc.ListenPacket(context.Background(), "udp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		c = pc.(*net.UDPConn)
	})
	t.Cleanup(func() { c.Close() })
	return &lanClient{conn: c}
}

func (l *lanClient) send(t *testing.T, b []byte, to string) {
	t.Helper()
	if _, err := l.conn.WriteToUDP(b, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(to))); err != nil {
		t.Fatal(err)
	}
}

// recv returns the next DHCP reply for xid, or nil after the timeout.
func (l *lanClient) recv(t *testing.T, xid dhcpv4.TransactionID, timeout time.Duration) (*dhcpv4.DHCPv4, *net.UDPAddr) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 1500)
	for {
		l.conn.SetReadDeadline(deadline)
		n, from, err := l.conn.ReadFromUDP(buf)
		if err != nil {
			return nil, nil
		}
		p, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || p.TransactionID != xid || p.OpCode != dhcpv4.OpcodeBootReply {
			continue
		}
		return p, from
	}
}

// serveUntilCleanup runs s.Serve(ctx) until the test ends, then cancels
// and checks that Serve returned cleanly.
func serveUntilCleanup(t *testing.T, s *Server, ctx context.Context, cancel context.CancelFunc) {
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

func TestServerOnNamespacedLAN(t *testing.T) {
	lan := netnstest.New(t)
	reg := prometheus.NewRegistry()
	var events []Event
	evc := make(chan Event, 100)
	s := &Server{Interface: lan.Server.Iface, Metrics: NewMetrics(reg), OnEvent: func(e Event) { evc <- e }}
	s.SetPolicy(&Policy{Booter: onlyMAC{"52:54:00:ab:cd:ef"}, Firmware: testFirmware(t, false), URLs: testURLs{}})
	ctx, cancel := context.WithCancel(context.Background())
	lan.Server.Do(t, func() {
		if err := s.Listen(ctx); err != nil {
			t.Fatal(err)
		}
	})
	if s.Address != lan.Server.Addr {
		t.Fatalf("server address %v, want the interface's %v", s.Address, lan.Server.Addr)
	}
	serveUntilCleanup(t, s, ctx, cancel)
	c68 := newLANClient(t, lan.Client, 68)
	c4011 := newLANClient(t, lan.Client, 4011)
	count := func(typ string, o Outcome) float64 {
		return testutil.ToFloat64(s.Metrics.Packets.WithLabelValues(typ, string(o)))
	}

	// Garbage first: random bytes, a truncated header, a bad magic cookie.
	junk := [][]byte{make([]byte, 300), {1, 2, 3}, make([]byte, 240)}
	rand.Read(junk[0])
	junk[0][0] = 7 // not a valid op, and random everything
	for _, b := range junk {
		c68.send(t, b, "255.255.255.255:67")
		c4011.send(t, b, netip.AddrPortFrom(lan.Server.Addr, 4011).String())
	}

	// Then a valid PXE DISCOVER is still answered.
	disc := request(t, withArch(7), withClass("PXEClient:Arch:00007:UNDI:003000"),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, make([]byte, 17)))
	c68.send(t, disc.ToBytes(), "255.255.255.255:67")
	offer, from := c68.recv(t, disc.TransactionID, 3*time.Second)
	if offer == nil {
		t.Fatal("no OFFER to a valid PXE DISCOVER after garbage")
	}
	if offer.MessageType() != dhcpv4.MessageTypeOffer || offer.BootFileName != "efi-x64/snponly.efi" ||
		!offer.YourIPAddr.Equal(net.IPv4zero) || !offer.ServerIPAddr.Equal(lan.Server.Addr.AsSlice()) ||
		from.Port != 67 {
		t.Errorf("offer from %v: %s", from, offer.Summary())
	}
	if got := count("unknown", Malformed); got != 6 {
		t.Errorf("malformed counter = %v, want 6", got)
	}

	// The BINL REQUEST OVMF sends from port 4011 is answered to port 4011.
	req := request(t, withArch(7), withClass("PXEClient:Arch:00007:UNDI:003000"),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithClientIP(lan.Client.Addr.AsSlice()))
	c4011.send(t, req.ToBytes(), netip.AddrPortFrom(lan.Server.Addr, 4011).String())
	ack, from := c4011.recv(t, req.TransactionID, 3*time.Second)
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck || ack.BootFileName != "efi-x64/snponly.efi" || from.Port != 4011 {
		t.Fatalf("ACK on 4011 = %v from %v", ack, from)
	}
	if !ack.YourIPAddr.Equal(net.IPv4zero) {
		t.Errorf("ACK yiaddr %v", ack.YourIPAddr)
	}

	// A plain DHCP DISCOVER, and a PXE one from a machine with no target,
	// get no reply at all.
	plain := request(t)
	c68.send(t, plain.ToBytes(), "255.255.255.255:67")
	other := request(t, withArch(0), withClass("PXEClient:Arch:00000:UNDI:002001"))
	other.ClientHWAddr = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	c68.send(t, other.ToBytes(), "255.255.255.255:67")
	for _, x := range []dhcpv4.TransactionID{plain.TransactionID, other.TransactionID} {
		if r, _ := c68.recv(t, x, 700*time.Millisecond); r != nil {
			t.Errorf("answered a request it must ignore: %s", r.Summary())
		}
	}
	if count("discover", IgnoredNotPXE) != 1 || count("discover", IgnoredNoTarget) != 1 {
		t.Errorf("ignored counters: not_pxe %v no_target %v", count("discover", IgnoredNotPXE), count("discover", IgnoredNoTarget))
	}

	// Identical requests are answered at a bounded rate: 20 copies within
	// a few milliseconds get at most the burst.
	flood := request(t, withArch(0), withClass("PXEClient"))
	for range 20 {
		c68.send(t, flood.ToBytes(), "255.255.255.255:67")
	}
	answers := 0
	for {
		r, _ := c68.recv(t, flood.TransactionID, 500*time.Millisecond)
		if r == nil {
			break
		}
		if !r.YourIPAddr.Equal(net.IPv4zero) {
			t.Errorf("yiaddr %v", r.YourIPAddr)
		}
		answers++
	}
	if answers < 1 || answers > 4 {
		t.Errorf("%d answers to 20 identical DISCOVERs, want 1..4", answers)
	}
	if rl := count("discover", IgnoredRateLimit); rl < 16 {
		t.Errorf("rate-limited counter %v, want >= 16", rl)
	}

drain:
	for {
		select {
		case e := <-evc:
			events = append(events, e)
		case <-time.After(200 * time.Millisecond):
			break drain
		}
	}
	var answered int
	for _, e := range events {
		if e.Outcome == Answered {
			answered++
			if e.MAC.String() != "52:54:00:ab:cd:ef" || e.Target != "test" {
				t.Errorf("event %+v", e)
			}
		}
	}
	if answered != 2+answers {
		t.Errorf("%d answered events, want %d", answered, 2+answers)
	}
}

// In full-DHCP mode the DHCP server owns port 67: PXEOnly leaves it free
// and still answers EDK2's BINL REQUEST on 4011.
func TestPXEOnlyLeavesPort67(t *testing.T) {
	lan := netnstest.New(t)
	s := &Server{Interface: lan.Server.Iface, PXEOnly: true}
	s.SetPolicy(&Policy{Booter: onlyMAC{"52:54:00:ab:cd:ef"}, Firmware: testFirmware(t, false), URLs: testURLs{}})
	ctx, cancel := context.WithCancel(context.Background())
	lan.Server.Do(t, func() {
		if err := s.Listen(ctx); err != nil {
			t.Fatal(err)
		}
		// A plain bind (no address or port reuse) succeeds only on a free port.
		c, err := net.ListenPacket("udp4", "0.0.0.0:67")
		if err != nil {
			t.Fatalf("port 67 is taken with PXEOnly: %v", err)
		}
		c.Close()
	})
	serveUntilCleanup(t, s, ctx, cancel)
	c4011 := newLANClient(t, lan.Client, 4011)
	req := request(t, withArch(7), withClass("PXEClient:Arch:00007:UNDI:003000"),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithClientIP(lan.Client.Addr.AsSlice()))
	c4011.send(t, req.ToBytes(), netip.AddrPortFrom(lan.Server.Addr, 4011).String())
	if ack, _ := c4011.recv(t, req.TransactionID, 3*time.Second); ack == nil || ack.BootFileName != "efi-x64/snponly.efi" {
		t.Fatalf("no ACK on 4011 with PXEOnly: %v", ack)
	}
}
