package e2e

import (
	"context"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/bootserve/bootserve/e2e/netlab"
	"github.com/bootserve/bootserve/nixstore/nixtest"
)

// buildTestSystem builds, with the real Nix store, a NixOS-shaped system:
// a store path with a static busybox, one with the Debian kernel, and a
// top level with init, kernel and kernel-params.
func buildTestSystem(t *testing.T, marker string) nixtest.System {
	t.Helper()
	assets := netlab.Assets(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	sys, err := nixtest.BuildSystem(ctx, nixtest.Options{
		Busybox: assets.Busybox, Kernel: assets.Kernel, Marker: marker,
		KernelParams: cmdlineBase, OutLink: filepath.Join(t.TempDir(), "result"),
	})
	if err != nil {
		t.Fatalf("build the test system with nix: %v", err)
	}
	return sys
}

var nixMarkerRE = regexp.MustCompile(`NIX-NETBOOT-OK marker=(\S+) paths=(\S+) cmdline=(.*)`)

// TestNixClosureBoot boots a Nix closure, served as one compressed archive
// per store path concatenated on the fly, on SeaBIOS and on OVMF. The
// system's init runs from /nix/store and reports how many store paths the
// Nix registration in the base archive lists: it must be the closure size.
func TestNixClosureBoot(t *testing.T) {
	lab := netlab.New(t, netlab.Options{})
	sys := buildTestSystem(t, "e2e-"+lab.ID)
	// Debian's Nix is single-user and owned by root: only root may query
	// it, so this test serves as root, which bootserve does only when told.
	startBootserve(t, lab, "nix", sys.TopLevel, "--cache-dir", t.TempDir(), "--cmdline", "bootserve.extra=1", "--user", "root", "--allow-root")
	for _, fw := range []netlab.Firmware{netlab.BIOS, netlab.UEFI} {
		t.Run(fw.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			r := lab.MustBoot(t, ctx, netlab.VM{Firmware: fw, Marker: netlab.Regexp(nixMarkerRE.String())})
			m := nixMarkerRE.FindStringSubmatch(r.MarkerLine)
			if m[1] != "e2e-"+lab.ID {
				t.Errorf("booted system %q, want e2e-%s", m[1], lab.ID)
			}
			if n, err := strconv.Atoi(m[2]); err != nil || n != sys.ClosureSize {
				t.Errorf("registration lists %s store paths, closure has %d", m[2], sys.ClosureSize)
			}
			for _, want := range []string{"init=" + sys.TopLevel + "/init", "initrd=initrd", "bootserve.extra=1", "console=ttyS0"} {
				if !regexp.MustCompile(`(^| )` + regexp.QuoteMeta(want) + `( |$)`).MatchString(m[3]) {
					t.Errorf("kernel command line %q lacks %q", m[3], want)
				}
			}
			t.Logf("%s: NixOS-shaped closure of %d paths booted in %.1f s", fw, sys.ClosureSize, r.Seconds())
		})
	}
}
