package configs

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// files creates empty boot files under dir.
func files(t *testing.T, dir string, names ...string) {
	t.Helper()
	for _, n := range names {
		p := filepath.Join(dir, n)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestExampleLoads(t *testing.T) {
	src, err := os.ReadFile("example.toml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files(t, dir, "vmlinuz", "initrd.img", "lab/vmlinuz", "lab/initrd.img")
	text := strings.ReplaceAll(string(src), "/srv/bootserve/", dir+"/")
	c, err := Parse(filepath.Join(dir, "bootserve.toml"), text)
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTPPort != 80 || c.Firmware.EFIX64 != "snponly.efi" || c.TFTP.MaxTransfers != 256 || c.TFTP.Timeout.Seconds() != 5 {
		t.Errorf("config %+v", c)
	}
	if len(c.Rules.Rules) != 1 || len(c.Rules.Rules[0].MACs) != 2 || c.Rules.Rules[0].MACs[1].String() != "52:54:00:12:34:57" {
		t.Errorf("rules %+v", c.Rules.Rules)
	}
	if c.Rules.Default == nil || c.Rules.Default.Kernel != dir+"/vmlinuz" {
		t.Errorf("default %+v", c.Rules.Default)
	}
}

func TestHomelabExampleLoads(t *testing.T) {
	src, err := os.ReadFile("homelab-rescue.toml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	store := "/nix/store/8a1b2c3d4f5g6h7i8j9k0l1m2n3p4q5r-nixos-system-rescue-24.11"
	files(t, dir, "iso/systemrescue-11.02-amd64.iso", "memdisk", "root"+store+"/init", "profiles/nas")
	text := strings.NewReplacer(
		"/srv/iso/", dir+"/iso/", "/usr/lib/syslinux/memdisk", dir+"/memdisk",
		"/nix/var/nix/profiles/per-machine", dir+"/profiles", "/var/cache/bootserve", dir+"/cache",
		"[nix]\n", "[nix]\nstore_root = \""+dir+"/root\"\n",
	).Replace(string(src))
	c, err := Parse(filepath.Join(dir, "homelab-rescue.toml"), text)
	if err != nil {
		t.Fatal(err)
	}
	m := c.Rules.Default.Menu
	if m == nil || len(m.Entries) != 4 || m.Default != 0 || m.TimeoutSeconds != 10 {
		t.Fatalf("menu %+v", m)
	}
	if m.Entries[1].Target.Nix != store || m.Entries[2].Target.URL != dir+"/iso/systemrescue-11.02-amd64.iso" {
		t.Errorf("entries %+v", m.Entries)
	}
	if r := c.Rules.Rules[0]; r.Target.Hostname != "nas-rescue" || r.Target.Nix != "nas" || !c.Nix.Used {
		t.Errorf("nas rule %+v", r)
	}
}

func TestFullDHCPSecureBootExampleLoads(t *testing.T) {
	src, err := os.ReadFile("full-dhcp-secureboot.toml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files(t, dir, "vmlinuz", "initrd.img", "custom/vmlinuz", "custom/initrd.img")
	text := strings.ReplaceAll(string(src), "/srv/bootserve/", dir+"/")
	c, err := Parse(filepath.Join(dir, "full-dhcp-secureboot.toml"), text)
	if err != nil {
		t.Fatal(err)
	}
	s := c.DHCP.Server
	if !c.DHCP.IsServer() || s.PoolStart.String() != "192.168.50.100" || s.LeaseTime.Hours() != 12 || s.LeaseFile != DefaultLeaseFile ||
		len(s.Reservations) != 1 || s.AllowOtherServers || len(s.DNS) != 2 || s.DomainName != "lab.internal" {
		t.Errorf("dhcp %+v", c.DHCP)
	}
	if err := s.Validate(); err != nil {
		t.Error(err)
	}
	if !c.Rules.Default.SecureBoot || c.Rules.Rules[0].Target.SecureBoot {
		t.Errorf("secure_boot: default %v, bench %v", c.Rules.Default.SecureBoot, c.Rules.Rules[0].Target.SecureBoot)
	}
	// The test files are not signed kernels: the default target draws the
	// start-up warning.
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "default.kernel") {
		t.Errorf("warnings %q", c.Warnings)
	}
}

func TestRelativePaths(t *testing.T) {
	dir := t.TempDir()
	files(t, dir, "k/vmlinuz")
	c, err := Parse(filepath.Join(dir, "b.toml"), "[default]\nkernel = \"k/vmlinuz\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Rules.Default.Kernel != filepath.Join(dir, "k/vmlinuz") {
		t.Errorf("kernel %q not resolved against the config's directory", c.Rules.Default.Kernel)
	}
}

func TestBadConfigs(t *testing.T) {
	dir := t.TempDir()
	files(t, dir, "vmlinuz", "initrd")
	k := filepath.Join(dir, "vmlinuz")
	cases := []struct {
		name string
		src  string
		want []string // regexps, each must match the error text
	}{
		{"unknown top key", "http_prot = 8080\n[default]\nkernel = \"" + k + "\"\n",
			[]string{`^b\.toml:1: http_prot: unknown key`}},
		{"unknown nested key", "[default]\nkernel = \"" + k + "\"\n\n[[machine]]\nmac = \"52:54:00:00:00:01\"\nkernel = \"" + k + "\"\ninitrd = \"x\"\n",
			[]string{`^b\.toml:7: machine\.initrd: unknown key`}},
		{"wrong type", "http_port = \"eighty\"\n[default]\nkernel = \"" + k + "\"\n",
			[]string{`^b\.toml:1: http_port: .*`}},
		{"bad banner duration", "[firmware]\nipxe_banner = \"soon\"\n[default]\nkernel = \"" + k + "\"\n",
			[]string{`^b\.toml:2: firmware\.ipxe_banner: invalid duration: "soon"`}},
		{"syntax error", "[default\nkernel = 1\n",
			[]string{`^b\.toml:[12]: expected`}},
		{"bad MAC", "[default]\nkernel = \"" + k + "\"\n[[machine]]\nname = \"m\"\nmac = \"zz:00:00:00:00:01\"\nkernel = \"" + k + "\"\n",
			[]string{`^b\.toml:5: machine\[0\]\.mac: "zz:00:00:00:00:01" is not a MAC address`}},
		{"duplicate MAC", "[[machine]]\nmac = \"52:54:00:00:00:01\"\nkernel = \"" + k + "\"\n\n[[machine]]\nmac = [\"52-54-00-00-00-01\"]\nkernel = \"" + k + "\"\n",
			[]string{`^b\.toml:6: machine\[1\]\.mac: 52:54:00:00:00:01 is already selected by machine\[0\]`}},
		{"missing kernel", "[default]\nkernel = \"" + dir + "/nope\"\n",
			[]string{`^b\.toml:2: default\.kernel: open .*/nope: no such file or directory`}},
		{"missing initrd", "[default]\nkernel = \"" + k + "\"\ninitrds = [\n  \"" + dir + "/initrd\",\n  \"" + dir + "/gone\",\n]\n",
			[]string{`^b\.toml:3: default\.initrds\[1\]: open .*/gone: no such file`}},
		{"directory as kernel", "[default]\nkernel = \"" + dir + "\"\n",
			[]string{`default\.kernel: .* is not a regular file`}},
		{"cmdline without kernel", "[default]\ncmdline = \"x\"\n", []string{`^b\.toml:1: default: cmdline without kernel or nix target`}},
		{"no target", "[[machine]]\nmac = \"52:54:00:00:00:01\"\n", []string{`^b\.toml:1: machine\[0\]: no target: set one of kernel`}},
		{"two targets", "[default]\nkernel = \"" + k + "\"\nlocal = true\n", []string{`^b\.toml:1: default: several targets \(kernel, local\)`}},
		{"bad template", "[default]\nkernel = \"" + k + "\"\ncmdline = \"console={{.Console\"\n", []string{`^b\.toml:3: default\.cmdline: bad template`}},
		{"bad script template", "[default]\nipxe_script = \"\"\"\n#!ipxe\necho {{if}}\n\"\"\"\n", []string{`^b\.toml:2: default\.ipxe_script: bad template`}},
		{"tie", "[[machine]]\nname = \"a\"\narch = \"efi-x64\"\nlocal = true\n[[machine]]\nname = \"b\"\narch = [\"bios\", \"efi-x64\"]\nlocal = true\n",
			[]string{`^b\.toml:5: machine\[1\]: ties with a: both are equally specific and both match a machine with arch efi-x64`}},
		{"unknown arch", "[[machine]]\narch = \"ppc\"\nlocal = true\n", []string{`^b\.toml:2: machine\[0\]\.arch: unknown architecture "ppc"`}},
		{"bad uuid", "[[machine]]\nuuid = \"1234\"\nlocal = true\n", []string{`^b\.toml:2: machine\[0\]\.uuid: "1234" is not a UUID`}},
		{"selects nothing", "[[machine]]\nname = \"x\"\nlocal = true\n", []string{`^b\.toml:1: machine\[0\]: selects no machine`}},
		{"menu default unknown", "[default.menu]\ndefault = \"nope\"\n[[default.menu.entry]]\nname = \"a\"\nlocal = true\n", []string{`^b\.toml:2: default\.menu\.default: no entry is named "nope"`}},
		{"menu without entries", "[default.menu]\ntitle = \"x\"\n", []string{`^b\.toml:1: default\.menu: a menu needs at least one`}},
		{"nested menu", "[default.menu]\n[[default.menu.entry]]\nname = \"a\"\n[default.menu.entry.menu]\ntitle = \"x\"\n", []string{`default\.menu\.entry\[0\]\.menu: menus cannot be nested`}},
		{"missing iso", "[default]\niso = \"" + dir + "/rescue.iso\"\n", []string{`^b\.toml:2: default\.iso: open .*rescue\.iso: no such file`}},
		{"missing menu entry file", "[default.menu]\n[[default.menu.entry]]\nname = \"a\"\nkernel = \"" + dir + "/gone\"\n", []string{`^b\.toml:4: default\.menu\.entry\[0\]\.kernel: open .*gone`}},
		{"store path missing", "[default]\nnix = \"/nix/store/00000000000000000000000000000000-nope\"\n", []string{`^b\.toml:2: default\.nix: stat .*: no such file`}},
		{"store path outside store", "[default]\nnix = \"/etc/passwd\"\n", []string{`^b\.toml:2: default\.nix: "/etc/passwd" is not in the store /nix/store`}},
		{"bad store name", "[default]\nnix = \"/nix/store/../etc\"\n", []string{`^b\.toml:2: default\.nix: .*store path name`}},
		{"profile without dir", "[default]\nnix_profile = \"web\"\n", []string{`^b\.toml:2: default\.nix_profile: set nix\.profiles_dir`}},
		{"missing profile", "[nix]\nprofiles_dir = \"" + dir + "\"\n[default]\nnix_profile = \"web\"\n", []string{`^b\.toml:4: default\.nix_profile: no profile "web"`}},
		{"configuration without gc roots", "[nix]\nconfigurations_dir = \"" + dir + "\"\n[default]\nlocal = true\n", []string{`nix\.gc_roots_dir: needed with configurations_dir`}},
		{"bad compression", "[nix]\ncompression = \"xz\"\n[default]\nlocal = true\n", []string{`^b\.toml:2: nix\.compression: "xz" is not zstd or gzip`}},
		{"bad size", "[nix]\ncache_size = \"lots\"\n[default]\nlocal = true\n", []string{`^b\.toml:2: nix\.cache_size: .*"lots" is not a size`}},
		{"api with targets", "[api]\nurl = \"http://127.0.0.1:1/\"\n[default]\nlocal = true\n", []string{`^b\.toml:2: api\.url: set either \[api\] or`}},
		{"bad api url", "[api]\nurl = \"ftp://x\"\n", []string{`^b\.toml:2: api\.url: "ftp://x" is not an http\(s\) URL`}},
		{"secure boot iso", "[default]\niso = \"" + k + "\"\nsecure_boot = true\n", []string{`^b\.toml:3: default\.secure_boot: a iso target cannot boot through shim and GRUB`}},
		{"secure boot chain entry", "[default.menu]\n[[default.menu.entry]]\nchain = \"http://x/y\"\n[default]\nsecure_boot = true\n", []string{`default\.menu\.entry\[0\]: a chain entry cannot boot through shim and GRUB`}},
		{"secure boot URL kernel", "[default]\nkernel = \"http://x/vmlinuz\"\nsecure_boot = true\n", []string{`default: http://x/vmlinuz is a URL: under secure_boot GRUB loads files over TFTP only`}},
		{"chain not a URL", "[default]\nchain = \"boot.netboot.xyz\"\n", []string{`^b\.toml:2: default\.chain: "boot\.netboot\.xyz" is not a URL`}},
		{"nothing to boot", "http_port = 80\n", []string{`default: nothing to boot`}},
		{"bad duration", "[tftp]\ntimeout = \"soon\"\n[default]\nkernel = \"" + k + "\"\n",
			[]string{`^b\.toml:2: tftp\.timeout: .*"soon" is not a duration`}},
		{"bad address", "address = \"fe80::1\"\n[default]\nkernel = \"" + k + "\"\n", []string{`^b\.toml:1: address: "fe80::1" is not an IPv4 address`}},
		{"bad firmware path", "[firmware]\nefi_arm64 = \"/no/such.efi\"\n[default]\nkernel = \"" + k + "\"\n",
			[]string{`^b\.toml:2: firmware\.efi_arm64: .*no such file`}},
		{"multi-line cmdline", "[default]\nkernel = \"" + k + "\"\ncmdline = \"\"\"a\nb\"\"\"\n", []string{`^b\.toml:3: default\.cmdline: must be one line`}},
		{"bad dhcp mode", "[dhcp]\nmode = \"full\"\n[default]\nlocal = true\n", []string{`^b\.toml:2: dhcp\.mode: "full" is not "proxy" .* or "server"`}},
		{"dhcp pool missing", "[dhcp]\nmode = \"server\"\npool_start = \"10.0.0.100\"\n[default]\nlocal = true\n",
			[]string{`^b\.toml:1: dhcp\.pool_end: must be set in server mode`}},
		{"dhcp pool not IPv4", "[dhcp]\nmode = \"server\"\npool_start = \"10.0.0.x\"\npool_end = \"fe80::9\"\n[default]\nlocal = true\n",
			[]string{`(?m)^b\.toml:3: dhcp\.pool_start: "10\.0\.0\.x" is not an IPv4 address`, `(?m)^b\.toml:4: dhcp\.pool_end: "fe80::9" is not an IPv4 address`}},
		{"dhcp pool reversed", "[dhcp]\nmode = \"server\"\npool_start = \"10.0.0.200\"\npool_end = \"10.0.0.100\"\n[default]\nlocal = true\n",
			[]string{`^b\.toml:3: dhcp\.pool_start: 10\.0\.0\.200 is after dhcp\.pool_end 10\.0\.0\.100: swap them`}},
		{"dhcp pool too big", "[dhcp]\nmode = \"server\"\npool_start = \"10.0.0.1\"\npool_end = \"10.2.0.1\"\n[default]\nlocal = true\n",
			[]string{`^b\.toml:3: dhcp\.pool_start: dhcp pool 10\.0\.0\.1-10\.2\.0\.1 holds 131073 addresses`}},
		{"dhcp bad mask", "[dhcp]\nmode = \"server\"\npool_start = \"10.0.0.100\"\npool_end = \"10.0.0.200\"\nsubnet_mask = \"255.0.255.0\"\n[default]\nlocal = true\n",
			[]string{`^b\.toml:5: dhcp\.subnet_mask: 255\.0\.255\.0 is not a contiguous mask`}},
		{"dhcp pool across mask", "[dhcp]\nmode = \"server\"\npool_start = \"10.0.0.100\"\npool_end = \"10.0.1.200\"\nsubnet_mask = \"255.255.255.0\"\n[default]\nlocal = true\n",
			[]string{`^b\.toml:3: dhcp\.pool_start: 10\.0\.0\.100 and dhcp\.pool_end 10\.0\.1\.200 are not in the same`}},
		{"dhcp short lease", "[dhcp]\nmode = \"server\"\npool_start = \"10.0.0.100\"\npool_end = \"10.0.0.200\"\nlease_time = \"30s\"\n[default]\nlocal = true\n",
			[]string{`^b\.toml:5: dhcp\.lease_time: 30s is too short: use at least 1m`}},
		{"dhcp bad lease time", "[dhcp]\nmode = \"server\"\nlease_time = \"a day\"\n[default]\nlocal = true\n",
			[]string{`^b\.toml:3: dhcp\.lease_time: .*"a day" is not a duration`}},
		{"dhcp bad router", "[dhcp]\nmode = \"server\"\npool_start = \"10.0.0.100\"\npool_end = \"10.0.0.200\"\nrouters = \"gateway\"\n[default]\nlocal = true\n",
			[]string{`^b\.toml:5: dhcp\.routers\[0\]: "gateway" is not an IPv4 address`}},
		{"dhcp bad dns", "[dhcp]\nmode = \"server\"\npool_start = \"10.0.0.100\"\npool_end = \"10.0.0.200\"\ndns_servers = [\n  \"10.0.0.1\",\n  \"::1\",\n]\n[default]\nlocal = true\n",
			[]string{`^b\.toml:5: dhcp\.dns_servers\[1\]: "::1" is not an IPv4 address`}},
		{"dhcp bad domain", "[dhcp]\nmode = \"server\"\npool_start = \"10.0.0.100\"\npool_end = \"10.0.0.200\"\ndomain_name = \"my lan\"\n[default]\nlocal = true\n",
			[]string{`^b\.toml:5: dhcp\.domain_name: "my lan": use letters`}},
		{"dhcp unknown key", "[dhcp]\nmode = \"server\"\nrange = \"10.0.0.100-10.0.0.200\"\n[default]\nlocal = true\n",
			[]string{`^b\.toml:3: dhcp\.range: unknown key`}},
		{"dhcp reservation bad MAC", "[dhcp]\nmode = \"server\"\npool_start = \"10.0.0.100\"\npool_end = \"10.0.0.200\"\n[[dhcp.reservation]]\nmac = \"52:54:00:00:00\"\nip = \"10.0.0.10\"\n[default]\nlocal = true\n",
			[]string{`^b\.toml:6: dhcp\.reservation\[0\]\.mac: "52:54:00:00:00" is not a MAC address`}},
		{"dhcp reservation twice", "[dhcp]\nmode = \"server\"\npool_start = \"10.0.0.100\"\npool_end = \"10.0.0.200\"\n" +
			"[[dhcp.reservation]]\nmac = \"52:54:00:00:00:01\"\nip = \"10.0.0.10\"\n[[dhcp.reservation]]\nmac = \"52:54:00:00:00:02\"\nip = \"10.0.0.10\"\n[default]\nlocal = true\n",
			[]string{`^b\.toml:10: dhcp\.reservation\[1\]\.ip: 10\.0\.0\.10 is already reserved by dhcp\.reservation\[0\]`}},
		{"dhcp reservation without ip", "[dhcp]\nmode = \"server\"\npool_start = \"10.0.0.100\"\npool_end = \"10.0.0.200\"\n[[dhcp.reservation]]\nmac = \"52:54:00:00:00:01\"\n[default]\nlocal = true\n",
			[]string{`^b\.toml:5: dhcp\.reservation\[0\]\.ip: must be set`}},
		{"dhcp allow wrong type", "[dhcp]\nmode = \"server\"\nallow_other_servers = \"yes\"\n[default]\nlocal = true\n",
			[]string{`^b\.toml:3: dhcp\.allow_other_servers: `}},
		{"several errors at once", "http_port = 99999\nlog_level = \"loud\"\n[default]\nkernel = \"" + k + "\"\n",
			[]string{`(?m)^b\.toml:1: http_port: 99999 is not a TCP port`, `(?m)^b\.toml:2: log_level: "loud"`}},
	}
	for _, c := range cases {
		_, err := Parse("b.toml", c.src)
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		for _, w := range c.want {
			if !regexp.MustCompile(w).MatchString(err.Error()) {
				t.Errorf("%s: error\n%s\ndoes not match %s", c.name, err, w)
			}
		}
	}
}

func TestSecureBootWarnsAboutUnsignedKernels(t *testing.T) {
	dir := t.TempDir()
	files(t, dir, "vmlinuz")
	c, err := Parse(filepath.Join(dir, "b.toml"), "[default]\nkernel = \"vmlinuz\"\nsecure_boot = true\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "b.toml:2: default.kernel:") || !strings.Contains(c.Warnings[0], "cannot boot with Secure Boot on") {
		t.Errorf("warnings %q", c.Warnings)
	}
	if !c.Rules.Default.SecureBoot {
		t.Error("secure_boot not set on the target")
	}
}

func TestPositions(t *testing.T) {
	src := `a = 1 # comment = x
[t]
b = """
x = 1
"""
c = [
  "]\" ]",
  { q = 2 },
]
d.e = "s#not a comment"
[[m]]
x = 1
[m.sub]
y = 2
[[m]]
x = { z = 1 }
[[m.list]]
w = 3
`
	p := scanPositions(src)
	lines := map[string]int{
		"a": 1, "t": 2, "t.b": 3, "t.c": 6, "t.d.e": 10, "m[0]": 11, "m[0].x": 12, "m[0].sub": 13,
		"m[0].sub.y": 14, "m[1]": 15, "m[1].x": 16, "m[1].list[0]": 17, "m[1].list[0].w": 18,
		"m.x": 12, "m[1].x.z": 16, "nope": 0,
	}
	for k, want := range lines {
		if got := p.line(k); got != want {
			t.Errorf("line(%q) = %d, want %d", k, got, want)
		}
	}
	// Lines inside a value are not keys: the escaped quote keeps "]" in
	// the string, so the array goes on to line 9.
	for k := range p.exact {
		if _, ok := lines[k]; !ok {
			t.Errorf("unexpected key %q at line %d", k, p.exact[k])
		}
	}
}

func TestDHCPServerMode(t *testing.T) {
	dir := t.TempDir()
	c, err := Parse(filepath.Join(dir, "b.toml"), `[dhcp]
mode = "server"
pool_start = "10.0.0.100"
pool_end = "10.0.0.200"
subnet_mask = "255.255.255.0"
lease_time = "2h"
routers = "10.0.0.1"
dns_servers = ["10.0.0.1", "10.0.0.2"]
domain_name = "lan"
lease_file = "state/leases.json"
allow_other_servers = true
[[dhcp.reservation]]
mac = "52-54-00-00-00-01"
ip = "10.0.0.10"

[default]
local = true
`)
	if err != nil {
		t.Fatal(err)
	}
	d := c.DHCP
	s := d.Server
	if !d.IsServer() || s.PoolStart.String() != "10.0.0.100" || s.PoolEnd.String() != "10.0.0.200" || s.SubnetMask.String() != "255.255.255.0" ||
		s.LeaseTime.Hours() != 2 || len(s.Routers) != 1 || len(s.DNS) != 2 || s.DNS[1].String() != "10.0.0.2" || s.DomainName != "lan" ||
		s.LeaseFile != filepath.Join(dir, "state/leases.json") || !s.AllowOtherServers {
		t.Errorf("dhcp %+v", d)
	}
	if len(s.Reservations) != 1 || s.Reservations[0].MAC.String() != "52:54:00:00:00:01" || s.Reservations[0].IP.String() != "10.0.0.10" {
		t.Errorf("reservations %+v", s.Reservations)
	}
	if len(c.Warnings) != 0 {
		t.Errorf("warnings %q", c.Warnings)
	}
}

func TestDHCPDefaults(t *testing.T) {
	c, err := Parse("b.toml", "[default]\nlocal = true\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.DHCP.Mode != DHCPModeProxy || c.DHCP.IsServer() {
		t.Errorf("default mode %q", c.DHCP.Mode)
	}
	c, err = Parse("b.toml", "[dhcp]\nmode = \"server\"\npool_start = \"10.0.0.100\"\npool_end = \"10.0.0.100\"\n[default]\nlocal = true\n")
	if err != nil {
		t.Fatal(err)
	}
	if s := c.DHCP.Server; s.LeaseFile != DefaultLeaseFile || s.AllowOtherServers || s.LeaseTime != 0 {
		t.Errorf("server defaults %+v", s)
	}
	// Server keys in proxy mode are ignored, with a located warning.
	c, err = Parse("b.toml", "[dhcp]\nmode = \"proxy\"\npool_start = \"10.0.0.100\"\n[default]\nlocal = true\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 1 || !strings.HasPrefix(c.Warnings[0], "b.toml:3: dhcp.pool_start: is only used with dhcp.mode = \"server\"") {
		t.Errorf("warnings %q", c.Warnings)
	}
}
