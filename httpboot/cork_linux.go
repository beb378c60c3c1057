package httpboot

import (
	"net"

	"golang.org/x/sys/unix"
)

// setCork sets or clears TCP_CORK on c. Errors are ignored: corking only
// changes how a body is cut into segments, never what is sent.
func setCork(c *net.TCPConn, on bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	v := 0
	if on {
		v = 1
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_CORK, v)
	})
}
