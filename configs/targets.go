package configs

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/template"

	"github.com/bootserve/bootserve/grubboot"
	"github.com/bootserve/bootserve/machines"
	"github.com/bootserve/bootserve/nixstore"
)

// TargetFile is how a target is written: exactly one of its groups of keys
// (kernel+initrds+cmdline, nix, nix_profile, nix_configuration, ipxe_script
// or ipxe_script_file, chain, iso, menu, local).
type TargetFile struct {
	Kernel           string    `toml:"kernel"`
	Initrds          []string  `toml:"initrds"`
	Cmdline          string    `toml:"cmdline"`
	Nix              string    `toml:"nix"`
	NixProfile       string    `toml:"nix_profile"`
	NixConfiguration string    `toml:"nix_configuration"`
	IPXEScript       string    `toml:"ipxe_script"`
	IPXEScriptFile   string    `toml:"ipxe_script_file"`
	Chain            string    `toml:"chain"`
	ISO              string    `toml:"iso"`
	Menu             *MenuFile `toml:"menu"`
	Local            bool      `toml:"local"`
	Message          string    `toml:"message"`
	// SecureBoot boots x64 UEFI machines through shim and GRUB.
	SecureBoot bool `toml:"secure_boot"`
}

// MenuFile is a [*.menu] table.
type MenuFile struct {
	Title string `toml:"title"`
	// Default names the entry booted when the timeout expires; default:
	// the first entry.
	Default string `toml:"default"`
	// Timeout before the default entry boots; 0 waits for a choice.
	Timeout Duration    `toml:"timeout"`
	Entries []EntryFile `toml:"entry"`
}

// EntryFile is one [[*.menu.entry]].
type EntryFile struct {
	Name  string `toml:"name"`
	Label string `toml:"label"`
	TargetFile
}

// kinds lists which target keys are set.
func (tf *TargetFile) kinds() []string {
	var k []string
	add := func(set bool, name string) {
		if set {
			k = append(k, name)
		}
	}
	add(tf.Kernel != "" || len(tf.Initrds) > 0, "kernel")
	add(tf.Nix != "", "nix")
	add(tf.NixProfile != "", "nix_profile")
	add(tf.NixConfiguration != "", "nix_configuration")
	add(tf.IPXEScript != "" || tf.IPXEScriptFile != "", "ipxe_script")
	add(tf.Chain != "", "chain")
	add(tf.ISO != "", "iso")
	add(tf.Menu != nil, "menu")
	add(tf.Local, "local")
	return k
}

// templateFuncs are the functions templates may call, so that a template
// using one parses at load time (httpboot supplies the real ones).
func templateFuncs() template.FuncMap {
	return template.FuncMap{"URL": func(string) string { return "" }}
}

func (l *loader) checkTemplate(key, text string) {
	if _, err := template.New(key).Funcs(templateFuncs()).Option("missingkey=error").Parse(text); err != nil {
		l.errorf(key, "bad template: %v", err)
	}
}

// target checks one target's keys; nil when it is not usable.
func (l *loader) target(key string, tf *TargetFile, inMenu bool) *machines.Target {
	kinds := tf.kinds()
	switch len(kinds) {
	case 0:
		if tf.Cmdline != "" {
			l.errorf(key, "cmdline without kernel or nix target: set kernel")
			return nil
		}
		l.errorf(key, "no target: set one of kernel, nix, nix_profile, nix_configuration, ipxe_script, chain, iso, menu, local")
		return nil
	case 1:
	default:
		l.errorf(key, "several targets (%s): set exactly one", strings.Join(kinds, ", "))
		return nil
	}
	t := &machines.Target{Message: tf.Message, Cmdline: tf.Cmdline}
	if strings.ContainsAny(tf.Message, "\r\n") {
		l.errorf(key+".message", "must be one line")
	}
	switch kinds[0] {
	case "kernel", "nix", "nix_profile", "nix_configuration":
		if strings.ContainsAny(tf.Cmdline, "\r\n") {
			l.errorf(key+".cmdline", "must be one line")
		}
		l.checkTemplate(key+".cmdline", tf.Cmdline)
	default:
		if tf.Cmdline != "" {
			l.errorf(key+".cmdline", "only kernel and nix targets take a cmdline")
		}
	}
	switch kinds[0] {
	case "kernel":
		t.Kind = machines.KindKernel
		if tf.Kernel == "" {
			l.errorf(key, "initrds without kernel: set kernel")
			return nil
		}
		t.Kernel = l.path(tf.Kernel)
		l.checkFile(key+".kernel", t.Kernel)
		for i, p := range tf.Initrds {
			p = l.path(p)
			l.checkFile(fmt.Sprintf("%s.initrds[%d]", key, i), p)
			t.Initrds = append(t.Initrds, p)
		}
	case "nix":
		t.Kind, t.Nix = machines.KindNix, tf.Nix
		l.usedStore = true
		l.checkStorePath(key+".nix", tf.Nix)
	case "nix_profile":
		t.Kind, t.Nix = machines.KindNixProfile, tf.NixProfile
		l.nixProfiles = append(l.nixProfiles, located{key + ".nix_profile", tf.NixProfile})
	case "nix_configuration":
		t.Kind, t.Nix = machines.KindNixConfiguration, tf.NixConfiguration
		l.nixConfigurations = append(l.nixConfigurations, located{key + ".nix_configuration", tf.NixConfiguration})
	case "ipxe_script":
		t.Kind = machines.KindIPXEScript
		switch {
		case tf.IPXEScript != "" && tf.IPXEScriptFile != "":
			l.errorf(key, "both ipxe_script and ipxe_script_file: set one")
		case tf.IPXEScriptFile != "":
			b, err := os.ReadFile(l.path(tf.IPXEScriptFile))
			if err != nil {
				l.errorf(key+".ipxe_script_file", "%v", err)
			}
			t.IPXEScript = string(b)
			l.checkTemplate(key+".ipxe_script_file", t.IPXEScript)
		default:
			t.IPXEScript = tf.IPXEScript
			l.checkTemplate(key+".ipxe_script", t.IPXEScript)
		}
	case "chain":
		t.Kind, t.URL = machines.KindChain, tf.Chain
		if strings.ContainsAny(tf.Chain, "\r\n") {
			l.errorf(key+".chain", "a URL has no line breaks")
		}
		if !strings.Contains(tf.Chain, "://") {
			l.errorf(key+".chain", "%q is not a URL (want http://, https://, tftp://...)", tf.Chain)
		}
		l.checkTemplate(key+".chain", tf.Chain)
	case "iso":
		t.Kind, t.URL = machines.KindISO, l.path(tf.ISO)
		l.checkFile(key+".iso", t.URL)
	case "local":
		t.Kind = machines.KindLocal
	case "menu":
		if inMenu {
			l.errorf(key+".menu", "menus cannot be nested")
			return nil
		}
		t.Kind = machines.KindMenu
		t.Menu = l.menu(key+".menu", tf.Menu)
		if t.Menu == nil {
			return nil
		}
	}
	if tf.SecureBoot {
		if inMenu {
			l.errorf(key+".secure_boot", "set secure_boot on the menu, not on its entries")
		}
		t.SecureBoot = true
		l.checkSecureBoot(key, t)
	}
	return t
}

