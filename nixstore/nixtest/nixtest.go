// Package nixtest builds, with real Nix and without nixpkgs or network, a small
// "NixOS-shaped" system for end-to-end boot tests: a top level with kernel, init and
// kernel-params whose init is a static busybox script that reports on the console what
// the netboot delivered and powers off.
//
// The system's closure is three store paths:
//
//	<hash>-busybox-static              bin/busybox (a copy of the given static busybox)
//	<hash>-linux-bootserve-test        bzImage (a copy of the given kernel)
//	<hash>-nixos-system-bootserve-test-<marker>
//	    kernel -> <linux>/bzImage, kernel-params, init
//
// Booted with rdinit=<top>/init (or init=), init mounts /proc, /sys and devtmpfs, counts
// the store paths in /nix/.nix-netboot-serve-db/registration — the lines of exactly 64
// lowercase hex digits, since each record of the `nix-store --dump-db` format has one NAR
// hash line and no other line can look like one — and prints one line to /dev/console:
//
//	NIX-NETBOOT-OK marker=<marker> paths=<N or "none"> cmdline=<kernel command line>
//
// then runs `busybox poweroff -f`. ParseBootReport reads that line back.
package nixtest

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/bootserve/bootserve/nixstore"
)

//go:embed system.nix
var systemNix []byte

// BootMarker starts the line the test init prints.
const BootMarker = "NIX-NETBOOT-OK"

// DefaultKernelParams is the kernel-params of a system built without KernelParams:
// serial console, and reboot at once on panic (with QEMU's -no-reboot, the run ends).
const DefaultKernelParams = "console=ttyS0 panic=-1"

// OfflineBuildArgs returns the nix-build options for single-user Nix as root with no
// nixbld group, no sandbox (the builders use the host's /bin/sh and coreutils) and no
// binary cache.
func OfflineBuildArgs() []string {
	return []string{
		"--option", "sandbox", "false",
		"--option", "build-users-group", "",
		"--option", "substituters", "",
	}
}

// Options say what to build.
type Options struct {
	// Busybox is the host path of a static busybox (Debian: /bin/busybox from
	// busybox-static). Required.
	Busybox string
	// Kernel is the host path of a kernel image (a Debian vmlinuz). Required; any file
	// will do for a build that is not booted.
	Kernel string
	// Marker makes distinct systems: it is printed by init and part of the top level's
	// name. Letters, digits, '.', '_' and '-', at most 64; default "default".
	Marker string
	// KernelParams is the content of kernel-params; default DefaultKernelParams.
	KernelParams string
	// OutLink, if set, is where nix-build puts a GC root for the top level (e.g. in the
	// test's temp dir). Without it the system is not rooted.
	OutLink string
	// NixBuild and NixStore default to the tools on PATH.
	NixBuild string
	NixStore string
	// BuildArgs default to OfflineBuildArgs().
	BuildArgs []string
}

// System is a built test system.
type System struct {
	TopLevel     string   // the top-level store path: boot <TopLevel>/init
	Busybox      string   // store path holding bin/busybox
	Kernel       string   // store path holding bzImage
	Closure      []string // the top level's closure, sorted
	ClosureSize  int      // len(Closure): what init reports as paths= when the registration is complete
	KernelParams string
}

