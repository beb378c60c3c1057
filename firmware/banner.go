package firmware

import (
	"bytes"
	"debug/pe"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// iPXE waits BANNER_TIMEOUT (2 s in Debian's builds) at "Press Ctrl-B for
// the iPXE command line..." before it does anything on the network. That is
// about a tenth of a UEFI network boot under emulation, and pixiecore's own
// builds have no such wait, so bootserve removes it from the EFI builds it
// ships (firmware.ipxe_banner sets it back). The builds are unsigned, so
// changing bytes costs nothing under Secure Boot, which never runs them.

// bannerText is the prompt shell_banner() shows.
var bannerText = []byte("Press Ctrl-B for the iPXE command line...\x00")

// errNoBanner says the banner call was not where it is in Debian's builds.
var errNoBanner = errors.New("iPXE banner call not found (not a Debian x86-64 EFI build of iPXE?)")

// iPXE's EFI builds count time in ticks of 1/1024 s (TICKS_PER_SEC); the
// banner's timeout is an immediate operand in those ticks.
const ipxeTicksPerSec = 1024

// patchBanner returns a copy of an x86-64 EFI iPXE image whose banner wait
// is d (0: no banner, no wait). It finds the call
//
//	mov  $ticks, %esi
//	lea  "Press Ctrl-B...", %rdi
//	call prompt
//
// by the string's address, so it touches nothing else; any other layout is
// errNoBanner and the image is served as it is.
func patchBanner(img []byte, d time.Duration) ([]byte, error) {
	f, err := pe.NewFile(bytes.NewReader(img))
	if err != nil {
		return nil, fmt.Errorf("not a PE image: %w", err)
	}
	defer f.Close()
	if f.Machine != pe.IMAGE_FILE_MACHINE_AMD64 {
		return nil, errNoBanner
	}
	// The string's virtual address, from whichever section holds it.
	var strVA uint32
	for _, s := range f.Sections {
		lo, hi := s.Offset, s.Offset+min(s.Size, s.VirtualSize)
		if hi > uint32(len(img)) || lo >= hi {
			continue
		}
		if i := bytes.Index(img[lo:hi], bannerText); i >= 0 {
			strVA = s.VirtualAddress + uint32(i)
			break
		}
	}
	if strVA == 0 {
		return nil, errNoBanner
	}
	text := f.Section(".text")
	if text == nil || text.Offset+text.Size > uint32(len(img)) {
		return nil, errNoBanner
	}
	code := img[text.Offset : text.Offset+text.Size]
	at := -1
	// be imm32 | 48 8d 3d rel32 | e8 rel32: 5 + 7 + 5 bytes.
	for i := 0; i+17 <= len(code); i++ {
		if code[i] != 0xbe || code[i+5] != 0x48 || code[i+6] != 0x8d || code[i+7] != 0x3d || code[i+12] != 0xe8 {
			continue
		}
		next := text.VirtualAddress + uint32(i+12) // address after the lea
		if next+binary.LittleEndian.Uint32(code[i+8:]) == strVA {
			if at >= 0 {
				return nil, errNoBanner // two candidates: not the layout we know
			}
			at = i
		}
	}
	if at < 0 {
		return nil, errNoBanner
	}
	out := bytes.Clone(img)
	p := int(text.Offset) + at
	if d <= 0 {
		// getkey() with a timeout of 0 waits forever, so the call itself
		// goes: "mov $1, %eax" is prompt's "no key pressed" answer.
		copy(out[p+12:p+17], []byte{0xb8, 1, 0, 0, 0})
		return out, nil
	}
	ticks := d.Milliseconds() * ipxeTicksPerSec / 1000
	if ticks < 1 || ticks > 1<<31-1 {
		return nil, fmt.Errorf("banner timeout %s out of range", d)
	}
	binary.LittleEndian.PutUint32(out[p+1:], uint32(ticks))
	return out, nil
}
