//go:build !linux

package tftpd

import (
	"errors"
	"net/netip"
)

// listenThreadConn: thread sockets are Linux-only; elsewhere every transfer
// uses the netpoller.
func listenThreadConn(netip.Addr, netip.AddrPort) (transferConn, error) {
	return nil, errors.ErrUnsupported
}
