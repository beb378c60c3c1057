package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/bootserve/bootserve/configs"
	"github.com/bootserve/bootserve/cpiocache"
	"github.com/bootserve/bootserve/dhcpproxy"
	"github.com/bootserve/bootserve/dhcpserver"
	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/grubboot"
	"github.com/bootserve/bootserve/httpboot"
	"github.com/bootserve/bootserve/machines"
	"github.com/bootserve/bootserve/nixstore"
	"github.com/bootserve/bootserve/pixieapi"
	"github.com/bootserve/bootserve/status"
	"github.com/bootserve/bootserve/tftpd"
)

// settings is everything serve needs, from flags or a config file.
type settings struct {
	ConfigPath string // empty: no file to reload
	// File is the config as loaded, before flags; reloads compare with it.
	File       *configs.Config
	Interface  string
	Address    netip.Addr // advertised; invalid = the interface's
	ListenAddr string     // HTTP bind address; empty = all
	HTTPPort   int
	// HTTPMaxTransfers bounds HTTP file transfers in progress (0: default).
	HTTPMaxTransfers int
	LogLevel         slog.Level
	LogFormat        string
	// User is who to serve as once ports are bound (started as root);
	// AllowRoot permits User "root".
	User      string
	AllowRoot bool
	Firmware  firmware.Config
	TFTP      configs.TFTP
	Nix       configs.Nix
	// NixNeeded opens the store and the cache even if no target names Nix
	// (the /boot and /dispatch routes of `bootserve nix`).
	NixNeeded bool
	// WarmFirst builds every archive the Nix targets need before serving.
	WarmFirst bool
	// Warnings from loading the config, logged at start.
	Warnings []string
	// API, when its URL is set, asks a pixiecore-style API server what to
	// boot instead of Booter.
	API    configs.API
	Booter machines.Booter
	// DHCP says whether bootserve is the LAN's DHCP server (full-DHCP
	// mode) or answers beside it (ProxyDHCP, the default).
	DHCP configs.DHCP
}

func settingsFromConfig(c *configs.Config) settings {
	return settings{
		ConfigPath: c.Path, File: c, Interface: c.Interface, Address: c.Address, HTTPPort: c.HTTPPort, HTTPMaxTransfers: c.HTTPMaxTransfers,
		LogLevel: c.LogLevel, LogFormat: c.LogFormat, User: c.User, Firmware: c.Firmware, TFTP: c.TFTP, Nix: c.Nix,
		API: c.API, Booter: c.Rules, Warnings: c.Warnings, DHCP: c.DHCP,
	}
}

// apply lets command-line flags override the settings.
func (s *settings) apply(cf commonFlags) error {
	if cf.iface != "" {
		s.Interface = cf.iface
	}
	if cf.listenAddr != "" {
		a, err := netip.ParseAddr(cf.listenAddr)
		if err != nil || !a.Is4() {
			return fmt.Errorf("--listen-addr %q: want an IPv4 address", cf.listenAddr)
		}
		s.Address = a
		s.ListenAddr = a.String()
	}
	if cf.port != 0 {
		s.HTTPPort = cf.port
	}
	if s.HTTPPort == 0 {
		s.HTTPPort = 80
	}
	if cf.debug {
		s.LogLevel = slog.LevelDebug
	}
	if cf.logFormat != "" {
		s.LogFormat = cf.logFormat
	}
	if cf.user != "" {
		s.User = cf.user
	}
	s.AllowRoot = s.AllowRoot || cf.allowRoot
	return s.applyDHCP(cf.dhcp)
}

