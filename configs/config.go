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
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/machines"
	"github.com/bootserve/bootserve/nixstore"
)

// File is the schema of the TOML file. Field tags are the keys users write.
type File struct {
	Interface string `toml:"interface"`
	Address   string `toml:"address"`
	HTTPPort  int    `toml:"http_port"`
	// HTTPMaxTransfers bounds file transfers in progress (default 512).
	HTTPMaxTransfers int             `toml:"http_max_transfers"`
	LogLevel         string          `toml:"log_level"`
	LogFormat        string          `toml:"log_format"`
	User             string          `toml:"user"`
	Firmware         firmware.Config `toml:"firmware"`
	TFTP             TFTPFile        `toml:"tftp"`
	Nix              NixFile         `toml:"nix"`
	API              APIFile         `toml:"api"`
	DHCP             DHCPFile        `toml:"dhcp"`
	Default          *TargetFile     `toml:"default"`
	Machines         []MachineFile   `toml:"machine"`
}

// TFTPFile is the [tftp] table.
type TFTPFile struct {
	// Root, if set, serves the files under it too (read-only).
	Root         string   `toml:"root"`
	MaxTransfers int      `toml:"max_transfers"`
	Timeout      Duration `toml:"timeout"`
	Retries      int      `toml:"retries"`
}

// NixFile is the [nix] table.
type NixFile struct {
	StoreDir          string   `toml:"store_dir"`
	StoreBackend      string   `toml:"store_backend"`
	StoreRoot         string   `toml:"store_root"`
	CacheDir          string   `toml:"cache_dir"`
	CacheSize         Size     `toml:"cache_size"`
	Compression       string   `toml:"compression"`
	ProfilesDir       string   `toml:"profiles_dir"`
	ConfigurationsDir string   `toml:"configurations_dir"`
	GCRootsDir        string   `toml:"gc_roots_dir"`
	BuildArgs         []string `toml:"build_args"`
}

// APIFile is the [api] table: ask a pixiecore-style API server what to boot.
type APIFile struct {
	URL          string   `toml:"url"`
	Timeout      Duration `toml:"timeout"`
	Username     string   `toml:"username"`
	PasswordFile string   `toml:"password_file"`
	CACert       string   `toml:"ca_cert"`
}

// MachineFile is one [[machine]] table: what selects it, and its target.
type MachineFile struct {
	Name   string     `toml:"name"`
	MAC    StringList `toml:"mac"`
	UUID   StringList `toml:"uuid"`
	Arch   StringList `toml:"arch"`
	Labels StringList `toml:"labels"`
	// Hostname is {{.Hostname}} in this machine's templates.
	Hostname string `toml:"hostname"`
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

// Size is a byte count written as 5368709120, "5GiB", "500MB" or "1.5G".
type Size struct{ Bytes int64 }

// UnmarshalTOML implements toml.Unmarshaler.
func (z *Size) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case int64:
		if x < 0 {
			return fmt.Errorf("size %d is negative", x)
		}
		z.Bytes = x
		return nil
	case string:
		n, err := ParseSize(x)
		if err != nil {
			return err
		}
		z.Bytes = n
		return nil
	}
	return fmt.Errorf("want a size like \"5GiB\" or a number of bytes, found %T", v)
}

// ParseSize reads a size like "5GiB", "500MB" or "1.5G".
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.TrimSpace(t[i:])
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("%q is not a size (write it like \"5GiB\" or \"500MB\")", s)
	}
	mult := map[string]float64{
		"": 1, "B": 1,
		"K": 1 << 10, "KB": 1e3, "KIB": 1 << 10,
		"M": 1 << 20, "MB": 1e6, "MIB": 1 << 20,
		"G": 1 << 30, "GB": 1e9, "GIB": 1 << 30,
		"T": 1 << 40, "TB": 1e12, "TIB": 1 << 40,
	}[strings.ToUpper(unit)]
	if mult == 0 {
		return 0, fmt.Errorf("%q: unknown unit %q (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)", s, unit)
	}
	return int64(f * mult), nil
}

