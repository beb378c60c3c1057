package firmware

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// debianEFIBuilds returns Debian's x86-64 EFI iPXE builds, embedded or
// installed; the test needs the real bytes, so it skips without them.
func debianEFIBuilds(t *testing.T) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, n := range []string{SNPOnlyEFI, IPXEEFI} {
		if b, err := blobs.ReadFile("blobs/" + n); err == nil && len(b) > 0 {
			out[n] = b
		} else if b, err := os.ReadFile(filepath.Join(DefaultSearchDir, n)); err == nil {
			out[n] = b
		}
	}
	if len(out) == 0 {
		t.Skip("no Debian EFI iPXE build: run `make firmware` or install the ipxe package")
	}
	return out
}

func TestPatchBanner(t *testing.T) {
	for name, img := range debianEFIBuilds(t) {
		t.Run(name, func(t *testing.T) {
			// Debian builds wait 2 s: asking for 2 s must change nothing,
			// which shows the patch found the operand it meant to.
			same, err := patchBanner(img, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(same, img) {
				t.Error("patching to Debian's own 2 s changed the image")
			}
			off, err := patchBanner(img, 0)
			if err != nil {
				t.Fatal(err)
			}
			if d := diffBytes(img, off); d < 1 || d > 5 {
				t.Errorf("removing the banner changed %d bytes, want 1..5 (one call)", d)
			}
			// The call to prompt() became "mov $1, %eax", then shell_banner's
			// own "pop; test %eax" follows.
			if !bytes.Contains(off, []byte{0xb8, 1, 0, 0, 0, 0x5a, 0x85, 0xc0}) {
				t.Error("the prompt call was not replaced")
			}
			five, err := patchBanner(img, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if d := diffBytes(img, five); d < 1 || d > 4 {
				t.Errorf("a 5 s banner changed %d bytes, want 1..4 (one operand)", d)
			}
			if !bytes.Contains(five, []byte{0xbe, 0x00, 0x14, 0x00, 0x00}) { // 5*1024 ticks
				t.Error("no mov $5120 to esi in the 5 s image")
			}
			if peSigned(img) != peSigned(off) {
				t.Error("patching changed the signature state")
			}
		})
	}
}

func TestPatchBannerRefusesOtherImages(t *testing.T) {
	if _, err := patchBanner([]byte("not a PE file"), 0); err == nil {
		t.Error("patched a non-PE file")
	}
	imgs := debianEFIBuilds(t)
	img := imgs[SNPOnlyEFI]
	if img == nil {
		for _, b := range imgs {
			img = b
		}
	}
	// Without its prompt text the call cannot be identified.
	i := bytes.Index(img, bannerText)
	broken := bytes.Clone(img)
	broken[i] = 'X'
	if _, err := patchBanner(broken, 0); !errors.Is(err, errNoBanner) {
		t.Errorf("err = %v, want errNoBanner", err)
	}
}

func TestLoadRemovesBannerOfShippedBuildOnly(t *testing.T) {
	imgs := debianEFIBuilds(t)
	img, ok := imgs[SNPOnlyEFI]
	if !ok {
		t.Skip("no snponly.efi")
	}
	s, err := Load(Config{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.For(EFIX64)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(b.Data, img) {
		t.Error("the shipped snponly.efi still has its banner wait")
	}
	// A build named by path is the user's: served byte for byte.
	p := filepath.Join(t.TempDir(), "my-ipxe.efi")
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err = Load(Config{EFIX64: p})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := s.For(EFIX64); !bytes.Equal(b.Data, img) {
		t.Error("a user's build was changed")
	}
	s, err = Load(Config{IPXEBanner: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := s.For(EFIX64); !bytes.Equal(b.Data, img) {
		t.Error("ipxe_banner = 2s should serve Debian's build unchanged")
	}
}

func diffBytes(a, b []byte) int {
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}
