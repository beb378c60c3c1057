package firmware

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// embedded reports whether `make firmware` put this builtin into the build;
// then the embedded copy wins over the search dir.
func embedded(name string) bool {
	b, err := blobs.ReadFile("blobs/" + name)
	return err == nil && len(b) > 0
}

func TestLoadDefaultsFromSearchDir(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, UndionlyKPXE, "bios-bytes")
	writeFile(t, dir, SNPOnlyEFI, "snp-bytes")
	s, err := Load(Config{SearchDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.For(BIOS)
	if err != nil {
		t.Fatal(err)
	}
	if b.Name != "bios/undionly.kpxe" {
		t.Errorf("BIOS name = %q", b.Name)
	}
	if !embedded(UndionlyKPXE) && string(b.Data) != "bios-bytes" {
		t.Errorf("BIOS data = %q", b.Data)
	}
	x, err := s.For(EFIX64)
	if err != nil {
		t.Fatal(err)
	}
	if x.Name != "efi-x64/snponly.efi" {
		t.Errorf("x64 name = %q, want the snponly default", x.Name)
	}
	if got, ok := s.Lookup("/efi-x64/snponly.efi"); !ok || got != x {
		t.Errorf("Lookup with leading slash = %v %v", got, ok)
	}
	if _, ok := s.Lookup("efi-x64/ipxe.efi"); ok {
		t.Error("ipxe.efi served though not selected")
	}
}

func TestLoadSelectsIPXEEFIAndPaths(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, IPXEEFI, "full-ipxe")
	arm := writeFile(t, t.TempDir(), "ipxe-arm64.efi", "arm-bytes")
	s, err := Load(Config{SearchDir: dir, EFIX64: "ipxe.efi", EFIARM64: arm})
	if err != nil {
		t.Fatal(err)
	}
	x, err := s.For(EFIX64)
	if err != nil || x.Name != "efi-x64/ipxe.efi" {
		t.Fatalf("x64 = %v, %v", x, err)
	}
	a, err := s.For(EFIARM64)
	if err != nil || a.Name != "efi-arm64/ipxe-arm64.efi" || string(a.Data) != "arm-bytes" || a.Origin != arm {
		t.Fatalf("arm64 = %+v, %v", a, err)
	}
}

func TestLoadErrorsNameTheKey(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		cfg  Config
		want []string
	}{
		{Config{SearchDir: dir, EFIARM64: "/nonexistent/ipxe.efi"}, []string{"firmware.efi_arm64", "/nonexistent/ipxe.efi", "no such file"}},
		{Config{SearchDir: dir, BIOS: SNPOnlyEFI}, []string{"firmware.bios", "efi-x64, not bios"}},
		{Config{SearchDir: dir, EFIX64: "my.efi"}, []string{"firmware.efi_x64", "not a builtin"}},
		{Config{SearchDir: dir, EFIIA32: writeFile(t, dir, "empty.efi", "")}, []string{"firmware.efi_ia32", "is empty"}},
	}
	for _, c := range cases {
		_, err := Load(c.cfg)
		if err == nil {
			t.Errorf("Load(%+v) succeeded", c.cfg)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Load(%+v) error %q lacks %q", c.cfg, err, w)
			}
		}
	}
}

func TestMissingArchExplains(t *testing.T) {
	s, err := Load(Config{SearchDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.For(EFIARM64)
	if !errors.Is(err, ErrNoBinary) || !strings.Contains(err.Error(), "efi-arm64") || !strings.Contains(err.Error(), "firmware.efi_arm64") {
		t.Errorf("arm64 error = %v", err)
	}
	if !embedded(SNPOnlyEFI) {
		_, err = s.For(EFIX64)
		if !errors.Is(err, ErrNoBinary) || !strings.Contains(err.Error(), "make firmware") {
			t.Errorf("x64 without builtin: %v", err)
		}
	}
}

func TestParseArch(t *testing.T) {
	for _, a := range Arches() {
		got, err := ParseArch(a.String())
		if err != nil || got != a {
			t.Errorf("ParseArch(%q) = %v, %v", a.String(), got, err)
		}
	}
	for in, want := range map[string]Arch{"EFI_X64": EFIX64, "uefi": EFIX64, "pcbios": BIOS, "aarch64": EFIARM64} {
		if got, err := ParseArch(in); err != nil || got != want {
			t.Errorf("ParseArch(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseArch("ppc64"); err == nil || !strings.Contains(err.Error(), "efi-x64") {
		t.Errorf("ParseArch(ppc64) error = %v", err)
	}
	if BIOS.ConfigKey() != "firmware.bios" || EFIX64.ConfigKey() != "firmware.efi_x64" {
		t.Error("ConfigKey")
	}
}
