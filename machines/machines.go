// Package machines decides what each machine boots: a machine's identity as
// seen on the network, the boot targets a machine can be given, and the
// Booter interface that maps one to the other (from the config file, or from
// a pixiecore-style API server).
package machines

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/bootserve/bootserve/firmware"
)

// Identity is what bootserve knows about a machine when it asks what to boot.
// Every field except MAC may be empty: a DHCP packet carries MAC, arch and
// often the UUID; an HTTP request carries what the iPXE script URL encoded.
type Identity struct {
	MAC  net.HardwareAddr
	UUID string // canonical lower-case 8-4-4-4-12 form; empty when unknown or all zeros
	Arch firmware.Arch
	IP   netip.Addr
	// Hostname is the host name the client sent (DHCP option 12), if any.
	Hostname string
	// Labels are free-form tags the machine carries: its DHCP user classes
	// other than "iPXE", "hostname=<name>" when it sent a host name, and
	// label= parameters of a script URL (for chains from other iPXE menus).
	Labels []string
}

// ErrNoTarget means the machine must not be booted: no rule matches it.
var ErrNoTarget = errors.New("no boot target")

// Booter answers "what does this machine boot?". Implementations must be safe
// for concurrent use. A machine that must be ignored gets an error wrapping
// ErrNoTarget.
type Booter interface {
	Target(ctx context.Context, id Identity) (*Target, error)
}

// Kind says which of Target's fields describe the boot.
type Kind int

// The kinds of boot target.
const (
	KindKernel           Kind = iota + 1 // Kernel + Initrds + Cmdline
	KindNix                              // a store path of a NixOS system
	KindNixProfile                       // a profile name, resolved at each boot
	KindNixConfiguration                 // a configuration name, built at each boot
	KindIPXEScript                       // an iPXE script, templated
	KindChain                            // chainload any URL
	KindISO                              // boot an ISO image over HTTP
	KindMenu                             // an iPXE menu of entries
	KindLocal                            // leave network boot, boot the next device
)

func (k Kind) String() string {
	switch k {
	case KindKernel:
		return "kernel"
	case KindNix:
		return "nix"
	case KindNixProfile:
		return "nix_profile"
	case KindNixConfiguration:
		return "nix_configuration"
	case KindIPXEScript:
		return "ipxe_script"
	case KindChain:
		return "chain"
	case KindISO:
		return "iso"
	case KindMenu:
		return "menu"
	case KindLocal:
		return "local"
	}
	return "none"
}

// Target is one way to boot a machine. Exactly the fields of its Kind are set.
type Target struct {
	Kind Kind
	// Name identifies the rule or menu entry the target came from, for logs
	// and the status page.
	Name string

	// KindKernel: local paths or http(s) URLs; Cmdline is a text/template.
	Kernel  string
	Initrds []string
	Cmdline string

	// KindNix, KindNixProfile, KindNixConfiguration.
	Nix string
	// KindIPXEScript: the script text (a text/template unless Verbatim).
	IPXEScript string
	// Verbatim hands IPXEScript to iPXE unchanged (pixiecore's API
	// promises that for its ipxe-script).
	Verbatim bool
	// KindChain and KindISO: a URL or a local path.
	URL string
	// KindMenu.
	Menu *Menu

	// Message is printed by iPXE before booting (pixiecore's "message").
	Message string
	// Hostname, if set, is {{.Hostname}} in templates, in place of the
	// name the machine sent.
	Hostname string
	// SecureBoot boots x64 UEFI machines through the signed chain (shim,
	// then GRUB, then the kernel over TFTP) instead of iPXE, so they boot
	// with UEFI Secure Boot left on. Kernel and menu targets only.
	SecureBoot bool
}

// Menu is an iPXE menu whose entries are targets.
type Menu struct {
	Title   string
	Entries []MenuEntry
	// Default is the index of the entry booted when the timeout expires.
	Default int
	// Timeout in seconds; 0 waits forever.
	TimeoutSeconds int
}

// MenuEntry is one line of a menu.
type MenuEntry struct {
	Label  string
	Target Target
}

// LocalFiles lists the local files the target serves (kernel, initrds,
// ISO, menu entries'), so a server can check it may read them.
func (t *Target) LocalFiles() []string {
	var out []string
	add := func(p string) {
		if p != "" && !strings.Contains(p, "://") {
			out = append(out, p)
		}
	}
	switch t.Kind {
	case KindKernel:
		add(t.Kernel)
		for _, p := range t.Initrds {
			add(p)
		}
	case KindISO:
		add(t.URL)
	case KindMenu:
		for _, e := range t.Menu.Entries {
			out = append(out, e.Target.LocalFiles()...)
		}
	}
	return out
}

// Static is a Booter that boots every machine into the same target, like
// `pixiecore boot`.
type Static struct {
	T Target
}

// LocalFiles lists the local files of the target.
func (s Static) LocalFiles() []string { return s.T.LocalFiles() }

// Target returns a copy of the static target.
func (s Static) Target(context.Context, Identity) (*Target, error) {
	return s.T.Clone(), nil
}

// Clone returns a deep copy, so a caller may change what it was given.
func (t *Target) Clone() *Target {
	c := *t
	c.Initrds = append([]string(nil), t.Initrds...)
	if t.Menu != nil {
		m := *t.Menu
		m.Entries = make([]MenuEntry, len(t.Menu.Entries))
		for i, e := range t.Menu.Entries {
			m.Entries[i] = MenuEntry{Label: e.Label, Target: *e.Target.Clone()}
		}
		c.Menu = &m
	}
	return &c
}

// ParseMAC accepts aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff, aabb.ccdd.eeff and
// upper case, and returns the address normalised by net.HardwareAddr.String.
func ParseMAC(s string) (net.HardwareAddr, error) {
	hw, err := net.ParseMAC(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("%q is not a MAC address (want aa:bb:cc:dd:ee:ff)", s)
	}
	return hw, nil
}

// ParseUUID accepts a UUID with or without dashes or braces, any case, and
// returns the canonical lower-case 8-4-4-4-12 form.
func ParseUUID(s string) (string, error) {
	h := strings.ToLower(strings.Trim(strings.TrimSpace(s), "{}"))
	h = strings.ReplaceAll(h, "-", "")
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != 16 {
		return "", fmt.Errorf("%q is not a UUID (want 8-4-4-4-12 hex digits)", s)
	}
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

// UUIDFromWire formats the 16 GUID bytes of PXE option 97 as a UUID string.
// Firmwares send the GUID in EFI byte order (first three fields
// little-endian, as RFC 4578 suggests; EDK2 copies its EFI_GUID and iPXE
// mangles to match), so those fields are swapped back here to give what
// users read off `dmidecode` and iPXE's ${uuid}. All zeros means "no UUID".
func UUIDFromWire(b []byte) string {
	if len(b) != 16 {
		return ""
	}
	allZero := true
	for _, c := range b {
		if c != 0 {
			allZero = false
			break
		}
	}
	if allZero {
		return ""
	}
	return fmt.Sprintf("%02x%02x%02x%02x-%02x%02x-%02x%02x-%x-%x",
		b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8:10], b[10:16])
}
