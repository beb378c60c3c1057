package nixstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// scanFixture is a fake store with a small reference graph:
//
//	top  -> mid (file content), top -> top (itself)
//	mid  -> leaf (symlink target), mid -> lib (a hash inside a longer word)
//	leaf -> (nothing); its tree is the one in testdata/small.nar
//	lib  -> mid (a cycle, allowed between store paths built together)
//	other: not referenced; unrelated: a hash of no store entry appears in top
type scanFixture struct {
	*fakeStore
	top, mid, leaf, lib, other string
}

func newScanFixture(t *testing.T, chroot bool) *scanFixture {
	f := &scanFixture{fakeStore: newFakeStore(t, chroot, Options{})}
	f.top, f.mid, f.leaf, f.lib, f.other = f.path("top"), f.path("mid"), f.path("leaf"), f.path("lib"), f.path("other")
	makeNARTree(t, f.fs(f.leaf))
	f.write(f.mid+"/bin/run", "#!/bin/sh\nexec "+f.leaf+"/a/x\n", 0o755)
	f.symlink(f.leaf+"/a/x", f.mid+"/x")
	f.write(f.mid+"/lib/note", "linked against lib"+fakeHash("lib")+"suffix", 0o644)
	f.write(f.lib+"/back", "see "+f.mid, 0o644)
	f.write(f.top+"/ref", f.mid+"\n", 0o644)
	f.write(f.top+"/self", f.top+"\n", 0o644)
	f.write(f.top+"/unrelated", "/nix/store/"+fakeHash("not-in-store")+"-x\n", 0o644)
	f.write(f.other+"/data", "unused", 0o644)
	// Nix's lock file for a path shares its hash; it must not be taken for the path.
	f.write(f.leaf+".lock", "", 0o600)
	// Not store paths at all: ignored.
	f.mkdir(f.dir + "/.links")
	f.write(f.dir+"/not-a-store-path", f.top, 0o644)
	return f
}

func TestScanClosure(t *testing.T) {
	for _, chroot := range []bool{false, true} {
		t.Run(fmt.Sprint("chroot=", chroot), func(t *testing.T) {
			f := newScanFixture(t, chroot)
			ctx := context.Background()
			tests := map[string][]string{
				f.top:  {f.top, f.mid, f.leaf, f.lib},
				f.mid:  {f.mid, f.leaf, f.lib},
				f.lib:  {f.lib, f.mid, f.leaf},
				f.leaf: {f.leaf},
			}
			for p, want := range tests {
				slices.Sort(want)
				got, err := f.s.Closure(ctx, filepath.Base(p))
				if err != nil {
					t.Fatalf("Closure(%s): %v", p, err)
				}
				if !slices.Equal(got, want) {
					t.Errorf("Closure(%s) =\n%v\nwant\n%v", p, got, want)
				}
			}
			if _, err := f.s.Closure(ctx, f.path("missing")); !errors.Is(err, ErrNotFound) {
				t.Errorf("Closure of a missing path: err = %v, want ErrNotFound", err)
			}
			if _, err := f.s.Closure(ctx, "../etc"); !errors.Is(err, ErrInvalidPath) {
				t.Errorf("Closure(../etc): err = %v, want ErrInvalidPath", err)
			}
		})
	}
}

func TestScanRegistration(t *testing.T) {
	f := newScanFixture(t, true)
	ctx := context.Background()
	closure, err := f.s.Closure(ctx, f.top)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := f.s.Registration(ctx, closure)
	if err != nil {
		t.Fatal(err)
	}
	infos, err := ParseRegistration(reg)
	if err != nil {
		t.Fatalf("our registration does not parse: %v\n%s", err, reg)
	}
	if got := string(FormatRegistration(infos)); got != string(reg) {
		t.Errorf("Format(Parse(reg)) != reg:\n%s\nvs\n%s", got, reg)
	}
	byPath := map[string]PathInfo{}
	for i, in := range infos {
		if in.Path != closure[i] {
			t.Errorf("record %d is %s, want %s (the order asked for)", i, in.Path, closure[i])
		}
		byPath[in.Path] = in
	}
	// leaf holds exactly the tree real Nix dumped into testdata/small.nar.
	golden, err := os.ReadFile("testdata/small.nar")
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(golden)
	if leaf := byPath[f.leaf]; leaf.NARHash != hex.EncodeToString(sum[:]) || leaf.NARSize != uint64(len(golden)) {
		t.Errorf("leaf: hash %s size %d, want %x %d (from nix-store --dump)", leaf.NARHash, leaf.NARSize, sum, len(golden))
	}
	wantRefs := map[string][]string{
		f.top:  {f.top, f.mid},
		f.mid:  {f.leaf, f.lib}, // mid names itself nowhere
		f.leaf: {},
		f.lib:  {f.mid},
	}
	for p, want := range wantRefs {
		slices.Sort(want)
		if got := byPath[p].References; !slices.Equal(got, want) {
			t.Errorf("references of %s = %v, want %v", p, got, want)
		}
		if byPath[p].Deriver != "" {
			t.Errorf("deriver of %s = %q, want none", p, byPath[p].Deriver)
		}
	}
	// Every record has exactly one 64-hex-digit line: how the test init counts paths.
	n := 0
	for _, l := range strings.Split(string(reg), "\n") {
		if isHexSHA256(l) {
			n++
		}
	}
	if n != len(closure) {
		t.Errorf("registration has %d hash lines for %d paths", n, len(closure))
	}
}

