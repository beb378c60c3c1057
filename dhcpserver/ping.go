package dhcpserver

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// protoICMP is the IP protocol number of ICMP, for icmp.ParseMessage.
const protoICMP = 1

// pinger checks whether an address is in use before it is offered, the way
// dnsmasq does: an ICMP echo request, and a short wait for the reply. A host
// that drops pings passes the check; its client then DECLINEs the address
// after its own ARP check, or the squatter is found later.
type pinger struct {
	conn *net.IPConn
	id   uint16

	mu      sync.Mutex
	seq     uint16
	waiting map[uint16]pingWait
}

type pingWait struct {
	addr netip.Addr
	got  chan struct{}
}

// listenICMP opens a raw ICMP socket on one interface (privileged).
func listenICMP(ctx context.Context, ifname string) (*pinger, error) {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = unix.BindToDevice(int(fd), ifname) })
		return errors.Join(err, serr)
	}}
	c, err := lc.ListenPacket(ctx, "ip4:icmp", "0.0.0.0")
	if err != nil {
		return nil, fmt.Errorf("open icmp socket on %s for the address-in-use check: %w (needs root or CAP_NET_RAW)", ifname, err)
	}
	var b [2]byte
	_, _ = rand.Read(b[:])
	return &pinger{conn: c.(*net.IPConn), id: binary.BigEndian.Uint16(b[:]), waiting: map[uint16]pingWait{}}, nil
}

// run reads echo replies and wakes their waiters, until the socket closes.
func (p *pinger) run() {
	buf := make([]byte, 1500)
	for {
		// The kernel strips the IPv4 header for ip4:icmp sockets.
		n, from, err := p.conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		m, err := icmp.ParseMessage(protoICMP, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		echo, ok := m.Body.(*icmp.Echo)
		if !ok || uint16(echo.ID) != p.id {
			continue
		}
		ia, _ := from.(*net.IPAddr)
		if ia == nil {
			continue
		}
		src, _ := netip.AddrFromSlice(ia.IP.To4())
		p.mu.Lock()
		if w, ok := p.waiting[uint16(echo.Seq)]; ok && w.addr == src {
			select {
			case w.got <- struct{}{}:
			default:
			}
		}
		p.mu.Unlock()
	}
}

// inUse pings a and says whether it answered within timeout.
func (p *pinger) inUse(ctx context.Context, a netip.Addr, timeout time.Duration) bool {
	p.mu.Lock()
	p.seq++
	seq := p.seq
	w := pingWait{addr: a, got: make(chan struct{}, 1)}
	p.waiting[seq] = w
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.waiting, seq)
		p.mu.Unlock()
	}()
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: int(p.id), Seq: int(seq), Data: []byte("bootserve dhcp address check")}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return false
	}
	if _, err := p.conn.WriteTo(b, &net.IPAddr{IP: a.AsSlice()}); err != nil {
		// Cannot send (no route, ARP failed at once): nobody answers.
		return false
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-w.got:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}

func (p *pinger) close() { p.conn.Close() }
