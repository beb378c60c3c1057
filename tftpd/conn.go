package tftpd

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"
)

// transferConn is the socket of one native transfer, bound to the address
// the request was sent to and open to any peer (so strangers can be told
// "unknown transfer ID").
//
// Why two kinds: most of a transfer is waiting for the next ACK. A socket
// in Go's netpoller costs a runtime wake-up per ACK (the epoll thread
// wakes, readies the goroutine, and another thread may spin up to run it);
// for a lock-step client (RFC 1350 without windows: tftp-hpa, curl, old PXE
// ROMs) that was most of the time per block, and 1 MiB took 1.2–1.6×
// dnsmasq's time. A blocking read on the transfer's own thread wakes only
// that thread, as a C server's poll loop does. With many transfers at once
// the netpoller wins instead (one epoll_wait serves many sockets, and
// threads cost stacks), so only the first few transfers get a thread
// (Config.threadTransfers); the rest use the netpoller.
type transferConn interface {
	// send writes one datagram to to.
	send(p []byte, to netip.AddrPort) error
	// recv reads one datagram, waiting until deadline; after it passes, or
	// after wake, it returns an error matching os.ErrDeadlineExceeded.
	recv(p []byte, deadline time.Time) (int, netip.AddrPort, error)
	// wake makes a blocked or later recv return at once (shutdown).
	wake()
	close() error
}

// listenTransfer opens a transfer socket on local (port 0; any address if
// local is invalid) for a transfer with peer: a thread socket if thread is
// set and the platform has them, else a netpoller one.
func listenTransfer(local netip.Addr, peer netip.AddrPort, thread bool) (transferConn, error) {
	if thread {
		if c, err := listenThreadConn(local, peer); !errors.Is(err, errors.ErrUnsupported) {
			return c, err
		}
	}
	laddr := &net.UDPAddr{}
	if local.IsValid() {
		laddr = &net.UDPAddr{IP: local.AsSlice(), Zone: local.Zone()}
	}
	c, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return nil, err
	}
	return &pollConn{c: c}, nil
}

// pollConn is a transfer socket in Go's netpoller.
type pollConn struct {
	c        *net.UDPConn
	deadline time.Time // last set, to skip setting it again per ACK
	woken    atomic.Bool
}

func (c *pollConn) send(p []byte, to netip.AddrPort) error {
	_, err := c.c.WriteToUDPAddrPort(p, to)
	return err
}

func (c *pollConn) recv(p []byte, deadline time.Time) (int, netip.AddrPort, error) {
	if !deadline.Equal(c.deadline) {
		c.c.SetReadDeadline(deadline)
		c.deadline = deadline
	}
	// After setting the deadline: a wake before it would be undone by it.
	if c.woken.Load() {
		return 0, netip.AddrPort{}, os.ErrDeadlineExceeded
	}
	n, from, err := c.c.ReadFromUDPAddrPort(p)
	return n, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), err
}

func (c *pollConn) wake() {
	c.woken.Store(true)
	c.c.SetReadDeadline(time.Now())
}

func (c *pollConn) close() error { return c.c.Close() }
