package dhcpserver

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/bootserve/bootserve/dhcpproxy"
	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/machines"
)

// checkLeaseOptions checks the options every OFFER and ACK carries.
func checkLeaseOptions(t *testing.T, r *dhcpv4.DHCPv4) {
	t.Helper()
	ones, _ := r.SubnetMask().Size()
	if ones != 24 {
		t.Errorf("option 1 = %v", r.SubnetMask())
	}
	if rt := r.Router(); len(rt) != 1 || !rt[0].Equal(net.ParseIP("10.9.0.254")) {
		t.Errorf("option 3 = %v", rt)
	}
	if d := r.DNS(); len(d) != 2 || !d[0].Equal(net.ParseIP("10.9.0.53")) || !d[1].Equal(net.ParseIP("9.9.9.9")) {
		t.Errorf("option 6 = %v", d)
	}
	if r.DomainName() != "lab.example" {
		t.Errorf("option 15 = %q", r.DomainName())
	}
	if lt := r.IPAddressLeaseTime(0); lt != time.Hour {
		t.Errorf("option 51 = %v", lt)
	}
	if t1, t2 := r.IPAddressRenewalTime(0), r.IPAddressRebindingTime(0); t1 != 30*time.Minute || t2 != 52*time.Minute+30*time.Second {
		t.Errorf("options 58/59 = %v %v", t1, t2)
	}
	if !r.ServerIdentifier().Equal(net.ParseIP("10.9.0.1")) {
		t.Errorf("option 54 = %v", r.ServerIdentifier())
	}
}

func TestPlainClientGetsAddressOnly(t *testing.T) {
	u := newUnitServer(t, baseConfig())
	u.SetPolicy(testPolicy(t, byMAC{mac(1).String(): {Kind: machines.KindKernel, Name: "k"}}))
	d := discover(t, mac(1), dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte{1, 2, 3})))
	offer, _ := u.exchange(t, d)
	if offer == nil || offer.MessageType() != dhcpv4.MessageTypeOffer || !offer.YourIPAddr.Equal(net.ParseIP("10.9.0.100")) {
		t.Fatalf("offer: %v", offer)
	}
	checkLeaseOptions(t, offer)
	ack, _ := u.exchange(t, requestFor(t, d, offer))
	checkLeaseOptions(t, ack)
	for _, r := range []*dhcpv4.DHCPv4{offer, ack} {
		// A machine with a target that does not network-boot gets no
		// boot fields.
		if r.BootFileName != "" || !r.ServerIPAddr.IsUnspecified() || r.Options.Has(dhcpv4.OptionClassIdentifier) ||
			r.Options.Has(dhcpv4.OptionVendorSpecificInformation) {
			t.Errorf("boot fields in a plain reply: %s", r.Summary())
		}
		// RFC 6842: the client identifier is echoed.
		if !bytes.Equal(r.GetOneOption(dhcpv4.OptionClientIdentifier), []byte{1, 2, 3}) {
			t.Errorf("option 61 not echoed")
		}
		if !r.IsBroadcast() || !r.ClientIPAddr.IsUnspecified() {
			t.Errorf("flags %x ciaddr %v", r.Flags, r.ClientIPAddr)
		}
	}
	if d := destination(d, offer); !d.IP.Equal(net.IPv4bcast) || d.Port != 68 {
		t.Errorf("offer goes to %v", d)
	}
}

