package netlab

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// BootAssets are the files a netboot test serves (built by e2e/assets/build.sh).
type BootAssets struct {
	// Kernel is Debian's amd64 kernel (bzImage, serial console built in).
	Kernel string
	// Initrd is a gzip'd newc initramfs whose /init prints "NETBOOT-OK <kernel command line>"
	// on the console and powers off.
	Initrd string
	// Busybox is the static busybox inside Initrd, for tests that build their own initrds.
	Busybox string
	// Dir holds them all ($BOOTSERVE_E2E_ASSETS, default /var/tmp/bootserve-e2e).
	Dir string
}

// Assets builds the boot assets if needed and returns their paths. The first build downloads the
// kernel package (~70 MB, apt-get download); later calls take ~0.1 s. The script locks its
// output directory, so concurrent test binaries are safe. Failure is fatal to the test.
func Assets(t testing.TB) BootAssets {
	t.Helper()
	script, err := buildScript()
	if err != nil {
		t.Fatalf("netlab: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Env = append(os.Environ(), "PATH="+os.Getenv("PATH")+":/usr/sbin:/sbin")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("netlab: building boot assets with %s: %v\n%s", script, err, stderr.String())
	}
	var a BootAssets
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "kernel":
			a.Kernel = v
		case "initrd":
			a.Initrd = v
		case "busybox":
			a.Busybox = v
		}
	}
	for _, p := range []string{a.Kernel, a.Initrd, a.Busybox} {
		if p == "" || !fileExists(p) {
			t.Fatalf("netlab: %s did not produce kernel, initrd and busybox; its output:\n%s\n%s", script, out, stderr.String())
		}
	}
	a.Dir = filepath.Dir(a.Kernel)
	return a
}

// buildScript finds e2e/assets/build.sh: next to this package's source (known at compile time),
// else in the module that contains the working directory (tests run in their package dir).
func buildScript() (string, error) {
	const rel = "e2e/assets/build.sh"
	if _, file, _, ok := runtime.Caller(0); ok {
		p := filepath.Join(filepath.Dir(file), "..", "assets", "build.sh")
		if fileExists(p) {
			return p, nil
		}
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if fileExists(filepath.Join(dir, "go.mod")) {
			p := filepath.Join(dir, rel)
			if fileExists(p) {
				return p, nil
			}
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", fmt.Errorf("cannot find %s: run the tests from inside the bootserve module", rel)
}
