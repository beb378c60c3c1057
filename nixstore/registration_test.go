package nixstore

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const sampleRegistration = `/nix/store/pwsz3b0hn5zl1b21scwl8nmbz392db72-leaf
6964ce06796f39d7a2cd68b6a3e6b05a219b8ba341303b65feb16ef09c62d871
680
/nix/store/8x0dzipkazh3608p2p7xxp187kd970h0-leaf.drv
0
/nix/store/qj7q92486269wyk2pi33j8biy5l61aip-mid
fb670acae79ac0b2384a83222920ba689b57cfd80f55accef7d01560d742d220
584

2
/nix/store/pwsz3b0hn5zl1b21scwl8nmbz392db72-leaf
/nix/store/qj7q92486269wyk2pi33j8biy5l61aip-mid
`

func TestParseRegistration(t *testing.T) {
	infos, err := ParseRegistration([]byte(sampleRegistration))
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 2 || infos[0].NARSize != 680 || infos[0].Deriver == "" || len(infos[0].References) != 0 ||
		infos[1].Deriver != "" || len(infos[1].References) != 2 || infos[1].References[1] != infos[1].Path {
		t.Errorf("ParseRegistration = %+v", infos)
	}
	if got := FormatRegistration(infos); string(got) != sampleRegistration {
		t.Errorf("FormatRegistration(ParseRegistration(x)) != x:\n%s", got)
	}
	if infos, err := ParseRegistration(nil); err != nil || len(infos) != 0 {
		t.Errorf("ParseRegistration(empty) = %v, %v", infos, err)
	}
	lines := strings.SplitAfter(sampleRegistration, "\n")
	bad := map[string]string{
		"truncated":        strings.Join(lines[:7], ""),
		"no final newline": strings.TrimSuffix(sampleRegistration, "\n"),
		"bad hash":         strings.Replace(sampleRegistration, "6964ce", "6964CE", 1),
		"sri hash":         strings.Replace(sampleRegistration, lines[1], "sha256-aWTOBnlvOdeizWi2o+awWiGbi6NBMDtl/rFu8Jxi2HE=\n", 1),
		"bad size":         strings.Replace(sampleRegistration, "680\n", "-1\n", 1),
		"bad count":        strings.Replace(sampleRegistration, "\n2\n", "\nmany\n", 1),
		"count too large":  strings.Replace(sampleRegistration, "\n2\n", "\n3\n", 1),
		"not a path":       "leaf\n" + strings.Join(lines[1:], ""),
	}
	for name, in := range bad {
		if _, err := ParseRegistration([]byte(in)); err == nil {
			t.Errorf("%s: ParseRegistration accepted it", name)
		}
	}
}

// TestRegisterScriptWithoutBinSh runs the register script the way NixOS does
// (PATH=<nix>/bin /nix/.nix-netboot-serve-db/register, from a shell) in a chroot that has
// no /bin/sh at all: only a static busybox and a recording stand-in for nix-store.
func TestRegisterScriptWithoutBinSh(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for chroot")
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox not installed (Debian: busybox-static)")
	}
	if bb, err = filepath.EvalSymlinks(bb); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	write := func(p string, data []byte, mode os.FileMode) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), data, mode); err != nil {
			t.Fatal(err)
		}
	}
	busybox, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	write("busybox", busybox, 0o755)
	write(RegistrationFile, []byte(sampleRegistration), 0o444)
	write(RegisterScriptFile, RegisterScript(""), 0o555)
	write("fakenix/bin/nix-store", []byte("#!/busybox sh\necho \"$@\" > /args\n/busybox cat > /loaded\n"), 0o755)
	if _, err := os.Stat(filepath.Join(root, "bin/sh")); err == nil {
		t.Fatal("the chroot must not have /bin/sh")
	}

	// busybox sh runs a "#!"-less script by re-executing itself through /proc/self/exe,
	// so /proc is mounted, in a private mount namespace that vanishes with the command.
	// (NixOS's caller is stage 2's bash, which interprets it in a subshell.)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("unshare (util-linux) not installed")
	}
	script := "/busybox mkdir -p /proc && /busybox mount -t proc proc /proc && PATH=/fakenix/bin " + RegisterScriptFile
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "chroot", root, "/busybox", "sh", "-c", script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("register script failed: %v\n%s", err, out)
	}
	args, _ := os.ReadFile(filepath.Join(root, "args"))
	loaded, _ := os.ReadFile(filepath.Join(root, "loaded"))
	if string(args) != "--load-db\n" || !bytes.Equal(loaded, []byte(sampleRegistration)) {
		t.Errorf("nix-store got args %q and %d bytes on stdin, want --load-db and the registration", args, len(loaded))
	}

	withInterp := RegisterScript("/busybox sh")
	if !bytes.HasPrefix(withInterp, []byte("#!/busybox sh\n")) || bytes.HasPrefix(RegisterScript(""), []byte("#!")) {
		t.Errorf("RegisterScript: wrong #! handling:\n%s", withInterp)
	}
}
