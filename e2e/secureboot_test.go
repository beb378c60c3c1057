package e2e

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bootserve/bootserve/e2e/netlab"
)

// secureBootMarker is the kernel's line when the firmware booted it with
// Secure Boot on (efi_set_secure_boot in the kernel), and the serial line
// GRUB prints when it refuses an unsigned kernel.
const (
	secureBootOn  = "Secure boot enabled"
	grubRefusal   = "bad shim signature"
	sbBootTimeout = 5 * time.Minute
)

// bootSecure boots an OVMF VM with Microsoft's keys and Secure Boot on, and
// reports whether the kernel said Secure Boot was enabled.
func bootSecure(t *testing.T, lab *netlab.Lab, mac string, marker netlab.Pattern) (*netlab.Result, bool) {
	t.Helper()
	var sbOn atomic.Bool
	ctx, cancel := context.WithTimeout(context.Background(), sbBootTimeout)
	defer cancel()
	r, err := lab.Boot(ctx, netlab.VM{Firmware: netlab.UEFISecureBoot, MAC: mac, Marker: marker, Timeout: sbBootTimeout,
		OnLine: func(l netlab.Line) {
			if strings.Contains(l.Text, secureBootOn) {
				sbOn.Store(true)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	return r, sbOn.Load()
}

// TestSecureBootViaRouterNextServer boots with Secure Boot on, with the
// LAN's router pointing next-server at bootserve (the alternative to
// bootserve's own DHCP server, for routers that can set it): signed shim,
// signed GRUB reading the configuration bootserve wrote for this machine,
// the Debian-signed kernel and the marker initrd over TFTP.
func TestSecureBootViaRouterNextServer(t *testing.T) {
	assets := netlab.Assets(t)
	// The router hands out the shim and bootserve's address as next-server.
	lab := netlab.New(t, netlab.Options{RouterDnsmasq: []string{"dhcp-boot=efi-x64-sb/shimx64.efi,,{server}"}})
	srv := startBootserve(t, lab, "boot", assets.Kernel, assets.Initrd, "--secure-boot",
		"--cmdline", "console=ttyS0 panic=-1 sb=on mac={{.MAC}}")
	r, sbOn := bootSecure(t, lab, "", netlab.Regexp(`NETBOOT-OK .*sb=on`))
	if !r.MarkerSeen {
		t.Fatalf("the Secure Boot chain did not boot: %s\n%s", r.Summary(), r.Tail(30))
	}
	if !sbOn {
		t.Errorf("the kernel did not report %q: Secure Boot was not on", secureBootOn)
	}
	for _, want := range []string{"file=grub/grub.cfg", "file=grub/bootserve-", "/0/0/vmlinuz", "/0/1/initrd.gz"} {
		if !strings.Contains(srv.Output(), want) {
			t.Errorf("bootserve's log lacks the TFTP transfer %q", want)
		}
	}
	t.Logf("Secure Boot on: shim → GRUB → signed kernel to marker in %.1f s", r.Seconds())
}
