package httpboot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"path"
	"strconv"
	"strings"
	"text/template"

	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/machines"
)

// TemplateData is what cmdline and ipxe_script templates can use:
// {{.MAC}}, {{.UUID}}, {{.Arch}}, {{.IP}}, {{.Hostname}}, {{.URL}}.
type TemplateData struct {
	MAC      string // aa:bb:cc:dd:ee:ff
	UUID     string // empty when unknown
	Arch     string // bios, efi-x64, ...
	IP       string // the client's address as bootserve sees it
	Hostname string
	URL      string // bootserve's base URL, http://host[:port]
}

func templateData(id machines.Identity, t *machines.Target, base string) TemplateData {
	d := TemplateData{UUID: id.UUID, Arch: id.Arch.String(), Hostname: id.Hostname, URL: base}
	if t.Hostname != "" {
		d.Hostname = t.Hostname
	}
	if id.MAC != nil {
		d.MAC = id.MAC.String()
	}
	if id.IP.IsValid() {
		d.IP = id.IP.String()
	}
	return d
}

// ExpandTemplate executes a text/template (never html/template: this is a
// kernel command line or an iPXE script, not HTML) with the machine's data.
// funcs may add functions (the server adds URL, pixiecore's proxy function).
func ExpandTemplate(name, text string, d TemplateData, funcs template.FuncMap) (string, error) {
	t, err := template.New(name).Funcs(funcs).Option("missingkey=error").Parse(text)
	if err != nil {
		return "", fmt.Errorf("template %s: %w", name, err)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, d); err != nil {
		return "", fmt.Errorf("template %s: %w", name, err)
	}
	return b.String(), nil
}

// errScript marks a target that cannot be turned into a script; the client
// gets a script that says so and retries.
var errScript = errors.New("cannot make boot script")

// oneLine refuses values that would add lines to an iPXE script: a newline
// in a command line would let the config (or an API server) run arbitrary
// iPXE commands in an unexpected place.
func oneLine(what, s string) error {
	if strings.ContainsAny(s, "\r\n") {
		return fmt.Errorf("%w: %s contains a line break", errScript, what)
	}
	return nil
}

// imageName is the name iPXE gives a downloaded image (the last path
// segment of its URL), made safe for a kernel command line.
func imageName(src string, fallback string) string {
	p := src
	if u, err := url.Parse(src); err == nil && u.Scheme != "" {
		p = u.Path
	}
	base := path.Base(p)
	var b strings.Builder
	for _, r := range base {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			b.WriteRune(r)
		}
	}
	n := b.String()
	if n == "" || n == "." || n == ".." {
		return fallback
	}
	return n
}

// scriptBuilder accumulates an iPXE script.
type scriptBuilder struct {
	bytes.Buffer
}

func (b *scriptBuilder) line(format string, args ...any) {
	fmt.Fprintf(&b.Buffer, format, args...)
	b.WriteByte('\n')
}

// kernelScript boots a kernel with initrds. Each initrd's name is added to
// the command line as initrd=<name>: Debian's EFI iPXE passes initrds to the
// kernel's EFI stub only that way.
func (s *Server) kernelScript(b *scriptBuilder, base string, id machines.Identity, t *machines.Target) error {
	if t.Kernel == "" {
		return fmt.Errorf("%w: target %q has no kernel", errScript, t.Name)
	}
	mac := macString(id)
	cmdline, err := s.expand("cmdline", t.Cmdline, base, id, t)
	if err != nil {
		return err
	}
	if err := oneLine("cmdline", cmdline); err != nil {
		return err
	}
	var args []string
	var initrdLines []string
	seen := map[string]bool{}
	for i, src := range t.Initrds {
		name := imageName(src, fmt.Sprintf("initrd%d", i))
		if seen[name] {
			name = fmt.Sprintf("%d-%s", i, name)
		}
		seen[name] = true
		args = append(args, "initrd="+name)
		initrdLines = append(initrdLines, "initrd "+s.fileURL(base, src, name, mac)+" || goto failed")
	}
	if cmdline != "" {
		args = append(args, cmdline)
	}
	b.line("kernel %s %s || goto failed", s.fileURL(base, t.Kernel, imageName(t.Kernel, "kernel"), mac), strings.Join(args, " "))
	for _, l := range initrdLines {
		b.line("%s", l)
	}
	b.line("boot || goto failed")
	return nil
}

