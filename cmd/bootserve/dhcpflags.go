package main

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/bootserve/bootserve/configs"
)

// dhcpFlags turn on full-DHCP mode from the command line (the commands
// without a config file; with one, they override its [dhcp] table).
type dhcpFlags struct {
	pool         string
	router       string
	dns          string
	domain       string
	leaseFile    string
	leaseTime    time.Duration
	allowOthers  bool
	leaseFileSet bool
}

func (d *dhcpFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&d.pool, "dhcp-server-pool", "", "be the LAN's DHCP server, leasing addresses START-END (e.g. 10.0.0.100-10.0.0.200); the default is ProxyDHCP beside the LAN's own DHCP server")
	fs.StringVar(&d.router, "dhcp-router", "", "with --dhcp-server-pool: the router (option 3) given to clients")
	fs.StringVar(&d.dns, "dhcp-dns", "", "with --dhcp-server-pool: DNS servers given to clients, comma-separated")
	fs.StringVar(&d.domain, "dhcp-domain", "", "with --dhcp-server-pool: the domain name given to clients")
	fs.Func("dhcp-lease-file", "with --dhcp-server-pool: where leases are kept across restarts (default "+configs.DefaultLeaseFile+")", func(v string) error {
		d.leaseFile, d.leaseFileSet = v, true
		return nil
	})
	fs.DurationVar(&d.leaseTime, "dhcp-lease-time", 0, "with --dhcp-server-pool: lease time (default 1h)")
	fs.BoolVar(&d.allowOthers, "dhcp-allow-other-servers", false, "with --dhcp-server-pool: start even if another DHCP server answers on the LAN")
}

// used says whether any server-mode detail was given.
func (d *dhcpFlags) used() bool {
	return d.router != "" || d.dns != "" || d.domain != "" || d.leaseFileSet || d.leaseTime != 0 || d.allowOthers
}

// applyDHCP switches to full-DHCP mode when --dhcp-server-pool is given.
// The other --dhcp-* flags need it, unless the config is in server mode
// already, in which case they override its keys.
func (s *settings) applyDHCP(d dhcpFlags) error {
	if d.pool == "" && !s.DHCP.IsServer() {
		if d.used() {
			return errors.New("the --dhcp-* flags configure full-DHCP mode: add --dhcp-server-pool START-END (or [dhcp] mode = \"server\" in the config)")
		}
		return nil
	}
	c := s.DHCP.Server
	if !s.DHCP.IsServer() {
		c.LeaseFile = configs.DefaultLeaseFile
	}
	if d.pool != "" {
		a, b, ok := strings.Cut(d.pool, "-")
		start, err1 := netip.ParseAddr(strings.TrimSpace(a))
		end, err2 := netip.ParseAddr(strings.TrimSpace(b))
		if !ok || err1 != nil || err2 != nil || !start.Is4() || !end.Is4() {
			return fmt.Errorf("--dhcp-server-pool %q: want START-END, two IPv4 addresses like 10.0.0.100-10.0.0.200", d.pool)
		}
		c.PoolStart, c.PoolEnd = start, end
	}
	if d.router != "" {
		a, err := netip.ParseAddr(d.router)
		if err != nil || !a.Is4() {
			return fmt.Errorf("--dhcp-router %q: want an IPv4 address", d.router)
		}
		c.Routers = []netip.Addr{a}
	}
	if d.dns != "" {
		c.DNS = nil
		for _, f := range strings.Split(d.dns, ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(f))
			if err != nil || !a.Is4() {
				return fmt.Errorf("--dhcp-dns %q: want IPv4 addresses separated by commas", d.dns)
			}
			c.DNS = append(c.DNS, a)
		}
	}
	if d.domain != "" {
		c.DomainName = d.domain
	}
	if d.leaseFileSet {
		if d.leaseFile == "" {
			return errors.New("--dhcp-lease-file: give a path (leases must survive restarts)")
		}
		c.LeaseFile = absIfLocal(d.leaseFile)
	}
	if d.leaseTime != 0 {
		c.LeaseTime = d.leaseTime
	}
	c.AllowOtherServers = c.AllowOtherServers || d.allowOthers
	if err := c.Validate(); err != nil {
		return fmt.Errorf("--dhcp-* flags: %w", err)
	}
	s.DHCP = configs.DHCP{Mode: configs.DHCPModeServer, Server: c}
	return nil
}
