// Package grubboot boots x64 UEFI machines with Secure Boot left on: after
// the signed shim and GRUB (served by the firmware package), GRUB reads the
// configuration this package writes for the machine — its kernel, initrds
// and command line, or a menu — and loads those files over TFTP, from this
// package too. It also tells whether a boot file carries the Authenticode
// signature Secure Boot needs.
package grubboot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/template"

	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/machines"
	"github.com/bootserve/bootserve/tftpd"
)

// GRUB's network image (grubnetx64) has the prefix /grub built in: it
// reads only grub.cfg there. That file sends each machine on to its own
// configuration, by the MAC address GRUB booted from.
const (
	mainConfig    = "grub/grub.cfg"
	machinePrefix = "grub/bootserve-"
	filePrefix    = "bootserve/"
)

// Server writes GRUB configurations and serves them and the boot files.
type Server struct {
	Logger *slog.Logger

	booter atomic.Pointer[machines.Booter]

	mu   sync.Mutex
	seen map[string]machines.Identity // by MAC, from DHCP
}

// SetBooter installs what machines boot; safe at any time.
func (s *Server) SetBooter(b machines.Booter) { s.booter.Store(&b) }

// maxSeen bounds the identities remembered.
const maxSeen = 4096

// Remember keeps what DHCP told about a machine (UUID, labels) so the rules
// that matched it then match it again when GRUB asks by MAC alone.
func (s *Server) Remember(id machines.Identity) {
	if id.MAC == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil || len(s.seen) >= maxSeen {
		s.seen = map[string]machines.Identity{}
	}
	s.seen[id.MAC.String()] = id
}

func (s *Server) identity(mac net.HardwareAddr, client netip.Addr) machines.Identity {
	s.mu.Lock()
	id, ok := s.seen[mac.String()]
	s.mu.Unlock()
	if !ok {
		id = machines.Identity{MAC: mac}
	}
	// Only x64 UEFI machines come this way.
	id.Arch = firmware.EFIX64
	if client.IsValid() {
		id.IP = client
	}
	return id
}

func (s *Server) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// Source serves the configurations and boot files over TFTP.
func (s *Server) Source() tftpd.Source {
	return tftpd.SourceFunc(s.open)
}

func (s *Server) open(ctx context.Context, name string, client netip.Addr) (tftpd.File, int64, error) {
	switch {
	case name == mainConfig:
		b := []byte(mainConfigText)
		return tftpd.Bytes(b), int64(len(b)), nil
	case strings.HasPrefix(name, machinePrefix) && strings.HasSuffix(name, ".cfg"):
		mac, err := machines.ParseMAC(strings.TrimSuffix(strings.TrimPrefix(name, machinePrefix), ".cfg"))
		if err != nil {
			return nil, 0, fs.ErrNotExist
		}
		b, err := s.machineConfig(ctx, s.identity(mac, client))
		if err != nil {
			s.log().Warn("GRUB configuration", "mac", mac.String(), "err", err)
			b = []byte(fmt.Sprintf("echo %s\nsleep 10\n", quote("bootserve: "+err.Error())))
		}
		return tftpd.Bytes(b), int64(len(b)), nil
	case strings.HasPrefix(name, filePrefix):
		return s.openBootFile(ctx, name, client)
	}
	return nil, 0, fs.ErrNotExist
}

const mainConfigText = `# bootserve: each machine gets its own configuration, by MAC address.
source ${prefix}/bootserve-${net_default_mac}.cfg
echo "bootserve: no configuration for ${net_default_mac}"
sleep 10
`

// target finds the machine's target, or one entry of its menu.
func (s *Server) target(ctx context.Context, id machines.Identity) (*machines.Target, error) {
	b := s.booter.Load()
	if b == nil {
		return nil, errors.New("not ready")
	}
	return (*b).Target(ctx, id)
}

// machineConfig is the GRUB configuration of one machine.
func (s *Server) machineConfig(ctx context.Context, id machines.Identity) ([]byte, error) {
	t, err := s.target(ctx, id)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	mac := id.MAC.String()
	fmt.Fprintf(&b, "# bootserve: %s boots %s (%s)\n", mac, t.Name, t.Kind)
	switch t.Kind {
	case machines.KindKernel:
		if t.Message != "" {
			fmt.Fprintf(&b, "echo %s\n", quote(t.Message))
		}
		if err := kernelLines(&b, id, t, mac, 0); err != nil {
			return nil, err
		}
		b.WriteString("boot\n")
	case machines.KindMenu:
		m := t.Menu
		fmt.Fprintf(&b, "set default=%d\n", m.Default)
		if m.TimeoutSeconds > 0 {
			fmt.Fprintf(&b, "set timeout=%d\n", m.TimeoutSeconds)
		} else {
			b.WriteString("set timeout=-1\n")
		}
		for i, e := range m.Entries {
			fmt.Fprintf(&b, "menuentry %s {\n", quote(e.Label))
			switch e.Target.Kind {
			case machines.KindLocal:
				// Back to the firmware, which tries the next boot device.
				b.WriteString("\texit\n")
			case machines.KindKernel:
				if err := kernelLines(&b, id, &e.Target, mac, i); err != nil {
					return nil, err
				}
			default:
				fmt.Fprintf(&b, "\techo %s\n\tsleep 5\n", quote(e.Target.Kind.String()+" targets cannot boot through GRUB"))
			}
			b.WriteString("}\n")
		}
	default:
		return nil, fmt.Errorf("target %q is a %s target: only kernel and menu targets boot through shim and GRUB", t.Name, t.Kind)
	}
	return []byte(b.String()), nil
}

