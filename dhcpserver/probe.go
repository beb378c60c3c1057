package dhcpserver

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/bootserve/bootserve/internal/dhcpnet"
)

// ProbeOtherServers looks for other DHCP servers on an interface: it
// broadcasts a DISCOVER from port 68 with a random locally administered MAC
// and collects, for up to wait, the server identifiers of the address
// offers that answer it (proxy offers, without an address, do not count).
// It returns as soon as one server answered. Binding port 68 needs root.
func ProbeOtherServers(ctx context.Context, ifname string, wait time.Duration) ([]netip.Addr, error) {
	pc, err := dhcpnet.ListenUDP(ctx, ifname, ClientPort)
	if err != nil {
		return nil, fmt.Errorf("probe for other DHCP servers: %w", err)
	}
	defer pc.Close()
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		return nil, err
	}
	mac[0] = mac[0]&^1 | 2 // unicast, locally administered
	disc, err := dhcpv4.NewDiscovery(mac, dhcpv4.WithBroadcast(true))
	if err != nil {
		return nil, err
	}
	bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: 67}
	deadline := time.Now().Add(wait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	// A second DISCOVER halfway, in case the first was lost.
	resend := time.Now().Add(wait / 2)
	if _, err := pc.WriteTo(disc.ToBytes(), bcast); err != nil {
		return nil, fmt.Errorf("probe for other DHCP servers: send DISCOVER on %s: %w", ifname, err)
	}
	var found []netip.Addr
	buf := make([]byte, 1500)
	for len(found) == 0 {
		now := time.Now()
		if !now.Before(deadline) || ctx.Err() != nil {
			break
		}
		until := deadline
		if !resend.IsZero() && resend.Before(until) {
			until = resend
		}
		_ = pc.SetReadDeadline(until)
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if !resend.IsZero() && !time.Now().Before(resend) {
					resend = time.Time{}
					_, _ = pc.WriteTo(disc.ToBytes(), bcast)
				}
				continue
			}
			return nil, fmt.Errorf("probe for other DHCP servers on %s: %w", ifname, err)
		}
		p, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || p.OpCode != dhcpv4.OpcodeBootReply || p.TransactionID != disc.TransactionID ||
			p.MessageType() != dhcpv4.MessageTypeOffer || p.YourIPAddr.IsUnspecified() {
			continue
		}
		srv, _ := netip.AddrFromSlice(p.ServerIdentifier().To4())
		if !srv.IsValid() {
			if ua, ok := from.(*net.UDPAddr); ok {
				srv, _ = netip.AddrFromSlice(ua.IP.To4())
			}
		}
		if srv.IsValid() && !slices.Contains(found, srv) {
			found = append(found, srv)
		}
	}
	return found, ctx.Err()
}
