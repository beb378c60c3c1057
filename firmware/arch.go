// Package firmware provides the network boot programs that bootserve hands to
// PXE clients: which iPXE build fits which client architecture, and where its
// bytes come from (embedded at build time, the host's Debian ipxe package, or a
// path given in the config).
package firmware

import (
	"fmt"
	"strings"
)

// Arch is a client's processor and firmware family, as far as the choice of a
// boot program goes. It is coarser than DHCP option 93: x64 UEFI clients that
// report 7 or 9, and the HTTP Boot variants of an architecture, all share one
// Arch.
type Arch uint8

// The architectures bootserve can hold a boot program for.
const (
	ArchUnknown Arch = iota
	BIOS             // x86 PC BIOS (option 93 = 0)
	EFIIA32          // 32-bit x86 UEFI
	EFIX64           // x86-64 UEFI
	EFIARM32         // 32-bit ARM UEFI
	EFIARM64         // 64-bit ARM UEFI
	EFIRISCV64       // 64-bit RISC-V UEFI
)

// Arches lists every known architecture, in a stable order.
func Arches() []Arch {
	return []Arch{BIOS, EFIIA32, EFIX64, EFIARM32, EFIARM64, EFIRISCV64}
}

// String returns the name used in URLs, logs and the config ("efi-x64").
func (a Arch) String() string {
	switch a {
	case BIOS:
		return "bios"
	case EFIIA32:
		return "efi-ia32"
	case EFIX64:
		return "efi-x64"
	case EFIARM32:
		return "efi-arm32"
	case EFIARM64:
		return "efi-arm64"
	case EFIRISCV64:
		return "efi-riscv64"
	}
	return "unknown"
}

// ConfigKey is the config key that sets this architecture's boot program
// ("firmware.efi_x64"), named in errors so the fix is obvious.
func (a Arch) ConfigKey() string {
	return "firmware." + strings.ReplaceAll(a.String(), "-", "_")
}

// IPXEPlatform is iPXE's ${platform} for the architecture ("pcbios" or "efi").
func (a Arch) IPXEPlatform() string {
	if a == BIOS {
		return "pcbios"
	}
	return "efi"
}

// MarshalText implements encoding.TextMarshaler.
func (a Arch) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler, so configs can say
// arch = "efi-x64".
func (a *Arch) UnmarshalText(b []byte) error {
	v, err := ParseArch(string(b))
	if err != nil {
		return err
	}
	*a = v
	return nil
}

// ParseArch parses an architecture name as written by String. A few common
// spellings are accepted too (x86_64-efi, uefi, arm64...).
func ParseArch(s string) (Arch, error) {
	k := strings.ToLower(strings.TrimSpace(s))
	k = strings.ReplaceAll(k, "_", "-")
	for _, a := range Arches() {
		if k == a.String() {
			return a, nil
		}
	}
	switch k {
	case "pcbios", "x86-bios", "legacy":
		return BIOS, nil
	case "efi", "uefi", "x86-64-efi", "efi-x86-64", "efi64", "x64":
		return EFIX64, nil
	case "i386-efi", "efi-i386", "efi32", "ia32":
		return EFIIA32, nil
	case "arm64-efi", "efi-aarch64", "aarch64", "arm64":
		return EFIARM64, nil
	case "arm32-efi", "arm-efi", "efi-arm":
		return EFIARM32, nil
	case "riscv64-efi", "riscv64":
		return EFIRISCV64, nil
	}
	var names []string
	for _, a := range Arches() {
		names = append(names, a.String())
	}
	return ArchUnknown, fmt.Errorf("unknown architecture %q (known: %s)", s, strings.Join(names, ", "))
}
