package firmware

import (
	"bytes"
	"debug/pe"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// blobs holds the iPXE builds that `make firmware` extracted from Debian's
// ipxe package. A fresh clone has only the README there, so `go build` works
// without that step and the host's /usr/lib/ipxe is the fallback.
//
//go:embed blobs
var blobs embed.FS

// DefaultSearchDir is where Debian's ipxe package installs its builds.
const DefaultSearchDir = "/usr/lib/ipxe"

// Builtin boot program names. Values in Config may name one of these instead
// of a path.
const (
	UndionlyKPXE = "undionly.kpxe" // BIOS: chainloads over the PXE ROM's UNDI driver
	SNPOnlyEFI   = "snponly.efi"   // x64 UEFI: uses the firmware's own NIC driver; starts ~4 s faster than ipxe.efi under OVMF
	IPXEEFI      = "ipxe.efi"      // x64 UEFI: iPXE with its own NIC drivers
)

// defaults names the builtin program for the architectures that have one.
// Debian ships no ia32, arm or riscv build: those need a path in the config.
func defaultName(a Arch) string {
	switch a {
	case BIOS:
		return UndionlyKPXE
	case EFIX64:
		return SNPOnlyEFI
	}
	return ""
}

func builtinArch(name string) (Arch, bool) {
	switch name {
	case UndionlyKPXE:
		return BIOS, true
	case SNPOnlyEFI, IPXEEFI:
		return EFIX64, true
	}
	return ArchUnknown, false
}

// Config chooses the boot program per architecture. Each value is empty (the
// default, where there is one), a builtin name (snponly.efi, ipxe.efi,
// undionly.kpxe) or a path to a file.
type Config struct {
	BIOS       string `toml:"bios"`
	EFIIA32    string `toml:"efi_ia32"`
	EFIX64     string `toml:"efi_x64"`
	EFIARM32   string `toml:"efi_arm32"`
	EFIARM64   string `toml:"efi_arm64"`
	EFIRISCV64 string `toml:"efi_riscv64"`
	// Shim and GRUB are the Secure Boot chain for x64 UEFI: a
	// Microsoft-signed shim and a GRUB network image signed by the vendor
	// whose key shim carries. Empty: the builds `make firmware` embedded
	// (Debian's shim-signed and grub-efi-amd64-signed), else those
	// packages' files on this host.
	Shim string `toml:"shim"`
	GRUB string `toml:"grub"`
	// Memdisk is the path of syslinux's memdisk, which lets BIOS machines
	// boot ISO images from RAM (Debian: syslinux-common's
	// /usr/lib/syslinux/memdisk). Empty: ISOs boot with iPXE's sanboot.
	Memdisk string `toml:"memdisk"`
	// IPXEBanner is how long the x86-64 EFI iPXE builds shipped with
	// bootserve wait at "Press Ctrl-B for the iPXE command line...". Zero
	// (the default) removes the wait, as pixiecore's builds do; Debian's
	// builds wait "2s". Files named by path are served unchanged.
	IPXEBanner time.Duration `toml:"ipxe_banner"`

	// SearchDir is where builtins are looked for when they were not embedded
	// at build time; empty means DefaultSearchDir.
	SearchDir string `toml:"-"`
}

func (c Config) value(a Arch) string {
	switch a {
	case BIOS:
		return c.BIOS
	case EFIIA32:
		return c.EFIIA32
	case EFIX64:
		return c.EFIX64
	case EFIARM32:
		return c.EFIARM32
	case EFIARM64:
		return c.EFIARM64
	case EFIRISCV64:
		return c.EFIRISCV64
	}
	return ""
}

// Binary is one boot program, loaded in memory (they are all under 1 MB).
type Binary struct {
	Arch Arch
	// Name is the file name clients fetch over TFTP or HTTP: "<arch>/<base>",
	// so two architectures never collide on a name.
	Name string
	// Origin says where the bytes came from, for logs and the status page.
	Origin string
	Data   []byte
	// Signed is true for an EFI program with an Authenticode signature:
	// only those run on firmware with Secure Boot on.
	Signed bool
}

func peSigned(data []byte) bool {
	signed, err := SignedPE(bytes.NewReader(data))
	return err == nil && signed
}

// SignedPE reports whether r holds a PE/COFF image (an EFI program, a
// bzImage with its EFI stub) carrying an Authenticode signature. Secure
// Boot refuses an image without one; whether the signature is one the
// firmware trusts is for the firmware to say.
func SignedPE(r io.ReaderAt) (bool, error) {
	f, err := pe.NewFile(r)
	if err != nil {
		return false, fmt.Errorf("not a PE/EFI image: %w", err)
	}
	defer f.Close()
	var dirs []pe.DataDirectory
	switch h := f.OptionalHeader.(type) {
	case *pe.OptionalHeader64:
		dirs = h.DataDirectory[:min(h.NumberOfRvaAndSizes, uint32(len(h.DataDirectory)))]
	case *pe.OptionalHeader32:
		dirs = h.DataDirectory[:min(h.NumberOfRvaAndSizes, uint32(len(h.DataDirectory)))]
	default:
		return false, errors.New("not a PE/EFI image: no optional header")
	}
	return len(dirs) > pe.IMAGE_DIRECTORY_ENTRY_SECURITY && dirs[pe.IMAGE_DIRECTORY_ENTRY_SECURITY].Size > 0, nil
}

// Reader returns a fresh reader over the binary.
func (b *Binary) Reader() *bytes.Reader { return bytes.NewReader(b.Data) }

// ErrNoBinary is returned (wrapped) for an architecture with no boot program.
var ErrNoBinary = errors.New("no boot program")

// Set is the boot programs of every configured architecture. It is immutable
// once loaded, so servers share it without locks; a config reload builds a new
// one.
type Set struct {
	byArch    map[Arch]*Binary
	byName    map[string]*Binary
	missing   map[Arch]error
	memdisk   *Binary
	shim      *Binary
	grub      *Binary
	sbMissing error
}

// Load resolves the boot program of every architecture. A path or builtin
// named in the config that cannot be read is an error; an architecture left
// at its default whose builtin is absent is not (its clients get no answer,
// and For says why).
func Load(cfg Config) (*Set, error) {
	s := &Set{byArch: map[Arch]*Binary{}, byName: map[string]*Binary{}, missing: map[Arch]error{}}
	dir := cfg.SearchDir
	if dir == "" {
		dir = DefaultSearchDir
	}
	for _, a := range Arches() {
		v := cfg.value(a)
		explicit := v != ""
		if !explicit {
			v = defaultName(a)
		}
		if v == "" {
			s.missing[a] = fmt.Errorf("%w for %s: Debian ships none; set %s to the path of an iPXE build for it", ErrNoBinary, a, a.ConfigKey())
			continue
		}
		b, err := load(a, v, dir)
		if err != nil {
			if explicit {
				return nil, fmt.Errorf("%s = %q: %w", a.ConfigKey(), v, err)
			}
			s.missing[a] = fmt.Errorf("%w for %s: %v; run `make firmware`, install Debian's ipxe package, or set %s to a path", ErrNoBinary, a, err, a.ConfigKey())
			continue
		}
		if _, builtin := builtinArch(v); builtin && a == EFIX64 {
			if data, err := patchBanner(b.Data, cfg.IPXEBanner); err == nil {
				b.Data = data
				b.Origin += fmt.Sprintf(", banner wait %s", cfg.IPXEBanner)
			} else if cfg.IPXEBanner > 0 {
				return nil, fmt.Errorf("firmware.ipxe_banner = %q: %w", cfg.IPXEBanner, err)
			}
		}
		b.Signed = peSigned(b.Data)
		s.byArch[a] = b
		s.byName[b.Name] = b
	}
	if err := s.loadSecureBoot(cfg); err != nil {
		return nil, err
	}
	if cfg.Memdisk != "" {
		data, err := os.ReadFile(cfg.Memdisk)
		if err != nil {
			return nil, fmt.Errorf("firmware.memdisk = %q: %w", cfg.Memdisk, err)
		}
		s.memdisk = &Binary{Arch: BIOS, Name: "bios/memdisk", Origin: cfg.Memdisk, Data: data}
		s.byName[s.memdisk.Name] = s.memdisk
	}
	return s, nil
}

// Memdisk returns syslinux's memdisk when configured, else nil.
func (s *Set) Memdisk() *Binary { return s.memdisk }

func load(a Arch, v, dir string) (*Binary, error) {
	if ba, ok := builtinArch(v); ok {
		if ba != a {
			return nil, fmt.Errorf("%s is a build for %s, not %s", v, ba, a)
		}
		if data, err := fs.ReadFile(blobs, "blobs/"+v); err == nil && len(data) > 0 {
			return &Binary{Arch: a, Name: a.String() + "/" + v, Origin: "embedded", Data: data}, nil
		}
		p := filepath.Join(dir, v)
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("builtin %s is not embedded in this build and %w", v, err)
		}
		return &Binary{Arch: a, Name: a.String() + "/" + v, Origin: p, Data: data}, nil
	}
	if !strings.ContainsRune(v, '/') {
		return nil, fmt.Errorf("not a builtin (%s, %s, %s) and not a path (a path contains a /)", UndionlyKPXE, SNPOnlyEFI, IPXEEFI)
	}
	data, err := os.ReadFile(v)
	if err != nil {
		return nil, err
	}
	if len(data) == 0 {
		return nil, fmt.Errorf("%s is empty", v)
	}
	return &Binary{Arch: a, Name: a.String() + "/" + path.Base(filepath.ToSlash(v)), Origin: v, Data: data}, nil
}