func absIfLocal(p string) string {
	if strings.Contains(p, "://") {
		return p
	}
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

func checkReadable(p string) error {
	if strings.HasPrefix(p, "http://") || strings.HasPrefix(p, "https://") {
		return nil
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", p)
	}
	return nil
}

// server is the running servers and what a reload swaps.
type server struct {
	log      *slog.Logger
	status   *status.Tracker
	dp       *dhcpproxy.Server
	ds       *dhcpserver.Server // nil in ProxyDHCP mode
	hs       *httpboot.Server
	grub     *grubboot.Server
	fw       atomic.Pointer[firmware.Set]
	started  time.Time
	httpPort int
}

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

// summarize tells the status page what this server is.
func (sv *server) summarize(s settings, set *firmware.Set) {
	if sv.started.IsZero() {
		sv.started = time.Now()
		sv.httpPort = s.HTTPPort
	}
	dhcp := []status.Service{{Name: "ProxyDHCP", Ports: []int{67, 4011}}}
	if sv.ds != nil {
		dhcp = []status.Service{{Name: "DHCP server", Ports: []int{67}}, {Name: "ProxyDHCP", Ports: []int{4011}}}
	}
	c := status.ConfigSummary{
		Version: version, Interface: sv.dp.InterfaceName(), Address: sv.dp.Address.String(),
		Services:     append(dhcp, status.Service{Name: "TFTP", Ports: []int{69}}, status.Service{Name: "HTTP", Ports: []int{sv.httpPort}}),
		BootPrograms: status.BootProgramsOf(set), APIURL: s.API.URL, ConfigFile: s.ConfigPath, Started: sv.started,
	}
	if t, ok := s.Booter.(*machines.Table); ok && s.API.URL == "" {
		c.Rules = len(t.Rules)
	}
	sv.status.SetConfigSummary(c)
}

// tftpSource serves the current boot programs by the names DHCP gave.
func (sv *server) tftpSource() tftpd.Source {
	return tftpd.SourceFunc(func(_ context.Context, name string, _ netip.Addr) (tftpd.File, int64, error) {
		b, ok := sv.fw.Load().Lookup(name)
		if !ok {
			return nil, 0, fs.ErrNotExist
		}
		return tftpd.Bytes(b.Data), int64(len(b.Data)), nil
	})
}

// install makes the servers answer with what s says and a firmware set.
func (sv *server) install(s settings, set *firmware.Set) error {
	b := s.Booter
	var client *http.Client
	if s.API.URL != "" {
		api, err := pixieapi.New(pixieapi.Config{
			URL: s.API.URL, Timeout: s.API.Timeout, Username: s.API.Username, Password: s.API.Password,
			CACertFile: s.API.CACert, Logger: sv.log.With("part", "api"), ServerIP: func() netip.Addr { return sv.dp.Address },
		})
		if err != nil {
			return err
		}
		b = api
		// Files on the API server get its trust settings, and redirects
		// away from it lose its credentials.
		client = &http.Client{
			Transport:     &http.Transport{TLSClientConfig: api.TLSConfig(), ResponseHeaderTimeout: 30 * time.Second, Proxy: http.ProxyFromEnvironment},
			CheckRedirect: api.CheckRedirect,
		}
		sv.log.Info("asking the API server what to boot", "url", s.API.URL)
	}
	sv.fw.Store(set)
	sv.grub.SetBooter(b)
	pol := &dhcpproxy.Policy{Booter: b, Firmware: set, URLs: sv.hs}
	sv.dp.SetPolicy(pol)
	if sv.ds != nil {
		sv.ds.SetPolicy(pol)
	}
	sv.hs.SetPolicy(&httpboot.Policy{Booter: b, Firmware: set, HTTPClient: client})
	return nil
}

func loadFirmware(log *slog.Logger, cfg firmware.Config) (*firmware.Set, error) {
	set, err := firmware.Load(cfg)
	if err != nil {
		return nil, err
	}
	for _, b := range set.All() {
		log.Info("boot program", "arch", b.Arch, "name", b.Name, "from", b.Origin, "bytes", len(b.Data))
	}
	for _, a := range []firmware.Arch{firmware.BIOS, firmware.EFIX64} {
		if _, err := set.For(a); err != nil {
			log.Warn("clients of this architecture will not be answered", "arch", a, "reason", err)
		}
	}
	return set, nil
}

// openNix opens the store and the archive cache.
func openNix(log *slog.Logger, n configs.Nix, reg prometheus.Registerer) (*httpboot.Nix, error) {
	backend := nixstore.BackendCLI
	if n.Backend == "scan" {
		backend = nixstore.BackendScan
	} else if err := checkNixAccess(n.StoreRoot); err != nil {
		return nil, err
	}
	store, err := nixstore.New(nixstore.Options{
		StoreDir: n.StoreDir, Root: n.StoreRoot, Backend: backend, BuildArgs: n.BuildArgs,
		ProfilesDir: n.ProfilesDir, ConfigurationsDir: n.ConfigurationsDir, GCRootsDir: n.GCRootsDir,
		Logger: log.With("part", "nixstore"),
	})
	if err != nil {
		return nil, err
	}
	comp, err := cpiocache.ParseCompression(n.Compression)
	if err != nil {
		return nil, err
	}
	cache, err := cpiocache.Open(cpiocache.Options{
		Dir: n.CacheDir, MaxBytes: n.CacheBytes, Compression: comp, FSRoot: n.StoreRoot,
		Logger: log.With("part", "cpiocache"), Metrics: cpiocache.NewMetrics(reg),
	})
	if err != nil {
		return nil, fmt.Errorf("%w (set nix.cache_dir or --cache-dir to a writable directory)", err)
	}
	log.Info("nix store ready", "store", n.StoreDir, "cache", n.CacheDir, "cache_bytes", n.CacheBytes, "compression", comp)
	return &httpboot.Nix{Store: store, Cache: cache, Compression: comp}, nil
}

// serve runs the ProxyDHCP, TFTP and HTTP servers until ctx ends.
func serve(ctx context.Context, s settings, stderr io.Writer) error {
	log, logOut, err := newBatchedLogger(stderr, s.LogFormat, s.LogLevel)
	if err != nil {
		return err
	}
	defer logOut.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	st := status.New(status.Options{Metrics: status.NewMetrics(reg), Logger: log.With("part", "status")})
	log = slog.New(newTee(log.Handler(), st))
	set, err := loadFirmware(log, s.Firmware)
	if err != nil {
		return err
	}
	for _, w := range s.Warnings {
		log.Warn("config: " + w)
	}

	sv := &server{log: log, status: st}
	sv.hs, err = httpboot.New(httpboot.Options{Port: s.HTTPPort, MaxTransfers: s.HTTPMaxTransfers, Logger: log.With("server", "http"), Metrics: httpboot.NewMetrics(reg), OnEvent: st.HTTP})
	if err != nil {
		return err
	}
	acct, err := targetAccount(s.User, s.AllowRoot)
	if err != nil {
		return err
	}
	useNix := s.Nix.Used || s.NixNeeded
	if useNix {
		if err := acct.prepareDir(s.Nix.CacheDir); err != nil {
			return fmt.Errorf("cache dir %s: %w", s.Nix.CacheDir, err)
		}
	}
	sv.grub = &grubboot.Server{Logger: log.With("server", "grub")}
	onBoot := func(e dhcpproxy.Event) {
		st.DHCP(e)
		sv.grub.Remember(machines.Identity{MAC: e.MAC, UUID: e.UUID, Arch: e.Arch, IP: e.IP, Hostname: e.Hostname, Labels: e.Labels})
	}
	sv.dp = &dhcpproxy.Server{Interface: s.Interface, Address: s.Address, Logger: log.With("server", "proxydhcp"), Metrics: dhcpproxy.NewMetrics(reg),
		OnEvent: onBoot, PXEOnly: s.DHCP.IsServer()}
	if s.DHCP.IsServer() {
		// The DHCP server answers DISCOVERs and REQUESTs on 67 with the
		// boot file too; ProxyDHCP keeps port 4011 for EDK2's BINL
		// REQUEST. Both report boots alike to the status page.
		sv.ds = &dhcpserver.Server{Interface: s.Interface, Address: s.Address, Config: s.DHCP.Server,
			Logger: log.With("server", "dhcp"), Metrics: dhcpserver.NewMetrics(reg), OnBoot: onBoot, OnLease: st.Lease}
		st.WatchLeases(sv.ds.Leases)
		if err := acct.prepareStateFile(s.DHCP.Server.LeaseFile); err != nil {
			return fmt.Errorf("dhcp.lease_file %s: %w", s.DHCP.Server.LeaseFile, err)
		}
	}
	if err := sv.install(s, set); err != nil {
		return err
	}

	// Boot programs, then the Secure Boot chain's GRUB configs and files.
	var src tftpd.Source = tftpd.Chain(sv.tftpSource(), sv.grub.Source())
	if s.TFTP.Root != "" {
		src = tftpd.Chain(src, tftpd.Dir(s.TFTP.Root))
	}
	ts, err := tftpd.New(tftpd.Config{
		Source: src, Logger: log.With("server", "tftp"), Metrics: tftpd.NewMetrics(reg), OnTransfer: st.TFTP,
		MaxTransfers: s.TFTP.MaxTransfers, Timeout: s.TFTP.Timeout, Retries: s.TFTP.Retries,
	})
	if err != nil {
		return err
	}
	sv.hs.Handle("GET /metrics", "metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	page := st.Handler()
	for _, p := range []string{"GET /{$}", "GET /status.json", "GET /events", "GET /static/{name}"} {
		sv.hs.Handle(p, "status", page)
	}

	// Bind everything first: a port we cannot have fails the start.
	if sv.ds != nil {
		// First: it looks for other DHCP servers before binding 67, and
		// opens its ICMP socket while still privileged.
		if err := sv.ds.Listen(ctx); err != nil {
			return fmt.Errorf("dhcp server: %w", err)
		}
		defer sv.ds.Close()
		// One address for both, whichever way it was chosen.
		sv.dp.Address = sv.ds.Address
	}
	if err := sv.dp.Listen(ctx); err != nil {
		return err
	}
	defer sv.dp.Close()
	var lc net.ListenConfig
	tconn, err := tftpd.Listen(ctx, "0.0.0.0:69")
	if err != nil {
		return err
	}
	hln, err := lc.Listen(ctx, "tcp", net.JoinHostPort(s.ListenAddr, strconv.Itoa(s.HTTPPort)))
	if err != nil {
		tconn.Close()
		return fmt.Errorf("http: %w (set --port or http_port to a free port)", err)
	}
	// Ports are bound: nothing below needs root.
	if err := acct.drop(log); err != nil {
		tconn.Close()
		hln.Close()
		return err
	}
	if f, ok := s.Booter.(interface{ LocalFiles() []string }); ok {
		if err := checkReadableAll(f.LocalFiles()); err != nil {
			tconn.Close()
			hln.Close()
			return err
		}
	}
	if useNix {
		nx, err := openNix(log, s.Nix, reg)
		if err != nil {
			tconn.Close()
			hln.Close()
			return err
		}
		defer nx.Cache.Close()
		sv.hs.SetNix(nx)
		if s.WarmFirst {
			if err := warmAll(ctx, log, nx, s.Booter, stderr); err != nil {
				tconn.Close()
				hln.Close()
				return err
			}
		}
	}
	sv.summarize(s, set)
	dhcpMode := configs.DHCPModeProxy
	if sv.ds != nil {
		dhcpMode = configs.DHCPModeServer
	}
	log.Info("bootserve ready", "interface", sv.dp.InterfaceName(), "address", sv.dp.Address, "http", hln.Addr().String(), "dhcp", dhcpMode)
	logOut.Flush() // scripts and tests wait for this line

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return sv.dp.Serve(gctx) })
	if sv.ds != nil {
		g.Go(func() error { return sv.ds.Serve(gctx) })
	}
	g.Go(func() error { return ts.Serve(gctx, tconn) })
	g.Go(func() error { return sv.hs.Serve(gctx, hln) })
	if s.ConfigPath != "" {
		g.Go(func() error { sv.watchConfig(gctx, s); return nil })
	}
	err = g.Wait()
	if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("bootserve stopped")
	return nil
}