// Config is a loaded, checked configuration, ready for the servers.
type Config struct {
	Path             string
	Interface        string
	Address          netip.Addr // invalid: the interface's address
	HTTPPort         int
	HTTPMaxTransfers int
	LogLevel         slog.Level
	LogFormat        string
	User             string
	Firmware         firmware.Config
	TFTP             TFTP
	Nix              Nix
	API              API
	DHCP             DHCP
	// Rules is the selection table from [default] and [[machine]]. When
	// API.URL is set, the API server decides instead.
	Rules *machines.Table
	// Warnings are problems that do not stop the start (a kernel Secure
	// Boot will refuse), located like errors.
	Warnings []string
}

// TFTP is the checked [tftp] table.
type TFTP struct {
	Root         string
	MaxTransfers int
	Timeout      time.Duration
	Retries      int
}

// Nix is the checked [nix] table.
type Nix struct {
	StoreDir string
	// Backend is "cli" (ask Nix) or "scan" (read a store without a Nix
	// database; references found by scanning files, as Nix does).
	Backend           string
	StoreRoot         string
	CacheDir          string
	CacheBytes        int64
	Compression       string
	ProfilesDir       string
	ConfigurationsDir string
	GCRootsDir        string
	BuildArgs         []string
	// Used says whether any target needs Nix.
	Used bool
}

// API is the checked [api] table.
type API struct {
	URL      string
	Timeout  time.Duration
	Username string
	Password string
	CACert   string
}

// Default locations of Nix-related state.
const (
	DefaultCacheDir  = "/var/cache/bootserve"
	DefaultCacheSize = 10 << 30
)

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
	warn []string

	nixStoreDir       string
	nixStoreRoot      string
	nixProfiles       []located
	nixConfigurations []located
	usedStore         bool
}

func (l *loader) warnf(key, format string, args ...any) {
	l.warn = append(l.warn, (&Error{File: l.file, Line: l.pos.line(key), Key: key, Msg: fmt.Sprintf(format, args...)}).Error())
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
	c.Warnings = l.warn
	return c, nil
}

func (l *loader) check(f *File) *Config {
	c := &Config{Interface: f.Interface, HTTPPort: f.HTTPPort, HTTPMaxTransfers: f.HTTPMaxTransfers, LogFormat: f.LogFormat, User: f.User, Firmware: f.Firmware}
	if c.HTTPMaxTransfers < 0 {
		l.errorf("http_max_transfers", "must not be negative")
	}
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
	l.checkFirmware(f, c)

	c.TFTP = TFTP{Root: l.path(f.TFTP.Root), MaxTransfers: f.TFTP.MaxTransfers, Timeout: f.TFTP.Timeout.Duration, Retries: f.TFTP.Retries}
	if c.TFTP.Root != "" {
		if st, err := os.Stat(c.TFTP.Root); err != nil || !st.IsDir() {
			l.errorf("tftp.root", "%q is not a directory", f.TFTP.Root)
		}
	}
	if c.TFTP.MaxTransfers < 0 {
		l.errorf("tftp.max_transfers", "must not be negative")
	}
	if c.TFTP.Retries < 0 {
		l.errorf("tftp.retries", "must not be negative")
	}

	c.Nix = l.nixSection(&f.Nix)
	c.API = l.apiSection(&f.API)
	c.DHCP = l.dhcpSection(&f.DHCP)

	table := &machines.Table{}
	if f.Default != nil {
		table.Default = l.target("default", f.Default, false)
		if table.Default != nil {
			table.Default.Name = "default"
		}
	}
	seenMAC := map[string]string{}
	for i, m := range f.Machines {
		key := fmt.Sprintf("machine[%d]", i)
		if r, ok := l.machine(key, &m, seenMAC); ok {
			table.Rules = append(table.Rules, r)
		}
	}
	for _, tie := range table.CheckTies() {
		a, b := table.Rules[tie.A], table.Rules[tie.B]
		l.errorf(fmt.Sprintf("machine[%d]", ruleIndex(f, b.Name, tie.B)),
			"ties with %s: both are equally specific and both match a machine with %s; make one more specific (add mac, uuid, arch or labels) or merge them",
			a.Name, tie.Example)
	}
	if table.Default == nil && len(table.Rules) == 0 && c.API.URL == "" {
		l.errorf("default", "nothing to boot: add a [default] target, a [[machine]], or an [api] url")
	}
	if c.API.URL != "" && (table.Default != nil || len(table.Rules) > 0) {
		l.errorf("api.url", "set either [api] or [default]/[[machine]] targets: the API server decides what each machine boots")
	}
	l.checkNixTargets(&c.Nix)
	c.Rules = table
	return c
}

