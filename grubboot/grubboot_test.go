package grubboot

import (
	"context"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bootserve/bootserve/machines"
)

func read(t *testing.T, s *Server, name string) (string, error) {
	t.Helper()
	f, size, err := s.open(context.Background(), name, netip.MustParseAddr("10.0.0.7"))
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, 0, size))
	if err != nil {
		t.Fatal(err)
	}
	return string(b), nil
}

func TestConfigsAndFiles(t *testing.T) {
	dir := t.TempDir()
	k := filepath.Join(dir, "vmlinuz")
	i1 := filepath.Join(dir, "initrd.gz")
	os.WriteFile(k, []byte("KERNEL"), 0o644)
	os.WriteFile(i1, []byte("INITRD"), 0o644)
	s := &Server{}
	s.SetBooter(&machines.Table{
		Rules: []machines.Rule{{
			Name: "sb", UUIDs: []string{"8c2c8a3e-1f2b-4c5d-9e6f-0a1b2c3d4e5f"},
			Target: machines.Target{Kind: machines.KindKernel, Name: "sb", Kernel: k, Initrds: []string{i1}, SecureBoot: true,
				Cmdline: "console=ttyS0 mac={{.MAC}} weird='x;y' $z"},
		}},
		Default: &machines.Target{Kind: machines.KindMenu, Name: "menu", SecureBoot: true, Menu: &machines.Menu{
			Default: 1, TimeoutSeconds: 4, Entries: []machines.MenuEntry{
				{Label: "Local disk", Target: machines.Target{Kind: machines.KindLocal}},
				{Label: "Rescue 'kernel'", Target: machines.Target{Kind: machines.KindKernel, Kernel: k, Cmdline: "rescue"}},
			}}},
	})
	main, err := read(t, s, "grub/grub.cfg")
	if err != nil || !strings.Contains(main, "source ${prefix}/bootserve-${net_default_mac}.cfg") {
		t.Fatalf("main config %q %v", main, err)
	}
	// A machine known from DHCP by its UUID gets its rule's kernel.
	mac, _ := machines.ParseMAC("52:54:00:00:00:01")
	s.Remember(machines.Identity{MAC: mac, UUID: "8c2c8a3e-1f2b-4c5d-9e6f-0a1b2c3d4e5f"})
	cfg, err := read(t, s, "grub/bootserve-52:54:00:00:00:01.cfg")
	if err != nil {
		t.Fatal(err)
	}
	want := "linux /bootserve/52-54-00-00-00-01/0/0/vmlinuz 'console=ttyS0' 'mac=52:54:00:00:00:01' 'weird='\\''x;y'\\''' '$z'\ninitrd /bootserve/52-54-00-00-00-01/0/1/initrd.gz\nboot\n"
	if !strings.HasSuffix(cfg, want) {
		t.Errorf("machine config:\n%s\nwant suffix:\n%s", cfg, want)
	}
	for name, content := range map[string]string{
		"bootserve/52-54-00-00-00-01/0/0/vmlinuz":   "KERNEL",
		"bootserve/52-54-00-00-00-01/0/1/initrd.gz": "INITRD",
	} {
		if got, err := read(t, s, name); err != nil || got != content {
			t.Errorf("%s: %q %v", name, got, err)
		}
	}
	// Only the files of the machine's own target, at their own places.
	for _, bad := range []string{
		"bootserve/52-54-00-00-00-01/0/2/initrd.gz", "bootserve/52-54-00-00-00-01/0/0/passwd",
		"bootserve/52-54-00-00-00-01/1/0/vmlinuz", "bootserve/zz/0/0/vmlinuz", "bootserve/52-54-00-00-00-01/0/-1/vmlinuz",
		"grub/bootserve-nonsense.cfg", "grub/x86_64-efi/command.lst",
	} {
		if _, err := read(t, s, bad); err == nil {
			t.Errorf("%s served", bad)
		}
	}
	// Another machine gets the default menu.
	menu, err := read(t, s, "grub/bootserve-52:54:00:00:00:02.cfg")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"set default=1\n", "set timeout=4\n", "menuentry 'Local disk' {\n\texit\n}", "menuentry 'Rescue '\\''kernel'\\''' {\nlinux /bootserve/52-54-00-00-00-02/1/0/vmlinuz 'rescue'\n}"} {
		if !strings.Contains(menu, w) {
			t.Errorf("menu lacks %q:\n%s", w, menu)
		}
	}
	if got, err := read(t, s, "bootserve/52-54-00-00-00-02/1/0/vmlinuz"); err != nil || got != "KERNEL" {
		t.Errorf("menu entry kernel: %q %v", got, err)
	}
}

func TestSigned(t *testing.T) {
	for _, c := range []struct {
		path   string
		signed bool
	}{
		{"../firmware/blobs/shimx64.efi", true},
		{"../firmware/blobs/grubx64.efi", true},
		{"../firmware/blobs/snponly.efi", false},
		{"/usr/lib/ipxe/snponly.efi", false},
		{"/var/tmp/bootserve-e2e/vmlinuz", true},
	} {
		if _, err := os.Stat(c.path); err != nil {
			continue // not on this machine: make firmware / e2e assets
		}
		got, err := Signed(c.path)
		if err != nil || got != c.signed {
			t.Errorf("Signed(%s) = %v, %v; want %v", c.path, got, err, c.signed)
		}
	}
	bad := filepath.Join(t.TempDir(), "x")
	os.WriteFile(bad, []byte("not PE"), 0o644)
	if _, err := Signed(bad); err == nil {
		t.Error("a non-PE file passed")
	}
}
