package dhcpnet

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/net/ipv4"
)

func TestLimiterBurstThenRate(t *testing.T) {
	l := NewLimiter(0, 0) // the defaults: 3, then one per 500ms
	now := time.Unix(1000, 0)
	for i := range 3 {
		if !l.Allow("a", now) {
			t.Fatalf("event %d of the burst refused", i+1)
		}
	}
	if l.Allow("a", now) {
		t.Fatal("event past the burst allowed")
	}
	if !l.Allow("b", now) {
		t.Fatal("another key shares a's bucket")
	}
	if l.Allow("a", now.Add(400*time.Millisecond)) {
		t.Fatal("allowed before one interval passed")
	}
	if !l.Allow("a", now.Add(500*time.Millisecond)) {
		t.Fatal("refused after one interval")
	}
	// A long quiet spell refills to the burst, not beyond.
	later := now.Add(time.Hour)
	for i := range 3 {
		if !l.Allow("a", later) {
			t.Fatalf("event %d after refill refused", i+1)
		}
	}
	if l.Allow("a", later) {
		t.Fatal("bucket refilled past the burst")
	}
}

func TestLimiterBoundsKeys(t *testing.T) {
	l := newLimiter(time.Second, 2, 2)
	now := time.Unix(1000, 0)
	l.Allow("a", now)
	l.Allow("b", now)
	if l.Allow("c", now) {
		t.Fatal("new key allowed while the table is full of active keys")
	}
	if len(l.buckets) != 2 {
		t.Fatalf("%d buckets, want at most 2", len(l.buckets))
	}
	// Once a and b have refilled they carry no state and make room.
	if !l.Allow("c", now.Add(2*time.Second)) {
		t.Fatal("new key refused after the others refilled")
	}
	if len(l.buckets) != 1 {
		t.Fatalf("%d buckets after the sweep, want 1", len(l.buckets))
	}
}

func TestOnceSet(t *testing.T) {
	o := newOnceSet(2)
	if !o.First("a") || o.First("a") {
		t.Fatal("a: want first once, then not")
	}
	if !o.First("b") {
		t.Fatal("b: want first")
	}
	// Full: the next key clears the set, so a is new again.
	if !o.First("c") || !o.First("a") {
		t.Fatal("want the set forgotten once past its bound")
	}
}

func TestListenUDPLoopback(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: SO_BINDTODEVICE")
	}
	ctx := context.Background()
	c1, err := ListenUDP(ctx, "lo", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	port := c1.LocalAddr().(*net.UDPAddr).Port
	// A second socket on the same port must bind: ProxyDHCP and the DHCP
	// server both hold 67.
	c2, err := ListenUDP(ctx, "lo", port)
	if err != nil {
		t.Fatalf("second socket on port %d: %v", port, err)
	}
	c2.Close()

	out, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := out.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	c1.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	n, _, err := c1.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read %q, %v; want hello", buf[:n], err)
	}
}

func TestListenUDPNoSuchInterface(t *testing.T) {
	_, err := ListenUDP(context.Background(), "nosuchif0", 0)
	if err == nil || !strings.Contains(err.Error(), "nosuchif0") {
		t.Fatalf("err = %v, want an error naming the interface", err)
	}
}

func TestWorkersDropWhenBusy(t *testing.T) {
	w := NewWorkers(1)
	release := make(chan struct{})
	started := make(chan struct{})
	if !w.Go(func() { close(started); <-release }) {
		t.Fatal("first handler refused")
	}
	<-started
	if w.Go(func() { t.Error("ran past the bound") }) {
		t.Fatal("second handler accepted while the only slot is taken")
	}
	close(release)
	w.Wait()
	done := false
	if !w.Go(func() { done = true }) {
		t.Fatal("handler refused after the slot was freed")
	}
	w.Wait()
	if !done {
		t.Fatal("Wait returned before the handler finished")
	}
}

func TestReadLoop(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: SO_BINDTODEVICE")
	}
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		ifindex int
		want    bool // the DISCOVER reaches handle
	}{{"this interface", lo.Index, true}, {"any interface", 0, true}, {"other interface", lo.Index + 1000, false}} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ListenUDP(context.Background(), "lo", 0)
			if err != nil {
				t.Fatal(err)
			}
			pc := ipv4.NewPacketConn(c)
			if err := pc.SetControlMessage(ipv4.FlagInterface, true); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			bad, got := make(chan int, 4), make(chan string, 4)
			done := make(chan error, 1)
			go func() {
				done <- ReadLoop(ctx, pc, tc.ifindex,
					func(_ net.Addr, n int, _ error) { bad <- n },
					func(req *dhcpv4.DHCPv4, _ net.Addr) { got <- req.ClientHWAddr.String() })
			}()

			out, err := net.DialUDP("udp4", nil, c.LocalAddr().(*net.UDPAddr))
			if err != nil {
				t.Fatal(err)
			}
			defer out.Close()
			mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
			disc, err := dhcpv4.NewDiscovery(mac)
			if err != nil {
				t.Fatal(err)
			}
			out.Write([]byte{1, 2, 3})
			out.Write(disc.ToBytes())
			select {
			case n := <-bad:
				if n != 3 {
					t.Errorf("malformed packet of %d bytes, want 3", n)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("malformed packet not reported")
			}
			select {
			case m := <-got:
				if !tc.want {
					t.Errorf("packet from %s handled, want it dropped", m)
				} else if m != mac.String() {
					t.Errorf("handled %s, want %s", m, mac)
				}
			case <-time.After(time.Second):
				if tc.want {
					t.Fatal("DISCOVER not handled")
				}
			}
			cancel()
			pc.Close()
			if err := <-done; err != nil {
				t.Errorf("ReadLoop after cancel: %v, want nil", err)
			}
		})
	}
}
