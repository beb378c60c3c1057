// Package configs loads bootserve's one TOML file: strict decoding (an
// unknown key or a wrong type is an error), every value checked at load
// time, and every error naming the file, the line and the key, so a bad
// file fails at start (or is refused at reload) with the fix in sight.
package configs

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/machines"
)

// File is the schema of the TOML file. Field tags are the keys users write.
type File struct {
	Interface string          `toml:"interface"`
	Address   string          `toml:"address"`
	HTTPPort  int             `toml:"http_port"`
	LogLevel  string          `toml:"log_level"`
	LogFormat string          `toml:"log_format"`
	Firmware  firmware.Config `toml:"firmware"`
	TFTP      TFTPFile        `toml:"tftp"`
	Default   *TargetFile     `toml:"default"`
	Machines  []MachineFile   `toml:"machine"`
}

// TFTPFile is the [tftp] table.
type TFTPFile struct {
	// Root, if set, serves the files under it too (read-only).
	Root         string   `toml:"root"`
	MaxTransfers int      `toml:"max_transfers"`
	Timeout      Duration `toml:"timeout"`
	Retries      int      `toml:"retries"`
}

// TargetFile is how a target is written: exactly one of its groups of keys.
type TargetFile struct {
	Kernel  string   `toml:"kernel"`
	Initrds []string `toml:"initrds"`
	Cmdline string   `toml:"cmdline"`
	Message string   `toml:"message"`
}

// MachineFile is one [[machine]] table: what selects it, and its target.
type MachineFile struct {
	Name string     `toml:"name"`
	MAC  StringList `toml:"mac"`
	TargetFile
}

// Duration is a time.Duration written as "5s" or "1m30s".
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration (write it like \"5s\" or \"2m\")", string(b))
	}
	d.Duration = v
	return nil
}

// StringList accepts one string or a list of strings.
type StringList []string

// UnmarshalTOML implements toml.Unmarshaler.
func (s *StringList) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case string:
		*s = StringList{x}
		return nil
	case []any:
		out := make(StringList, 0, len(x))
		for _, e := range x {
			str, ok := e.(string)
			if !ok {
				return fmt.Errorf("want a string or a list of strings, found %T in the list", e)
			}
			out = append(out, str)
		}
		*s = out
		return nil
	}
	return fmt.Errorf("want a string or a list of strings, found %T", v)
}

// Config is a loaded, checked configuration, ready for the servers.
type Config struct {
	Path      string
	Interface string
	Address   netip.Addr // invalid: the interface's address
	HTTPPort  int
	LogLevel  slog.Level
	LogFormat string
	Firmware  firmware.Config
	TFTP      TFTP
	Booter    machines.Booter
	// Rules is the selection table behind Booter, for `bootserve check`.
	Rules *machines.Table
}

// TFTP is the checked [tftp] table.
type TFTP struct {
	Root         string
	MaxTransfers int
	Timeout      time.Duration
	Retries      int
}

// Error is one problem in a config file, located.
type Error struct {
	File string
	Line int // 0 when unknown
	Key  string
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		b.WriteString(": " + e.Key)
	}
	b.WriteString(": " + e.Msg)
	return b.String()
}

// loader collects errors with their positions.
type loader struct {
	file string
	dir  string
	pos  *positions
	errs []error
}

func (l *loader) errorf(key, format string, args ...any) {
	l.errs = append(l.errs, &Error{File: l.file, Line: l.pos.line(key), Key: key, Msg: fmt.Sprintf(format, args...)})
}

// path resolves a path in the config relative to the config's directory.
func (l *loader) path(p string) string {
	if p == "" || filepath.IsAbs(p) || strings.Contains(p, "://") {
		return p
	}
	return filepath.Join(l.dir, p)
}

// typeErrRE picks the key out of the TOML library's type errors:
// `toml: line 3 (last key "http_port"): incompatible types: ...`.
var typeErrRE = regexp.MustCompile(`^toml: (?:line \d+ )?\(last key "([^"]*)"\): (.*)$`)

// Load reads and checks a config file. All problems found are reported
// together, each as "file:line: key: what is wrong".
func Load(path string) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, string(src))
}

// Parse checks a config given as text; path is used in errors and to
// resolve relative paths.
func Parse(path, src string) (*Config, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		abs = path
	}
	l := &loader{file: path, dir: filepath.Dir(abs), pos: scanPositions(src)}
	var f File
	md, err := toml.Decode(src, &f)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, &Error{File: path, Line: pe.Position.Line, Key: pe.LastKey, Msg: pe.Message}
		}
		// Type mismatches come as plain errors that carry the key in text.
		if m := typeErrRE.FindStringSubmatch(err.Error()); m != nil {
			return nil, &Error{File: path, Line: l.pos.line(m[1]), Key: m[1], Msg: m[2]}
		}
		return nil, &Error{File: path, Msg: err.Error()}
	}
	und := md.Undecoded()
	sort.Slice(und, func(i, j int) bool { return l.pos.line(und[i].String()) < l.pos.line(und[j].String()) })
	for _, k := range und {
		l.errorf(k.String(), "unknown key (see configs/example.toml for the keys that exist)")
	}
	c := l.check(&f)
	if len(l.errs) > 0 {
		return nil, errors.Join(l.errs...)
	}
	c.Path = path
	return c, nil
}

