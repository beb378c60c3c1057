package dhcpserver

// Small copies of dhcpproxy internals, until dhcpproxy exports them (see
// each TODO). Keep them identical in behaviour.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/iana"
	"golang.org/x/sys/unix"

	"github.com/bootserve/bootserve/firmware"
)

// rcvBuf is the receive buffer asked for the DHCP socket.
const rcvBuf = 4 << 20

// listenUDP binds 0.0.0.0:port to one interface, with a big receive buffer
// and broadcast allowed. Binding a specific address would miss broadcasts.
//
// TODO(dhcpproxy.ListenUDP): use dhcpproxy.ListenUDP(ctx, ifname, port)
// once exported; this is a copy of dhcpproxy's listenUDP.
func listenUDP(ctx context.Context, ifname string, port int) (net.PacketConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf) != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvBuf)
			}
			serr = errors.Join(
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1),
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1),
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1),
				unix.BindToDevice(int(fd), ifname),
			)
		})
		return errors.Join(err, serr)
	}}
	c, err := lc.ListenPacket(ctx, "udp4", fmt.Sprintf("0.0.0.0:%d", port))
	if err != nil {
		return nil, fmt.Errorf("listen on udp port %d of %s: %w (the DHCP server needs root or CAP_NET_BIND_SERVICE and CAP_NET_RAW)", port, ifname, err)
	}
	return c, nil
}

// archFor maps option 93 to the boot program family, to ask the Booter
// about the machine before dhcpproxy.Decide runs.
//
// TODO(dhcpproxy.ArchFor): use dhcpproxy.ArchFor(code) (firmware.Arch, bool)
// once exported; this copies the architecture part of dhcpproxy's archFor.
func archFor(code iana.Arch) firmware.Arch {
	switch code {
	case iana.INTEL_X86PC:
		return firmware.BIOS
	case iana.EFI_IA32, iana.EFI_X86_HTTP:
		return firmware.EFIIA32
	case iana.EFI_X86_64, iana.EFI_BC, iana.EFI_X86_64_HTTP:
		return firmware.EFIX64
	case iana.EFI_ARM32, iana.EFI_ARM32_HTTP:
		return firmware.EFIARM32
	case iana.EFI_ARM64, iana.EFI_ARM64_HTTP:
		return firmware.EFIARM64
	case iana.EFI_RISCV64, iana.EFI_RISCV64_HTTP:
		return firmware.EFIRISCV64
	}
	return firmware.ArchUnknown
}

// limiter is a token bucket per key with a bounded number of keys.
//
// TODO(dhcpproxy.NewLimiter): use dhcpproxy.NewLimiter(interval, burst,
// max) with Allow(key, now) once exported; this copies dhcpproxy's limiter.
type limiter struct {
	mu       sync.Mutex
	interval time.Duration
	burst    float64
	max      int
	buckets  map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(interval time.Duration, burst, max int) *limiter {
	return &limiter{interval: interval, burst: float64(burst), max: max, buckets: map[string]*bucket{}}
}

func (l *limiter) allow(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= l.max {
			full := time.Duration(l.burst * float64(l.interval))
			for k, b := range l.buckets {
				if now.Sub(b.last) >= full {
					delete(l.buckets, k)
				}
			}
			if len(l.buckets) >= l.max {
				return false
			}
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = min(l.burst, b.tokens+float64(now.Sub(b.last))/float64(l.interval))
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
