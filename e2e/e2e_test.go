// Package e2e holds bootserve's end-to-end tests: real firmware (SeaBIOS
// with iPXE, OVMF with EDK2's own PXE stack) boots under QEMU in network
// namespaces made by netlab, next to a plain dnsmasq DHCP "router", with the
// bootserve binary as the only boot server. They run when BOOTSERVE_E2E=1
// (root, QEMU, OVMF; see netlab.Require) and are skipped otherwise.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/bootserve/bootserve/e2e/netlab"
	"github.com/bootserve/bootserve/internal/pcapread"
)

// bootserveBin is built once by TestMain.
var bootserveBin string

func TestMain(m *testing.M) {
	os.Exit(func() int {
		if os.Getenv("BOOTSERVE_E2E") == "" {
			return m.Run() // every test skips; no need to build
		}
		dir, err := os.MkdirTemp("", "bootserve-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		bootserveBin = filepath.Join(dir, "bootserve")
		out, err := exec.Command("go", "build", "-o", bootserveBin, "../cmd/bootserve").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build bootserve: %v\n%s", err, out)
			return 1
		}
		return m.Run()
	}())
}

// cmdlineBase keeps the kernel quiet (serial output is slow under
// emulation) and makes a panic end the VM at once.
const cmdlineBase = "console=ttyS0 quiet panic=-1"

// startBootserve runs bootserve with args in the lab's server namespace and
// waits until it is ready.
func startBootserve(t *testing.T, lab *netlab.Lab, args ...string) *netlab.Proc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args = append(args, "--interface", lab.ServerIface())
	p := lab.Start(t, lab.ServerCmd(context.Background(), bootserveBin, args...))
	if err := p.WaitLog(ctx, netlab.Text("bootserve ready")); err != nil {
		t.Fatalf("bootserve did not start: %v\n%s", err, p.Tail(30))
	}
	return p
}

// checkProxyReplies reads a run's capture and checks every reply bootserve
// sent: yiaddr zero, no lease options, and at least one reply per
// firmware stage.
func checkProxyReplies(t *testing.T, pcap string, server net.IP) (replies int) {
	t.Helper()
	dgs, err := pcapread.ReadFile(pcap)
	if err != nil {
		t.Fatalf("read capture: %v", err)
	}
	for _, d := range dgs {
		if !d.Src.IP.Equal(server) || (d.Src.Port != 67 && d.Src.Port != 4011) {
			continue
		}
		p, err := dhcpv4.FromBytes(d.Payload)
		if err != nil {
			t.Errorf("bootserve sent an undecodable DHCP packet: %v", err)
			continue
		}
		replies++
		if !p.YourIPAddr.IsUnspecified() {
			t.Errorf("bootserve handed out an address: %s", p.Summary())
		}
		for _, o := range []dhcpv4.OptionCode{dhcpv4.OptionIPAddressLeaseTime, dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer} {
			if p.Options.Has(o) {
				t.Errorf("bootserve sent lease option %v: %s", o, p.Summary())
			}
		}
	}
	return replies
}

func bootOnce(t *testing.T, fw netlab.Firmware) {
	assets := netlab.Assets(t)
	lab := netlab.New(t, netlab.Options{})
	token := fmt.Sprintf("%s-%s", fw, lab.ID)
	srv := startBootserve(t, lab, "boot", assets.Kernel, assets.Initrd,
		"--cmdline", cmdlineBase+" bootserve.token="+token+" arch={{.Arch}}")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	r := lab.MustBoot(t, ctx, netlab.VM{Firmware: fw, Marker: netlab.Regexp(`NETBOOT-OK .*bootserve\.token=` + token)})
	wantArch := map[netlab.Firmware]string{netlab.BIOS: "bios", netlab.UEFI: "efi-x64"}[fw]
	if !strings.Contains(r.MarkerLine, "arch="+wantArch) {
		t.Errorf("marker %q: the script was not made for %s", r.MarkerLine, wantArch)
	}
	// Debian's EFI iPXE needs initrd=<name> on the command line.
	if !strings.Contains(r.MarkerLine, "initrd=initrd.gz") {
		t.Errorf("marker %q lacks initrd=initrd.gz", r.MarkerLine)
	}
	t.Logf("%s: QEMU start to marker %.1f s", fw, r.Seconds())
	if n := checkProxyReplies(t, r.Pcap, lab.ServerIP().AsSlice()); n == 0 {
		t.Errorf("no ProxyDHCP reply from bootserve in %s", r.Pcap)
	}
	// Started as root, bootserve serves as nobody once its ports are bound.
	if uid := processUID(t, srv.Cmd.Process.Pid); uid != "65534" {
		t.Errorf("bootserve runs as uid %s, want nobody (65534)", uid)
	}
	out := srv.Output()
	switch fw {
	case netlab.UEFI:
		// EDK2's own PXE: offer, the BINL request on 4011, snponly.efi over
		// TFTP; then iPXE asks again and gets its script.
		for _, want := range []string{"proxydhcp ACK", "port=4011", "tftp transfer complete", "file=efi-x64/snponly.efi", "route=script"} {
			if !strings.Contains(out, want) {
				t.Errorf("bootserve log lacks %q", want)
			}
		}
		// The shipped snponly.efi has its 2 s Ctrl-B banner removed.
		if serial, err := os.ReadFile(r.SerialLog); err != nil {
			t.Error(err)
		} else if bytes.Contains(serial, []byte("Press Ctrl-B")) {
			t.Errorf("the EFI iPXE still shows its Ctrl-B banner (%s)", r.SerialLog)
		}
	case netlab.BIOS:
		// The SeaBIOS NIC ROM is iPXE: it must get its script directly,
		// never a binary (that would loop).
		if strings.Contains(out, "undionly.kpxe\" to=") || strings.Contains(out, "boot_file=bios/undionly.kpxe") {
			t.Errorf("an iPXE client was handed a binary:\n%s", out)
		}
		if !strings.Contains(out, "route=script") {
			t.Error("no script request in the log")
		}
	}
}

// processUID reads the real uid of a process.
func processUID(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "Uid:" {
			return f[1]
		}
	}
	t.Fatalf("no Uid line in /proc/%d/status", pid)
	return ""
}

func TestBootBIOS(t *testing.T) { bootOnce(t, netlab.BIOS) }

func TestBootUEFI(t *testing.T) { bootOnce(t, netlab.UEFI) }
