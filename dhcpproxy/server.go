package dhcpproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/ipv4"

	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/internal/dhcpnet"
	"github.com/bootserve/bootserve/machines"
)

// Policy is the part of the server's setup that a config reload replaces.
type Policy struct {
	Booter   machines.Booter
	Firmware *firmware.Set
	URLs     URLs
}

// Event reports one request and what was done with it, for the status page.
type Event struct {
	Time     time.Time
	MAC      net.HardwareAddr
	Arch     firmware.Arch
	ArchName string
	IP       netip.Addr
	UUID     string
	Hostname string
	Labels   []string
	// UserClass is "iPXE" for iPXE clients, else empty.
	UserClass   string
	VendorClass string
	Port        int
	MsgType     string
	Outcome     Outcome
	BootFile    string
	Reason      string
	Target      string
}

// Metrics counts packets by message type and outcome.
type Metrics struct {
	Packets *prometheus.CounterVec
}

// NewMetrics makes the responder's metrics and registers them with reg
// (which may be nil, for tests).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{Packets: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bootserve_dhcp_packets_total",
		Help: "DHCP packets received on ports 67 and 4011, by message type and outcome.",
	}, []string{"type", "outcome"})}
	if reg != nil {
		reg.MustRegister(m.Packets)
	}
	return m
}

// Server is the ProxyDHCP responder. Set the exported fields, call Listen
// (which needs the privilege to bind ports 67 and 4011), then Serve.
type Server struct {
	// Interface to serve on; empty chooses one (see ChooseInterface).
	Interface string
	// Address is the server address put in replies; invalid means the
	// interface's IPv4 address.
	Address netip.Addr
	Logger  *slog.Logger
	Metrics *Metrics
	// OnEvent, if set, is called for every request that reached a decision.
	OnEvent func(Event)
	// MaxInFlight bounds requests being decided at once (a Booter may wait
	// on an API server); more are dropped and counted. Default 64.
	MaxInFlight int
	// RepeatInterval and RepeatBurst bound how often the same request from
	// one MAC is answered, so a flood cannot make us an amplifier.
	// Defaults: 3 answers, then one per 500ms.
	RepeatInterval time.Duration
	RepeatBurst    int
	// PXEOnly listens on port 4011 only: in full-DHCP mode bootserve's
	// DHCP server owns port 67 and answers DISCOVERs itself, while EDK2
	// still sends its BINL REQUEST to 4011.
	PXEOnly bool

	policy  atomic.Pointer[Policy]
	ifi     *net.Interface
	conns   map[int]*ipv4.PacketConn
	limiter *dhcpnet.Limiter
	logOnce *dhcpnet.OnceSet
	workers *dhcpnet.Workers
}

// SetPolicy installs what the server answers with; safe at any time.
func (s *Server) SetPolicy(p *Policy) { s.policy.Store(p) }

// Listen chooses the interface and binds UDP 67 (unless PXEOnly) and 4011
// on it.
func (s *Server) Listen(ctx context.Context) error {
	ifi, err := ChooseInterface(s.Interface)
	if err != nil {
		return err
	}
	if !s.Address.IsValid() {
		a, err := InterfaceIPv4(ifi)
		if err != nil {
			return fmt.Errorf("%w: set address in the config or --listen-addr", err)
		}
		s.Address = a
	}
	s.ifi = ifi
	s.conns = map[int]*ipv4.PacketConn{}
	for _, port := range s.ports() {
		c, err := dhcpnet.ListenUDP(ctx, ifi.Name, port)
		if err != nil {
			s.Close()
			return err
		}
		pc := ipv4.NewPacketConn(c)
		if err := pc.SetControlMessage(ipv4.FlagInterface|ipv4.FlagDst, true); err != nil {
			c.Close()
			s.Close()
			return fmt.Errorf("udp port %d: ask for packet info: %w", port, err)
		}
		s.conns[port] = pc
	}
	return nil
}

// ports are the UDP ports the server answers on.
func (s *Server) ports() []int {
	if s.PXEOnly {
		return []int{PortPXE}
	}
	return []int{PortDHCP, PortPXE}
}

// InterfaceName is the interface Listen chose.
func (s *Server) InterfaceName() string {
	if s.ifi == nil {
		return ""
	}
	return s.ifi.Name
}

// Close releases the sockets.
func (s *Server) Close() {
	for _, c := range s.conns {
		c.Close()
	}
}

// Serve answers requests until ctx is cancelled.
func (s *Server) Serve(ctx context.Context) error {
	if s.conns == nil {
		return errors.New("dhcpproxy: Serve before Listen")
	}
	if s.Logger == nil {
		s.Logger = slog.New(slog.DiscardHandler)
	}
	if s.Metrics == nil {
		s.Metrics = NewMetrics(nil)
	}
	s.workers = dhcpnet.NewWorkers(s.MaxInFlight)
	s.limiter = dhcpnet.NewLimiter(s.RepeatInterval, s.RepeatBurst)
	s.logOnce = dhcpnet.NewOnceSet()
	s.Logger.Info("proxydhcp listening", "interface", s.InterfaceName(), "address", s.Address, "ports", s.ports())

	errc := make(chan error, len(s.conns))
	for port, c := range s.conns {
		go func() { errc <- s.readLoop(ctx, port, c) }()
	}
	<-ctx.Done()
	s.Close()
	var err error
	for range s.conns {
		if e := <-errc; e != nil && !errors.Is(e, net.ErrClosed) {
			err = errors.Join(err, e)
		}
	}
	s.workers.Wait()
	return err
}