// kernelLines writes GRUB's linux and initrd commands for a kernel target;
// entry is the menu entry (0 outside a menu) in the files' TFTP names.
func kernelLines(b *strings.Builder, id machines.Identity, t *machines.Target, mac string, entry int) error {
	cmdline, err := expand(t.Cmdline, id, t)
	if err != nil {
		return err
	}
	if strings.ContainsAny(cmdline, "\r\n") {
		return errors.New("the command line has a line break")
	}
	words := []string{"linux", "/" + fileName(mac, entry, 0, t.Kernel)}
	for _, w := range strings.Fields(cmdline) {
		words = append(words, quote(w))
	}
	fmt.Fprintf(b, "%s\n", strings.Join(words, " "))
	if len(t.Initrds) > 0 {
		words = []string{"initrd"}
		for i, p := range t.Initrds {
			words = append(words, "/"+fileName(mac, entry, i+1, p))
		}
		fmt.Fprintf(b, "%s\n", strings.Join(words, " "))
	}
	return nil
}

// fileName is the TFTP name of a machine's boot file: its MAC, the menu
// entry, the file's place (0 the kernel, 1... the initrds) and its name.
func fileName(mac string, entry, index int, src string) string {
	return fmt.Sprintf("%s%s/%d/%d/%s", filePrefix, strings.ReplaceAll(mac, ":", "-"), entry, index, safeBase(src))
}

func safeBase(p string) string {
	var b strings.Builder
	for _, r := range path.Base(p) {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-' {
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return "file"
	}
	return b.String()
}

// openBootFile serves bootserve/<mac>/<entry>/<index>/<name>: the file of
// the machine's current target at that place, and only that.
func (s *Server) openBootFile(ctx context.Context, name string, client netip.Addr) (tftpd.File, int64, error) {
	parts := strings.Split(strings.TrimPrefix(name, filePrefix), "/")
	if len(parts) != 4 {
		return nil, 0, fs.ErrNotExist
	}
	mac, err := machines.ParseMAC(parts[0])
	entry, err1 := strconv.Atoi(parts[1])
	index, err2 := strconv.Atoi(parts[2])
	if err != nil || err1 != nil || err2 != nil || entry < 0 || index < 0 {
		return nil, 0, fs.ErrNotExist
	}
	t, err := s.target(ctx, s.identity(mac, client))
	if err != nil {
		return nil, 0, fs.ErrNotExist
	}
	if t.Kind == machines.KindMenu {
		if entry >= len(t.Menu.Entries) {
			return nil, 0, fs.ErrNotExist
		}
		t = &t.Menu.Entries[entry].Target
	} else if entry != 0 {
		return nil, 0, fs.ErrNotExist
	}
	if t.Kind != machines.KindKernel {
		return nil, 0, fs.ErrNotExist
	}
	files := append([]string{t.Kernel}, t.Initrds...)
	if index >= len(files) || safeBase(files[index]) != parts[3] {
		return nil, 0, fs.ErrNotExist
	}
	if strings.Contains(files[index], "://") {
		return nil, 0, fmt.Errorf("%w: %s is a URL: under Secure Boot GRUB loads files over TFTP only, give a local path", fs.ErrPermission, files[index])
	}
	f, err := os.Open(files[index])
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, fs.ErrNotExist
	}
	return f, st.Size(), nil
}

// templateData mirrors what httpboot gives templates, minus URLs: GRUB
// under Secure Boot fetches nothing over HTTP.
type templateData struct {
	MAC, UUID, Arch, IP, Hostname, URL string
}

func expand(text string, id machines.Identity, t *machines.Target) (string, error) {
	if !strings.Contains(text, "{{") {
		return text, nil
	}
	d := templateData{MAC: id.MAC.String(), UUID: id.UUID, Arch: id.Arch.String(), Hostname: id.Hostname}
	if t.Hostname != "" {
		d.Hostname = t.Hostname
	}
	if id.IP.IsValid() {
		d.IP = id.IP.String()
	}
	tpl, err := template.New("cmdline").Option("missingkey=error").Funcs(template.FuncMap{
		"URL": func(string) (string, error) {
			return "", errors.New("URL is not available for Secure Boot targets")
		},
	}).Parse(text)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	if err := tpl.Execute(&b, d); err != nil {
		return "", err
	}
	return b.String(), nil
}

// quote makes one GRUB word: single quotes keep everything literal, and a
// quote inside is closed, escaped and reopened.
func quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Signed reports whether a file (a kernel, an EFI program) carries the
// Authenticode signature Secure Boot needs (see firmware.SignedPE).
func Signed(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	signed, err := firmware.SignedPE(f)
	if err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	return signed, nil
}