func TestNetworkBootClientGetsAddressAndBootFile(t *testing.T) {
	u := newUnitServer(t, baseConfig())
	u.SetPolicy(testPolicy(t, byMAC{
		mac(1).String(): {Kind: machines.KindKernel, Name: "uefi"},
		mac(2).String(): {Kind: machines.KindKernel, Name: "bios"},
		mac(3).String(): {Kind: machines.KindKernel, Name: "sb", SecureBoot: true},
		mac(4).String(): {Kind: machines.KindKernel, Name: "ipxe"},
		mac(5).String(): {Kind: machines.KindKernel, Name: "http"},
	}))
	var boots []dhcpproxy.Event
	u.OnBoot = func(e dhcpproxy.Event) { boots = append(boots, e) }
	guid := append([]byte{0}, bytes.Repeat([]byte{0xab}, 16)...)
	for _, tc := range []struct {
		name     string
		hw       net.HardwareAddr
		mods     []dhcpv4.Modifier
		bootFile string
		class    string
		opt43    []byte
	}{
		{"x64 UEFI PXE", mac(1), pxe(7), "efi-x64/snponly.efi", "PXEClient", nil},
		{"BIOS PXE", mac(2), pxe(0), "bios/undionly.kpxe", "PXEClient", []byte{6, 1, 8, 255}},
		{"Secure Boot target", mac(3), pxe(7), firmware.SecureBootDir + "/shimx64.efi", "PXEClient", nil},
		{"iPXE", mac(4), append(pxe(7), dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE"))), "http://10.9.0.1/ipxe?mac=52:54:00:12:34:04&arch=efi-x64&ip=10.9.0.103", "PXEClient", nil},
		{"UEFI HTTP", mac(5), []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClientArch(16)), dhcpv4.WithOption(dhcpv4.OptClassIdentifier("HTTPClient:Arch:00016:UNDI:003001"))},
			"http://10.9.0.1/firmware/efi-x64/snponly.efi", "HTTPClient", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := discover(t, tc.hw, tc.mods...)
			offer, _ := u.exchange(t, d)
			if offer == nil {
				t.Fatal("no offer")
			}
			ack, ev := u.exchange(t, requestFor(t, d, offer))
			if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck || ev.BootFile != tc.bootFile {
				t.Fatalf("ack %v, event %+v", ack, ev)
			}
			for _, r := range []*dhcpv4.DHCPv4{offer, ack} {
				checkLeaseOptions(t, r)
				if r.YourIPAddr.IsUnspecified() {
					t.Errorf("%v without an address", r.MessageType())
				}
				// Debian's GRUB takes its TFTP server from siaddr, shim
				// its directory from the file field.
				if r.BootFileName != tc.bootFile || !r.ServerIPAddr.Equal(net.ParseIP("10.9.0.1")) {
					t.Errorf("%v: file %q siaddr %v, want %q from 10.9.0.1", r.MessageType(), r.BootFileName, r.ServerIPAddr, tc.bootFile)
				}
				if r.ClassIdentifier() != tc.class || !bytes.Equal(r.GetOneOption(dhcpv4.OptionVendorSpecificInformation), tc.opt43) {
					t.Errorf("%v: option 60 %q, option 43 %x", r.MessageType(), r.ClassIdentifier(), r.GetOneOption(dhcpv4.OptionVendorSpecificInformation))
				}
				if tc.hw.String() != mac(5).String() && !bytes.Equal(r.GetOneOption(dhcpv4.OptionClientMachineIdentifier), guid) {
					t.Errorf("%v: option 97 not echoed", r.MessageType())
				}
			}
		})
	}
	if len(boots) != 10 || boots[0].Outcome != dhcpproxy.Answered || boots[0].Target != "uefi" || boots[0].IP.String() != "10.9.0.100" {
		t.Errorf("boot events: %d, first %+v", len(boots), boots[0])
	}
}

func TestLongBootFileGoesToOption67(t *testing.T) {
	// The iPXE script URL carries the identity; a long host part makes it
	// too long for the 128-byte file field.
	u := newUnitServer(t, baseConfig())
	u.SetPolicy(&dhcpproxy.Policy{Booter: byMAC{mac(1).String(): {Kind: machines.KindKernel}}, Firmware: testFirmware(t), URLs: longURLs{}})
	offer, _ := u.exchange(t, discover(t, mac(1), append(pxe(7), dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE")))...))
	if offer == nil || offer.BootFileName != "" || len(offer.BootFileNameOption()) < 128 || offer.YourIPAddr.IsUnspecified() {
		t.Fatalf("long boot file: %v", offer)
	}
}

type longURLs struct{ testURLs }

func (longURLs) ScriptURL(host netip.Addr, id machines.Identity) string {
	return "http://" + host.String() + "/ipxe?pad=" + strings.Repeat("p", 120)
}

func TestNetworkBootClientWithoutTargetGetsAddress(t *testing.T) {
	u := newUnitServer(t, baseConfig())
	u.SetPolicy(testPolicy(t, byMAC{}))
	var boots []dhcpproxy.Event
	u.OnBoot = func(e dhcpproxy.Event) { boots = append(boots, e) }
	ack := u.lease(t, mac(1), pxe(7)...)
	checkLeaseOptions(t, ack)
	if ack.BootFileName != "" || !ack.ServerIPAddr.IsUnspecified() || ack.Options.Has(dhcpv4.OptionClassIdentifier) {
		t.Errorf("boot fields without a target: %s", ack.Summary())
	}
	if len(boots) != 2 || boots[0].Outcome != dhcpproxy.IgnoredNoTarget {
		t.Errorf("boot events %+v", boots)
	}
	// An architecture without a boot program: address, no boot file.
	u.SetPolicy(testPolicy(t, byMAC{mac(2).String(): {Kind: machines.KindKernel}}))
	ack = u.lease(t, mac(2), pxe(11)...)
	if ack.BootFileName != "" || ack.YourIPAddr.IsUnspecified() {
		t.Errorf("arm64 without a boot program: %s", ack.Summary())
	}
}
