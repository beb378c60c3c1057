package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bootserve/bootserve/e2e/netlab"
)

// TestConfigReload changes the config of a running bootserve: a change of
// the file is picked up, a bad file is refused with file:line and the old
// config stays in force, and SIGHUP reloads too. What a machine would boot
// is read from its script, over HTTP from the lab's router namespace.
func TestConfigReload(t *testing.T) {
	assets := netlab.Assets(t)
	lab := netlab.New(t, netlab.Options{})
	// bootserve reads the file again after dropping to nobody.
	dir := publicTempDir(t)
	cfgPath := dir + "/bootserve.toml"
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(cfgPath+".tmp", []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(cfgPath+".tmp", cfgPath); err != nil {
			t.Fatal(err)
		}
	}
	version := func(v string) string {
		return fmt.Sprintf("[default]\nkernel = %q\ninitrds = [%q]\ncmdline = \"version=%s\"\n", assets.Kernel, assets.Initrd, v)
	}
	write(version("one"))
	srv := startBootserve(t, lab, "serve", "--config", cfgPath)
	client := lab.Router().HTTPClient()
	script := func() string {
		resp, err := client.Get(fmt.Sprintf("http://%s/ipxe?mac=52:54:00:00:00:01&arch=bios", lab.ServerIP()))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	waitLog := func(pat netlab.Pattern) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := srv.WaitLog(ctx, pat); err != nil {
			t.Fatalf("%v\n%s", err, srv.Tail(20))
		}
	}
	if !strings.Contains(script(), "version=one") {
		t.Fatal("first config not served")
	}
	write(version("two"))
	waitLog(netlab.Regexp(`config reloaded.*reason="file changed"`))
	if !strings.Contains(script(), "version=two") {
		t.Error("changed file not in force")
	}
	write("[default]\nkernel = \"/no/such/vmlinuz\"\n")
	waitLog(netlab.Regexp(`config reload refused.*bootserve\.toml:2: default\.kernel: open /no/such/vmlinuz`))
	if !strings.Contains(script(), "version=two") {
		t.Error("a bad file replaced the config in force")
	}
	write(version("three"))
	waitLog(netlab.Regexp(`config reloaded.*version|config reloaded`))
	if err := srv.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(netlab.Regexp(`config reloaded.*reason=SIGHUP`))
	if !strings.Contains(script(), "version=three") {
		t.Error("reloaded config not in force")
	}
}

// publicTempDir is a temporary directory that the unprivileged user
// bootserve drops to can read (t.TempDir's parents are private to root).
func publicTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bootserve-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
