// Package dhcpserver is bootserve's full DHCP server mode: on a segment with
// no other DHCP server (or one that cannot name a next-server), it leases
// addresses from a pool to every client and, to network-boot clients, adds
// the boot file that dhcpproxy chooses, with siaddr set to bootserve itself
// (Debian's signed GRUB takes its TFTP server only from there).
//
// Allocation (pool.go) and reply building (reply.go) are plain values in,
// plain values out; sockets, the ICMP in-use check and the probe for other
// DHCP servers live in server.go, ping.go and probe.go. Leases persist in a
// JSON file written atomically before each ACK (leasefile.go).
//
// Relayed requests (giaddr set) are out of scope: the pool describes the
// server's own segment, so they are counted and ignored.
package dhcpserver

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// DefaultLeaseTime is the lease time when the config gives none.
const DefaultLeaseTime = time.Hour

// maxPoolSize bounds the pool (a /16): allocation scans it linearly.
const maxPoolSize = 1 << 16

// Config is what the server hands out. Field comments name the config keys
// ([dhcp] section) they come from, so errors can name them too.
type Config struct {
	// PoolStart and PoolEnd (pool_start, pool_end) are the first and last
	// addresses leased dynamically; both inside the interface's subnet.
	PoolStart, PoolEnd netip.Addr
	// SubnetMask (subnet_mask) is option 1; invalid means the mask of the
	// interface's address.
	SubnetMask netip.Addr
	// LeaseTime (lease_time); zero means DefaultLeaseTime.
	LeaseTime time.Duration
	// Routers (routers) is option 3, DNS (dns_servers) option 6 and
	// DomainName (domain_name) option 15; each left out when empty.
	Routers    []netip.Addr
	DNS        []netip.Addr
	DomainName string
	// LeaseFile (lease_file) keeps leases across restarts; empty keeps
	// them in memory only.
	LeaseFile string
	// Reservations ([[dhcp.reservation]] mac, ip) give a MAC a fixed
	// address, inside the subnet but not necessarily inside the pool.
	Reservations []Reservation
	// AllowOtherServers (allow_other_servers) skips the start-up check
	// that no other DHCP server answers on the segment.
	AllowOtherServers bool
}

// Reservation is a static address for one MAC.
type Reservation struct {
	MAC net.HardwareAddr
	IP  netip.Addr
}

// Validate checks what can be checked without the interface: call it when
// loading the config. Listen checks the rest against the interface.
func (c *Config) Validate() error {
	if !c.PoolStart.Is4() || !c.PoolEnd.Is4() {
		return errors.New("dhcp.pool_start and dhcp.pool_end must both be set to IPv4 addresses in server mode")
	}
	if c.PoolEnd.Less(c.PoolStart) {
		return fmt.Errorf("dhcp.pool_start %v is after dhcp.pool_end %v: swap them", c.PoolStart, c.PoolEnd)
	}
	if n := poolSize(c.PoolStart, c.PoolEnd); n > maxPoolSize {
		return fmt.Errorf("dhcp pool %v-%v holds %d addresses: at most %d are supported, shrink it", c.PoolStart, c.PoolEnd, n, maxPoolSize)
	}
	if c.SubnetMask.IsValid() {
		bits, err := maskBits(c.SubnetMask)
		if err != nil {
			return err
		}
		p := netip.PrefixFrom(c.PoolStart, bits).Masked()
		if !p.Contains(c.PoolEnd) {
			return fmt.Errorf("dhcp.pool_start %v and dhcp.pool_end %v are not in the same %v subnet: fix the pool or dhcp.subnet_mask", c.PoolStart, c.PoolEnd, c.SubnetMask)
		}
	}
	if c.LeaseTime != 0 && c.LeaseTime < time.Minute {
		return fmt.Errorf("dhcp.lease_time %v is too short: use at least 1m (the default is %v)", c.LeaseTime, DefaultLeaseTime)
	}
	for _, a := range c.Routers {
		if !a.Is4() {
			return fmt.Errorf("dhcp.routers: %v is not an IPv4 address", a)
		}
	}
	for _, a := range c.DNS {
		if !a.Is4() {
			return fmt.Errorf("dhcp.dns_servers: %v is not an IPv4 address", a)
		}
	}
	if len(c.DomainName) > 255 {
		return errors.New("dhcp.domain_name is longer than 255 bytes")
	}
	for _, r := range c.DomainName {
		if r <= ' ' || r > '~' {
			return fmt.Errorf("dhcp.domain_name %q: use letters, digits, dots and dashes only", c.DomainName)
		}
	}
	macs := map[string]bool{}
	ips := map[netip.Addr]bool{}
	for _, r := range c.Reservations {
		if len(r.MAC) != 6 {
			return fmt.Errorf("dhcp.reservation: %q is not an Ethernet MAC address", r.MAC)
		}
		if !r.IP.Is4() {
			return fmt.Errorf("dhcp.reservation for %v: ip %v is not an IPv4 address", r.MAC, r.IP)
		}
		if macs[r.MAC.String()] {
			return fmt.Errorf("dhcp.reservation: %v is reserved twice: keep one entry", r.MAC)
		}
		if ips[r.IP] {
			return fmt.Errorf("dhcp.reservation: %v is reserved for two MACs: give each its own address", r.IP)
		}
		macs[r.MAC.String()], ips[r.IP] = true, true
	}
	return nil
}