// ruleIndex finds the config index of a rule (rules that failed checks are
// dropped, so table indices can differ from file order).
func ruleIndex(f *File, name string, fallback int) int {
	for i, m := range f.Machines {
		if m.Name == name || fmt.Sprintf("machine[%d]", i) == name {
			return i
		}
	}
	return fallback
}

// parseEach parses every value of a list, reporting the ones that fail at
// key and leaving them out.
func parseEach[T any](l *loader, key string, vals []string, parse func(string) (T, error)) []T {
	var out []T
	for _, v := range vals {
		x, err := parse(v)
		if err != nil {
			l.errorf(key, "%v", err)
			continue
		}
		out = append(out, x)
	}
	return out
}

func (l *loader) machine(key string, m *MachineFile, seenMAC map[string]string) (machines.Rule, bool) {
	r := machines.Rule{Name: m.Name, Labels: m.Labels}
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
		seenMAC[hw.String()] = r.Name
		r.MACs = append(r.MACs, hw)
	}
	r.UUIDs = parseEach(l, key+".uuid", m.UUID, machines.ParseUUID)
	r.Arches = parseEach(l, key+".arch", m.Arch, firmware.ParseArch)
	for _, lb := range m.Labels {
		if lb == "" || strings.ContainsAny(lb, " \t\r\n") {
			l.errorf(key+".labels", "%q: a label is one word (no spaces)", lb)
		}
	}
	if len(m.MAC)+len(m.UUID)+len(m.Arch)+len(m.Labels) == 0 {
		l.errorf(key, "selects no machine: set mac, uuid, arch or labels (or use [default])")
		return r, false
	}
	t := l.target(key, &m.TargetFile, false)
	if t == nil {
		return r, false
	}
	t.Name = r.Name
	t.Hostname = m.Hostname
	if strings.ContainsAny(m.Hostname, " \t\r\n") {
		l.errorf(key+".hostname", "%q has spaces", m.Hostname)
	}
	r.Target = *t
	return r, true
}

func (l *loader) checkFirmware(f *File, c *Config) {
	for _, fw := range []struct {
		key string
		val *string
	}{
		{"bios", &c.Firmware.BIOS}, {"efi_ia32", &c.Firmware.EFIIA32}, {"efi_x64", &c.Firmware.EFIX64},
		{"efi_arm32", &c.Firmware.EFIARM32}, {"efi_arm64", &c.Firmware.EFIARM64}, {"efi_riscv64", &c.Firmware.EFIRISCV64},
		{"memdisk", &c.Firmware.Memdisk}, {"shim", &c.Firmware.Shim}, {"grub", &c.Firmware.GRUB},
	} {
		if !strings.ContainsRune(*fw.val, '/') {
			continue // a builtin name: firmware.Load checks it
		}
		*fw.val = l.path(*fw.val)
		if _, err := os.Stat(*fw.val); err != nil {
			l.errorf("firmware."+fw.key, "%v", err)
		}
	}
	if _, err := firmware.Load(c.Firmware); err != nil {
		l.errorf("firmware", "%v", err)
	}
}

