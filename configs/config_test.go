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
		{"no target", "[default]\ncmdline = \"x\"\n", []string{`^b\.toml:1: default: no target`}},
		{"nothing to boot", "http_port = 80\n", []string{`default: nothing to boot`}},
		{"bad duration", "[tftp]\ntimeout = \"soon\"\n[default]\nkernel = \"" + k + "\"\n",
			[]string{`^b\.toml:2: tftp\.timeout: .*"soon" is not a duration`}},
		{"bad address", "address = \"fe80::1\"\n[default]\nkernel = \"" + k + "\"\n", []string{`^b\.toml:1: address: "fe80::1" is not an IPv4 address`}},
		{"bad firmware path", "[firmware]\nefi_arm64 = \"/no/such.efi\"\n[default]\nkernel = \"" + k + "\"\n",
			[]string{`^b\.toml:2: firmware\.efi_arm64: .*no such file`}},
		{"multi-line cmdline", "[default]\nkernel = \"" + k + "\"\ncmdline = \"\"\"a\nb\"\"\"\n", []string{`^b\.toml:3: default\.cmdline: must be one line`}},
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

func TestPositions(t *testing.T) {
	src := `a = 1 # comment = x
[t]
b = """
x = 1
"""
c = [
  1,
  2,
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
	for k, want := range map[string]int{
		"a": 1, "t": 2, "t.b": 3, "t.c": 6, "t.d.e": 10, "m[0]": 11, "m[0].x": 12, "m[0].sub": 13,
		"m[0].sub.y": 14, "m[1]": 15, "m[1].x": 16, "m[1].list[0]": 17, "m[1].list[0].w": 18,
		"m.x": 12, "m[1].x.z": 16, "nope": 0,
	} {
		if got := p.line(k); got != want {
			t.Errorf("line(%q) = %d, want %d", k, got, want)
		}
	}
}
