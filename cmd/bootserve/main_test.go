package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseInterspersed(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	cmdline := fs.String("cmdline", "", "")
	debug := fs.Bool("debug", false, "")
	pos, err := parseInterspersed(fs, []string{"vmlinuz", "--cmdline", "console=ttyS0 quiet", "initrd1", "-debug", "initrd2", "--", "--not-a-flag"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(pos, "|") != "vmlinuz|initrd1|initrd2|--not-a-flag" || *cmdline != "console=ttyS0 quiet" || !*debug {
		t.Errorf("pos %q cmdline %q debug %v", pos, *cmdline, *debug)
	}
}

func runCmd(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsageAndErrors(t *testing.T) {
	if code, _, stderr := runCmd(); code != 2 || !strings.Contains(stderr, "Usage:") {
		t.Errorf("no args: %d %q", code, stderr)
	}
	if code, _, stderr := runCmd("frobnicate"); code != 2 || !strings.Contains(stderr, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: %d %q", code, stderr)
	}
	if code, _, _ := runCmd("boot"); code != 2 {
		t.Errorf("boot without kernel: %d", code)
	}
	if code, _, stderr := runCmd("boot", "/nonexistent/vmlinuz"); code != 1 || !strings.Contains(stderr, "no such file") {
		t.Errorf("missing kernel: %d %q", code, stderr)
	}
	if code, _, stderr := runCmd("boot", os.Args[0], "--listen-addr", "fe80::1"); code != 1 || !strings.Contains(stderr, "want an IPv4 address") {
		t.Errorf("bad listen-addr: %d %q", code, stderr)
	}
}

func TestRefusesRootUnlessAllowed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the check is about being root")
	}
	code, _, stderr := runCmd("boot", os.Args[0], "--user", "root", "--interface", "lo", "--port", "1")
	if code != 1 || !strings.Contains(stderr, "refusing to serve as root") {
		t.Errorf("--user root without --allow-root: %d %q", code, stderr)
	}
	code, _, stderr = runCmd("boot", os.Args[0], "--user", "no-such-user-here")
	if code != 1 || !strings.Contains(stderr, `user "no-such-user-here"`) {
		t.Errorf("unknown user: %d %q", code, stderr)
	}
}

func TestCheckPrintsTargets(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"vmlinuz", "initrd.img", "rescue.iso"} {
		os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644)
	}
	cfg := filepath.Join(dir, "b.toml")
	os.WriteFile(cfg, []byte(`
[[machine]]
name = "web"
mac = "52:54:00:00:00:01"
kernel = "vmlinuz"
initrds = ["initrd.img"]
cmdline = "console=ttyS0"

[default.menu]
title = "Rescue"
timeout = "5s"
default = "iso"
[[default.menu.entry]]
name = "disk"
label = "Local disk"
local = true
[[default.menu.entry]]
name = "iso"
label = "Rescue ISO"
iso = "rescue.iso"
`), 0o644)
	code, out, stderr := runCmd("check", "--config", cfg)
	if code != 0 {
		t.Fatalf("check: %d %s", code, stderr)
	}
	for _, want := range []string{"OK", "dhcp: ProxyDHCP beside", "web (52:54:00:00:00:01): kernel " + dir + "/vmlinuz", `menu "Rescue", default "Rescue ISO" after 5 s`, "1. Local disk: local disk", "2. Rescue ISO: ISO image " + dir + "/rescue.iso"} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
	os.WriteFile(cfg, []byte("[default]\nkernel = \"gone\"\n"), 0o644)
	if code, _, stderr := runCmd("check", "--config", cfg); code != 1 || !strings.Contains(stderr, "b.toml:2: default.kernel: open") {
		t.Errorf("bad config: %d %q", code, stderr)
	}
}