// fileURL is the signed URL of a file source for one machine.
func (s *Server) fileURL(base, src, name, mac string) string {
	return base + "/f/" + s.signer.sign(fileRef{Src: src, MAC: mac}) + "/" + name
}

func macString(id machines.Identity) string {
	if id.MAC == nil {
		return ""
	}
	return id.MAC.String()
}

// expand runs a target's template with the machine's data and the URL
// function: {{ URL "https://..." }} becomes a URL on bootserve that proxies
// the file (pixiecore's API offers the same), as do file:// URLs and paths.
func (s *Server) expand(name, text, base string, id machines.Identity, t *machines.Target) (string, error) {
	if !strings.Contains(text, "{{") {
		return text, nil
	}
	funcs := template.FuncMap{"URL": func(u string) string {
		src := strings.TrimPrefix(u, "file://")
		return s.fileURL(base, src, imageName(src, "file"), macString(id))
	}}
	out, err := ExpandTemplate(name, text, templateData(id, t, base), funcs)
	if err != nil {
		return "", fmt.Errorf("%w: %v", errScript, err)
	}
	return out, nil
}

// targetScript writes the body of the script for one target (no header).
func (s *Server) targetScript(ctx context.Context, b *scriptBuilder, base string, id machines.Identity, t *machines.Target) error {
	if t.Message != "" {
		if err := oneLine("message", t.Message); err != nil {
			return err
		}
		b.line("echo %s", t.Message)
	}
	switch t.Kind {
	case machines.KindKernel:
		return s.kernelScript(b, base, id, t)
	case machines.KindIPXEScript:
		text := t.IPXEScript
		if !t.Verbatim {
			var err error
			if text, err = s.expand("ipxe_script", text, base, id, t); err != nil {
				return err
			}
		}
		// The user's script replaces ours, including its #!ipxe line.
		body, _ := strings.CutPrefix(strings.TrimLeft(text, " \t\r\n"), "#!ipxe")
		b.WriteString(strings.TrimLeft(body, "\r\n"))
		if !strings.HasSuffix(body, "\n") {
			b.WriteByte('\n')
		}
		return nil
	case machines.KindChain:
		u, err := s.expand("chain", t.URL, base, id, t)
		if err != nil {
			return err
		}
		if err := oneLine("chain", u); err != nil {
			return err
		}
		if strings.ContainsAny(u, " \t") {
			return fmt.Errorf("%w: chain URL %q has spaces", errScript, u)
		}
		if strings.HasPrefix(u, "https://") {
			// Debian's iPXE speaks no HTTPS: bootserve fetches it.
			u = s.fileURL(base, u, imageName(u, "chain"), macString(id))
		}
		b.line("chain --autofree %s || goto failed", u)
		return nil
	case machines.KindISO:
		iso := s.fileURL(base, t.URL, imageName(t.URL, "image.iso"), macString(id))
		if md := s.memdisk(); md != nil && id.Arch == firmware.BIOS {
			// memdisk copies the whole image to RAM and emulates a
			// disk, which boots ISOs that iPXE's sanboot cannot.
			b.line("kernel %s iso raw || goto failed", s.fileURL(base, md.Origin, "memdisk", macString(id)))
			b.line("initrd %s || goto failed", iso)
			b.line("boot || goto failed")
			return nil
		}
		// sanboot reads the image on demand with HTTP Range requests.
		b.line("sanboot --no-describe %s || goto failed", iso)
		return nil
	case machines.KindMenu:
		return s.menuScript(b, base, id, t)
	case machines.KindNix, machines.KindNixProfile, machines.KindNixConfiguration:
		top, err := s.resolveNix(ctx, t)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", errScript, t.Name, firstLine(err.Error()))
		}
		q := url.Values{}
		if t.Cmdline != "" {
			extra, err := s.expand("cmdline", t.Cmdline, base, id, t)
			if err != nil {
				return err
			}
			q.Set("cmdline_suffix_args", extra)
		}
		return s.nixLines(b, base, top, q)
	case machines.KindLocal:
		// exit hands control back to the firmware, which tries the next
		// boot device (the local disk).
		b.line("echo Booting from the next boot device")
		b.line("exit 0")
		return nil
	}
	return fmt.Errorf("%w: target kind %s is not supported here", errScript, t.Kind)
}

