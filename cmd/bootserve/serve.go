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

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/bootserve/bootserve/configs"
	"github.com/bootserve/bootserve/dhcpproxy"
	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/httpboot"
	"github.com/bootserve/bootserve/machines"
	"github.com/bootserve/bootserve/tftpd"
)

// settings is everything serve needs, from flags or a config file.
type settings struct {
	Interface  string
	Address    netip.Addr // advertised; invalid = the interface's
	ListenAddr string     // HTTP bind address; empty = all
	HTTPPort   int
	LogLevel   slog.Level
	LogFormat  string
	Firmware   firmware.Config
	TFTP       configs.TFTP
	Booter     machines.Booter
}

func settingsFromConfig(c *configs.Config) settings {
	return settings{
		Interface: c.Interface, Address: c.Address, HTTPPort: c.HTTPPort,
		LogLevel: c.LogLevel, LogFormat: c.LogFormat, Firmware: c.Firmware, TFTP: c.TFTP, Booter: c.Rules,
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
	return nil
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

// firmwareSource serves the boot programs over TFTP by the names DHCP gave.
func firmwareSource(set *firmware.Set) tftpd.Source {
	return tftpd.SourceFunc(func(_ context.Context, name string, _ netip.Addr) (tftpd.File, int64, error) {
		b, ok := set.Lookup(name)
		if !ok {
			return nil, 0, fs.ErrNotExist
		}
		return tftpd.Bytes(b.Data), int64(len(b.Data)), nil
	})
}

// serve runs the ProxyDHCP, TFTP and HTTP servers until ctx ends.
func serve(ctx context.Context, s settings, stderr io.Writer) error {
	log, err := newLogger(stderr, s.LogFormat, s.LogLevel)
	if err != nil {
		return err
	}
	set, err := firmware.Load(s.Firmware)
	if err != nil {
		return err
	}
	for _, b := range set.All() {
		log.Info("boot program", "arch", b.Arch, "name", b.Name, "from", b.Origin, "bytes", len(b.Data))
	}
	for _, a := range []firmware.Arch{firmware.BIOS, firmware.EFIX64} {
		if _, err := set.For(a); err != nil {
			log.Warn("clients of this architecture will not be answered", "arch", a, "reason", err)
		}
	}
	reg := prometheus.NewRegistry()

	hs, err := httpboot.New(httpboot.Options{Port: s.HTTPPort, Logger: log.With("server", "http"), Metrics: httpboot.NewMetrics(reg)})
	if err != nil {
		return err
	}
	hs.SetPolicy(&httpboot.Policy{Booter: s.Booter, Firmware: set})

	dp := &dhcpproxy.Server{Interface: s.Interface, Address: s.Address, Logger: log.With("server", "proxydhcp"), Metrics: dhcpproxy.NewMetrics(reg)}
	dp.SetPolicy(&dhcpproxy.Policy{Booter: s.Booter, Firmware: set, URLs: hs})

	var src tftpd.Source = firmwareSource(set)
	if s.TFTP.Root != "" {
		src = tftpd.Chain(src, tftpd.Dir(s.TFTP.Root))
	}
	ts, err := tftpd.New(tftpd.Config{
		Source: src, Logger: log.With("server", "tftp"), Metrics: tftpd.NewMetrics(reg),
		MaxTransfers: s.TFTP.MaxTransfers, Timeout: s.TFTP.Timeout, Retries: s.TFTP.Retries,
	})
	if err != nil {
		return err
	}
	hs.Handle("GET /metrics", promhttpHandler(reg))

	// Bind everything first: a port we cannot have fails the start.
	if err := dp.Listen(ctx); err != nil {
		return err
	}
	defer dp.Close()
	var lc net.ListenConfig
	tconn, err := lc.ListenPacket(ctx, "udp4", "0.0.0.0:69")
	if err != nil {
		return fmt.Errorf("tftp: listen on udp port 69: %w (needs root or CAP_NET_BIND_SERVICE, and no other TFTP server)", err)
	}
	hln, err := lc.Listen(ctx, "tcp", net.JoinHostPort(s.ListenAddr, strconv.Itoa(s.HTTPPort)))
	if err != nil {
		tconn.Close()
		return fmt.Errorf("http: %w (set --port or http_port to a free port)", err)
	}
	log.Info("bootserve ready", "interface", dp.InterfaceName(), "address", dp.Address, "http", hln.Addr().String())

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return dp.Serve(gctx) })
	g.Go(func() error { return ts.Serve(gctx, tconn) })
	g.Go(func() error { return hs.Serve(gctx, hln) })
	err = g.Wait()
	if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("bootserve stopped")
	return nil
}

func promhttpHandler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}
