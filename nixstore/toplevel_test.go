package nixstore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTopLevel(t *testing.T) {
	f := newFakeStore(t, true, Options{})
	linux := f.path("linux-6.1")
	f.write(linux+"/bzImage", "kernel image", 0o444)
	initrd := f.path("initrd-linux-6.1")
	f.write(initrd+"/initrd", "initrd image", 0o444)
	outside := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(outside, []byte("host kernel"), 0o644); err != nil {
		t.Fatal(err)
	}

	// system builds a top level; mutate adjusts it before the check.
	system := func(name string, mutate func(p string)) string {
		p := f.path(name)
		f.symlink(linux+"/bzImage", p+"/kernel")
		f.symlink(initrd+"/initrd", p+"/initrd")
		f.write(p+"/init", "#!/bin/sh\n", 0o555)
		f.write(p+"/kernel-params", "  loglevel=4 net.ifnames=0\n", 0o444)
		if mutate != nil {
			mutate(p)
		}
		return p
	}
	rm := func(p string) {
		if err := os.Remove(f.fs(p)); err != nil {
			t.Fatal(err)
		}
	}

	good := system("nixos-system-m1", nil)
	tl, err := f.s.TopLevel(filepath.Base(good))
	if err != nil {
		t.Fatal(err)
	}
	want := TopLevel{Path: good, Kernel: linux + "/bzImage", Init: good + "/init", KernelParams: "loglevel=4 net.ifnames=0", Initrd: initrd + "/initrd"}
	if tl != want {
		t.Errorf("TopLevel =\n%+v\nwant\n%+v", tl, want)
	}
	if b, err := os.ReadFile(f.s.FSPath(tl.Kernel)); err != nil || string(b) != "kernel image" {
		t.Errorf("FSPath(Kernel) reads %q, %v", b, err)
	}

	noParams := system("no-params", func(p string) { rm(p + "/kernel-params"); rm(p + "/initrd") })
	if tl, err := f.s.TopLevel(noParams); err != nil || tl.KernelParams != "" || tl.Initrd != "" {
		t.Errorf("system without kernel-params and initrd: %+v, %v", tl, err)
	}
	multiline := system("multiline-params", func(p string) {
		rm(p + "/kernel-params")
		f.write(p+"/kernel-params", "a=1\nb=2\r\n", 0o444)
	})
	if tl, err := f.s.TopLevel(multiline); err != nil || tl.KernelParams != "a=1 b=2" {
		t.Errorf("multi-line kernel-params: %q, %v", tl.KernelParams, err)
	}

	bad := []struct {
		name   string
		path   string
		kinds  []error
		reason string
	}{
		{"no kernel", system("no-kernel", func(p string) { rm(p + "/kernel") }), []error{ErrNotSystem, ErrInvalidPath}, "has no kernel"},
		{"no init", system("no-init", func(p string) { rm(p + "/init") }), []error{ErrNotSystem, ErrInvalidPath}, "has no init"},
		{"init not executable", system("init-noexec", func(p string) { rm(p + "/init"); f.write(p+"/init", "x", 0o444) }), []error{ErrNotSystem}, "not executable"},
		{"kernel outside the store", system("kernel-escape", func(p string) { rm(p + "/kernel"); f.symlink(outside, p+"/kernel") }), []error{ErrInvalidPath}, "outside"},
		{"kernel via ..", system("kernel-dotdot", func(p string) { rm(p + "/kernel"); f.symlink("../../../etc/passwd", p+"/kernel") }), []error{ErrInvalidPath}, ".."},
		{"kernel dangling", system("kernel-dangling", func(p string) { rm(p + "/kernel"); f.symlink(f.path("gone")+"/bzImage", p+"/kernel") }), []error{ErrNotSystem}, "broken"},
		{"kernel is a directory", system("kernel-dir", func(p string) { rm(p + "/kernel"); f.symlink(linux, p+"/kernel") }), []error{ErrNotSystem}, "not a regular file"},
		{"params outside the store", system("params-escape", func(p string) { rm(p + "/kernel-params"); f.symlink(outside, p+"/kernel-params") }), []error{ErrInvalidPath}, "outside"},
		{"not a directory", func() string { p := f.path("a-file"); f.write(p, "x", 0o444); return p }(), []error{ErrNotSystem}, "not a directory"},
		{"missing", f.path("missing"), []error{ErrNotFound}, "does not exist"},
		{"bad name", "../../etc", []error{ErrInvalidPath}, ""},
	}
	for _, tc := range bad {
		_, err := f.s.TopLevel(tc.path)
		if err == nil {
			t.Errorf("%s: TopLevel accepted %s", tc.name, tc.path)
			continue
		}
		for _, k := range tc.kinds {
			if !errors.Is(err, k) {
				t.Errorf("%s: err %q does not match %v", tc.name, err, k)
			}
		}
		if !strings.Contains(err.Error(), tc.reason) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: err %q: want one line mentioning %q", tc.name, err, tc.reason)
		}
	}
}
