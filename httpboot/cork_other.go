//go:build !linux

package httpboot

import "net"

// setCork is Linux-only (TCP_CORK); elsewhere bodies go out uncorked.
func setCork(*net.TCPConn, bool) {}
