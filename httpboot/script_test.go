package httpboot

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/machines"
)

var testMAC = net.HardwareAddr{0x52, 0x54, 0, 9, 8, 7}

func scriptFor(t *testing.T, f *fixture, id machines.Identity, extra string) (int, string) {
	t.Helper()
	id.MAC = testMAC
	u := f.srv.ScriptURL(netip.MustParseAddr("127.0.0.1"), id) + extra
	resp, body := get(t, u)
	return resp.StatusCode, string(body)
}

func TestMenuScript(t *testing.T) {
	dir := t.TempDir()
	k := filepath.Join(dir, "vmlinuz")
	os.WriteFile(k, []byte("k"), 0o644)
	menu := &machines.Menu{Title: "Rescue", Default: 1, TimeoutSeconds: 7, Entries: []machines.MenuEntry{
		{Label: "Debian kernel", Target: machines.Target{Kind: machines.KindKernel, Name: "deb", Kernel: k, Cmdline: "console=ttyS0"}},
		{Label: "Local disk", Target: machines.Target{Kind: machines.KindLocal, Name: "local"}},
		{Label: "netboot.xyz", Target: machines.Target{Kind: machines.KindChain, Name: "xyz", URL: "http://boot.example/menu.ipxe"}},
	}}
	f := newFixture(t, machines.Static{T: machines.Target{Kind: machines.KindMenu, Name: "rescue", Menu: menu}})
	code, script := scriptFor(t, f, machines.Identity{Arch: firmware.EFIX64}, "")
	if code != 200 {
		t.Fatalf("%d %s", code, script)
	}
	for _, want := range []string{
		"menu Rescue\n", "item e0 Debian kernel\n", "item e1 Local disk\n", "item e2 netboot.xyz\n",
		"choose --default e1 --timeout 7000 entry || goto failed\n", "goto ${entry}\n",
		":e1\necho Booting from the next boot device\nexit 0\n",
	} {
		if !strings.Contains(script, want) {
			t.Errorf("menu script lacks %q:\n%s", want, script)
		}
	}
	// Entries other than local chain to the entry's own script.
	m := regexp.MustCompile(`:e0\nchain --autofree (\S+) `).FindStringSubmatch(script)
	if m == nil || !strings.Contains(m[1], "entry=0") || !strings.Contains(m[1], "mac=52:54:00:09:08:07") {
		t.Fatalf("entry 0 does not chain to its script:\n%s", script)
	}
	resp, body := get(t, m[1])
	if resp.StatusCode != 200 || !strings.Contains(string(body), "kernel ") || !strings.Contains(string(body), "console=ttyS0") {
		t.Errorf("entry script: %d\n%s", resp.StatusCode, body)
	}
	_, e2 := scriptFor(t, f, machines.Identity{}, "&entry=2")
	if !strings.Contains(e2, "chain --autofree http://boot.example/menu.ipxe || goto failed") {
		t.Errorf("chain entry:\n%s", e2)
	}
	if code, _ := scriptFor(t, f, machines.Identity{}, "&entry=9"); code != 404 {
		t.Errorf("entry 9: %d", code)
	}
}

