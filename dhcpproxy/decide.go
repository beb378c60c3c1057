// Package dhcpproxy is bootserve's ProxyDHCP responder: beside the network's
// own DHCP server, it answers network-boot clients only, on ports 67 and
// 4011, with the boot program or script URL that fits each client. It never
// hands out an address.
//
// The choice of reply is a pure function of the packet (Parse, then Decide),
// tested against real firmware captures; sockets live in server.go.
package dhcpproxy

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/machines"
)

// Ports the responder listens on.
const (
	PortDHCP = 67   // DISCOVER (and REQUESTs addressed to us)
	PortPXE  = 4011 // PXE boot server: REQUESTs after the client has an address
)

// Outcome says what happened to a packet; it is the "outcome" label of the
// packet counter.
type Outcome string

// Outcomes of a packet.
const (
	Answered         Outcome = "answered"
	IgnoredNotPXE    Outcome = "ignored_not_pxe"    // no PXEClient/HTTPClient class or no option 93
	IgnoredNotForUs  Outcome = "ignored_not_for_us" // a REQUEST to another server, a reply, a RELEASE...
	IgnoredNoTarget  Outcome = "ignored_no_target"  // no rule in the config boots this machine
	IgnoredNoBinary  Outcome = "ignored_no_binary"  // architecture without a boot program
	IgnoredRateLimit Outcome = "ignored_rate_limit" // a repeat of a request just answered
	DroppedBusy      Outcome = "dropped_busy"       // too many requests in flight
	Malformed        Outcome = "malformed"
	SendFailed       Outcome = "send_failed"
)

// Client is what Parse learns from a network-boot request.
type Client struct {
	MsgType  dhcpv4.MessageType
	Port     int // where the request arrived: PortDHCP or PortPXE
	MAC      net.HardwareAddr
	ArchCode iana.Arch // option 93, first entry
	// VendorClass is option 60 ("PXEClient:Arch:00007:UNDI:003000").
	VendorClass string
	// HTTPClient is true when option 60 starts with "HTTPClient".
	HTTPClient bool
	// IPXE is true when the client already runs iPXE (user class "iPXE" or
	// iPXE's encapsulated option 175).
	IPXE bool
	// GUID is option 97 when well formed (type 0 + 16 bytes), to echo back.
	GUID []byte
	UUID string
	// IP is the client's address when it has one (ciaddr, or the address it
	// requests), for the status page.
	IP       netip.Addr
	Hostname string
	// Labels are the user classes other than "iPXE", and hostname=<name>.
	Labels []string
	// Relayed is true when a relay agent forwarded the request (giaddr set).
	Relayed bool
}

// Identity is the machine identity the config's rules match against.
func (c *Client) Identity(arch firmware.Arch) machines.Identity {
	return machines.Identity{MAC: c.MAC, UUID: c.UUID, Arch: arch, IP: c.IP, Hostname: c.Hostname, Labels: c.Labels}
}

