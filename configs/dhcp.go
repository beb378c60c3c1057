package configs

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"github.com/bootserve/bootserve/dhcpserver"
	"github.com/bootserve/bootserve/machines"
)

// DHCP modes.
const (
	// DHCPModeProxy answers network-boot clients beside the LAN's own DHCP
	// server (ProxyDHCP on ports 67 and 4011): the default.
	DHCPModeProxy = "proxy"
	// DHCPModeServer makes bootserve the LAN's DHCP server: it leases
	// addresses to every client and names itself as next-server, which
	// Debian's signed GRUB needs.
	DHCPModeServer = "server"
)

// DefaultLeaseFile is where server mode keeps its leases by default.
const DefaultLeaseFile = "/var/lib/bootserve/leases.json"

// DHCPFile is the [dhcp] table. The server-mode keys are named like the
// fields of dhcpserver.Config, whose messages name them too.
type DHCPFile struct {
	Mode              string            `toml:"mode"`
	PoolStart         string            `toml:"pool_start"`
	PoolEnd           string            `toml:"pool_end"`
	SubnetMask        string            `toml:"subnet_mask"`
	LeaseTime         Duration          `toml:"lease_time"`
	Routers           StringList        `toml:"routers"`
	DNSServers        StringList        `toml:"dns_servers"`
	DomainName        string            `toml:"domain_name"`
	LeaseFile         string            `toml:"lease_file"`
	AllowOtherServers bool              `toml:"allow_other_servers"`
	Reservations      []ReservationFile `toml:"reservation"`
}

// ReservationFile is one [[dhcp.reservation]]: a fixed address for a MAC.
type ReservationFile struct {
	MAC string `toml:"mac"`
	IP  string `toml:"ip"`
}

// DHCP is the checked [dhcp] table.
type DHCP struct {
	// Mode is DHCPModeProxy or DHCPModeServer.
	Mode string
	// Server is what the DHCP server hands out (server mode only).
	Server dhcpserver.Config
}

// IsServer says whether bootserve is the LAN's DHCP server.
func (d DHCP) IsServer() bool { return d.Mode == DHCPModeServer }

// dhcpKeyRE finds the key a dhcpserver message names ("dhcp.pool_start ...").
var dhcpKeyRE = regexp.MustCompile(`\bdhcp\.([a-z_]+)`)

func (l *loader) dhcpSection(df *DHCPFile) DHCP {
	errsBefore := len(l.errs)
	d := DHCP{Mode: df.Mode}
	switch d.Mode {
	case "":
		d.Mode = DHCPModeProxy
	case DHCPModeProxy, DHCPModeServer:
	default:
		l.errorf("dhcp.mode", "%q is not %q (ProxyDHCP beside the LAN's DHCP server, the default) or %q (bootserve is the DHCP server)", df.Mode, DHCPModeProxy, DHCPModeServer)
		return d
	}
	if !d.IsServer() {
		// Server keys in proxy mode do nothing: say so, but let a user
		// switch modes by changing one line.
		for _, k := range df.serverKeys() {
			l.warnf("dhcp."+k, `is only used with dhcp.mode = "server": ignored in ProxyDHCP mode`)
		}
		return d
	}

	c := &d.Server
	c.PoolStart = l.ipv4("dhcp.pool_start", df.PoolStart, true)
	c.PoolEnd = l.ipv4("dhcp.pool_end", df.PoolEnd, true)
	if df.SubnetMask != "" {
		c.SubnetMask = l.ipv4("dhcp.subnet_mask", df.SubnetMask, false)
	}
	c.LeaseTime = df.LeaseTime.Duration
	if c.LeaseTime < 0 {
		l.errorf("dhcp.lease_time", "must not be negative")
		c.LeaseTime = 0
	}
	for i, s := range df.Routers {
		if a := l.ipv4(fmt.Sprintf("dhcp.routers[%d]", i), s, false); a.IsValid() {
			c.Routers = append(c.Routers, a)
		}
	}
	for i, s := range df.DNSServers {
		if a := l.ipv4(fmt.Sprintf("dhcp.dns_servers[%d]", i), s, false); a.IsValid() {
			c.DNS = append(c.DNS, a)
		}
	}
	c.DomainName = df.DomainName
	c.LeaseFile = l.path(df.LeaseFile)
	if c.LeaseFile == "" {
		c.LeaseFile = DefaultLeaseFile
	}
	c.AllowOtherServers = df.AllowOtherServers

	macs := map[string]int{}
	ips := map[netip.Addr]int{}
	for i, rf := range df.Reservations {
		key := fmt.Sprintf("dhcp.reservation[%d]", i)
		mac, err := machines.ParseMAC(rf.MAC)
		if err != nil {
			l.errorf(key+".mac", "%v", err)
		}
		ip := l.ipv4(key+".ip", rf.IP, true)
		if err != nil || !ip.IsValid() {
			continue
		}
		if j, dup := macs[mac.String()]; dup {
			l.errorf(key+".mac", "%v is already reserved by dhcp.reservation[%d]: keep one entry", mac, j)
			continue
		}
		if j, dup := ips[ip]; dup {
			l.errorf(key+".ip", "%v is already reserved by dhcp.reservation[%d]: give each MAC its own address", ip, j)
			continue
		}
		macs[mac.String()], ips[ip] = i, i
		c.Reservations = append(c.Reservations, dhcpserver.Reservation{MAC: mac, IP: ip})
	}

	if len(l.errs) > errsBefore {
		return d // Validate would repeat what is already reported
	}
	// What involves several keys (pool order and size, the mask, the lease
	// time's minimum, the domain's characters); the message names its key.
	if err := c.Validate(); err != nil {
		msg := err.Error()
		key := "dhcp"
		if m := dhcpKeyRE.FindStringSubmatch(msg); m != nil {
			key = "dhcp." + m[1]
		} else if strings.Contains(msg, "pool") {
			key = "dhcp.pool_start"
		}
		l.errorf(key, "%s", strings.TrimPrefix(msg, key+" "))
	}
	return d
}

// ipv4 parses an IPv4 address given at key; required says an empty value
// is an error too.
func (l *loader) ipv4(key, s string, required bool) netip.Addr {
	if s == "" {
		if required {
			l.errorf(key, `must be set in server mode (an IPv4 address like "192.168.1.100")`)
		}
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		l.errorf(key, "%q is not an IPv4 address", s)
		return netip.Addr{}
	}
	return a
}

// serverKeys lists the server-mode keys that are set.
func (df *DHCPFile) serverKeys() []string {
	var k []string
	for _, x := range []struct {
		set  bool
		name string
	}{
		{df.PoolStart != "", "pool_start"}, {df.PoolEnd != "", "pool_end"}, {df.SubnetMask != "", "subnet_mask"},
		{df.LeaseTime.Duration != 0, "lease_time"}, {len(df.Routers) > 0, "routers"}, {len(df.DNSServers) > 0, "dns_servers"},
		{df.DomainName != "", "domain_name"}, {df.LeaseFile != "", "lease_file"}, {df.AllowOtherServers, "allow_other_servers"},
		{len(df.Reservations) > 0, "reservation"},
	} {
		if x.set {
			k = append(k, x.name)
		}
	}
	return k
}
