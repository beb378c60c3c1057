package netlab

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Files the harness needs, with the Debian package that provides each.
const (
	pxeE1000ROM = "/usr/lib/ipxe/qemu/pxe-e1000.rom" // ipxe-qemu: SeaBIOS's e1000 option ROM (iPXE)
	ipxeBIOS    = "/usr/lib/ipxe/undionly.kpxe"      // ipxe: chainloaded by BIOS PXE
	ipxeEFI     = "/usr/lib/ipxe/snponly.efi"        // ipxe: chainloaded by UEFI PXE
)

// tools holds the absolute paths of the programs the lab runs.
type tools struct {
	ip, qemu, dnsmasq, tcpdump string
}

// lookTool finds a program in PATH or in the sbin directories, which are often missing from
// PATH under sudo or in CI.
func lookTool(name string) (string, bool) {
	if p, err := exec.LookPath(name); err == nil {
		return p, true
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := dir + "/" + name
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, true
		}
	}
	return "", false
}

// findTools returns the tool paths and a line per missing requirement naming the fix.
func findTools() (tools, []string) {
	var t tools
	var missing []string
	for _, x := range []struct {
		name, pkg string
		dst       *string
	}{
		{"ip", "iproute2", &t.ip},
		{"qemu-system-x86_64", "qemu-system-x86", &t.qemu},
		{"dnsmasq", "dnsmasq-base", &t.dnsmasq},
		{"tcpdump", "tcpdump", &t.tcpdump},
	} {
		p, ok := lookTool(x.name)
		if !ok {
			missing = append(missing, fmt.Sprintf("%s not found: apt-get install %s", x.name, x.pkg))
		}
		*x.dst = p
	}
	return t, missing
}

// Require skips the test unless BOOTSERVE_E2E=1, and fails it when BOOTSERVE_E2E=1 but the
// machine lacks something the end-to-end tests need (each message names the Debian package).
func Require(t testing.TB) {
	t.Helper()
	if os.Getenv("BOOTSERVE_E2E") != "1" {
		t.Skip("set BOOTSERVE_E2E=1 to run end-to-end tests (root, qemu-system-x86, ovmf, ipxe-qemu, dnsmasq-base, tcpdump, /dev/net/tun)")
	}
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "not root: network namespaces and taps need root (run the tests with sudo -E)")
	}
	_, m := findTools()
	missing = append(missing, m...)
	for _, f := range []struct{ path, fix string }{
		{pxeE1000ROM, "apt-get install ipxe-qemu"},
		{"/dev/net/tun", "modprobe tun (in a container: pass --device /dev/net/tun)"},
	} {
		if _, err := os.Stat(f.path); err != nil {
			missing = append(missing, fmt.Sprintf("%s missing: %s", f.path, f.fix))
		}
	}
	for _, fw := range []Firmware{UEFI, UEFISecureBoot} {
		if _, _, err := ovmfFiles(fw); err != nil {
			missing = append(missing, err.Error())
		}
	}
	if len(missing) > 0 {
		t.Fatalf("BOOTSERVE_E2E=1 but the end-to-end tests cannot run here:\n  - %s", strings.Join(missing, "\n  - "))
	}
}