func (l *loader) check(f *File) *Config {
	c := &Config{Interface: f.Interface, HTTPPort: f.HTTPPort, LogFormat: f.LogFormat, Firmware: f.Firmware}
	if f.Address != "" {
		a, err := netip.ParseAddr(f.Address)
		if err != nil || !a.Is4() {
			l.errorf("address", "%q is not an IPv4 address", f.Address)
		}
		c.Address = a
	}
	if c.HTTPPort == 0 {
		c.HTTPPort = 80
	} else if c.HTTPPort < 1 || c.HTTPPort > 65535 {
		l.errorf("http_port", "%d is not a TCP port (1-65535)", c.HTTPPort)
	}
	switch f.LogLevel {
	case "", "info":
		c.LogLevel = slog.LevelInfo
	case "debug":
		c.LogLevel = slog.LevelDebug
	case "warn":
		c.LogLevel = slog.LevelWarn
	case "error":
		c.LogLevel = slog.LevelError
	default:
		l.errorf("log_level", "%q is not one of debug, info, warn, error", f.LogLevel)
	}
	switch f.LogFormat {
	case "":
		c.LogFormat = "text"
	case "text", "json":
	default:
		l.errorf("log_format", "%q is not text or json", f.LogFormat)
	}
	for _, fw := range []struct{ key, val string }{
		{"bios", f.Firmware.BIOS}, {"efi_ia32", f.Firmware.EFIIA32}, {"efi_x64", f.Firmware.EFIX64},
		{"efi_arm32", f.Firmware.EFIARM32}, {"efi_arm64", f.Firmware.EFIARM64}, {"efi_riscv64", f.Firmware.EFIRISCV64},
	} {
		if strings.ContainsRune(fw.val, '/') {
			if _, err := os.Stat(l.path(fw.val)); err != nil {
				l.errorf("firmware."+fw.key, "%v", err)
			}
		}
	}
	c.Firmware.EFIIA32 = l.pathIfFile(f.Firmware.EFIIA32)
	c.Firmware.EFIX64 = l.pathIfFile(f.Firmware.EFIX64)
	c.Firmware.EFIARM32 = l.pathIfFile(f.Firmware.EFIARM32)
	c.Firmware.EFIARM64 = l.pathIfFile(f.Firmware.EFIARM64)
	c.Firmware.EFIRISCV64 = l.pathIfFile(f.Firmware.EFIRISCV64)
	c.Firmware.BIOS = l.pathIfFile(f.Firmware.BIOS)

	c.TFTP = TFTP{Root: l.path(f.TFTP.Root), MaxTransfers: f.TFTP.MaxTransfers, Timeout: f.TFTP.Timeout.Duration, Retries: f.TFTP.Retries}
	if c.TFTP.Root != "" {
		if st, err := os.Stat(c.TFTP.Root); err != nil || !st.IsDir() {
			l.errorf("tftp.root", "%q is not a directory", f.TFTP.Root)
		}
	}
	if c.TFTP.MaxTransfers < 0 {
		l.errorf("tftp.max_transfers", "must not be negative")
	}

	table := &machines.Table{}
	if f.Default != nil {
		table.Default = l.target("default", f.Default)
		if table.Default != nil {
			table.Default.Name = "default"
		}
	}
	seenMAC := map[string]string{}
	for i, m := range f.Machines {
		key := fmt.Sprintf("machine[%d]", i)
		r := machines.Rule{Name: m.Name}
		if r.Name == "" {
			r.Name = key
		}
		for _, s := range m.MAC {
			hw, err := machines.ParseMAC(s)
			if err != nil {
				l.errorf(key+".mac", "%v", err)
				continue
			}
			if prev, dup := seenMAC[hw.String()]; dup {
				l.errorf(key+".mac", "%s is already selected by %s", hw, prev)
			}
			seenMAC[hw.String()] = key
			r.MACs = append(r.MACs, hw)
		}
		if len(r.MACs) == 0 {
			l.errorf(key, "selects no machine: set mac")
		}
		t := l.target(key, &m.TargetFile)
		if t == nil {
			continue
		}
		t.Name = r.Name
		r.Target = *t
		table.Rules = append(table.Rules, r)
	}
	if table.Default == nil && len(table.Rules) == 0 {
		l.errorf("default", "nothing to boot: add a [default] target or a [[machine]]")
	}
	c.Rules = table
	c.Booter = table
	return c
}

// pathIfFile resolves a firmware value that is a path, leaving builtin names.
func (l *loader) pathIfFile(v string) string {
	if strings.ContainsRune(v, '/') {
		return l.path(v)
	}
	return v
}

// target checks one target's keys; nil when it is not usable.
func (l *loader) target(key string, tf *TargetFile) *machines.Target {
	if tf.Kernel == "" {
		l.errorf(key, "no target: set kernel (with initrds and cmdline)")
		return nil
	}
	t := &machines.Target{Kind: machines.KindKernel, Kernel: l.path(tf.Kernel), Cmdline: tf.Cmdline, Message: tf.Message}
	l.checkFile(key+".kernel", t.Kernel)
	for i, p := range tf.Initrds {
		p = l.path(p)
		l.checkFile(fmt.Sprintf("%s.initrds[%d]", key, i), p)
		t.Initrds = append(t.Initrds, p)
	}
	if strings.ContainsAny(tf.Cmdline, "\r\n") {
		l.errorf(key+".cmdline", "must be one line")
	}
	return t
}

// checkFile makes sure a local boot file exists and is readable now, so a
// typo fails at start rather than when a machine boots.
func (l *loader) checkFile(key, p string) {
	if strings.HasPrefix(p, "http://") || strings.HasPrefix(p, "https://") {
		return
	}
	if strings.Contains(p, "://") {
		l.errorf(key, "%q: only local paths and http(s) URLs are supported", p)
		return
	}
	f, err := os.Open(p)
	if err != nil {
		l.errorf(key, "%v", err)
		return
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		l.errorf(key, "%s is not a regular file", p)
	}
}