// subnet is the segment the server hands addresses out on, resolved
// against the interface.
type subnet struct {
	prefix    netip.Prefix // masked
	mask      net.IPMask
	broadcast netip.Addr
	server    netip.Addr
}

// resolve checks the config against the server's address and the
// interface's prefix (which holds that address), and returns the subnet
// and, when the configured mask differs from the interface's, a warning.
func (c *Config) resolve(server netip.Addr, iface netip.Prefix) (subnet, string, error) {
	if err := c.Validate(); err != nil {
		return subnet{}, "", err
	}
	bits := iface.Bits()
	var warn string
	if c.SubnetMask.IsValid() {
		b, _ := maskBits(c.SubnetMask)
		if b != bits {
			warn = fmt.Sprintf("dhcp.subnet_mask %v differs from the interface's /%d: clients get the configured mask", c.SubnetMask, bits)
		}
		bits = b
	}
	sn := subnet{prefix: netip.PrefixFrom(server, bits).Masked(), mask: net.CIDRMask(bits, 32), server: server}
	sn.broadcast = lastAddr(sn.prefix)
	if bits > 30 {
		return subnet{}, "", fmt.Errorf("subnet %v of %v is too small for a DHCP pool: give the interface a /30 or larger", sn.prefix, server)
	}
	ifNet := iface.Masked()
	inside := func(a netip.Addr) bool { return sn.prefix.Contains(a) && ifNet.Contains(a) }
	for _, a := range []netip.Addr{c.PoolStart, c.PoolEnd} {
		if !inside(a) {
			return subnet{}, "", fmt.Errorf("dhcp pool %v-%v is not inside the interface's subnet %v: pick addresses from it", c.PoolStart, c.PoolEnd, ifNet)
		}
	}
	inPool := func(a netip.Addr) bool { return !a.Less(c.PoolStart) && !c.PoolEnd.Less(a) }
	if inPool(sn.prefix.Addr()) || inPool(sn.broadcast) {
		return subnet{}, "", fmt.Errorf("dhcp pool %v-%v includes the network or broadcast address of %v: start and end inside it", c.PoolStart, c.PoolEnd, sn.prefix)
	}
	if inPool(server) {
		return subnet{}, "", fmt.Errorf("dhcp pool %v-%v includes the server's own address %v: move the pool past it", c.PoolStart, c.PoolEnd, server)
	}
	for _, r := range c.Routers {
		if inPool(r) {
			return subnet{}, "", fmt.Errorf("dhcp.routers: %v is inside the pool %v-%v: shrink the pool or move the router", r, c.PoolStart, c.PoolEnd)
		}
	}
	for _, r := range c.Reservations {
		if !inside(r.IP) || r.IP == sn.prefix.Addr() || r.IP == sn.broadcast || r.IP == server {
			return subnet{}, "", fmt.Errorf("dhcp.reservation for %v: %v is not a usable host address of %v", r.MAC, r.IP, sn.prefix)
		}
	}
	return sn, warn, nil
}

func (c *Config) leaseTime() time.Duration {
	if c.LeaseTime == 0 {
		return DefaultLeaseTime
	}
	return c.LeaseTime
}

// maskBits turns a dotted mask into a prefix length.
func maskBits(m netip.Addr) (int, error) {
	if !m.Is4() {
		return 0, fmt.Errorf("dhcp.subnet_mask %v is not an IPv4 mask", m)
	}
	b := m.As4()
	ones, bits := net.IPMask(b[:]).Size()
	if bits == 0 {
		return 0, fmt.Errorf("dhcp.subnet_mask %v is not a contiguous mask (like 255.255.255.0)", m)
	}
	return ones, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v |= 1<<(32-p.Bits()) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func addrUint(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func poolSize(start, end netip.Addr) int {
	return int(addrUint(end)-addrUint(start)) + 1
}