// checkSecureBoot refuses targets the shim → GRUB chain cannot boot, and
// warns about kernels Secure Boot will refuse.
func (l *loader) checkSecureBoot(key string, t *machines.Target) {
	switch t.Kind {
	case machines.KindKernel:
		l.checkSignedKernel(key, t)
	case machines.KindMenu:
		for i := range t.Menu.Entries {
			e := &t.Menu.Entries[i].Target
			ek := fmt.Sprintf("%s.menu.entry[%d]", key, i)
			switch e.Kind {
			case machines.KindKernel:
				l.checkSignedKernel(ek, e)
			case machines.KindLocal:
			default:
				l.errorf(ek, "a %s entry cannot boot through shim and GRUB (secure_boot on the menu): use kernel or local entries", e.Kind)
			}
		}
	default:
		l.errorf(key+".secure_boot", "a %s target cannot boot through shim and GRUB: use a kernel or menu target", t.Kind)
	}
}

func (l *loader) checkSignedKernel(key string, t *machines.Target) {
	files := append([]string{t.Kernel}, t.Initrds...)
	for _, f := range files {
		if strings.Contains(f, "://") {
			l.errorf(key, "%s is a URL: under secure_boot GRUB loads files over TFTP only, give a local path", f)
			return
		}
	}
	signed, err := grubboot.Signed(t.Kernel)
	switch {
	case err != nil:
		l.warnf(key+".kernel", "%v: it cannot boot with Secure Boot on", err)
	case !signed:
		l.warnf(key+".kernel", "%s is not signed: it boots only with Secure Boot off (GRUB will refuse it with \"bad shim signature\")", t.Kernel)
	}
}

func (l *loader) menu(key string, mf *MenuFile) *machines.Menu {
	m := &machines.Menu{Title: mf.Title, TimeoutSeconds: int(mf.Timeout.Seconds())}
	if mf.Timeout.Duration < 0 {
		l.errorf(key+".timeout", "must not be negative")
	}
	if m.Title == "" {
		m.Title = "bootserve"
	}
	if len(mf.Entries) == 0 {
		l.errorf(key, "a menu needs at least one [[%s.entry]]", key)
		return nil
	}
	names := map[string]int{}
	m.Default = -1
	for i, e := range mf.Entries {
		ek := fmt.Sprintf("%s.entry[%d]", key, i)
		name := e.Name
		if name == "" {
			name = fmt.Sprintf("entry%d", i)
		}
		if _, dup := names[name]; dup {
			l.errorf(ek+".name", "%q is used by another entry of this menu", name)
		}
		names[name] = i
		label := e.Label
		if label == "" {
			label = name
		}
		if strings.ContainsAny(label, "\r\n") {
			l.errorf(ek+".label", "must be one line")
		}
		t := l.target(ek, &e.TargetFile, true)
		if t == nil {
			continue
		}
		t.Name = name
		m.Entries = append(m.Entries, machines.MenuEntry{Label: label, Target: *t})
		if e.Name != "" && e.Name == mf.Default {
			m.Default = len(m.Entries) - 1
		}
	}
	if mf.Default == "" {
		m.Default = 0
	} else if _, ok := names[mf.Default]; !ok {
		l.errorf(key+".default", "no entry is named %q", mf.Default)
	}
	return m
}

// checkStorePath makes sure a store path named in the config exists now.
func (l *loader) checkStorePath(key, p string) {
	storeDir := l.nixStoreDir
	if !strings.HasPrefix(p, storeDir+"/") {
		l.errorf(key, "%q is not in the store %s (set nix.store_dir if your store is elsewhere)", p, storeDir)
		return
	}
	base := strings.TrimPrefix(p, storeDir+"/")
	if err := nixstore.ValidateBaseName(base); err != nil {
		l.errorf(key, "%v", err)
		return
	}
	if _, err := os.Stat(filepath.Join(l.nixStoreRoot, p)); err != nil {
		l.errorf(key, "%v", err)
	}
}

type located struct{ key, value string }
