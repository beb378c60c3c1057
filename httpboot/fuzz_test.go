package httpboot

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bootserve/bootserve/cpiocache"
	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/machines"
	"github.com/bootserve/bootserve/nixstore"
)

// FuzzRequests sends arbitrary paths and queries to every route: scripts,
// boot programs, signed files, Nix store paths. Nothing may panic, and a
// file is only ever served for a token this server signed.
func FuzzRequests(f *testing.F) {
	dir := f.TempDir()
	kernel := filepath.Join(dir, "vmlinuz")
	os.WriteFile(kernel, []byte("kernel bytes"), 0o644)
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte("SECRET"), 0o644)
	store := filepath.Join(dir, "store")
	os.MkdirAll(filepath.Join(store, "nix/store/00000000000000000000000000000000-x"), 0o755)
	fw, err := firmware.Load(firmware.Config{SearchDir: dir})
	if err != nil {
		f.Fatal(err)
	}
	s, err := New(Options{Port: 80})
	if err != nil {
		f.Fatal(err)
	}
	s.SetPolicy(&Policy{Booter: machines.Static{T: machines.Target{Kind: machines.KindKernel, Name: "k", Kernel: kernel, Cmdline: "x={{.MAC}}"}}, Firmware: fw})
	ns, err := nixstore.New(nixstore.Options{Backend: nixstore.BackendScan, Root: store})
	if err != nil {
		f.Fatal(err)
	}
	cache, err := cpiocache.Open(cpiocache.Options{Dir: filepath.Join(dir, "cache"), FSRoot: store})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { cache.Close() })
	s.SetNix(&Nix{Store: ns, Cache: cache})
	good := s.fileURL("", kernel, "vmlinuz", "")
	for _, p := range []string{
		"/ipxe?mac=52:54:00:00:00:01&arch=bios", "/ipxe?mac=52:54:00:00:00:01&entry=1", "/ipxe?mac=&label=%0a",
		good, "/f/" + strings.Split(good, "/")[2] + "/../../etc/passwd", "/f/e30.AAAA/x",
		"/firmware/bios/undionly.kpxe", "/firmware/../../etc/passwd",
		"/boot/00000000000000000000000000000000-x/netboot.ipxe", "/boot/../netboot.ipxe", "/boot/%2e%2e/initrd",
		"/dispatch/profile/..%2f..%2fetc", "/dispatch/configuration/x?cmdline_suffix_args=%0aboot",
	} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, target string) {
		u, err := url.ParseRequestURI(target)
		if err != nil || u.Host != "" || !strings.HasPrefix(target, "/") {
			return
		}
		req := httptest.NewRequest("GET", "http://boot.test/", nil)
		req.URL, req.RequestURI = u, target
		req.RemoteAddr = "10.0.0.9:1234"
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		if rec.Code == http.StatusOK && strings.Contains(rec.Body.String(), "SECRET") {
			t.Fatalf("%s served a file no script named", target)
		}
		if strings.HasPrefix(u.Path, "/f/") && rec.Code == http.StatusOK {
			tok := strings.SplitN(strings.TrimPrefix(u.Path, "/f/"), "/", 2)[0]
			if _, err := s.signer.verify(tok); err != nil {
				t.Fatalf("%s served with a bad token", target)
			}
		}
	})
}
