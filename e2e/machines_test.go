package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bootserve/bootserve/e2e/netlab"
)

// writeConfig writes a TOML config for a test and returns its path.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bootserve.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTwoMachinesTwoTargets boots two VMs with different MACs at the same
// time; the config gives each its own target (a kernel target and an iPXE
// script target), and each must print its own marker.
func TestTwoMachinesTwoTargets(t *testing.T) {
	assets := netlab.Assets(t)
	lab := netlab.New(t, netlab.Options{})
	macA, macB := "52:54:00:aa:00:01", "52:54:00:bb:00:02"
	cfg := writeConfig(t, fmt.Sprintf(`
[[machine]]
name = "alpha"
mac = %q
kernel = %q
initrds = [%q]
cmdline = "%s who=alpha-{{.MAC}}"

[[machine]]
name = "beta"
mac = "%s"
ipxe_script = """
#!ipxe
echo custom script for {{.MAC}}
kernel {{ URL %q }} initrd=initrd.gz %s who=beta-{{.Arch}}
initrd {{ URL %q }}
boot
"""
`, macA, assets.Kernel, assets.Initrd, cmdlineBase, strings.ToUpper(strings.ReplaceAll(macB, ":", "-")), assets.Kernel, cmdlineBase, assets.Initrd))
	startBootserve(t, lab, "serve", "--config", cfg)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	results := make([]*netlab.Result, 2)
	errs := make([]error, 2)
	for i, vm := range []netlab.VM{
		{Name: "alpha", Firmware: netlab.BIOS, MAC: macA, Marker: netlab.Regexp(`NETBOOT-OK .*who=`)},
		{Name: "beta", Firmware: netlab.UEFI, MAC: macB, Marker: netlab.Regexp(`NETBOOT-OK .*who=`)},
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = lab.Boot(ctx, vm)
		}()
	}
	wg.Wait()
	want := []string{"who=alpha-" + macA, "who=beta-efi-x64"}
	for i, r := range results {
		if errs[i] != nil || r == nil || !r.MarkerSeen {
			t.Fatalf("VM %d did not boot: %v %v", i, errs[i], r)
		}
		if !strings.Contains(r.MarkerLine, want[i]) {
			t.Errorf("VM %s booted %q, want its own target (%s)", r.Name, r.MarkerLine, want[i])
		}
		t.Logf("%s (%s): %.1f s", r.Name, r.Firmware, r.Seconds())
	}
}

// TestMenuDefaultAndLocal shows a rescue menu with a local-disk entry and a
// timeout: nobody chooses, and the default entry boots.
func TestMenuDefaultAndLocal(t *testing.T) {
	assets := netlab.Assets(t)
	lab := netlab.New(t, netlab.Options{})
	cfg := writeConfig(t, fmt.Sprintf(`
[default.menu]
title = "bootserve rescue"
default = "rescue"
timeout = "3s"

[[default.menu.entry]]
name = "local"
label = "Boot from local disk"
local = true

[[default.menu.entry]]
name = "rescue"
label = "Rescue kernel"
kernel = %q
initrds = [%q]
cmdline = "%s picked=rescue"
`, assets.Kernel, assets.Initrd, cmdlineBase))
	srv := startBootserve(t, lab, "serve", "--config", cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var sawMenu, sawLocal atomic.Bool
	r := lab.MustBoot(t, ctx, netlab.VM{Firmware: netlab.BIOS, Marker: netlab.Regexp(`NETBOOT-OK .*picked=rescue`),
		OnLine: func(l netlab.Line) {
			if strings.Contains(l.Text, "bootserve rescue") {
				sawMenu.Store(true)
			}
			if strings.Contains(l.Text, "Boot from local disk") {
				sawLocal.Store(true)
			}
		}})
	if !sawMenu.Load() || !sawLocal.Load() {
		t.Errorf("the menu (%v) with its local entry (%v) was not shown on the console; serial log %s", sawMenu.Load(), sawLocal.Load(), r.SerialLog)
	}
	if !strings.Contains(srv.Output(), "entry=1") {
		t.Error("the default entry's script was not fetched")
	}
	t.Logf("menu default booted unattended in %.1f s", r.Seconds())
}

// TestPixiecoreAPI runs bootserve against an API server written here, that
// speaks pixiecore's documented protocol: one machine gets kernel + initrd
// with the deprecated object form of cmdline, another a 404 (don't boot).
func TestPixiecoreAPI(t *testing.T) {
	assets := netlab.Assets(t)
	lab := netlab.New(t, netlab.Options{})
	const good, bad = "52:54:00:ab:00:01", "52:54:00:ab:00:02"
	var mu sync.Mutex
	calls := map[string]int{}
	var query string
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/boot/{mac}", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls[r.PathValue("mac")]++
		if r.PathValue("mac") == good {
			query = r.URL.RawQuery
		}
		mu.Unlock()
		if r.PathValue("mac") != good {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{
			"kernel": "/files/vmlinuz",
			"initrd": []string{"/files/initrd.gz"},
			"cmdline": map[string]any{
				"console": "ttyS0", "quiet": true, "panic": "-1", "api": "object-form",
				"extra": map[string]string{"url": "/files/initrd.gz"},
			},
			"message": "booting from the API",
		})
	})
	mux.Handle("GET /files/", http.StripPrefix("/files/", http.FileServer(http.Dir(filepath.Dir(assets.Kernel)))))
	// The API server runs in the lab's second address space: the server
	// namespace, on another port.
	ln, err := lab.Server().Listen("tcp", net.JoinHostPort(lab.ServerIP().String(), "8081"))
	if err != nil {
		t.Fatal(err)
	}
	api := &http.Server{Handler: mux}
	go api.Serve(ln)
	t.Cleanup(func() { api.Close() })

	srv := startBootserve(t, lab, "api", "http://"+net.JoinHostPort(lab.ServerIP().String(), "8081")+"/")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	r := lab.MustBoot(t, ctx, netlab.VM{Firmware: netlab.BIOS, MAC: good, Marker: netlab.Regexp(`NETBOOT-OK .*api=object-form`)})
	for _, want := range []string{"console=ttyS0", "quiet", "panic=-1", "extra=http://"} {
		if !strings.Contains(r.MarkerLine, want) {
			t.Errorf("cmdline %q lacks %q", r.MarkerLine, want)
		}
	}
	// The machine the API refuses gets no ProxyDHCP answer: iPXE gives up.
	r2, err := lab.Boot(ctx, netlab.VM{Firmware: netlab.BIOS, MAC: bad, Timeout: 45 * time.Second,
		Marker: netlab.Regexp(`No more network devices|NETBOOT-OK`)})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(r2.MarkerLine, "NETBOOT-OK") {
		t.Errorf("the machine the API refused booted: %s", r2.MarkerLine)
	}
	if !strings.Contains(srv.Output(), "api server said 404") {
		t.Errorf("no log line for the API's refusal:\n%s", srv.Tail(20))
	}
	mu.Lock()
	defer mu.Unlock()
	// Asked once per boot, not once per DHCP packet and again over HTTP.
	if calls[good] != 1 {
		t.Errorf("the API was asked %d times for one boot of %s", calls[good], good)
	}
	if !strings.Contains(query, "arch=bios") {
		t.Errorf("API request query %q lacks arch", query)
	}
}
