package httpboot

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"path"
	"strings"
	"text/template"

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

func templateData(id machines.Identity, base string) TemplateData {
	d := TemplateData{UUID: id.UUID, Arch: id.Arch.String(), Hostname: id.Hostname, URL: base}
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
func ExpandTemplate(name, text string, d TemplateData) (string, error) {
	t, err := template.New(name).Option("missingkey=error").Parse(text)
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
	cmdline, err := ExpandTemplate("cmdline", t.Cmdline, templateData(id, base))
	if err != nil {
		return fmt.Errorf("%w: %v", errScript, err)
	}
	if err := oneLine("cmdline", cmdline); err != nil {
		return err
	}
	mac := ""
	if id.MAC != nil {
		mac = id.MAC.String()
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

// targetScript writes the body of the script for one target (no header).
func (s *Server) targetScript(b *scriptBuilder, base string, id machines.Identity, t *machines.Target) error {
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
		text, err := ExpandTemplate("ipxe_script", t.IPXEScript, templateData(id, base))
		if err != nil {
			return fmt.Errorf("%w: %v", errScript, err)
		}
		// The user's script replaces ours, including its #!ipxe line.
		body, _ := strings.CutPrefix(strings.TrimLeft(text, " \t\r\n"), "#!ipxe")
		b.WriteString(strings.TrimLeft(body, "\r\n"))
		if !strings.HasSuffix(body, "\n") {
			b.WriteByte('\n')
		}
		return nil
	case machines.KindChain:
		if err := oneLine("chain", t.URL); err != nil {
			return err
		}
		b.line("chain --autofree %s || goto failed", t.URL)
		return nil
	case machines.KindLocal:
		// exit hands control back to the firmware, which tries the next
		// boot device (the local disk).
		b.line("echo Booting from the next boot device")
		b.line("exit 0")
		return nil
	}
	return fmt.Errorf("%w: target kind %s is not supported here", errScript, t.Kind)
}

// machineScript is the whole script for a machine: header, the target, and
// a failure tail that retries the whole boot after 5 s (a transient HTTP
// error, a stale file token after a bootserve restart).
func (s *Server) machineScript(base, self string, id machines.Identity, t *machines.Target) ([]byte, error) {
	var b scriptBuilder
	b.line("#!ipxe")
	b.line("echo bootserve: %s booting %s (%s)", id.MAC, t.Name, t.Kind)
	if err := s.targetScript(&b, base, id, t); err != nil {
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
