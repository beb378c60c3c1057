package dhcpserver

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/bootserve/bootserve/dhcpproxy"
	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/machines"
)

// testURLs builds URLs with every input visible in the result.
type testURLs struct{}

func (testURLs) ScriptURL(host netip.Addr, id machines.Identity) string {
	return fmt.Sprintf("http://%s/ipxe?mac=%s&arch=%s&ip=%s", host, id.MAC, id.Arch, id.IP)
}

func (testURLs) FirmwareURL(host netip.Addr, name string) string {
	return fmt.Sprintf("http://%s/firmware/%s", host, name)
}

// testFirmware loads a set from fake BIOS and x64 binaries and a fake
// Secure Boot chain.
func testFirmware(t testing.TB) *firmware.Set {
	t.Helper()
	dir := t.TempDir()
	write := func(n string) string {
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, []byte("fw "+n), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write(firmware.UndionlyKPXE)
	write(firmware.SNPOnlyEFI)
	s, err := firmware.Load(firmware.Config{SearchDir: dir, Shim: write("shim.efi"), GRUB: write("grub.efi")})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// byMAC boots the MACs it lists, each into its target, and no other.
type byMAC map[string]machines.Target

func (b byMAC) Target(_ context.Context, id machines.Identity) (*machines.Target, error) {
	if t, ok := b[id.MAC.String()]; ok {
		return t.Clone(), nil
	}
	return nil, fmt.Errorf("%v: %w", id.MAC, machines.ErrNoTarget)
}

func testPolicy(t testing.TB, b machines.Booter) *dhcpproxy.Policy {
	return &dhcpproxy.Policy{Booter: b, Firmware: testFirmware(t), URLs: testURLs{}}
}

func mac(last byte) net.HardwareAddr { return net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, last} }

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// discover builds a DISCOVER from hw with the given modifiers.
func discover(t testing.TB, hw net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	p, err := dhcpv4.NewDiscovery(hw, append([]dhcpv4.Modifier{dhcpv4.WithBroadcast(true)}, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// requestFor builds the REQUEST that selects offer.
func requestFor(t testing.TB, d, offer *dhcpv4.DHCPv4, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	base := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithTransactionID(d.TransactionID),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(offer.ServerIdentifier())),
	}
	r, err := dhcpv4.New(append(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(d.ClientHWAddr), dhcpv4.WithBroadcast(true)}, base...), mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	// Network-boot firmware repeats its class and architecture.
	for _, code := range []dhcpv4.OptionCode{dhcpv4.OptionClassIdentifier, dhcpv4.OptionClientSystemArchitectureType,
		dhcpv4.OptionClientMachineIdentifier, dhcpv4.OptionUserClassInformation, dhcpv4.OptionClientIdentifier} {
		if v := d.GetOneOption(code); v != nil && !r.Options.Has(code) {
			r.UpdateOption(dhcpv4.OptGeneric(code, v))
		}
	}
	return r
}

func pxe(arch uint16) []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.Arch(arch))),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier(fmt.Sprintf("PXEClient:Arch:%05d:UNDI:003000", arch))),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, append([]byte{0}, bytes.Repeat([]byte{0xab}, 16)...)),
	}
}

// syncBuffer is a log sink tests read while the server writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// unitServer is a Server set up without sockets on 10.9.0.1/24, driven
// through respond; busy lists the addresses that "answer ping".
type unitServer struct {
	*Server
	clock *clock
	log   *syncBuffer
	mu    sync.Mutex
	busy  map[netip.Addr]bool
	pings []netip.Addr
}

func newUnitServer(t testing.TB, cfg Config) *unitServer {
	t.Helper()
	u := &unitServer{clock: &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}, log: &syncBuffer{}, busy: map[netip.Addr]bool{}}
	u.Server = &Server{Address: addr("10.9.0.1"), Config: cfg, Logger: slog.New(slog.NewTextHandler(u.log, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	u.now = u.clock.now
	u.inUse = func(_ context.Context, a netip.Addr) bool {
		u.mu.Lock()
		defer u.mu.Unlock()
		u.pings = append(u.pings, a)
		return u.busy[a]
	}
	if err := u.setup(netip.MustParsePrefix("10.9.0.1/24")); err != nil {
		t.Fatal(err)
	}
	return u
}

// exchange sends a packet through the encoder and decoder on both ways, as
// the network would, and returns the decoded reply (nil for none).
func (u *unitServer) exchange(t testing.TB, req *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, LeaseEvent) {
	t.Helper()
	in, err := dhcpv4.FromBytes(req.ToBytes())
	if err != nil {
		t.Fatal(err)
	}
	if o, ok := precheck(in); !ok {
		return nil, LeaseEvent{Outcome: o}
	}
	r, ev := u.respond(context.Background(), in)
	if r == nil {
		return nil, ev
	}
	out, err := dhcpv4.FromBytes(r.ToBytes())
	if err != nil {
		t.Fatalf("reply does not decode: %v", err)
	}
	return out, ev
}

// lease runs DISCOVER then REQUEST for hw and returns the ACK.
func (u *unitServer) lease(t testing.TB, hw net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	d := discover(t, hw, mods...)
	offer, ev := u.exchange(t, d)
	if offer == nil {
		t.Fatalf("no offer for %v: %+v", hw, ev)
	}
	ack, ev := u.exchange(t, requestFor(t, d, offer))
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("no ack for %v: %v %+v", hw, ack, ev)
	}
	if !ack.YourIPAddr.Equal(offer.YourIPAddr) {
		t.Fatalf("ack %v for offer %v", ack.YourIPAddr, offer.YourIPAddr)
	}
	return ack
}

func baseConfig() Config {
	return Config{
		PoolStart: addr("10.9.0.100"), PoolEnd: addr("10.9.0.109"),
		Routers: []netip.Addr{addr("10.9.0.254")}, DNS: []netip.Addr{addr("10.9.0.53"), addr("9.9.9.9")},
		DomainName: "lab.example",
	}
}
