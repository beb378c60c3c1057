package dhcpproxy

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/internal/pcapread"
	"github.com/bootserve/bootserve/machines"
)

var serverIP = net.IPv4(10, 99, 0, 1).To4()

// testURLs builds URLs the way a real HTTP side would, with every input
// visible in the result so tests can check what Decide passed.
type testURLs struct{}

func (testURLs) ScriptURL(host netip.Addr, id machines.Identity) string {
	return fmt.Sprintf("http://%s/ipxe?mac=%s&arch=%s", host, id.MAC, id.Arch)
}

func (testURLs) FirmwareURL(host netip.Addr, name string) string {
	return fmt.Sprintf("http://%s/firmware/%s", host, name)
}

// testFirmware loads a set from fake binaries: bios and x64 by default, and
// every other architecture when all is set.
func testFirmware(t *testing.T, all bool) *firmware.Set {
	t.Helper()
	dir := t.TempDir()
	for _, n := range []string{firmware.UndionlyKPXE, firmware.SNPOnlyEFI} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("fw "+n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg := firmware.Config{SearchDir: dir}
	if all {
		for _, p := range []*string{&cfg.EFIIA32, &cfg.EFIARM32, &cfg.EFIARM64, &cfg.EFIRISCV64} {
			*p = filepath.Join(dir, fmt.Sprintf("custom%p.efi", p))
			if err := os.WriteFile(*p, []byte("custom"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	s, err := firmware.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func serverAddr() netip.Addr { return netip.MustParseAddr("10.99.0.1") }

func testEnv(t *testing.T) Env {
	return Env{ServerIP: serverAddr(), Firmware: testFirmware(t, false), URLs: testURLs{}}
}

// golden says what bootserve must answer to each client packet of the real
// firmware captures in testdata (index = packet number in the capture).
type golden struct {
	outcome  Outcome
	msgType  dhcpv4.MessageType
	bootFile string
	opt43    []byte
	dst      string
}

const (
	biosScript = "http://10.99.0.1/ipxe?mac=52:54:00:12:34:56&arch=bios"
	x64Script  = "http://10.99.0.1/ipxe?mac=52:54:00:12:34:56&arch=efi-x64"
	x64Binary  = "efi-x64/snponly.efi"
	bcast      = "255.255.255.255:68"
)

var goldenReplies = map[string]map[int]golden{
	"pixiecore-bios-dhcp.pcap": {
		0: {Answered, dhcpv4.MessageTypeOffer, biosScript, nil, bcast}, // SeaBIOS iPXE ROM
		3: {IgnoredNotForUs, 0, "", nil, ""},                           // REQUEST to the router
		5: {Answered, dhcpv4.MessageTypeOffer, biosScript, nil, bcast}, // pixiecore's own iPXE (opt175)
		8: {IgnoredNotForUs, 0, "", nil, ""},
	},
	"pixiecore-uefi-dhcp.pcap": {
		0:  {Answered, dhcpv4.MessageTypeOffer, x64Binary, nil, bcast},            // OVMF native PXE
		3:  {IgnoredNotForUs, 0, "", nil, ""},                                     // REQUEST to the router
		5:  {Answered, dhcpv4.MessageTypeAck, x64Binary, nil, "10.99.0.158:4011"}, // OVMF BINL request from port 4011
		7:  {Answered, dhcpv4.MessageTypeOffer, x64Script, nil, bcast},            // chainloaded iPXE
		10: {IgnoredNotForUs, 0, "", nil, ""},
	},
	"split-bios-dhcp.pcap": {
		0: {Answered, dhcpv4.MessageTypeOffer, biosScript, nil, bcast},
		3: {IgnoredNotForUs, 0, "", nil, ""},
		5: {Answered, dhcpv4.MessageTypeAck, biosScript, nil, "10.99.0.158:68"}, // iPXE boot server request
	},
	"split-uefi-dhcp.pcap": {
		0:  {Answered, dhcpv4.MessageTypeOffer, x64Binary, nil, bcast},
		3:  {IgnoredNotForUs, 0, "", nil, ""},
		5:  {Answered, dhcpv4.MessageTypeAck, x64Binary, nil, "10.99.0.158:4011"},
		7:  {Answered, dhcpv4.MessageTypeOffer, x64Script, nil, bcast}, // ipxe.efi
		10: {IgnoredNotForUs, 0, "", nil, ""},
		12: {Answered, dhcpv4.MessageTypeAck, x64Script, nil, "10.99.0.158:68"}, // ipxe.efi ProxyDHCP request
	},
}

func TestGoldenCaptures(t *testing.T) {
	env := testEnv(t)
	files, err := filepath.Glob("testdata/*.pcap")
	if err != nil || len(files) != len(goldenReplies) {
		t.Fatalf("captures %v (err %v), want the %d with golden replies", files, err, len(goldenReplies))
	}
	for _, f := range files {
		want := goldenReplies[filepath.Base(f)]
		pkts, err := pcapread.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		checked := 0
		for i, p := range pkts {
			req, err := dhcpv4.FromBytes(p.Payload)
			if err != nil {
				t.Fatalf("%s #%d: %v", f, i, err)
			}
			if req.OpCode != dhcpv4.OpcodeBootRequest {
				continue
			}
			g, ok := want[i]
			if !ok {
				t.Errorf("%s #%d: client packet without a golden reply", f, i)
				continue
			}
			checked++
			t.Run(fmt.Sprintf("%s#%d", filepath.Base(f), i), func(t *testing.T) {
				checkGolden(t, req, p, g, env)
			})
		}
		if checked != len(want) {
			t.Errorf("%s: checked %d client packets, golden table has %d", f, checked, len(want))
		}
	}
}

func checkGolden(t *testing.T, req *dhcpv4.DHCPv4, p pcapread.Datagram, g golden, env Env) {
	c, outcome := Parse(req, p.Dst.Port, serverIP)
	if c == nil {
		if outcome != g.outcome {
			t.Fatalf("Parse outcome %q, want %q", outcome, g.outcome)
		}
		return
	}
	offer, outcome := Decide(c, env)
	if outcome != g.outcome {
		t.Fatalf("outcome %q (%s), want %q", outcome, offer.Reason, g.outcome)
	}
	reply, err := BuildReply(req, c, offer, serverIP)
	if err != nil {
		t.Fatal(err)
	}
	// Check the reply as the client sees it: encoded, then decoded.
	wire := reply.ToBytes()
	r, err := dhcpv4.FromBytes(wire)
	if err != nil {
		t.Fatalf("our reply does not decode: %v", err)
	}
	if r.OpCode != dhcpv4.OpcodeBootReply || r.HWType != req.HWType || r.TransactionID != req.TransactionID ||
		r.Flags != req.Flags || !bytes.Equal(r.ClientHWAddr, req.ClientHWAddr) {
		t.Errorf("header: op %v htype %v xid %v flags %v chaddr %v", r.OpCode, r.HWType, r.TransactionID, r.Flags, r.ClientHWAddr)
	}
	if !r.YourIPAddr.Equal(net.IPv4zero) {
		t.Errorf("yiaddr %v: a ProxyDHCP reply never hands out an address", r.YourIPAddr)
	}
	if !r.ClientIPAddr.Equal(req.ClientIPAddr) {
		t.Errorf("ciaddr %v, want the request's %v", r.ClientIPAddr, req.ClientIPAddr)
	}
	if !r.ServerIPAddr.Equal(serverIP) || !r.GatewayIPAddr.Equal(net.IPv4zero) {
		t.Errorf("siaddr %v giaddr %v", r.ServerIPAddr, r.GatewayIPAddr)
	}
	if r.ServerHostName != "10.99.0.1" {
		t.Errorf("sname %q", r.ServerHostName)
	}
	if r.MessageType() != g.msgType {
		t.Errorf("message type %v, want %v", r.MessageType(), g.msgType)
	}
	if r.BootFileName != g.bootFile {
		t.Errorf("file %q, want %q", r.BootFileName, g.bootFile)
	}
	// The file field must be NUL-terminated on the wire.
	file := wire[108:236]
	if i := bytes.IndexByte(file, 0); i != len(g.bootFile) {
		t.Errorf("file field NUL at %d, want %d", i, len(g.bootFile))
	}
	if sid := r.ServerIdentifier(); !sid.Equal(serverIP) {
		t.Errorf("option 54 = %v", sid)
	}
	if vc := r.ClassIdentifier(); vc != "PXEClient" {
		t.Errorf("option 60 = %q", vc)
	}
	if got := r.GetOneOption(dhcpv4.OptionVendorSpecificInformation); !bytes.Equal(got, g.opt43) {
		t.Errorf("option 43 = %x, want %x", got, g.opt43)
	}
	if got, want := r.GetOneOption(dhcpv4.OptionClientMachineIdentifier), req.GetOneOption(dhcpv4.OptionClientMachineIdentifier); !bytes.Equal(got, want) || len(got) != 17 {
		t.Errorf("option 97 = %x, want the request's %x", got, want)
	}
	// Exactly these options: no lease options, nothing else. The client
	// identifier is echoed as RFC 6842 requires.
	wantCodes := []int{53, 54, 60, 97}
	if id := req.GetOneOption(dhcpv4.OptionClientIdentifier); id != nil {
		wantCodes = append(wantCodes, 61)
		if got := r.GetOneOption(dhcpv4.OptionClientIdentifier); !bytes.Equal(got, id) {
			t.Errorf("option 61 = %x, want %x", got, id)
		}
	}
	if g.opt43 != nil {
		wantCodes = append(wantCodes, 43)
	}
	sort.Ints(wantCodes)
	var codes []int
	for code := range r.Options {
		codes = append(codes, int(code))
	}
	sort.Ints(codes)
	if fmt.Sprint(codes) != fmt.Sprint(wantCodes) {
		t.Errorf("options %v, want exactly %v", codes, wantCodes)
	}
	if dst := Destination(req, c, p.Src); dst.String() != g.dst {
		t.Errorf("sent to %v, want %v", dst, g.dst)
	}
}

// request builds a DISCOVER as a firmware would send it.
func request(t *testing.T, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	mac := net.HardwareAddr{0x52, 0x54, 0, 0xab, 0xcd, 0xef}
	base := []dhcpv4.Modifier{dhcpv4.WithBroadcast(true)}
	p, err := dhcpv4.NewDiscovery(mac, append(base, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func withArch(a uint16) dhcpv4.Modifier {
	return dhcpv4.WithOption(dhcpv4.OptClientArch(iana.Arch(a)))
}

func withClass(c string) dhcpv4.Modifier {
	return dhcpv4.WithOption(dhcpv4.OptClassIdentifier(c))
}

// TestEveryArchitecture covers every option-93 value of RFC 4578 and the
// IANA registry (0-41) plus unassigned ones, with the default firmware set
// (bios and x64 only) and with every architecture configured.
func TestEveryArchitecture(t *testing.T) {
	type want struct {
		arch firmware.Arch
		http bool
	}
	supported := map[uint16]want{
		0: {firmware.BIOS, false}, 6: {firmware.EFIIA32, false}, 7: {firmware.EFIX64, false},
		9: {firmware.EFIX64, false}, 10: {firmware.EFIARM32, false}, 11: {firmware.EFIARM64, false},
		15: {firmware.EFIIA32, true}, 16: {firmware.EFIX64, true}, 18: {firmware.EFIARM32, true},
		19: {firmware.EFIARM64, true}, 27: {firmware.EFIRISCV64, false}, 28: {firmware.EFIRISCV64, true},
	}
	sets := map[string]*firmware.Set{"default": testFirmware(t, false), "all": testFirmware(t, true)}
	for setName, set := range sets {
		env := Env{ServerIP: netip.MustParseAddr("10.99.0.1"), Firmware: set, URLs: testURLs{}}
		for code := uint16(0); code <= 45; code++ {
			w, isSupported := supported[code]
			for _, ipxe := range []bool{false, true} {
				name := fmt.Sprintf("%s/arch%d/ipxe=%v", setName, code, ipxe)
				class := fmt.Sprintf("PXEClient:Arch:%05d:UNDI:003000", code)
				if w.http {
					class = fmt.Sprintf("HTTPClient:Arch:%05d:UNDI:003000", code)
				}
				mods := []dhcpv4.Modifier{withArch(code), withClass(class)}
				if ipxe {
					mods = append(mods, dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE")))
				}
				c, outcome := Parse(request(t, mods...), PortDHCP, serverIP)
				if c == nil {
					t.Fatalf("%s: Parse ignored it: %s", name, outcome)
				}
				offer, outcome := Decide(c, env)
				hasBinary := w.arch == firmware.BIOS || w.arch == firmware.EFIX64 || setName == "all"
				switch {
				case !isSupported:
					if outcome != IgnoredNoBinary || offer.Reason == "" {
						t.Errorf("%s: outcome %q reason %q, want %q with a reason", name, outcome, offer.Reason, IgnoredNoBinary)
					}
				case ipxe:
					wantURL := fmt.Sprintf("http://10.99.0.1/ipxe?mac=52:54:00:ab:cd:ef&arch=%s", w.arch)
					if outcome != Answered || offer.BootFile != wantURL {
						t.Errorf("%s: %q %q, want the script URL %q", name, outcome, offer.BootFile, wantURL)
					}
				case !hasBinary:
					if outcome != IgnoredNoBinary || !bytes.Contains([]byte(offer.Reason), []byte(w.arch.ConfigKey())) {
						t.Errorf("%s: %q reason %q, want %q naming %s", name, outcome, offer.Reason, IgnoredNoBinary, w.arch.ConfigKey())
					}
				case w.http:
					bin, _ := set.For(w.arch)
					if outcome != Answered || offer.VendorClass != "HTTPClient" || offer.BootFile != "http://10.99.0.1/firmware/"+bin.Name || offer.VendorOpts != nil {
						t.Errorf("%s: %+v %q, want HTTPClient and the URL of %s", name, offer, outcome, bin.Name)
					}
				default:
					bin, _ := set.For(w.arch)
					if outcome != Answered || offer.VendorClass != "PXEClient" || offer.BootFile != bin.Name {
						t.Errorf("%s: %+v %q, want TFTP file %s", name, offer, outcome, bin.Name)
					}
					wantOpt43 := w.arch == firmware.BIOS
					if (offer.VendorOpts != nil) != wantOpt43 {
						t.Errorf("%s: option 43 = %x", name, offer.VendorOpts)
					}
				}
			}
		}
	}
}

func TestIgnoresNonPXE(t *testing.T) {
	cases := map[string]*dhcpv4.DHCPv4{
		"plain DHCP client":      request(t),
		"vendor class, no arch":  request(t, withClass("PXEClient:Arch:00000")),
		"arch, no vendor class":  request(t, withArch(7)),
		"other vendor class":     request(t, withArch(7), withClass("MSFT 5.0")),
		"lowercase pxeclient":    request(t, withArch(7), withClass("pxeclient")),
		"REQUEST for the router": request(t, withArch(0), withClass("PXEClient"), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 99, 0, 254)))),
		"REQUEST without server": request(t, withArch(0), withClass("PXEClient"), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest)),
		"RELEASE":                request(t, withArch(0), withClass("PXEClient"), dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease)),
		"INFORM":                 request(t, withArch(0), withClass("PXEClient"), dhcpv4.WithMessageType(dhcpv4.MessageTypeInform)),
		"a reply, not a request": func() *dhcpv4.DHCPv4 {
			p := request(t, withArch(0), withClass("PXEClient"))
			p.OpCode = dhcpv4.OpcodeBootReply
			return p
		}(),
		"BOOTP without msg type": func() *dhcpv4.DHCPv4 {
			p := request(t, withArch(0), withClass("PXEClient"))
			p.Options.Del(dhcpv4.OptionDHCPMessageType)
			return p
		}(),
	}
	for name, p := range cases {
		if c, outcome := Parse(p, PortDHCP, serverIP); c != nil || outcome == "" {
			t.Errorf("%s: answered (%v, %q)", name, c, outcome)
		}
	}
	// A DISCOVER sent to 4011 is not how PXE works: ignored.
	if c, _ := Parse(request(t, withArch(0), withClass("PXEClient")), PortPXE, serverIP); c != nil {
		t.Error("DISCOVER on 4011 answered")
	}
	// A REQUEST on 67 that names us is answered, with an ACK.
	p := request(t, withArch(7), withClass("PXEClient:Arch:00007"), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(serverIP)))
	c, _ := Parse(p, PortDHCP, serverIP)
	if c == nil {
		t.Fatal("REQUEST naming us ignored")
	}
	offer, _ := Decide(c, testEnv(t))
	r, err := BuildReply(p, c, offer, serverIP)
	if err != nil || r.MessageType() != dhcpv4.MessageTypeAck {
		t.Errorf("reply %v, %v", r, err)
	}
}

func TestReplyDetails(t *testing.T) {
	env := testEnv(t)
	// A malformed option 97 (wrong length or type) is not echoed.
	for _, guid := range [][]byte{{0, 1, 2}, append([]byte{1}, make([]byte, 16)...)} {
		p := request(t, withArch(7), withClass("PXEClient"), dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, guid))
		c, _ := Parse(p, PortDHCP, serverIP)
		o, _ := Decide(c, env)
		r, _ := BuildReply(p, c, o, serverIP)
		if r.Options.Has(dhcpv4.OptionClientMachineIdentifier) {
			t.Errorf("malformed GUID %x echoed", guid)
		}
	}
	// A real GUID is turned into the UUID users know.
	wire := append([]byte{0}, 0x3e, 0x8a, 0x2c, 0x8c, 0x2b, 0x1f, 0x5d, 0x4c, 0x9e, 0x6f, 0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f)
	p := request(t, withArch(7), withClass("PXEClient"), dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, wire))
	c, _ := Parse(p, PortDHCP, serverIP)
	if c.UUID != "8c2c8a3e-1f2b-4c5d-9e6f-0a1b2c3d4e5f" {
		t.Errorf("UUID = %q", c.UUID)
	}
	// A boot file longer than the file field goes in option 67 only.
	long := Offer{VendorClass: "PXEClient", BootFile: "http://10.99.0.1/ipxe?" + string(bytes.Repeat([]byte("x"), 200))}
	r, err := BuildReply(p, c, long, serverIP)
	if err != nil {
		t.Fatal(err)
	}
	r2, _ := dhcpv4.FromBytes(r.ToBytes())
	if r2.BootFileName != "" || r2.BootFileNameOption() != long.BootFile {
		t.Errorf("long boot file: field %q option %q", r2.BootFileName, r2.BootFileNameOption())
	}
	// Relayed requests are answered to the relay on port 67.
	p.GatewayIPAddr = net.IPv4(10, 1, 2, 3)
	c, _ = Parse(p, PortDHCP, serverIP)
	if d := Destination(p, c, &net.UDPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 67}); d.String() != "10.1.2.3:67" {
		t.Errorf("relayed reply goes to %v", d)
	}
	o, _ := Decide(c, env)
	r, _ = BuildReply(p, c, o, serverIP)
	if !r.GatewayIPAddr.Equal(p.GatewayIPAddr) {
		t.Errorf("giaddr not kept: %v", r.GatewayIPAddr)
	}
}

func TestSecureBootChain(t *testing.T) {
	env := testEnv(t)
	env.SecureBoot = true
	if _, err := env.Firmware.SecureBoot(); err != nil {
		t.Skipf("no shim/GRUB on this host or in this build: %v", err)
	}
	cases := []struct {
		name string
		mods []dhcpv4.Modifier
		want string
	}{
		{"x64 UEFI PXE", []dhcpv4.Modifier{withArch(7), withClass("PXEClient:Arch:00007:UNDI:003000")}, "efi-x64-sb/shimx64.efi"},
		{"x64 UEFI PXE (9)", []dhcpv4.Modifier{withArch(9), withClass("PXEClient")}, "efi-x64-sb/shimx64.efi"},
		{"iPXE with Secure Boot off", []dhcpv4.Modifier{withArch(7), withClass("PXEClient"), dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE"))}, "http://10.99.0.1/ipxe?mac=52:54:00:ab:cd:ef&arch=efi-x64"},
		{"BIOS has no Secure Boot", []dhcpv4.Modifier{withArch(0), withClass("PXEClient")}, "bios/undionly.kpxe"},
	}
	for _, c := range cases {
		cl, _ := Parse(request(t, c.mods...), PortDHCP, serverIP)
		o, outcome := Decide(cl, env)
		if outcome != Answered || o.BootFile != c.want {
			t.Errorf("%s: %q %q, want %q", c.name, outcome, o.BootFile, c.want)
		}
	}
}