func (s *Server) readLoop(ctx context.Context, port int, c *ipv4.PacketConn) error {
	malformed := func(src net.Addr, n int, err error) {
		s.Metrics.Packets.WithLabelValues("unknown", string(Malformed)).Inc()
		s.Logger.Debug("malformed dhcp packet dropped", "port", port, "from", src, "len", n, "err", err)
	}
	return dhcpnet.ReadLoop(ctx, c, s.ifi.Index, malformed, func(req *dhcpv4.DHCPv4, src net.Addr) {
		// Classify and rate-limit here, cheaply and in order: a flood of
		// junk or repeats is counted and dropped without ever taking one
		// of the slots that requests waiting on a Booter need.
		typ := MsgTypeLabel(req)
		client, outcome := Parse(req, port, net.IP(s.Address.AsSlice()))
		if client == nil {
			s.Metrics.Packets.WithLabelValues(typ, string(outcome)).Inc()
			if outcome == IgnoredNotPXE {
				s.Logger.Debug("not a network boot request", "mac", req.ClientHWAddr.String(), "type", typ, "port", port, "vendor_class", req.ClassIdentifier())
			}
			return
		}
		if !s.limiter.Allow(limitKey(client), time.Now()) {
			s.Metrics.Packets.WithLabelValues(typ, string(IgnoredRateLimit)).Inc()
			return
		}
		udpSrc, _ := src.(*net.UDPAddr)
		if !s.workers.Go(func() { s.handle(ctx, port, c, req, client, udpSrc) }) {
			s.Metrics.Packets.WithLabelValues(typ, string(DroppedBusy)).Inc()
		}
	})
}

// MsgTypeLabel names a packet's DHCP message type for metrics and events;
// "bootp" is a packet without one.
func MsgTypeLabel(p *dhcpv4.DHCPv4) string {
	switch p.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		return "discover"
	case dhcpv4.MessageTypeRequest:
		return "request"
	case dhcpv4.MessageTypeInform:
		return "inform"
	case dhcpv4.MessageTypeRelease:
		return "release"
	case dhcpv4.MessageTypeDecline:
		return "decline"
	case dhcpv4.MessageTypeNone:
		return "bootp"
	}
	return "other"
}

// handle decides and answers one classified request.
func (s *Server) handle(ctx context.Context, port int, c *ipv4.PacketConn, req *dhcpv4.DHCPv4, client *Client, src *net.UDPAddr) {
	typ := MsgTypeLabel(req)
	count := func(o Outcome) { s.Metrics.Packets.WithLabelValues(typ, string(o)).Inc() }
	serverIP := net.IP(s.Address.AsSlice())
	ev := Event{
		Time: time.Now(), MAC: client.MAC, ArchName: ArchName(client.ArchCode), IP: client.IP,
		UUID: client.UUID, Hostname: client.Hostname, Labels: client.Labels, VendorClass: client.VendorClass,
		Port: port, MsgType: typ,
	}
	if client.IPXE {
		ev.UserClass = "iPXE"
	}
	emit := func(o Outcome) {
		count(o)
		ev.Outcome = o
		if s.OnEvent != nil {
			s.OnEvent(ev)
		}
	}
	pol := s.policy.Load()
	if pol == nil {
		emit(IgnoredNoTarget)
		return
	}
	arch, _, _ := ArchFor(client.ArchCode)
	ev.Arch = arch
	tgt, err := pol.Booter.Target(ctx, client.Identity(arch))
	if err != nil {
		ev.Reason = err.Error()
		if s.logOnce.First("target " + client.MAC.String()) {
			s.Logger.Info("ignoring network boot request: no boot target for this machine (logged once per MAC)",
				"mac", client.MAC.String(), "arch", ev.ArchName, "uuid", client.UUID, "reason", err)
		}
		emit(IgnoredNoTarget)
		return
	}
	ev.Target = tgt.Name
	offer, outcome := Decide(client, Env{ServerIP: s.Address, Firmware: pol.Firmware, URLs: pol.URLs, SecureBoot: tgt.SecureBoot})
	ev.BootFile, ev.Reason = offer.BootFile, offer.Reason
	if outcome != Answered {
		if s.logOnce.First("arch " + client.MAC.String() + " " + ev.ArchName) {
			s.Logger.Warn("ignoring network boot request: no boot program for its architecture",
				"mac", client.MAC.String(), "arch", ev.ArchName, "reason", offer.Reason)
		}
		emit(outcome)
		return
	}
	reply, err := BuildReply(req, client, offer, serverIP)
	if err != nil {
		s.Logger.Error("build proxydhcp reply", "mac", client.MAC.String(), "err", err)
		emit(SendFailed)
		return
	}
	dst := Destination(req, client, src)
	var cm *ipv4.ControlMessage
	if s.ifi != nil {
		cm = &ipv4.ControlMessage{IfIndex: s.ifi.Index}
	}
	if _, err := c.WriteTo(reply.ToBytes(), cm, dst); err != nil {
		s.Logger.Warn("send proxydhcp reply", "mac", client.MAC.String(), "to", dst, "err", err)
		emit(SendFailed)
		return
	}
	s.Logger.Info("proxydhcp "+reply.MessageType().String(), "mac", client.MAC.String(), "arch", ev.ArchName,
		"ipxe", client.IPXE, "port", port, "boot_file", offer.BootFile, "to", dst, "target", tgt.Name)
	emit(Answered)
}

func limitKey(c *Client) string {
	return fmt.Sprintf("%s/%d/%d", c.MAC, c.MsgType, c.Port)
}