// BuildSystem builds the test system described by opts and checks it with
// nixstore.Store.TopLevel.
func BuildSystem(ctx context.Context, opts Options) (System, error) {
	if opts.Busybox == "" || opts.Kernel == "" {
		return System{}, errors.New("nixtest: Options.Busybox and Options.Kernel are required")
	}
	if opts.Marker == "" {
		opts.Marker = "default"
	}
	if err := checkMarker(opts.Marker); err != nil {
		return System{}, err
	}
	if opts.KernelParams == "" {
		opts.KernelParams = DefaultKernelParams
	}
	if opts.BuildArgs == nil {
		opts.BuildArgs = OfflineBuildArgs()
	}
	nixBuild := opts.NixBuild
	if nixBuild == "" {
		nixBuild = "nix-build"
	}
	// Resolve symlinks: builtins.path would import a symlink itself, not the file.
	busybox, err := filepath.EvalSymlinks(opts.Busybox)
	if err != nil {
		return System{}, fmt.Errorf("nixtest: busybox: %w", err)
	}
	kernel, err := filepath.EvalSymlinks(opts.Kernel)
	if err != nil {
		return System{}, fmt.Errorf("nixtest: kernel: %w", err)
	}
	if busybox, err = filepath.Abs(busybox); err != nil {
		return System{}, err
	}
	if kernel, err = filepath.Abs(kernel); err != nil {
		return System{}, err
	}

	dir, err := os.MkdirTemp("", "nixtest-")
	if err != nil {
		return System{}, err
	}
	defer os.RemoveAll(dir)
	expr := filepath.Join(dir, "system.nix")
	if err := os.WriteFile(expr, systemNix, 0o644); err != nil {
		return System{}, err
	}
	args := append([]string(nil), opts.BuildArgs...)
	if opts.OutLink != "" {
		args = append(args, "--out-link", opts.OutLink)
	} else {
		args = append(args, "--no-out-link")
	}
	args = append(args, expr,
		"--argstr", "busybox", busybox,
		"--argstr", "vmlinuz", kernel,
		"--argstr", "marker", opts.Marker,
		"--argstr", "kernelParams", opts.KernelParams)
	cmd := exec.CommandContext(ctx, nixBuild, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return System{}, fmt.Errorf("nixtest: nix-build: %w\n%s", err, tail(stderr.String(), 30))
	}
	top := strings.TrimSpace(string(out))

	store, err := nixstore.New(nixstore.Options{Backend: nixstore.BackendCLI, NixStore: opts.NixStore})
	if err != nil {
		return System{}, fmt.Errorf("nixtest: %w", err)
	}
	tl, err := store.TopLevel(top)
	if err != nil {
		return System{}, fmt.Errorf("nixtest: built system is not usable: %w", err)
	}
	closure, err := store.Closure(ctx, top)
	if err != nil {
		return System{}, fmt.Errorf("nixtest: %w", err)
	}
	sys := System{
		TopLevel:     top,
		Kernel:       filepath.Dir(tl.Kernel),
		Closure:      closure,
		ClosureSize:  len(closure),
		KernelParams: tl.KernelParams,
	}
	for _, p := range closure {
		if strings.HasSuffix(p, "-busybox-static") {
			sys.Busybox = p
		}
	}
	if sys.Busybox == "" {
		return System{}, fmt.Errorf("nixtest: no busybox store path in the closure %v", closure)
	}
	return sys, nil
}

func checkMarker(m string) error {
	if len(m) > 64 {
		return fmt.Errorf("nixtest: marker %q is longer than 64 bytes", m)
	}
	for _, c := range m {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("nixtest: marker %q: only letters, digits, '.', '_' and '-' are allowed", m)
		}
	}
	return nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// BootReport is what the test init printed.
type BootReport struct {
	Marker string
	// Paths is the number of store paths in the registration, -1 if there was none.
	Paths   int
	Cmdline string
}

// ParseBootReport finds the test init's report in line (which may carry a console
// prefix such as a timestamp). ok is false if line holds no well-formed report.
func ParseBootReport(line string) (r BootReport, ok bool) {
	i := strings.Index(line, BootMarker+" ")
	if i < 0 {
		return BootReport{}, false
	}
	rest := strings.TrimRight(line[i+len(BootMarker)+1:], "\r\n")
	marker, rest, ok1 := strings.Cut(rest, " ")
	paths, cmdline, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 {
		return BootReport{}, false
	}
	var found bool
	if r.Marker, found = strings.CutPrefix(marker, "marker="); !found {
		return BootReport{}, false
	}
	if r.Cmdline, found = strings.CutPrefix(cmdline, "cmdline="); !found {
		return BootReport{}, false
	}
	n, found := strings.CutPrefix(paths, "paths=")
	if !found {
		return BootReport{}, false
	}
	if n == "none" {
		r.Paths = -1
	} else if v, err := strconv.Atoi(n); err == nil && v >= 0 {
		r.Paths = v
	} else {
		return BootReport{}, false
	}
	return r, true
}