func TestISOAndChainScripts(t *testing.T) {
	dir := t.TempDir()
	iso := filepath.Join(dir, "rescue.iso")
	md := filepath.Join(dir, "memdisk")
	os.WriteFile(iso, []byte("CD001 image"), 0o644)
	os.WriteFile(md, []byte("memdisk binary"), 0o644)
	f := newFixture(t, machines.Static{T: machines.Target{Kind: machines.KindISO, Name: "iso", URL: iso}})
	_, uefi := scriptFor(t, f, machines.Identity{Arch: firmware.EFIX64}, "")
	m := regexp.MustCompile(`sanboot --no-describe (\S+/rescue\.iso) \|\| goto failed`).FindStringSubmatch(uefi)
	if m == nil {
		t.Fatalf("UEFI ISO script:\n%s", uefi)
	}
	// sanboot reads with Range requests: check the URL honours them.
	resp, body := get(t, m[1], "Range", "bytes=0-4")
	if resp.StatusCode != 206 || string(body) != "CD001" {
		t.Errorf("ISO range: %d %q", resp.StatusCode, body)
	}
	// With memdisk configured, BIOS machines get memdisk + the image.
	fw, err := firmware.Load(firmware.Config{SearchDir: dir, Memdisk: md})
	if err != nil {
		t.Fatal(err)
	}
	f.srv.SetPolicy(&Policy{Booter: machines.Static{T: machines.Target{Kind: machines.KindISO, Name: "iso", URL: iso}}, Firmware: fw})
	_, bios := scriptFor(t, f, machines.Identity{Arch: firmware.BIOS}, "")
	mk := regexp.MustCompile(`kernel (\S+/memdisk) iso raw \|\| goto failed\ninitrd \S+/rescue\.iso \|\| goto failed\nboot`).FindStringSubmatch(bios)
	if mk == nil {
		t.Fatalf("BIOS memdisk script:\n%s", bios)
	}
	if resp, body := get(t, mk[1]); resp.StatusCode != 200 || string(body) != "memdisk binary" {
		t.Errorf("memdisk: %d %q", resp.StatusCode, body)
	}

	// An https chain target is fetched through bootserve (Debian's iPXE
	// has no HTTPS); a templated one gets the machine's arch.
	upstream := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("efi:" + r.URL.Path)) }))
	defer upstream.Close()
	f.srv.opts.HTTPClient = upstream.Client()
	f.srv.SetPolicy(&Policy{Booter: machines.Static{T: machines.Target{Kind: machines.KindChain, Name: "xyz",
		URL: upstream.URL + `/ipxe/netboot.xyz{{if eq .Arch "bios"}}.kpxe{{else}}.efi{{end}}`}}, Firmware: fw})
	_, chain := scriptFor(t, f, machines.Identity{Arch: firmware.EFIX64}, "")
	mc := regexp.MustCompile(`chain --autofree (http://127\.0\.0\.1:\d+/f/\S+/netboot\.xyz\.efi) \|\| goto failed`).FindStringSubmatch(chain)
	if mc == nil {
		t.Fatalf("https chain not proxied:\n%s", chain)
	}
	if resp, body := get(t, mc[1]); resp.StatusCode != 200 || string(body) != "efi:/ipxe/netboot.xyz.efi" {
		t.Errorf("proxied chain: %d %q", resp.StatusCode, body)
	}
}

func TestTemplatesAndLabels(t *testing.T) {
	dir := t.TempDir()
	k := filepath.Join(dir, "vmlinuz")
	cfg := filepath.Join(dir, "cloud.yaml")
	os.WriteFile(k, []byte("k"), 0o644)
	os.WriteFile(cfg, []byte("#cloud-config"), 0o644)
	f := newFixture(t, machines.Static{T: machines.Target{Kind: machines.KindKernel, Name: "k", Kernel: k, Hostname: "node7",
		Cmdline: `host={{.Hostname}} cfg={{ URL "file://` + cfg + `" }}`}})
	_, script := scriptFor(t, f, machines.Identity{Labels: []string{"rack1", "hostname=dhcpname"}}, "")
	m := regexp.MustCompile(`host=node7 cfg=(http://\S+/cloud\.yaml) `).FindStringSubmatch(script)
	if m == nil {
		t.Fatalf("templated cmdline:\n%s", script)
	}
	if resp, body := get(t, m[1]); resp.StatusCode != 200 || string(body) != "#cloud-config" {
		t.Errorf("URL function target: %d %q", resp.StatusCode, body)
	}
	// Labels travel in the script URL and come back as identity.
	u := f.srv.ScriptURL(netip.MustParseAddr("10.0.0.1"), machines.Identity{MAC: testMAC, Labels: []string{"rack1", "hostname=n1"}})
	if !strings.Contains(u, "label=rack1") || !strings.Contains(u, "label=hostname%3Dn1") {
		t.Errorf("labels not in script URL: %s", u)
	}
	pu, _ := url.Parse(u)
	r := httptest.NewRequest("GET", pu.RequestURI(), nil)
	id, err := identity(r)
	if err != nil || len(id.Labels) != 2 || id.Hostname != "n1" {
		t.Errorf("identity from URL: %+v %v", id, err)
	}
	// A line break smuggled through a template is refused, not scripted.
	f.srv.SetPolicy(&Policy{Booter: machines.Static{T: machines.Target{Kind: machines.KindKernel, Name: "k", Kernel: k,
		Cmdline: "a={{.Hostname}}"}}, Firmware: f.srv.policy.Load().Firmware})
	_, bad := scriptFor(t, f, machines.Identity{}, "&label=hostname%3Dx%0Ashell")
	if strings.Contains(bad, "\nshell") {
		t.Errorf("line break reached the script:\n%s", bad)
	}
}
