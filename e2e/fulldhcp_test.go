package e2e

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/bootserve/bootserve/e2e/netlab"
	"github.com/bootserve/bootserve/internal/pcapread"
	"github.com/bootserve/bootserve/status"
)

// refusalTimeout bounds the negative controls: each refusal shows within
// ~30 s of QEMU's start, so a VM that is not refused fails fast.
const refusalTimeout = 90 * time.Second

// TestFullDHCPSecureBoot boots with Secure Boot on and bootserve as the
// LAN's only DHCP server (no router, no dnsmasq): Debian 12's signed GRUB
// takes its TFTP server only from the DHCP ACK's siaddr, which ProxyDHCP
// cannot set. One bootserve, one config, three machines:
//
//   - signed: shim → GRUB → Debian-signed kernel → marker, "Secure boot
//     enabled", with an address from bootserve's pool that the lease file
//     holds;
//   - ipxe: a target without secure_boot gets the unsigned snponly.efi,
//     which the firmware refuses; bootserve says why;
//   - unsigned: a secure_boot target whose kernel lost its signature is
//     refused by GRUB; bootserve warned about it at start.
func TestFullDHCPSecureBoot(t *testing.T) {
	assets := netlab.Assets(t)
	lab := netlab.New(t, netlab.Options{NoRouter: true})
	third := lab.Subnet().Addr().As4()[2]
	mac := func(i int) string { return fmt.Sprintf("52:54:00:%02x:5b:%02x", third, i) }
	signedMAC, ipxeMAC, unsignedMAC := mac(1), mac(2), mac(3)
	host := func(last byte) netip.Addr {
		b := lab.Subnet().Addr().As4()
		b[3] = last
		return netip.AddrFrom4(b)
	}
	poolStart, poolEnd := host(100), host(149)

	// bootserve drops to nobody: its files and state live in a directory
	// nobody can enter (t.TempDir is private to root).
	dir, err := os.MkdirTemp("/var/tmp", "bootserve-fulldhcp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	unsignedKernel := filepath.Join(dir, "vmlinuz-unsigned")
	stripSignature(t, assets.Kernel, unsignedKernel)
	leaseFile := filepath.Join(dir, "state", "leases.json")
	cmdline := "console=ttyS0 panic=-1 sb=on mac={{.MAC}} ip={{.IP}}"
	conf := fmt.Sprintf(`[dhcp]
mode = "server"
pool_start = "%s"
pool_end = "%s"
lease_time = "10m"
lease_file = "%s"

[[machine]]
name = "signed"
mac = "%s"
kernel = "%s"
initrds = ["%s"]
cmdline = "%s"
secure_boot = true

[[machine]]
name = "ipxe"
mac = "%s"
kernel = "%s"
initrds = ["%s"]

[[machine]]
name = "unsigned"
mac = "%s"
kernel = "%s"
initrds = ["%s"]
cmdline = "%s"
secure_boot = true
`, poolStart, poolEnd, leaseFile,
		signedMAC, assets.Kernel, assets.Initrd, cmdline,
		ipxeMAC, assets.Kernel, assets.Initrd,
		unsignedMAC, unsignedKernel, assets.Initrd, cmdline)
	confPath := filepath.Join(dir, "bootserve.toml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := startBootserve(t, lab, "serve", "--config", confPath)
	{
		// Probed the LAN, then DHCP on 67, ProxyDHCP on 4011 only, as nobody.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		for _, want := range []string{"no other DHCP server answered", "dropped privileges", "dhcp server listening", "proxydhcp listening.*ports=\\[4011\\]"} {
			if err := srv.WaitLog(ctx, netlab.Regexp(want)); err != nil {
				t.Errorf("bootserve's log lacks %q: %v", want, err)
			}
		}
		cancel()
	}
	// The start-up warning names the unsigned kernel (config file:line).
	if !strings.Contains(srv.Output(), "vmlinuz-unsigned is not signed") {
		t.Errorf("bootserve did not warn about the unsigned kernel at start:\n%s", srv.Tail(30))
	}

	var signedIP netip.Addr
	t.Run("signed", func(t *testing.T) {
		r, sbOn := bootSecure(t, lab, signedMAC, netlab.Regexp(`NETBOOT-OK .*sb=on`))
		if !r.MarkerSeen {
			t.Fatalf("the Secure Boot chain did not boot in full-DHCP mode: %s\n%s\nbootserve:\n%s", r.Summary(), r.Tail(30), srv.Tail(30))
		}
		if !sbOn {
			t.Errorf("the kernel did not report %q: Secure Boot was not on", secureBootOn)
		}
		ip := checkLeased(t, r.Pcap, lab.ServerIP(), signedMAC, poolStart, poolEnd)
		// GRUB's configuration was written for the leased address.
		if ip.IsValid() && !strings.Contains(r.MarkerLine, "ip="+ip.String()) {
			t.Errorf("marker %q does not carry the leased address %v", r.MarkerLine, ip)
		}
		checkLeaseFile(t, leaseFile, signedMAC, ip)
		signedIP = ip
		t.Logf("signed: Secure Boot on, full DHCP, shim → GRUB → signed kernel to marker in %.1f s (leased %v)", r.Seconds(), ip)
	})

	t.Run("unsigned-boot-file", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), refusalTimeout)
		defer cancel()
		var ipxeRan bool
		// After the refusal OVMF tries PXE over IPv6 (a 64 s wait for an
		// offer on this IPv4-only LAN), then HTTP Boot over IPv4, whose
		// DISCOVER shows bootserve the firmware started over. Leaving the
		// IPv6 PXE option out keeps this control cheap.
		noPXEv6 := []string{"-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no"}
		m, err := lab.StartVM(ctx, netlab.VM{Name: "ipxe", Firmware: netlab.UEFISecureBoot, MAC: ipxeMAC, Timeout: refusalTimeout,
			ExtraArgs: noPXEv6, RunToEnd: true, OnLine: func(l netlab.Line) { ipxeRan = ipxeRan || strings.Contains(l.Text, "iPXE initialising") }})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Stop()
		l, err := m.Expect(ctx, netlab.Regexp(`Access Denied|Security Violation`))
		if err != nil {
			t.Fatalf("the firmware did not refuse snponly.efi: %v\n%s", err, m.Stop().Tail(20))
		}
		// The firmware moves on and asks DHCP again: bootserve's status
		// tracker sees the refusal and says what to do.
		why := netlab.Regexp(`started over without running it.*secure_boot = true`)
		if err := srv.WaitLog(ctx, why); err != nil {
			t.Fatalf("bootserve did not name the reason for the refusal: %v\n%s", err, srv.Tail(20))
		}
		res := m.Stop()
		if ipxeRan {
			t.Error("unsigned iPXE ran with Secure Boot on")
		}
		if !strings.Contains(srv.Output(), "efi-x64/snponly.efi") {
			t.Error("bootserve's log does not show snponly.efi being served")
		}
		t.Logf("unsigned boot file: refused at %.1f s (%s), bootserve named the reason; VM stopped at %.1f s", l.At.Seconds(), l.Text, res.Elapsed.Seconds())
	})

	t.Run("unsigned-kernel", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), refusalTimeout)
		defer cancel()
		var booted bool
		m, err := lab.StartVM(ctx, netlab.VM{Name: "unsigned", Firmware: netlab.UEFISecureBoot, MAC: unsignedMAC, Timeout: refusalTimeout,
			RunToEnd: true, OnLine: func(l netlab.Line) { booted = booted || strings.Contains(l.Text, netlab.DefaultMarker) }})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Stop()
		l, err := m.Expect(ctx, netlab.Text(grubRefusal))
		res := m.Stop()
		if err != nil {
			t.Fatalf("GRUB did not refuse the unsigned kernel: %v\n%s", err, res.Tail(20))
		}
		if booted {
			t.Error("the unsigned kernel booted with Secure Boot on")
		}
		if !strings.Contains(srv.Output(), "vmlinuz-unsigned") {
			t.Error("bootserve's log does not show the unsigned kernel being served")
		}
		t.Logf("unsigned kernel: GRUB refused it at %.1f s (%s)", l.At.Seconds(), l.Text)
	})

	// The status page shows the refusal's reason, and the DHCP server's
	// metrics count the three leases.
	get := func(path string) string {
		resp, err := lab.Server().HTTPClient().Get("http://" + lab.ServerIP().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if st := get("/status.json"); !strings.Contains(st, "started over without running it") || !strings.Contains(st, "DHCP server") {
		t.Errorf("status.json lacks the refusal's reason or the DHCP server service:\n%.2000s", st)
	}
	// The status page lists the DHCP server's leases: the signed VM's
	// address, bound to it, with its network boot.
	var snap status.Snapshot
	if err := json.Unmarshal([]byte(get("/status.json")), &snap); err != nil {
		t.Errorf("status.json: %v", err)
	} else if snap.Leases == nil || snap.Leases.Bound != 3 {
		t.Errorf("status.json leases: %+v, want 3 bound", snap.Leases)
	} else if signedIP.IsValid() {
		var found bool
		for _, l := range snap.Leases.Rows {
			if l.IP == signedIP.String() {
				found = true
				if l.MAC != signedMAC || l.State != status.LeaseBound || !l.NetBoot || !l.Expires.After(snap.Now) {
					t.Errorf("status.json lease of the signed VM: %+v", l)
				}
			}
		}
		if !found {
			t.Errorf("status.json leases lack the signed VM's %v: %+v", signedIP, snap.Leases.Rows)
		}
	}
	m := get("/metrics")
	for _, want := range []string{`bootserve_dhcpserver_leases 3`, `bootserve_dhcpserver_pool_addresses 50`, `bootserve_dhcpserver_packets_total{outcome="acked",type="request"}`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// stripSignature copies a signed PE kernel without its signature: the
// security data directory entry (PE32+ optional header offset 144) is
// zeroed, so the Authenticode signature is no longer referenced.
func stripSignature(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 0x40 || string(b[:2]) != "MZ" {
		t.Fatalf("%s is not a PE file", src)
	}
	pe := int(binary.LittleEndian.Uint32(b[0x3c:]))
	if pe+24+152 > len(b) || string(b[pe:pe+4]) != "PE\x00\x00" || binary.LittleEndian.Uint16(b[pe+24:]) != 0x20b {
		t.Fatalf("%s is not a PE32+ image", src)
	}
	sec := b[pe+24+144 : pe+24+152]
	if binary.LittleEndian.Uint32(sec[4:]) == 0 {
		t.Fatalf("%s carries no signature to strip: the test needs the Debian-signed kernel", src)
	}
	clear(sec)
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// checkLeased finds bootserve's DHCP ACK to mac in a capture and checks it
// leased an address from the pool, named bootserve as next-server, and that
// no other server answered. It returns the address.
func checkLeased(t *testing.T, pcap string, server netip.Addr, mac string, start, end netip.Addr) netip.Addr {
	t.Helper()
	dgs, err := pcapread.ReadFile(pcap)
	if err != nil {
		t.Fatalf("read capture: %v", err)
	}
	var leased netip.Addr
	for _, d := range dgs {
		if d.Src.Port != 67 {
			continue
		}
		p, err := dhcpv4.FromBytes(d.Payload)
		if err != nil || p.OpCode != dhcpv4.OpcodeBootReply || p.ClientHWAddr.String() != mac {
			continue
		}
		src, _ := netip.AddrFromSlice(d.Src.IP.To4())
		if src != server {
			t.Errorf("a DHCP reply came from %v, not bootserve: %s", src, p.Summary())
			continue
		}
		if p.MessageType() != dhcpv4.MessageTypeAck {
			continue
		}
		ip, _ := netip.AddrFromSlice(p.YourIPAddr.To4())
		if ip.Less(start) || end.Less(ip) {
			t.Errorf("ACK leased %v, outside the pool %v-%v", ip, start, end)
		}
		if next, _ := netip.AddrFromSlice(p.ServerIPAddr.To4()); next != server {
			t.Errorf("ACK names next-server %v, want bootserve %v", next, server)
		}
		if p.IPAddressLeaseTime(0) != 10*time.Minute {
			t.Errorf("ACK lease time %v, want the configured 10m", p.IPAddressLeaseTime(0))
		}
		leased = ip
	}
	if !leased.IsValid() {
		t.Errorf("no DHCP ACK from bootserve to %s in the capture", mac)
	}
	return leased
}

// checkLeaseFile checks that bootserve's lease file holds mac's lease.
func checkLeaseFile(t *testing.T, path, mac string, ip netip.Addr) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("lease file: %v", err)
	}
	var f struct {
		Leases []struct {
			IP    netip.Addr `json:"ip"`
			MAC   string     `json:"mac"`
			State string     `json:"state"`
		} `json:"leases"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("lease file %s: %v", path, err)
	}
	for _, l := range f.Leases {
		if l.MAC == mac {
			if l.IP != ip || l.State != "bound" {
				t.Errorf("lease file has %s at %v (%s), want %v bound", mac, l.IP, l.State, ip)
			}
			return
		}
	}
	t.Errorf("lease file has no lease for %s:\n%s", mac, b)
}

// TestFullDHCPRefusesOtherServer starts bootserve in full-DHCP mode on a LAN
// whose router already runs a DHCP server: bootserve must refuse to start
// and say how to proceed, unless allow_other_servers is set. No VM boots.
func TestFullDHCPRefusesOtherServer(t *testing.T) {
	assets := netlab.Assets(t)
	lab := netlab.New(t, netlab.Options{})
	third := lab.Subnet().Addr().As4()[2]
	pool := fmt.Sprintf("10.99.%d.50-10.99.%d.60", third, third)
	leases := filepath.Join(t.TempDir(), "leases.json")
	args := []string{"boot", assets.Kernel, "--interface", lab.ServerIface(), "--allow-root", "--user", "root",
		"--dhcp-server-pool", pool, "--dhcp-lease-file", leases}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := lab.Start(t, lab.ServerCmd(ctx, bootserveBin, args...))
	if err := p.WaitLog(ctx, netlab.Regexp(`another DHCP server at `+regexp.QuoteMeta(lab.RouterIP().String())+` answers on eth0: use ProxyDHCP mode.*allow_other_servers`)); err != nil {
		t.Fatalf("bootserve did not refuse to start beside the router's DHCP server: %v\n%s", err, p.Tail(20))
	}
	if p.Err() == nil {
		t.Error("bootserve exited with status 0 after refusing to start")
	}
	if strings.Contains(p.Output(), "bootserve ready") {
		t.Error("bootserve served beside another DHCP server")
	}

	// Told to, it starts anyway.
	p2 := startBootserve(t, lab, append(args[:len(args):len(args)], "--dhcp-allow-other-servers")...)
	if !strings.Contains(p2.Output(), "dhcp=server") {
		t.Errorf("bootserve did not start in full-DHCP mode:\n%s", p2.Tail(10))
	}
	if strings.Contains(p2.Output(), "no other DHCP server answered") {
		t.Error("bootserve probed although allow_other_servers was set")
	}
}
