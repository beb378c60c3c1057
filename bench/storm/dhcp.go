package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	"golang.org/x/sys/unix"
)

// Retransmission schedules of the firmware the clients imitate.
var (
	// EDK2 PxeBcDhcp4Discover: 4 tries with 4, 8, 16 and 32 s timeouts.
	edk2DiscoverTimeouts = []time.Duration{4 * time.Second, 8 * time.Second, 16 * time.Second, 32 * time.Second}
	// EDK2 boot server request on 4011: PXEBC_BOOT_REQUEST_TIMEOUT (1 s) × try, 4 tries.
	edk2BootRequestTimeouts = []time.Duration{1 * time.Second, 2 * time.Second, 3 * time.Second, 4 * time.Second}
	// iPXE DHCP discovery: 1 s doubling up to 10 s.
	ipxeDiscoverTimeouts = []time.Duration{1 * time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}
)

// What OVMF (EDK2 PXE on virtio-net) puts in its DISCOVER and its REQUEST to
// port 4011, as captured in shared/vectors/split-uefi-dhcp.pcap.
var edk2ParamRequest = codes(1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58, 59, 60,
	66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135)

// What Debian's ipxe.efi/snponly.efi sends (same capture).
var ipxeParamRequest = codes(1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132, 133, 134, 135, 175, 203)

func codes(cs ...uint8) []dhcpv4.OptionCode {
	out := make([]dhcpv4.OptionCode, len(cs))
	for i, c := range cs {
		out[i] = dhcpv4.GenericOptionCode(c)
	}
	return out
}

// ipxeFeatures is iPXE's encapsulated option 175 from the capture (version, feature flags).
var ipxeFeatures = []byte{177, 5, 1, 26, 244, 16, 0, 235, 3, 1, 0, 0, 23, 1, 1, 36, 1, 1, 19, 1, 1, 17, 1, 1, 39, 1, 1, 41, 1, 1, 21, 1, 1, 27, 1, 1, 18, 1, 1}

func newXID() dhcpv4.TransactionID {
	var x dhcpv4.TransactionID
	_, _ = rand.Read(x[:])
	return x
}

func xidKey(x dhcpv4.TransactionID) uint32 { return binary.BigEndian.Uint32(x[:]) }

// edk2Packet is an OVMF-style DISCOVER (broadcast, no address yet) or the
// REQUEST it sends to port 4011 once it has an address (ciaddr set, new xid).
func edk2Packet(mt dhcpv4.MessageType, mac net.HardwareAddr, guid []byte, ciaddr net.IP) (*dhcpv4.DHCPv4, error) {
	mods := []dhcpv4.Modifier{
		dhcpv4.WithHwAddr(mac),
		dhcpv4.WithTransactionID(newXID()),
		dhcpv4.WithMessageType(mt),
		dhcpv4.WithOption(dhcpv4.OptMaxMessageSize(1472)),
		dhcpv4.WithOption(dhcpv4.OptParameterRequestList(edk2ParamRequest...)),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, guid),
		dhcpv4.WithGeneric(dhcpv4.OptionClientNetworkInterfaceIdentifier, []byte{1, 3, 0}),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64)),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003000")),
	}
	if ciaddr != nil {
		mods = append(mods, dhcpv4.WithClientIP(ciaddr))
	} else {
		mods = append(mods, dhcpv4.WithBroadcast(true))
	}
	return dhcpv4.New(mods...)
}

// ipxePacket is a DISCOVER (or a 4011 REQUEST) from Debian's EFI iPXE with the
// given user class ("iPXE"; pixiecore's own iPXE build says "pixiecore").
func ipxePacket(mt dhcpv4.MessageType, mac net.HardwareAddr, guid []byte, userClass string, ciaddr net.IP) (*dhcpv4.DHCPv4, error) {
	mods := []dhcpv4.Modifier{
		dhcpv4.WithHwAddr(mac),
		dhcpv4.WithTransactionID(newXID()),
		dhcpv4.WithMessageType(mt),
		dhcpv4.WithOption(dhcpv4.OptMaxMessageSize(1472)),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64)),
		dhcpv4.WithGeneric(dhcpv4.OptionClientNetworkInterfaceIdentifier, []byte{1, 3, 10}),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003010")),
		// iPXE sends its user class as a raw string, not in RFC 3004 form.
		dhcpv4.WithGeneric(dhcpv4.OptionUserClassInformation, []byte(userClass)),
		dhcpv4.WithOption(dhcpv4.OptParameterRequestList(ipxeParamRequest...)),
		dhcpv4.WithGeneric(dhcpv4.GenericOptionCode(175), ipxeFeatures),
		dhcpv4.WithOption(dhcpv4.OptClientIdentifier(append([]byte{1}, mac...))),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, guid),
	}
	if ciaddr != nil {
		mods = append(mods, dhcpv4.WithClientIP(ciaddr))
	}
	return dhcpv4.New(mods...)
}

