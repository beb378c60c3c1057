package tftpd

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestThreadConn drives a thread socket against a netpoller client over
// IPv4 and IPv6 loopback: datagrams both ways with the right addresses,
// deadlines, a stranger's address, and wake ending a blocked read.
func TestThreadConn(t *testing.T) {
	for _, tc := range []struct{ local, client string }{
		{"127.0.0.1", "127.0.0.1"},
		{"", "127.0.0.1"}, // no address learned: the wildcard of the client's family
		{"::1", "::1"},
	} {
		t.Run(tc.local+"/"+tc.client, func(t *testing.T) {
			cl, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(tc.client)})
			if err != nil {
				t.Skipf("no %s loopback: %v", tc.client, err)
			}
			defer cl.Close()
			peer := cl.LocalAddr().(*net.UDPAddr).AddrPort()
			peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
			var local netip.Addr
			if tc.local != "" {
				local = netip.MustParseAddr(tc.local)
			}
			c, err := listenThreadConn(local, peer)
			if err != nil {
				t.Fatal(err)
			}
			defer c.close()

			if err := c.send([]byte("to peer"), peer); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 100)
			cl.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, srv, err := cl.ReadFromUDPAddrPort(buf)
			if err != nil || string(buf[:n]) != "to peer" {
				t.Fatalf("client got %q, %v", buf[:n], err)
			}
			if _, err := cl.WriteToUDPAddrPort([]byte("to server"), srv); err != nil {
				t.Fatal(err)
			}
			n, from, err := c.recv(buf, time.Now().Add(5*time.Second))
			if err != nil || string(buf[:n]) != "to server" || from != peer {
				t.Fatalf("server got %q from %v, %v; want %q from %v", buf[:n], from, err, "to server", peer)
			}

			// Nothing to read: the deadline ends the wait.
			if _, _, err := c.recv(buf, time.Now().Add(30*time.Millisecond)); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("recv with nothing sent: %v, want a deadline error", err)
			}
			if _, _, err := c.recv(buf, time.Now().Add(-time.Second)); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("recv past its deadline: %v", err)
			}

			// A stranger's datagram is returned with its address.
			st, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(tc.client)})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			st.WriteToUDPAddrPort([]byte("hi"), srv)
			_, from, err = c.recv(buf, time.Now().Add(5*time.Second))
			if want := st.LocalAddr().(*net.UDPAddr).AddrPort(); err != nil || from.Port() != want.Port() || from.Addr() != want.Addr().Unmap() {
				t.Fatalf("stranger's datagram from %v, %v; want %v", from, err, want)
			}
			if err := c.send([]byte("who?"), from); err != nil {
				t.Fatalf("send to the stranger: %v", err)
			}

			// wake ends a read that would wait a minute, and later reads.
			got := make(chan error, 1)
			go func() {
				_, _, err := c.recv(buf, time.Now().Add(time.Minute))
				got <- err
			}()
			time.Sleep(50 * time.Millisecond) // let it block in recvfrom
			c.wake()
			select {
			case err := <-got:
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("woken recv: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("wake did not end a blocked recv")
			}
			if _, _, err := c.recv(buf, time.Now().Add(time.Minute)); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("recv after wake: %v", err)
			}
			if err := c.close(); err != nil {
				t.Fatal(err)
			}
			c.wake() // after close: must not touch a reused descriptor
			if err := c.close(); err != nil {
				t.Fatalf("second close: %v", err)
			}
		})
	}
}

// TestThreadSocketBound holds more transfers than may have thread sockets
// and counts the process's blocking UDP sockets (thread sockets are the only
// ones without O_NONBLOCK): the bound is kept, the rest are served from
// netpoller sockets, and every transfer completes.
func TestThreadSocketBound(t *testing.T) {
	file := randomBytes(t, 5000)
	for _, tc := range []struct {
		threads, want int
	}{{2, 2}, {0, 3}, {-1, 0}} {
		t.Run(strconv.Itoa(tc.threads), func(t *testing.T) {
			ts := startServer(t, Config{Source: Map{"f": file}, threadTransfers: tc.threads}, "")
			before := blockingUDPSockets(t)
			var clients []*rawClient
			var firsts []packet
			for range 3 { // each sits on DATA 1
				c := newRawClient(t)
				c.send(ts.addr, rq(opRRQ, "f", "octet"))
				p := c.mustRecv()
				if p.op() != opDATA || p.block() != 1 {
					t.Fatalf("got %v, want DATA 1", p)
				}
				clients, firsts = append(clients, c), append(firsts, p)
			}
			if got := blockingUDPSockets(t) - before; got != tc.want {
				t.Errorf("threadTransfers %d, 3 transfers: %d thread sockets, want %d", tc.threads, got, tc.want)
			}
			for i, c := range clients {
				data := c.lockStepAfter(firsts[i])
				if !bytes.Equal(data, file) {
					t.Errorf("transfer %d: %d bytes, want the %d-byte file", i, len(data), len(file))
				}
			}
			ts.waitOutcome(t, OutcomeOK, 3)
			waitFor(t, "thread sockets closed", func() bool { return blockingUDPSockets(t) == before })
		})
	}
}

// lockStepAfter runs the rest of a lock-step transfer with 512-byte blocks
// whose DATA 1 is first, and returns the file.
func (c *rawClient) lockStepAfter(first packet) []byte {
	c.t.Helper()
	data, last := bytes.Clone(first.data()), first.data()
	for b := uint16(1); ; b++ {
		c.send(first.from, ackPacket(b))
		if len(last) < 512 {
			return data
		}
		last = c.expectData(first.from, b+1, b+1)
		data = append(data, last...)
	}
}

// blockingUDPSockets counts this process's UDP sockets opened without
// O_NONBLOCK, from /proc/self/fdinfo.
func blockingUDPSockets(t *testing.T) int {
	t.Helper()
	udp := map[string]bool{} // socket inodes of UDP sockets
	for _, f := range []string{"/proc/self/net/udp", "/proc/self/net/udp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			if fs := strings.Fields(line); len(fs) > 9 {
				udp[fs[9]] = true
			}
		}
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		var inode string
		if err != nil || !strings.HasPrefix(target, "socket:[") {
			continue
		}
		inode = strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]")
		if !udp[inode] {
			continue
		}
		info, err := os.ReadFile(filepath.Join("/proc/self/fdinfo", fd.Name()))
		if err != nil {
			continue
		}
		var flags int64
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "flags:"); ok {
				flags, _ = strconv.ParseInt(strings.TrimSpace(v), 8, 64)
			}
		}
		if flags&syscall.O_NONBLOCK == 0 {
			n++
		}
	}
	return n
}
