package dhcpnet

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/net/ipv4"
)

// ReadLoop reads DHCP packets from c until ctx is done (it then returns
// nil) or reading fails. A packet that parses and arrived on interface
// ifindex (0: any) goes to handle; one that does not parse goes to
// malformed, if set. Both run on the loop's goroutine, so they must be
// quick: classify, rate-limit, hand off to Workers.
//
// c needs ipv4.FlagInterface set to check the interface.
func ReadLoop(ctx context.Context, c *ipv4.PacketConn, ifindex int,
	malformed func(src net.Addr, n int, err error), handle func(req *dhcpv4.DHCPv4, src net.Addr)) error {
	port := 0
	if a, ok := c.LocalAddr().(*net.UDPAddr); ok {
		port = a.Port
	}
	buf := make([]byte, 1500)
	for {
		n, cm, src, err := c.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("read udp port %d: %w", port, err)
		}
		req, err := dhcpv4.FromBytes(buf[:n])
		if err != nil {
			if malformed != nil {
				malformed(src, n, err)
			}
			continue
		}
		if cm != nil && ifindex != 0 && cm.IfIndex != 0 && cm.IfIndex != ifindex {
			// SO_BINDTODEVICE should make this impossible; be explicit.
			continue
		}
		handle(req, src)
	}
}
