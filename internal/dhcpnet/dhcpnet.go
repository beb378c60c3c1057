// Package dhcpnet is the receive side that bootserve's two DHCP responders
// (ProxyDHCP in dhcpproxy, the full server in dhcpserver) share: a UDP
// socket bound to one interface, and the guards that keep a read loop
// bounded under a flood (per-client rate limits, log-once sets, a cap on
// requests handled at once).
package dhcpnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// rcvBuf is the receive buffer asked for the DHCP sockets: a few thousand
// packets.
const rcvBuf = 4 << 20

// ListenUDP binds 0.0.0.0:port to one interface. Binding a specific address
// would miss broadcasts; address and port reuse let ProxyDHCP and a DHCP
// server on the same host each keep their own socket on 67.
func ListenUDP(ctx context.Context, ifname string, port int) (net.PacketConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			// A big receive buffer absorbs bursts (a boot storm, a flood)
			// that would otherwise drop firmware requests in the kernel;
			// RCVBUFFORCE passes rmem_max when we are root, else the
			// plain option gets what the system allows.
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf) != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvBuf)
			}
			serr = errors.Join(
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1),
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1),
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1),
				unix.BindToDevice(int(fd), ifname),
			)
		})
		return errors.Join(err, serr)
	}}
	c, err := lc.ListenPacket(ctx, "udp4", fmt.Sprintf("0.0.0.0:%d", port))
	if err != nil {
		return nil, fmt.Errorf("listen on udp port %d of %s: %w (DHCP ports bound to an interface need root or CAP_NET_BIND_SERVICE and CAP_NET_RAW)", port, ifname, err)
	}
	return c, nil
}
