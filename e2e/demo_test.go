package e2e

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/bootserve/bootserve/e2e/netlab"
)

// TestDemo is `make demo`: it makes an isolated LAN (a dnsmasq "home
// router" handing out addresses, nothing else), starts bootserve on it, and
// PXE-boots a UEFI QEMU VM whose serial console is shown as it boots. It
// repeats what TestBootUEFI checks, so it only runs when BOOTSERVE_DEMO=1.
func TestDemo(t *testing.T) {
	if os.Getenv("BOOTSERVE_DEMO") == "" {
		t.Skip("set BOOTSERVE_DEMO=1 (make demo)")
	}
	assets := netlab.Assets(t)
	lab := netlab.New(t, netlab.Options{})
	t.Logf("LAN %s: router (DHCP only) at %s, bootserve at %s in namespace %s",
		lab.Subnet(), lab.RouterIP(), lab.ServerIP(), lab.ServerNetns())
	srv := startBootserve(t, lab, "boot", assets.Kernel, assets.Initrd, "--cmdline", cmdlineBase+" demo=hello-from-bootserve")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	r := lab.MustBoot(t, ctx, netlab.VM{Name: "demo", Firmware: netlab.UEFI, OnLine: func(l netlab.Line) { t.Log(l) }})
	t.Logf("bootserve's log:\n%s", srv.Output())
	t.Logf("the VM booted the kernel from bootserve and printed, %.1f s after power-on:\n\n    %s\n", r.Seconds(), r.MarkerLine)
}
