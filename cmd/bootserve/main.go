// Command bootserve network-boots machines: ProxyDHCP beside the LAN's own
// DHCP server, TFTP for the iPXE binaries, and HTTP for per-machine iPXE
// scripts, kernels, initrds and Nix closures. This package only parses the
// command line and wires the other packages together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/bootserve/bootserve/configs"
	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/grubboot"
	"github.com/bootserve/bootserve/machines"
	"github.com/bootserve/bootserve/nixstore"
)

const usage = `bootserve network-boots machines on a LAN that already has a DHCP server.

Usage:
  bootserve boot KERNEL [INITRD...] [--cmdline "..."] [flags]
      boot every PXE client into KERNEL and INITRDs (local paths or http(s) URLs)
  bootserve nix STORE-PATH|PROFILE [flags]
      boot every PXE client into a NixOS system from the Nix store (a
      profile is resolved at each boot); also serves nix-netboot-serve's URLs
  bootserve api URL [flags]
      ask a pixiecore-style API server (GET URL/v1/boot/MAC) what to boot
  bootserve serve --config FILE [flags]
      serve what FILE (TOML) says each machine boots
  bootserve check --config FILE
      check FILE and print what each machine would boot
  bootserve warm --config FILE
      build every archive the config's Nix targets need (with progress), then exit

Common flags:
  --interface NAME     interface for ProxyDHCP (default: the default route's)
  --listen-addr IP     address to advertise and bind HTTP to (default: the interface's)
  --port N             HTTP port (default 80)
  --debug, -d          debug logging
  --log-format F       text or json
  --user NAME          user to serve as after binding ports (default nobody)
  --allow-root         allow --user root
  --dhcp-server-pool START-END
                       be the LAN's DHCP server (full-DHCP mode; see --dhcp-* in a
                       command's --help); the default is ProxyDHCP

Run "bootserve COMMAND --help" for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage marks errors already explained by a usage message.
var errUsage = errors.New("usage")

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch args[0] {
	case "boot":
		err = cmdBoot(ctx, args[1:], stderr)
	case "serve":
		err = cmdServe(ctx, args[1:], stderr)
	case "nix":
		err = cmdNix(ctx, args[1:], stderr)
	case "api":
		err = cmdAPI(ctx, args[1:], stderr)
	case "check":
		err = cmdCheck(args[1:], stdout, stderr)
	case "warm":
		err = cmdWarm(ctx, args[1:], stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "bootserve: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if errors.Is(err, errUsage) || errors.Is(err, flag.ErrHelp) {
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "bootserve: %v\n", err)
		return 1
	}
	return 0
}

// commonFlags are shared by the serving commands.
type commonFlags struct {
	iface      string
	listenAddr string
	port       int
	debug      bool
	logFormat  string
	user       string
	allowRoot  bool
	dhcp       dhcpFlags
}

func (c *commonFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.iface, "interface", "", "interface to answer ProxyDHCP on (default: the default route's)")
	fs.StringVar(&c.listenAddr, "listen-addr", "", "IPv4 address to advertise and to bind HTTP to (default: the interface's address)")
	fs.IntVar(&c.port, "port", 0, "HTTP port (default 80)")
	fs.BoolVar(&c.debug, "debug", false, "log debug messages")
	fs.BoolVar(&c.debug, "d", false, "short for --debug")
	fs.StringVar(&c.logFormat, "log-format", "", "log format: text or json")
	fs.StringVar(&c.user, "user", "", `user to serve as once ports are bound, when started as root (default "nobody")`)
	fs.BoolVar(&c.allowRoot, "allow-root", false, "allow serving as root (--user root)")
	c.dhcp.register(fs)
}

// parseInterspersed parses flags placed anywhere among the positional
// arguments, as pixiecore users type them ("boot vmlinuz initrd --cmdline x").
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if rest[0] == "--" {
			return append(pos, rest[1:]...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func newFlagSet(name string, stderr io.Writer, help string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, help)
		fs.PrintDefaults()
	}
	return fs
}

func newLogger(w io.Writer, format string, level slog.Level) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

func cmdBoot(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("boot", stderr, "Usage: bootserve boot KERNEL [INITRD...] [flags]\n\nBoot every PXE client into KERNEL with INITRDs (local paths or http(s) URLs).\n\n")
	var cf commonFlags
	cf.register(fs)
	cmdline := fs.String("cmdline", "", "kernel command line (a text/template: {{.MAC}}, {{.IP}}, {{.URL}}...)")
	bootmsg := fs.String("bootmsg", "", "message iPXE prints before booting")
	secureBoot := fs.Bool("secure-boot", false, "boot x64 UEFI machines through the signed shim and GRUB (Secure Boot left on); the kernel and initrds go over TFTP")
	var fw firmware.Config
	fs.StringVar(&fw.BIOS, "ipxe-bios", "", "iPXE build for BIOS clients (default: undionly.kpxe)")
	fs.StringVar(&fw.EFIX64, "ipxe-efi64", "", "iPXE build for x86-64 UEFI clients: snponly.efi (default), ipxe.efi or a path")
	fs.StringVar(&fw.EFIIA32, "ipxe-efi32", "", "iPXE build (path) for 32-bit UEFI clients")
	fs.StringVar(&fw.EFIARM64, "ipxe-arm64", "", "iPXE build (path) for arm64 UEFI clients")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 1 {
		fs.Usage()
		return errUsage
	}
	t := machines.Target{Kind: machines.KindKernel, Name: "boot", Kernel: absIfLocal(pos[0]), Cmdline: *cmdline, Message: *bootmsg, SecureBoot: *secureBoot}
	for _, p := range pos[1:] {
		t.Initrds = append(t.Initrds, absIfLocal(p))
	}
	for _, p := range append([]string{t.Kernel}, t.Initrds...) {
		if err := checkReadable(p); err != nil {
			return err
		}
	}
	s := settings{Firmware: fw, Booter: machines.Static{T: t}}
	if t.SecureBoot {
		if strings.Contains(t.Kernel, "://") {
			return errors.New("--secure-boot: GRUB loads the kernel over TFTP: give a local path, not a URL")
		}
		if signed, err := grubboot.Signed(t.Kernel); err != nil || !signed {
			s.Warnings = append(s.Warnings, fmt.Sprintf("--secure-boot: kernel %s is not signed: it boots only with Secure Boot off (GRUB refuses it with \"bad shim signature\")", t.Kernel))
		}
	}
	if err := s.apply(cf); err != nil {
		return err
	}
	return serve(ctx, s, stderr)
}

func cmdAPI(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("api", stderr, "Usage: bootserve api URL [flags]\n\nAsk a pixiecore-style API server what each machine boots: GET URL/v1/boot/<mac>\n(with ?arch= and ?uuid=), pixiecore's documented protocol, asked once per boot.\n\n")
	var cf commonFlags
	cf.register(fs)
	var api configs.API
	fs.DurationVar(&api.Timeout, "api-timeout", 5*time.Second, "how long to wait for the API server")
	fs.StringVar(&api.Username, "api-username", "", "HTTP basic auth user for the API server")
	passFile := fs.String("api-password-file", "", "file holding the basic auth password (or set PIXIECORE_API_PASSWORD)")
	fs.StringVar(&api.CACert, "api-ca-cert", "", "PEM file of CAs to trust for the API server's certificate")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errUsage
	}
	api.URL = pos[0]
	api.Password = os.Getenv("PIXIECORE_API_PASSWORD")
	if *passFile != "" {
		b, err := os.ReadFile(*passFile)
		if err != nil {
			return fmt.Errorf("--api-password-file: %w", err)
		}
		api.Password = strings.TrimRight(string(b), "\r\n")
	}
	s := settings{API: api}
	if err := s.apply(cf); err != nil {
		return err
	}
	return serve(ctx, s, stderr)
}

func cmdServe(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("serve", stderr, "Usage: bootserve serve --config FILE [flags]\n\n")
	var cf commonFlags
	cf.register(fs)
	path := fs.String("config", "", "TOML config file")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if *path == "" || len(pos) > 0 {
		fs.Usage()
		return errUsage
	}
	c, err := configs.Load(*path)
	if err != nil {
		return err
	}
	s := settingsFromConfig(c)
	if err := s.apply(cf); err != nil {
		return err
	}
	return serve(ctx, s, stderr)
}

// loadConfigArg parses the command line of a command whose one flag is
// --config FILE, and loads FILE.
func loadConfigArg(fs *flag.FlagSet, args []string) (c *configs.Config, path string, err error) {
	p := fs.String("config", "", "TOML config file")
	if _, err := parseInterspersed(fs, args); err != nil {
		return nil, "", err
	}
	if *p == "" {
		fs.Usage()
		return nil, "", errUsage
	}
	c, err = configs.Load(*p)
	return c, *p, err
}

func cmdWarm(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("warm", stderr, "Usage: bootserve warm --config FILE\n\nBuild every archive the Nix targets of FILE need now (profiles as they resolve\nnow, configurations built now), so the first boots are fast.\n\n")
	c, _, err := loadConfigArg(fs, args)
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, c.LogFormat, c.LogLevel)
	if err != nil {
		return err
	}
	if !c.Nix.Used {
		log.Info("no Nix targets in the config: nothing to warm")
		return nil
	}
	nx, err := openNix(log, c.Nix, nil)
	if err != nil {
		return err
	}
	defer nx.Cache.Close()
	return warmAll(ctx, log, nx, c.Rules, stderr)
}

func cmdCheck(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("check", stderr, "Usage: bootserve check --config FILE\n\n")
	c, path, err := loadConfigArg(fs, args)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: OK\n", path)
	for _, w := range c.Warnings {
		fmt.Fprintf(stdout, "  warning: %s\n", w)
	}
	fmt.Fprintf(stdout, "  dhcp: %s\n", describeDHCP(c.DHCP))
	for _, r := range c.Rules.Rules {
		var macs []string
		for _, m := range r.MACs {
			macs = append(macs, m.String())
		}
		fmt.Fprintf(stdout, "  %s (%s): %s\n", r.Name, strings.Join(macs, ", "), describe(&r.Target))
	}
	if c.Rules.Default != nil {
		fmt.Fprintf(stdout, "  every other machine: %s\n", describe(c.Rules.Default))
	} else {
		fmt.Fprintf(stdout, "  every other machine: ignored\n")
	}
	return nil
}

// describeDHCP says how bootserve answers DHCP.
func describeDHCP(d configs.DHCP) string {
	if !d.IsServer() {
		return "ProxyDHCP beside the LAN's DHCP server (ports 67 and 4011; no addresses handed out)"
	}
	c := d.Server
	s := fmt.Sprintf("DHCP server for the LAN, pool %v-%v, leases in %s", c.PoolStart, c.PoolEnd, c.LeaseFile)
	if len(c.Reservations) > 0 {
		s += fmt.Sprintf(", reserved addresses: %d", len(c.Reservations))
	}
	if c.AllowOtherServers {
		s += ", starts even beside another DHCP server"
	}
	return s
}

func describe(t *machines.Target) string {
	switch t.Kind {
	case machines.KindKernel:
		s := "kernel " + t.Kernel
		if len(t.Initrds) > 0 {
			s += ", initrds " + strings.Join(t.Initrds, " ")
		}
		if t.Cmdline != "" {
			s += fmt.Sprintf(", cmdline %q", t.Cmdline)
		}
		if t.SecureBoot {
			s += "; x64 UEFI through shim and GRUB (Secure Boot)"
		}
		return s
	case machines.KindNix:
		return "NixOS system " + t.Nix
	case machines.KindNixProfile:
		return "Nix profile " + t.Nix + " (resolved at each boot)"
	case machines.KindNixConfiguration:
		return "Nix configuration " + t.Nix + " (built at each boot)"
	case machines.KindIPXEScript:
		return fmt.Sprintf("iPXE script (%d lines)", strings.Count(t.IPXEScript, "\n")+1)
	case machines.KindChain:
		return "chain " + t.URL
	case machines.KindISO:
		return "ISO image " + t.URL
	case machines.KindLocal:
		return "local disk (leave network boot)"
	case machines.KindMenu:
		var b strings.Builder
		fmt.Fprintf(&b, "menu %q", t.Menu.Title)
		if t.Menu.TimeoutSeconds > 0 {
			fmt.Fprintf(&b, ", default %q after %d s", t.Menu.Entries[t.Menu.Default].Label, t.Menu.TimeoutSeconds)
		}
		for i, e := range t.Menu.Entries {
			fmt.Fprintf(&b, "\n      %d. %s: %s", i+1, e.Label, describe(&e.Target))
		}
		return b.String()
	}
	return t.Kind.String()
}

func cmdNix(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("nix", stderr, "Usage: bootserve nix STORE-PATH|PROFILE [flags]\n\nBoot every PXE client into a NixOS system: a store path (/nix/store/...-nixos-system-...)\nor the name of a profile in --profiles-dir, resolved again at each boot.\n\n")
	var cf commonFlags
	cf.register(fs)
	n := configs.Nix{StoreDir: nixstore.DefaultStoreDir, CacheDir: configs.DefaultCacheDir, CacheBytes: configs.DefaultCacheSize, Compression: "zstd"}
	fs.StringVar(&n.StoreDir, "store-dir", n.StoreDir, "the Nix store directory")
	fs.StringVar(&n.StoreRoot, "store-root", "", "filesystem prefix of a chroot store (nix --store DIR)")
	fs.StringVar(&n.Backend, "store-backend", "cli", "how to read the store: cli (ask Nix) or scan (a store without a Nix database, e.g. a copied closure: references found by scanning files)")
	fs.StringVar(&n.CacheDir, "cache-dir", n.CacheDir, "where compressed archives of store paths are kept")
	cacheSize := fs.String("cache-size", "10GiB", "cache size limit (least recently used archives go first)")
	fs.StringVar(&n.Compression, "compression", n.Compression, "archive compression: zstd, or gzip for kernels older than 5.9")
	fs.StringVar(&n.ProfilesDir, "profiles-dir", "/nix/var/nix/profiles", "where profile names are looked up")
	cmdline := fs.String("cmdline", "", "extra kernel command line, appended to the system's kernel-params")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errUsage
	}
	size, err := configs.ParseSize(*cacheSize)
	if err != nil {
		return fmt.Errorf("--cache-size: %w", err)
	}
	n.CacheBytes = size
	t := machines.Target{Name: "nix " + pos[0], Kind: machines.KindNixProfile, Nix: pos[0], Cmdline: *cmdline}
	if strings.HasPrefix(pos[0], "/") {
		t.Kind = machines.KindNix
		if _, err := os.Stat(filepath.Join(n.StoreRoot, pos[0])); err != nil {
			return err
		}
	} else if _, err := os.Lstat(filepath.Join(n.ProfilesDir, pos[0])); err != nil {
		return fmt.Errorf("profile %q: %w (give a store path, or set --profiles-dir)", pos[0], err)
	}
	s := settings{Nix: n, NixNeeded: true, WarmFirst: true, Booter: machines.Static{T: t}}
	if err := s.apply(cf); err != nil {
		return err
	}
	return serve(ctx, s, stderr)
}
