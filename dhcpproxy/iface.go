package dhcpproxy

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
)

// ChooseInterface returns the interface to serve on: the named one, or else
// the interface of the IPv4 default route, or else the first interface that
// is up, not loopback and has an IPv4 address.
func ChooseInterface(name string) (*net.Interface, error) {
	if name != "" {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			return nil, fmt.Errorf("interface %q: %w (see `ip link`; set interface in the config or --interface)", name, err)
		}
		return ifi, nil
	}
	if n, err := defaultRouteInterface("/proc/net/route"); err == nil && n != "" {
		if ifi, err := net.InterfaceByName(n); err == nil {
			return ifi, nil
		}
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	for i := range ifs {
		ifi := &ifs[i]
		if ifi.Flags&net.FlagUp == 0 || ifi.Flags&net.FlagLoopback != 0 {
			continue
		}
		if _, err := InterfaceIPv4(ifi); err == nil {
			return ifi, nil
		}
	}
	return nil, errors.New("no interface with an IPv4 address is up: set interface in the config or --interface")
}

// defaultRouteInterface reads the kernel's IPv4 routing table for the
// interface of the default route.
func defaultRouteInterface(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// Iface Destination Gateway Flags RefCnt Use Metric Mask ...
		if len(fields) >= 8 && fields[1] == "00000000" && fields[7] == "00000000" {
			return fields[0], nil
		}
	}
	return "", sc.Err()
}

// InterfaceIPv4 returns the first IPv4 address of an interface.
func InterfaceIPv4(ifi *net.Interface) (netip.Addr, error) {
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("addresses of %s: %w", ifi.Name, err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP.To4()); ok && n.IP.To4() != nil {
				return ip, nil
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("interface %s has no IPv4 address", ifi.Name)
}