// Parse classifies a request that arrived on port (67 or 4011) of a server
// whose address is serverIP. It returns the client when the request is one
// bootserve answers, or the reason to ignore it.
func Parse(p *dhcpv4.DHCPv4, port int, serverIP net.IP) (*Client, Outcome) {
	if p.OpCode != dhcpv4.OpcodeBootRequest || len(p.ClientHWAddr) == 0 {
		return nil, IgnoredNotForUs
	}
	mt := p.MessageType()
	switch {
	case mt == dhcpv4.MessageTypeDiscover && port == PortDHCP:
	case mt == dhcpv4.MessageTypeRequest && port == PortPXE:
	case mt == dhcpv4.MessageTypeRequest && port == PortDHCP:
		// On 67 a REQUEST is normally the client choosing the real DHCP
		// server's offer; answer only one that names us.
		if sid := p.ServerIdentifier(); sid == nil || !sid.Equal(serverIP) {
			return nil, IgnoredNotForUs
		}
	default:
		return nil, IgnoredNotForUs
	}
	vc := p.ClassIdentifier()
	isPXE := strings.HasPrefix(vc, "PXEClient")
	isHTTP := strings.HasPrefix(vc, "HTTPClient")
	archs := p.ClientArch()
	if (!isPXE && !isHTTP) || len(archs) == 0 {
		return nil, IgnoredNotPXE
	}
	c := &Client{
		MsgType:     mt,
		Port:        port,
		MAC:         p.ClientHWAddr,
		ArchCode:    archs[0],
		VendorClass: vc,
		HTTPClient:  isHTTP,
		IPXE:        isIPXE(p),
		Hostname:    p.HostName(),
		Relayed:     p.GatewayIPAddr != nil && !p.GatewayIPAddr.IsUnspecified(),
	}
	c.Labels = labels(p)
	if g := p.GetOneOption(dhcpv4.OptionClientMachineIdentifier); len(g) == 17 && g[0] == 0 {
		c.GUID = append([]byte(nil), g...)
		c.UUID = machines.UUIDFromWire(g[1:])
	}
	for _, ip := range []net.IP{p.ClientIPAddr, p.RequestedIPAddress()} {
		if a, ok := netip.AddrFromSlice(ip.To4()); ok && !a.IsUnspecified() {
			c.IP = a
			break
		}
	}
	return c, ""
}

// labels are what a machine tells about itself that config rules can
// select on: its user classes (option 77, RFC 3004) other than iPXE's own,
// and its host name (option 12) as "hostname=<name>". Only printable words
// are kept: they end up in URLs and logs.
func labels(p *dhcpv4.DHCPv4) []string {
	var out []string
	for _, uc := range p.UserClass() {
		if uc != "iPXE" && printableWord(uc) {
			out = append(out, uc)
		}
	}
	if h := p.HostName(); h != "" && printableWord(h) {
		out = append(out, "hostname="+h)
	}
	return out
}

func printableWord(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if r <= ' ' || r > '~' {
			return false
		}
	}
	return true
}

func isIPXE(p *dhcpv4.DHCPv4) bool {
	if p.Options.Has(dhcpv4.GenericOptionCode(175)) {
		return true
	}
	for _, uc := range p.UserClass() {
		if uc == "iPXE" {
			return true
		}
	}
	return false
}

// ArchFor maps option 93 (RFC 4578 and the IANA registry) to the boot
// program family, and says whether the client boots over HTTP instead of
// TFTP. ok is false for architectures bootserve has no boot program family
// for at all.
func ArchFor(code iana.Arch) (arch firmware.Arch, http bool, ok bool) {
	switch code {
	case iana.INTEL_X86PC:
		return firmware.BIOS, false, true
	case iana.EFI_IA32:
		return firmware.EFIIA32, false, true
	// RFC 4578 swapped 7 and 9 (erratum 4623); firmwares send either for x64.
	case iana.EFI_X86_64, iana.EFI_BC:
		return firmware.EFIX64, false, true
	case iana.EFI_ARM32:
		return firmware.EFIARM32, false, true
	case iana.EFI_ARM64:
		return firmware.EFIARM64, false, true
	case iana.EFI_RISCV64:
		return firmware.EFIRISCV64, false, true
	case iana.EFI_X86_HTTP:
		return firmware.EFIIA32, true, true
	case iana.EFI_X86_64_HTTP:
		return firmware.EFIX64, true, true
	case iana.EFI_ARM32_HTTP:
		return firmware.EFIARM32, true, true
	case iana.EFI_ARM64_HTTP:
		return firmware.EFIARM64, true, true
	case iana.EFI_RISCV64_HTTP:
		return firmware.EFIRISCV64, true, true
	}
	// PC98, Itanium, Alpha, Arc, Lean Client, Xscale, PowerPC, EBC HTTP,
	// x86 BIOS HTTP (no firmware known to implement it), U-Boot, RISC-V
	// 32/128, s390, MIPS, Sunway, LoongArch, rpiboot and unassigned codes:
	// no iPXE build exists for them.
	return firmware.ArchUnknown, false, false
}