// menuScript shows an iPXE menu. Entries are fetched only once chosen
// (chain to the script URL with entry=N), so a Nix configuration in a menu
// is built only when someone picks it.
func (s *Server) menuScript(b *scriptBuilder, base string, id machines.Identity, t *machines.Target) error {
	m := t.Menu
	if m == nil || len(m.Entries) == 0 {
		return fmt.Errorf("%w: empty menu", errScript)
	}
	if err := oneLine("menu title", m.Title); err != nil {
		return err
	}
	b.line(":menu")
	b.line("menu %s", m.Title)
	for i, e := range m.Entries {
		if err := oneLine("menu label", e.Label); err != nil {
			return err
		}
		b.line("item e%d %s", i, e.Label)
	}
	def := m.Default
	if def < 0 || def >= len(m.Entries) {
		def = 0
	}
	if m.TimeoutSeconds > 0 {
		b.line("choose --default e%d --timeout %d entry || goto failed", def, m.TimeoutSeconds*1000)
	} else {
		b.line("choose --default e%d entry || goto failed", def)
	}
	b.line("goto ${entry}")
	for i, e := range m.Entries {
		b.line(":e%d", i)
		if e.Target.Kind == machines.KindLocal {
			b.line("echo Booting from the next boot device")
			b.line("exit 0")
			continue
		}
		b.line("chain --autofree %s || goto failed", s.entryURL(base, id, i))
	}
	return nil
}

// entryURL is the script URL of one menu entry.
func (s *Server) entryURL(base string, id machines.Identity, i int) string {
	q := scriptQuery(id)
	q.Set("entry", strconv.Itoa(i))
	return base + "/ipxe?" + encodeQuery(q)
}

// machineScript is the whole script for a machine: header, the target, and
// a failure tail that retries the whole boot after 5 s (a transient HTTP
// error, a stale file token after a bootserve restart).
func (s *Server) machineScript(ctx context.Context, base, self string, id machines.Identity, t *machines.Target) ([]byte, error) {
	var b scriptBuilder
	b.line("#!ipxe")
	b.line("echo bootserve: %s booting %s (%s)", id.MAC, t.Name, t.Kind)
	if err := s.targetScript(ctx, &b, base, id, t); err != nil {
		return nil, err
	}
	retryTail(&b, self)
	return b.Bytes(), nil
}

// retryTail ends every script: on failure, wait and fetch the script again.
func retryTail(b *scriptBuilder, self string) {
	b.line("exit 0")
	b.line(":failed")
	b.line("echo bootserve: boot failed, retrying in 5 seconds")
	b.line("sleep 5")
	b.line("chain --autofree %s", self)
}

// errorScript tells iPXE what went wrong, then retries.
func errorScript(msg, self string) []byte {
	var b scriptBuilder
	b.line("#!ipxe")
	b.line("echo bootserve: %s", strings.NewReplacer("\n", " ", "\r", " ").Replace(msg))
	b.line("goto failed")
	retryTail(&b, self)
	return b.Bytes()
}
