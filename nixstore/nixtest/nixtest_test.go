package nixtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func requireTools(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"nix-store", "nix-build"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("BOOTSERVE_REQUIRE_NIX") != "" {
				t.Fatalf("%s not found and BOOTSERVE_REQUIRE_NIX is set: %v", tool, err)
			}
			t.Skipf("%s not installed (Debian: apt-get install nix-bin); set BOOTSERVE_REQUIRE_NIX=1 to fail instead", tool)
		}
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		if os.Getenv("BOOTSERVE_REQUIRE_NIX") != "" {
			t.Fatalf("busybox not found and BOOTSERVE_REQUIRE_NIX is set: %v", err)
		}
		t.Skip("busybox not installed (Debian: apt-get install busybox-static)")
	}
	return bb
}

// countCommand is how the test init counts registered paths; it must appear in init.
const countCommand = `grep -cE '^[0-9a-f]{64}$'`

func TestBuildSystem(t *testing.T) {
	bb := requireTools(t)
	ctx := context.Background()
	tmp := t.TempDir()
	// Not booted here, so any file can stand in for the kernel; random bytes make sure the
	// copy in the store is this one.
	kernelData := make([]byte, 4096)
	rand.Read(kernelData)
	kernel := filepath.Join(tmp, "vmlinuz")
	if err := os.WriteFile(kernel, kernelData, 0o600); err != nil {
		t.Fatal(err)
	}

	a, err := BuildSystem(ctx, Options{Busybox: bb, Kernel: kernel, Marker: "alpha", OutLink: filepath.Join(tmp, "alpha")})
	if err != nil {
		t.Fatal(err)
	}
	b, err := BuildSystem(ctx, Options{Busybox: bb, Kernel: kernel, Marker: "beta", KernelParams: "console=ttyS0 quiet", OutLink: filepath.Join(tmp, "beta")})
	if err != nil {
		t.Fatal(err)
	}
	if a.TopLevel == b.TopLevel || a.Busybox != b.Busybox || a.Kernel != b.Kernel {
		t.Errorf("two markers: top levels %s, %s (want distinct), busybox %s, %s and kernel %s, %s (want shared)",
			a.TopLevel, b.TopLevel, a.Busybox, b.Busybox, a.Kernel, b.Kernel)
	}
	if a.ClosureSize != 3 || len(a.Closure) != 3 {
		t.Errorf("closure %v: want 3 paths (system, busybox, kernel)", a.Closure)
	}
	if a.KernelParams != DefaultKernelParams || b.KernelParams != "console=ttyS0 quiet" {
		t.Errorf("kernel params %q, %q", a.KernelParams, b.KernelParams)
	}
	if root, err := os.Readlink(filepath.Join(tmp, "alpha")); err != nil || root != a.TopLevel {
		t.Errorf("out-link -> %q (%v), want %s", root, err, a.TopLevel)
	}

	if got, err := os.ReadFile(a.Kernel + "/bzImage"); err != nil || !bytes.Equal(got, kernelData) {
		t.Errorf("bzImage in the store is not the given kernel (%v)", err)
	}
	hostBB, _ := os.ReadFile(bb)
	storeBB := a.Busybox + "/bin/busybox"
	if got, err := os.ReadFile(storeBB); err != nil || !bytes.Equal(got, hostBB) {
		t.Errorf("%s is not the host's busybox (%v)", storeBB, err)
	}

	init, err := os.ReadFile(a.TopLevel + "/init")
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(a.TopLevel + "/init"); fi == nil || fi.Mode()&0o111 == 0 {
		t.Error("init is not executable")
	}
	for _, want := range []string{"#!" + storeBB + " sh\n", "marker=alpha ", countCommand, "poweroff -f"} {
		if !bytes.Contains(init, []byte(want)) {
			t.Errorf("init lacks %q:\n%s", want, init)
		}
	}
	if !bytes.HasPrefix(init, []byte("#!"+storeBB+" sh\n")) {
		t.Errorf("init does not start with its #! line:\n%s", init)
	}
	if out, err := exec.Command(storeBB, "sh", "-n", a.TopLevel+"/init").CombinedOutput(); err != nil {
		t.Errorf("init is not valid shell: %v\n%s", err, out)
	}

	// The counting command, run by this busybox on the real registration of the closure,
	// gives the closure size.
	reg := filepath.Join(tmp, "registration")
	dump, err := exec.Command("nix-store", append([]string{"--dump-db"}, a.Closure...)...).Output()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(reg, dump, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(storeBB, "grep", "-cE", "^[0-9a-f]{64}$", reg).Output()
	if n, _ := strconv.Atoi(strings.TrimSpace(string(out))); err != nil || n != a.ClosureSize {
		t.Errorf("busybox grep counts %q (%v) paths in the registration, want %d", out, err, a.ClosureSize)
	}
}

func TestBuildSystemRejectsBadMarker(t *testing.T) {
	if _, err := BuildSystem(context.Background(), Options{Busybox: "/bin/busybox", Kernel: "/dev/null", Marker: "a b;rm"}); err == nil {
		t.Error("a marker with shell characters was accepted")
	}
}

func TestParseBootReport(t *testing.T) {
	tests := []struct {
		line string
		want BootReport
		ok   bool
	}{
		{"NIX-NETBOOT-OK marker=alpha paths=3 cmdline=rdinit=/nix/store/x/init console=ttyS0\r\n",
			BootReport{"alpha", 3, "rdinit=/nix/store/x/init console=ttyS0"}, true},
		{"[    2.1] NIX-NETBOOT-OK marker=b paths=none cmdline=", BootReport{"b", -1, ""}, true},
		{"NIX-NETBOOT-OK marker=b paths=x cmdline=", BootReport{}, false},
		{"NIX-NETBOOT-OK marker=b paths=-2 cmdline=", BootReport{}, false},
		{"NIX-NETBOOT-OK paths=3 cmdline=x", BootReport{}, false},
		{"NETBOOT-OK marker=b paths=3 cmdline=x", BootReport{}, false},
		{"", BootReport{}, false},
	}
	for _, tc := range tests {
		got, ok := ParseBootReport(tc.line)
		if ok != tc.ok || got != tc.want {
			t.Errorf("ParseBootReport(%q) = %+v, %v; want %+v, %v", tc.line, got, ok, tc.want, tc.ok)
		}
	}
}
