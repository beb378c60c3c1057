package dhcpproxy

import (
	"fmt"
	"net"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// bootFileFieldMax is what fits the BOOTP file field with its NUL: the DHCP
// library writes at most 127 bytes there.
const bootFileFieldMax = 127

// BuildReply makes the ProxyDHCP reply to a request: an OFFER to a DISCOVER,
// an ACK to a REQUEST. It never carries an address or lease options: yiaddr
// is zero and only options 53, 54, 60, 43, 67 and 97 are set (plus relay
// information and client identifier copied back, as RFC 3046 and 6842 want).
func BuildReply(req *dhcpv4.DHCPv4, c *Client, o Offer, serverIP net.IP) (*dhcpv4.DHCPv4, error) {
	mt := dhcpv4.MessageTypeOffer
	if c.MsgType == dhcpv4.MessageTypeRequest {
		mt = dhcpv4.MessageTypeAck
	}
	sip := serverIP.To4()
	if sip == nil {
		return nil, fmt.Errorf("server address %v is not IPv4", serverIP)
	}
	r, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(mt),
		dhcpv4.WithServerIP(sip),
		dhcpv4.WithYourIP(net.IPv4zero),
		dhcpv4.WithClientIP(req.ClientIPAddr),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(sip)),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier(o.VendorClass)),
	)
	if err != nil {
		return nil, fmt.Errorf("build reply: %w", err)
	}
	// Firmwares that look at sname for the TFTP server find us there too.
	r.ServerHostName = sip.String()
	r.BootFileName = o.BootFile
	if len(o.BootFile) > bootFileFieldMax {
		// Too long for the file field (a long script URL): the name goes
		// in option 67 only, as a truncated field would be a wrong name.
		r.BootFileName = ""
		r.UpdateOption(dhcpv4.OptBootFileName(o.BootFile))
	}
	if len(o.VendorOpts) > 0 {
		r.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, o.VendorOpts))
	}
	if c.GUID != nil {
		// RFC 4578: the server MUST echo the client's GUID; the library's
		// reply constructor does not copy it.
		r.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, c.GUID))
	}
	return r, nil
}

// Destination is where a reply to c, received from src, must be sent.
func Destination(req *dhcpv4.DHCPv4, c *Client, src *net.UDPAddr) *net.UDPAddr {
	if c.Relayed {
		// A relay agent forwarded it: the relay delivers our answer.
		return &net.UDPAddr{IP: req.GatewayIPAddr.To4(), Port: PortDHCP}
	}
	if c.Port == PortPXE && src != nil && src.IP != nil && !src.IP.IsUnspecified() {
		// Port 4011 requests come from a configured client, and OVMF sends
		// them from source port 4011 and listens there, not on 68.
		return &net.UDPAddr{IP: src.IP, Port: src.Port}
	}
	return &net.UDPAddr{IP: net.IPv4bcast, Port: 68}
}
