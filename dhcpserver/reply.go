package dhcpserver

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/bootserve/bootserve/dhcpproxy"
)

// ClientPort is where DHCP clients listen.
const ClientPort = 68

// netOptions are the options every lease reply carries.
type netOptions struct {
	server  netip.Addr
	mask    net.IPMask
	routers []net.IP
	dns     []net.IP
	domain  string
}

func newNetOptions(cfg *Config, sn subnet) netOptions {
	o := netOptions{server: sn.server, mask: sn.mask, domain: cfg.DomainName}
	for _, a := range cfg.Routers {
		o.routers = append(o.routers, net.IP(a.AsSlice()))
	}
	for _, a := range cfg.DNS {
		o.dns = append(o.dns, net.IP(a.AsSlice()))
	}
	return o
}

// bootChoice is the network-boot part of a reply, as dhcpproxy decided it.
type bootChoice struct {
	client *dhcpproxy.Client
	offer  dhcpproxy.Offer
}

// answer is what a reply says, besides the options every reply has.
type answer struct {
	typ    dhcpv4.MessageType // OFFER, ACK or NAK
	yiaddr netip.Addr         // invalid for INFORM and NAK
	// lease is the lease time (options 51, 58, 59); zero for INFORM.
	lease time.Duration
	// boot, when set, adds the boot file, siaddr and options 60, 43,
	// 67 and 97 that dhcpproxy.BuildReply writes.
	boot *bootChoice
	// message is option 56 of a NAK, for the client's log.
	message string
}

// buildReply encodes a reply to req. RFC 2131 table 3 lists what each
// type carries: a NAK only its type, the server identifier and a message.
func buildReply(req *dhcpv4.DHCPv4, a answer, o netOptions) (*dhcpv4.DHCPv4, error) {
	sip := net.IP(o.server.AsSlice())
	if a.typ == dhcpv4.MessageTypeNak {
		r, err := dhcpv4.NewReplyFromRequest(req,
			dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(sip)),
		)
		if err != nil {
			return nil, fmt.Errorf("build nak: %w", err)
		}
		if a.message != "" {
			r.UpdateOption(dhcpv4.OptMessage(a.message))
		}
		return r, nil
	}
	var r *dhcpv4.DHCPv4
	var err error
	if a.boot != nil {
		// The boot fields come from the ProxyDHCP encoder, so both
		// modes put the boot file in the same places; its message type
		// follows the request's (DISCOVER → OFFER, REQUEST → ACK).
		r, err = dhcpproxy.BuildReply(req, a.boot.client, a.boot.offer, sip)
		if err == nil && r.MessageType() != a.typ {
			err = fmt.Errorf("boot reply is a %v, want %v", r.MessageType(), a.typ)
		}
	} else {
		r, err = dhcpv4.NewReplyFromRequest(req,
			dhcpv4.WithMessageType(a.typ),
			dhcpv4.WithClientIP(req.ClientIPAddr),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(sip)),
		)
	}
	if err != nil {
		return nil, fmt.Errorf("build %v: %w", a.typ, err)
	}
	if a.typ == dhcpv4.MessageTypeOffer {
		// RFC 2131: ciaddr is 0 in an OFFER.
		r.ClientIPAddr = net.IPv4zero
	}
	r.YourIPAddr = net.IPv4zero
	if a.yiaddr.IsValid() {
		r.YourIPAddr = net.IP(a.yiaddr.AsSlice())
	}
	r.UpdateOption(dhcpv4.OptSubnetMask(o.mask))
	if len(o.routers) > 0 {
		r.UpdateOption(dhcpv4.OptRouter(o.routers...))
	}
	if len(o.dns) > 0 {
		r.UpdateOption(dhcpv4.OptDNS(o.dns...))
	}
	if o.domain != "" {
		r.UpdateOption(dhcpv4.OptDomainName(o.domain))
	}
	if a.lease > 0 {
		r.UpdateOption(dhcpv4.OptIPAddressLeaseTime(a.lease))
		// The RFC 2131 defaults: renew at half, rebind at 7/8.
		r.UpdateOption(dhcpv4.OptRenewTimeValue(a.lease / 2))
		r.UpdateOption(dhcpv4.OptRebindingTimeValue(a.lease * 7 / 8))
	}
	return r, nil
}

// destination is where a reply goes (RFC 2131 4.1; relayed requests are
// not served): a NAK, and anything to a client without an address, is
// broadcast on the segment, as a client without an address cannot take
// unicast before it has configured one; a client with an address (renewing,
// INFORM) gets it unicast.
func destination(req, reply *dhcpv4.DHCPv4) *net.UDPAddr {
	if reply.MessageType() != dhcpv4.MessageTypeNak {
		if ci := req.ClientIPAddr.To4(); ci != nil && !ci.IsUnspecified() {
			return &net.UDPAddr{IP: ci, Port: ClientPort}
		}
	}
	return &net.UDPAddr{IP: net.IPv4bcast, Port: ClientPort}
}
