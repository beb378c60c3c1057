package tftpd

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// threadConn is a blocking socket outside Go's netpoller: recv blocks the
// transfer goroutine's thread in recvfrom(2), with SO_RCVTIMEO for the
// deadline, so an ACK wakes that thread and nothing else (conn.go says why).
type threadConn struct {
	fd      int
	family  int
	timeout time.Duration // SO_RCVTIMEO as last set; 0 before the first recv

	// The peer's sockaddr, converted once: most sends go there.
	peer   netip.AddrPort
	peerSA syscall.Sockaddr

	woken  atomic.Bool
	mu     sync.Mutex // orders wake's shutdown(2) against close
	closed bool
}

func listenThreadConn(local netip.Addr, peer netip.AddrPort) (transferConn, error) {
	family := syscall.AF_INET6
	if local.Is4() || (!local.IsValid() && peer.Addr().Is4()) {
		family = syscall.AF_INET
	}
	fd, err := syscall.Socket(family, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	c := &threadConn{fd: fd, family: family, peer: peer}
	sa, err := c.sockaddr(netip.AddrPortFrom(local, 0))
	if err == nil {
		err = os.NewSyscallError("bind", syscall.Bind(fd, sa))
	}
	if err == nil {
		c.peerSA, err = c.sockaddr(peer)
	}
	if err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("transfer socket on %s for %s: %w", local, peer, err)
	}
	return c, nil
}

// sockaddr converts ap for this socket's family; an invalid address is the
// wildcard.
func (c *threadConn) sockaddr(ap netip.AddrPort) (syscall.Sockaddr, error) {
	a := ap.Addr()
	if c.family == syscall.AF_INET {
		a = a.Unmap()
		if a.IsValid() && !a.Is4() {
			return nil, fmt.Errorf("IPv6 address %s on an IPv4 socket", a)
		}
		sa := &syscall.SockaddrInet4{Port: int(ap.Port())}
		if a.IsValid() {
			sa.Addr = a.As4()
		}
		return sa, nil
	}
	sa := &syscall.SockaddrInet6{Port: int(ap.Port())}
	if !a.IsValid() {
		return sa, nil
	}
	sa.Addr = a.As16() // an IPv4 address becomes ::ffff:a.b.c.d
	if z := a.Zone(); z != "" {
		if id, err := strconv.Atoi(z); err == nil {
			sa.ZoneId = uint32(id)
		} else if ifi, err := net.InterfaceByName(z); err == nil {
			sa.ZoneId = uint32(ifi.Index)
		} else {
			return nil, fmt.Errorf("zone of %s: %w", a, err)
		}
	}
	return sa, nil
}

func (c *threadConn) send(p []byte, to netip.AddrPort) error {
	sa := c.peerSA
	if to != c.peer {
		var err error
		if sa, err = c.sockaddr(to); err != nil {
			return &net.OpError{Op: "write", Net: "udp", Addr: net.UDPAddrFromAddrPort(to), Err: err}
		}
	}
	for {
		err := syscall.Sendto(c.fd, p, 0, sa)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return &net.OpError{Op: "write", Net: "udp", Addr: net.UDPAddrFromAddrPort(to), Err: os.NewSyscallError("sendto", err)}
		}
		return nil
	}
}

func (c *threadConn) recv(p []byte, deadline time.Time) (int, netip.AddrPort, error) {
	for {
		if c.woken.Load() {
			return 0, netip.AddrPort{}, os.ErrDeadlineExceeded
		}
		left := time.Until(deadline)
		if left < time.Microsecond { // SO_RCVTIMEO 0 would mean no timeout
			return 0, netip.AddrPort{}, os.ErrDeadlineExceeded
		}
		// Setting SO_RCVTIMEO is a syscall: do it only when the one set
		// would overrun the deadline or wake far too early. Each window's
		// deadline is one timeout from its send, so a transfer sets it once.
		if c.timeout == 0 || c.timeout > left+time.Millisecond || c.timeout < left/2 {
			tv := syscall.NsecToTimeval(left.Nanoseconds())
			if err := syscall.SetsockoptTimeval(c.fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
				return 0, netip.AddrPort{}, &net.OpError{Op: "read", Net: "udp", Err: os.NewSyscallError("setsockopt SO_RCVTIMEO", err)}
			}
			c.timeout = left
		}
		n, sa, err := syscall.Recvfrom(c.fd, p, 0)
		switch {
		case err == syscall.EINTR, err == syscall.EAGAIN: // EAGAIN: the timeout; the loop checks the deadline
			continue
		case err != nil:
			return 0, netip.AddrPort{}, &net.OpError{Op: "read", Net: "udp", Err: os.NewSyscallError("recvfrom", err)}
		}
		switch sa := sa.(type) {
		case *syscall.SockaddrInet4:
			return n, netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)), nil
		case *syscall.SockaddrInet6:
			a := netip.AddrFrom16(sa.Addr).Unmap()
			if sa.ZoneId != 0 && a.Is6() {
				a = a.WithZone(strconv.Itoa(int(sa.ZoneId)))
			}
			return n, netip.AddrPortFrom(a, uint16(sa.Port)), nil
		}
		// No source address: the socket was shut down (wake).
		return 0, netip.AddrPort{}, os.ErrDeadlineExceeded
	}
}

// wake shuts the socket for reading, which ends a recvfrom(2) blocked on it.
func (c *threadConn) wake() {
	c.woken.Store(true)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		// ENOTCONN for an unconnected socket, but Linux marks it shut and
		// wakes its readers all the same.
		syscall.Shutdown(c.fd, syscall.SHUT_RD)
	}
}

func (c *threadConn) close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	return os.NewSyscallError("close", syscall.Close(c.fd))
}