// ArchName names an option-93 value for logs, including the codes the DHCP
// library does not know.
func ArchName(code iana.Arch) string {
	switch code {
	case 37:
		return "LoongArch32 UEFI"
	case 38:
		return "LoongArch32 UEFI HTTP"
	case 39:
		return "LoongArch64 UEFI"
	case 40:
		return "LoongArch64 UEFI HTTP"
	case 41:
		return "arm rpiboot"
	}
	n := code.String()
	if strings.HasPrefix(n, "unknown") {
		return fmt.Sprintf("unassigned architecture %d", uint16(code))
	}
	return fmt.Sprintf("%s (%d)", n, uint16(code))
}

// URLs builds the HTTP URLs that go into boot file fields. httpboot owns the
// URL scheme; host is the server address the client can reach.
type URLs interface {
	ScriptURL(host netip.Addr, id machines.Identity) string
	FirmwareURL(host netip.Addr, name string) string
}

// Env is everything besides the packet that Decide needs.
type Env struct {
	ServerIP netip.Addr
	Firmware *firmware.Set
	URLs     URLs
	// SecureBoot says the machine's target boots through the signed
	// shim → GRUB chain rather than iPXE.
	SecureBoot bool
}

// Offer is the boot part of a reply.
type Offer struct {
	Arch firmware.Arch
	// VendorClass is option 60 of the reply: "PXEClient" or "HTTPClient".
	VendorClass string
	// BootFile is a TFTP file name or a full http:// URL.
	BootFile string
	// VendorOpts is option 43 (PXE vendor options), nil for none.
	VendorOpts []byte
	// Reason explains an ignored request, for the log line.
	Reason string
}

// pxeSkipDiscovery is option 43 with PXE_DISCOVERY_CONTROL (sub-option 6) =
// 8: "boot the file named in this offer, skip boot server discovery".
func pxeSkipDiscovery() []byte { return []byte{6, 1, 8, 255} }

// Decide chooses what a classified client gets. It is the one place where a
// client's boot file is chosen.
func Decide(c *Client, env Env) (Offer, Outcome) {
	arch, httpBoot, ok := ArchFor(c.ArchCode)
	if !ok {
		return Offer{Reason: ArchName(c.ArchCode) + " has no iPXE build"}, IgnoredNoBinary
	}
	o := Offer{Arch: arch, VendorClass: "PXEClient"}
	if env.SecureBoot && arch == firmware.EFIX64 && !c.IPXE && !httpBoot && !c.HTTPClient {
		// iPXE is not signed by Microsoft; shim is, and it loads the
		// vendor-signed GRUB from the same TFTP directory, which then
		// loads the kernel. Works with Secure Boot off too.
		shim, err := env.Firmware.SecureBoot()
		if err != nil {
			return Offer{Arch: arch, Reason: err.Error()}, IgnoredNoBinary
		}
		o.BootFile = shim.Name
		return o, Answered
	}
	if c.IPXE {
		// Already iPXE (a NIC ROM or our chainloaded build): hand it the
		// script, never a binary, so chainloading cannot loop.
		o.BootFile = env.URLs.ScriptURL(env.ServerIP, c.Identity(arch))
		return o, Answered
	}
	bin, err := env.Firmware.For(arch)
	if err != nil {
		return Offer{Arch: arch, Reason: fmt.Sprintf("%s: %v", ArchName(c.ArchCode), err)}, IgnoredNoBinary
	}
	if httpBoot || c.HTTPClient {
		// UEFI HTTP Boot: the reply must say HTTPClient and carry a full
		// URI with an IP literal; EDK2 rejects proxy offers without one.
		o.VendorClass = "HTTPClient"
		o.BootFile = env.URLs.FirmwareURL(env.ServerIP, bin.Name)
		return o, Answered
	}
	o.BootFile = bin.Name
	if arch == firmware.BIOS {
		// BIOS PXE ROMs boot the offered file directly with discovery off.
		o.VendorOpts = pxeSkipDiscovery()
	}
	// UEFI PXE gets no option 43: EDK2 then treats our offer as a BINL
	// offer and asks port 4011, which answers with the same file. Some UEFI
	// firmwares ignore offers that bypass discovery, none ignore this.
	return o, Answered
}