// For returns the boot program for an architecture, or an error wrapping
// ErrNoBinary that names the architecture and the config key to set.
func (s *Set) For(a Arch) (*Binary, error) {
	if b, ok := s.byArch[a]; ok {
		return b, nil
	}
	if err, ok := s.missing[a]; ok {
		return nil, err
	}
	return nil, fmt.Errorf("%w for architecture %s", ErrNoBinary, a)
}

// Lookup finds a binary by the name clients fetch it under. A leading slash
// is ignored, as firmwares vary in sending one.
func (s *Set) Lookup(name string) (*Binary, bool) {
	b, ok := s.byName[strings.TrimPrefix(name, "/")]
	return b, ok
}

// All returns the loaded binaries sorted by name.
func (s *Set) All() []*Binary {
	out := make([]*Binary, 0, len(s.byName))
	for _, b := range s.byName {
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// SecureBootDir is the TFTP directory of the Secure Boot chain: shim loads
// grubx64.efi from the directory its own file name gave.
const SecureBootDir = "efi-x64-sb"

// Host paths of Debian's signed builds, when the packages are installed.
const (
	debianShim = "/usr/lib/shim/shimx64.efi.signed"
	debianGRUB = "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"
)

func (s *Set) loadSecureBoot(cfg Config) error {
	load := func(key, path, builtin, host, name string) (*Binary, error) {
		if path != "" {
			data, err := os.ReadFile(path)
			if err != nil {
				return nil, fmt.Errorf("firmware.%s = %q: %w", key, path, err)
			}
			return &Binary{Arch: EFIX64, Name: SecureBootDir + "/" + name, Origin: path, Data: data}, nil
		}
		if data, err := fs.ReadFile(blobs, "blobs/"+builtin); err == nil && len(data) > 0 {
			return &Binary{Arch: EFIX64, Name: SecureBootDir + "/" + name, Origin: "embedded", Data: data}, nil
		}
		data, err := os.ReadFile(host)
		if err != nil {
			return nil, nil // optional: only Secure Boot targets need it
		}
		return &Binary{Arch: EFIX64, Name: SecureBootDir + "/" + name, Origin: host, Data: data}, nil
	}
	var err error
	if s.shim, err = load("shim", cfg.Shim, "shimx64.efi", debianShim, "shimx64.efi"); err != nil {
		return err
	}
	if s.grub, err = load("grub", cfg.GRUB, "grubx64.efi", debianGRUB, "grubx64.efi"); err != nil {
		return err
	}
	if s.shim == nil || s.grub == nil {
		s.shim, s.grub = nil, nil
		s.sbMissing = fmt.Errorf("%w for Secure Boot: no signed shim and GRUB: run `make firmware`, install Debian's shim-signed and grub-efi-amd64-signed, or set firmware.shim and firmware.grub", ErrNoBinary)
		return nil
	}
	s.shim.Signed, s.grub.Signed = peSigned(s.shim.Data), peSigned(s.grub.Data)
	s.byName[s.shim.Name] = s.shim
	s.byName[s.grub.Name] = s.grub
	return nil
}

// SecureBoot returns the boot program of the Secure Boot chain (shim; it
// fetches GRUB from the same directory), or an error saying how to get it.
func (s *Set) SecureBoot() (*Binary, error) {
	if s.shim == nil {
		return nil, s.sbMissing
	}
	return s.shim, nil
}