// bootFile is the boot file of a reply: option 67 when present (long URLs
// only fit there), else the BOOTP file field.
func bootFile(p *dhcpv4.DHCPv4) string {
	if f := p.BootFileNameOption(); f != "" {
		return f
	}
	return p.BootFileName
}

// mux owns the one socket on UDP port 68 that every simulated client shares,
// as clients without an address all hear the same broadcast replies, and
// hands each reply to the client whose transaction ID it carries.
type mux struct {
	conn *net.UDPConn

	mu      sync.Mutex
	waiters map[uint32]chan<- *dhcpv4.DHCPv4

	received atomic.Int64 // datagrams read
	stray    atomic.Int64 // replies no client waits for (late duplicates, other servers' xids)
}

// listenMux binds 0.0.0.0:68 on iface with a large receive buffer, so that a
// burst of 500 broadcast replies is not dropped by the generator itself.
func listenMux(ctx context.Context, iface string, rcvbuf int) (*mux, error) {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = errors.Join(
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1),
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1),
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf),
				unix.BindToDevice(int(fd), iface),
			)
		})
		return errors.Join(err, serr)
	}}
	c, err := lc.ListenPacket(ctx, "udp4", "0.0.0.0:68")
	if err != nil {
		return nil, fmt.Errorf("listen on udp port 68 of %s: %w (needs root, and no DHCP client on that interface)", iface, err)
	}
	return &mux{conn: c.(*net.UDPConn), waiters: map[uint32]chan<- *dhcpv4.DHCPv4{}}, nil
}

func (m *mux) register(x dhcpv4.TransactionID, ch chan<- *dhcpv4.DHCPv4) {
	m.mu.Lock()
	m.waiters[xidKey(x)] = ch
	m.mu.Unlock()
}

func (m *mux) unregister(x dhcpv4.TransactionID) {
	m.mu.Lock()
	delete(m.waiters, xidKey(x))
	m.mu.Unlock()
}

// deliver passes a reply to its client without ever blocking the reader.
func (m *mux) deliver(p *dhcpv4.DHCPv4) {
	m.mu.Lock()
	ch := m.waiters[xidKey(p.TransactionID)]
	m.mu.Unlock()
	if ch == nil {
		m.stray.Add(1)
		return
	}
	select {
	case ch <- p:
	default:
		m.stray.Add(1)
	}
}

func (m *mux) readLoop() {
	buf := make([]byte, 2048)
	for {
		n, _, err := m.conn.ReadFromUDP(buf)
		if err != nil {
			return
		}
		m.received.Add(1)
		p, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || p.OpCode != dhcpv4.OpcodeBootReply {
			continue
		}
		m.deliver(p)
	}
}

func (m *mux) broadcast(p *dhcpv4.DHCPv4) error {
	_, err := m.conn.WriteToUDP(p.ToBytes(), &net.UDPAddr{IP: net.IPv4bcast, Port: 67})
	return err
}

// exchange sends req (again after each timeout) until accept takes a reply
// from ch or the schedule runs out. It returns the reply and how many
// retransmissions it took.
func exchange(ctx context.Context, send func() error, ch <-chan *dhcpv4.DHCPv4, timeouts []time.Duration, accept func(*dhcpv4.DHCPv4) bool) (*dhcpv4.DHCPv4, int, error) {
	for try, timeout := range timeouts {
		if err := send(); err != nil {
			return nil, try, fmt.Errorf("send: %w", err)
		}
		timer := time.NewTimer(timeout)
	wait:
		for {
			select {
			case p := <-ch:
				if accept(p) {
					timer.Stop()
					return p, try, nil
				}
			case <-timer.C:
				break wait
			case <-ctx.Done():
				timer.Stop()
				return nil, try, ctx.Err()
			}
		}
	}
	var total time.Duration
	for _, t := range timeouts {
		total += t
	}
	return nil, len(timeouts) - 1, fmt.Errorf("no answer after %d tries (%s)", len(timeouts), total)
}
