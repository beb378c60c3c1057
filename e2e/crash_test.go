package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bootserve/bootserve/e2e/netlab"
)

// fakeStore writes a closure of n store paths (random, incompressible
// content of size bytes each) and a NixOS-shaped top level referencing
// them, under root, and returns the top level's store path.
func fakeStore(t *testing.T, root string, n, size int) string {
	t.Helper()
	const alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
	hash := func(i int) string {
		b := []byte(strings.Repeat("0", 32))
		for j := 31; i > 0; j-- {
			b[j] = alphabet[i%32]
			i /= 32
		}
		return string(b)
	}
	var refs []string
	for i := 1; i <= n; i++ {
		p := fmt.Sprintf("/nix/store/%s-path%d", hash(i), i)
		dir := filepath.Join(root, p, "lib")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, size)
		rand.Read(b)
		if err := os.WriteFile(filepath.Join(dir, "data"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		refs = append(refs, p)
	}
	top := fmt.Sprintf("/nix/store/%s-nixos-system-crash", hash(n+1))
	dir := filepath.Join(root, top)
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(root, refs[0], "bzImage"), []byte("not a real kernel"), 0o644)
	os.Symlink(refs[0]+"/bzImage", filepath.Join(dir, "kernel"))
	os.WriteFile(filepath.Join(dir, "init"), []byte("#!/bin/sh\n# uses:\n"+strings.Join(refs, "\n")+"\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "kernel-params"), []byte("console=ttyS0"), 0o644)
	return top
}

// TestCrashDuringCacheBuild kills bootserve with SIGKILL while it builds
// the archives of a closure, restarts it, and checks that the initrd it then
// serves is byte for byte the one a fresh cache gives (archives are
// deterministic): no truncated or corrupt member is ever served. A member
// damaged on disk afterwards is caught too.
func TestCrashDuringCacheBuild(t *testing.T) {
	lab := netlab.New(t, netlab.Options{})
	dir := publicTempDir(t)
	root := filepath.Join(dir, "root")
	top := fakeStore(t, root, 60, 4<<20)
	cache := filepath.Join(dir, "cache")
	cfg := filepath.Join(dir, "bootserve.toml")
	os.WriteFile(cfg, fmt.Appendf(nil, "[nix]\nstore_backend = \"scan\"\nstore_root = %q\ncache_dir = %q\n[default]\nnix = %q\n", root, cache, top), 0o644)

	// Crash a warm-up midway.
	warm := exec.Command(bootserveBin, "warm", "--config", cfg)
	out, _ := os.Create(filepath.Join(dir, "warm.log"))
	warm.Stdout, warm.Stderr = out, out
	if err := warm.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill once some members are done and others are being written.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ents, _ := os.ReadDir(cache)
		var done, tmp int
		for _, e := range ents {
			switch {
			case strings.HasPrefix(e.Name(), ".tmp-"):
				tmp++
			case strings.HasSuffix(e.Name(), ".cpio.zst"):
				done++
			}
		}
		if done >= 5 && tmp > 0 {
			t.Logf("killing bootserve warm with %d members done and %d being written", done, tmp)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("warm-up never got midway (%d done, %d in progress)", done, tmp)
		}
		time.Sleep(5 * time.Millisecond)
	}
	warm.Process.Signal(syscall.SIGKILL)
	warm.Wait()

	initrdSum := func() (string, int64) {
		t.Helper()
		name := strings.TrimPrefix(top, "/nix/store/")
		resp, err := lab.Router().HTTPClient().Get("http://" + net.JoinHostPort(lab.ServerIP().String(), "80") + "/boot/" + name + "/initrd")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		if err != nil || resp.StatusCode != 200 || n != resp.ContentLength {
			t.Fatalf("initrd: %d, %d of %d bytes, %v", resp.StatusCode, n, resp.ContentLength, err)
		}
		return hex.EncodeToString(h.Sum(nil)), n
	}
	serveOnce := func() (string, int64) {
		t.Helper()
		p := startBootserve(t, lab, "serve", "--config", cfg)
		defer func() {
			p.Cmd.Process.Signal(syscall.SIGTERM)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			select {
			case <-p.Done():
			case <-ctx.Done():
				t.Fatal("bootserve did not stop on SIGTERM")
			}
		}()
		return initrdSum()
	}
	afterCrash, size := serveOnce()

	// Damage one finished member on disk (a bad sector, a later crash).
	ents, _ := os.ReadDir(cache)
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".cpio.zst") {
			p := filepath.Join(cache, e.Name())
			st, _ := os.Stat(p)
			os.Truncate(p, st.Size()/2)
			break
		}
	}
	afterDamage, _ := serveOnce()

	os.RemoveAll(cache)
	fresh, _ := serveOnce()
	if afterCrash != fresh || afterDamage != fresh {
		t.Errorf("initrd after a crash %s, after damage %s, from a fresh cache %s: a broken member was served", afterCrash, afterDamage, fresh)
	}
	t.Logf("initrd of %d bytes identical after kill -9, after on-disk damage and from a fresh cache (sha256 %s)", size, fresh[:16])
}