func (l *loader) nixSection(nf *NixFile) Nix {
	n := Nix{
		StoreDir: nf.StoreDir, Backend: nf.StoreBackend, StoreRoot: l.path(nf.StoreRoot), CacheDir: l.path(nf.CacheDir), CacheBytes: nf.CacheSize.Bytes,
		Compression: nf.Compression, ProfilesDir: l.path(nf.ProfilesDir), ConfigurationsDir: l.path(nf.ConfigurationsDir),
		GCRootsDir: l.path(nf.GCRootsDir), BuildArgs: nf.BuildArgs,
	}
	if n.StoreDir == "" {
		n.StoreDir = nixstore.DefaultStoreDir
	}
	if !filepath.IsAbs(n.StoreDir) || filepath.Clean(n.StoreDir) != n.StoreDir {
		l.errorf("nix.store_dir", "%q must be a clean absolute path", nf.StoreDir)
	}
	switch n.Backend {
	case "":
		n.Backend = "cli"
	case "cli", "scan":
	default:
		l.errorf("nix.store_backend", "%q is not cli or scan", nf.StoreBackend)
	}
	if n.CacheDir == "" {
		n.CacheDir = DefaultCacheDir
	}
	if n.CacheBytes == 0 {
		n.CacheBytes = DefaultCacheSize
	}
	switch n.Compression {
	case "":
		n.Compression = "zstd"
	case "zstd", "gzip":
	default:
		l.errorf("nix.compression", "%q is not zstd or gzip", nf.Compression)
	}
	for _, d := range []struct{ key, path string }{{"nix.profiles_dir", n.ProfilesDir}, {"nix.configurations_dir", n.ConfigurationsDir}, {"nix.store_root", n.StoreRoot}} {
		if d.path == "" {
			continue
		}
		if st, err := os.Stat(d.path); err != nil || !st.IsDir() {
			l.errorf(d.key, "%q is not a directory", d.path)
		}
	}
	if n.ConfigurationsDir != "" && n.GCRootsDir == "" {
		l.errorf("nix.gc_roots_dir", "needed with configurations_dir: builds get a GC root there")
	}
	l.nixStoreDir, l.nixStoreRoot = n.StoreDir, n.StoreRoot
	return n
}

// checkNixTargets checks profile and configuration names once [nix] is known.
func (l *loader) checkNixTargets(n *Nix) {
	n.Used = len(l.nixProfiles)+len(l.nixConfigurations) > 0 || l.usedStore
	for _, p := range l.nixProfiles {
		if n.ProfilesDir == "" {
			l.errorf(p.key, "set nix.profiles_dir to use profiles")
			continue
		}
		if !simpleName(p.value) {
			l.errorf(p.key, "%q is not a profile name (no /, no leading dot)", p.value)
			continue
		}
		if _, err := os.Lstat(filepath.Join(n.ProfilesDir, p.value)); err != nil {
			l.errorf(p.key, "no profile %q in %s: %v", p.value, n.ProfilesDir, err)
		}
	}
	for _, c := range l.nixConfigurations {
		if n.ConfigurationsDir == "" {
			l.errorf(c.key, "set nix.configurations_dir to use configurations")
			continue
		}
		if !simpleName(c.value) {
			l.errorf(c.key, "%q is not a configuration name (no /, no leading dot)", c.value)
			continue
		}
		if _, err := os.Stat(filepath.Join(n.ConfigurationsDir, c.value, "default.nix")); err != nil {
			l.errorf(c.key, "%v", err)
		}
	}
}

func simpleName(s string) bool {
	return s != "" && !strings.ContainsAny(s, "/\x00") && !strings.HasPrefix(s, ".")
}

func (l *loader) apiSection(af *APIFile) API {
	a := API{URL: af.URL, Timeout: af.Timeout.Duration, Username: af.Username, CACert: l.path(af.CACert)}
	if a.URL == "" {
		if af.Username != "" || af.PasswordFile != "" || af.CACert != "" {
			l.errorf("api.url", "set the API server's URL (the other [api] keys need it)")
		}
		return a
	}
	u, err := url.Parse(a.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		l.errorf("api.url", "%q is not an http(s) URL", a.URL)
	}
	if af.PasswordFile != "" {
		b, err := os.ReadFile(l.path(af.PasswordFile))
		if err != nil {
			l.errorf("api.password_file", "%v", err)
		}
		a.Password = strings.TrimRight(string(b), "\r\n")
	}
	if a.CACert != "" {
		if _, err := os.Stat(a.CACert); err != nil {
			l.errorf("api.ca_cert", "%v", err)
		}
	}
	return a
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