func TestScanDeriver(t *testing.T) {
	f := newFakeStore(t, false, Options{})
	out, dev := f.path("hello-2.12"), f.path("hello-2.12-dev")
	f.write(out+"/bin/hello", "hi", 0o755)
	f.write(dev+"/include/hello.h", "", 0o644)
	drv := f.dir + "/" + fakeHash("drv") + "-hello-2.12.drv"
	other := f.dir + "/" + fakeHash("drv2") + "-hello-2.12.drv" // same name, other outputs
	f.write(other, `Derive([("out","`+f.dir+`/`+fakeHash("x")+`-hello-2.12","","")],[],[],"x86_64-linux","/bin/sh",[],[])`, 0o444)
	f.write(drv, `Derive([("dev","`+dev+`","",""),("out","`+out+`","","")],[],[],"x86_64-linux","/bin/sh",["-c","echo \"quoted\\\\ \" "],[("name","hello-2.12")])`, 0o444)
	infos, err := f.s.PathInfos(context.Background(), []string{out, dev, drv})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{drv, drv, ""} {
		if infos[i].Deriver != want {
			t.Errorf("deriver of %s = %q, want %q", infos[i].Path, infos[i].Deriver, want)
		}
	}
}

func TestParseDrvOutputs(t *testing.T) {
	outs, err := parseDrvOutputs(`Derive([("a","/s/1-x","",""),("b","/s/2-x-b","sha256","abc")],[],[])`)
	if err != nil || !slices.Equal(outs, []string{"/s/1-x", "/s/2-x-b"}) {
		t.Errorf("parseDrvOutputs = %v, %v", outs, err)
	}
	for _, bad := range []string{"", "Derive(", `Derive([("a","/s/1-x",""`, `Derive([("a","/s/1-x\`, `DrvWithVersion("x",[])`} {
		if _, err := parseDrvOutputs(bad); err == nil {
			t.Errorf("parseDrvOutputs(%q) accepted", bad)
		}
	}
}

func TestClosureIsCached(t *testing.T) {
	f := newScanFixture(t, false)
	ctx := context.Background()
	first, err := f.s.Closure(ctx, f.top)
	if err != nil {
		t.Fatal(err)
	}
	first[0] = "mutated by the caller"
	// Store paths are immutable, so the cache may answer even after the files changed.
	if err := os.RemoveAll(f.fs(f.lib)); err != nil {
		t.Fatal(err)
	}
	second, err := f.s.Closure(ctx, f.top)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(second, f.lib) || slices.Contains(second, "mutated by the caller") {
		t.Errorf("second Closure = %v: not the cached, unmutated first answer", second)
	}
	// A store without the cache sees the change, so the answer above came from the cache.
	fresh, err := New(Options{Backend: BackendScan, StoreDir: f.dir})
	if err != nil {
		t.Fatal(err)
	}
	third, err := fresh.Closure(ctx, f.top)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(third, f.lib) {
		t.Errorf("uncached Closure still contains the deleted %s", f.lib)
	}
}

func TestClosureCancelled(t *testing.T) {
	f := newScanFixture(t, false)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := f.s.Closure(ctx, f.top); !errors.Is(err, context.Canceled) {
		t.Errorf("Closure with a cancelled context: err = %v", err)
	}
}
