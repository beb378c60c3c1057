package dhcpserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/ipv4"

	"github.com/bootserve/bootserve/dhcpproxy"
	"github.com/bootserve/bootserve/internal/dhcpnet"
)

// Outcome says what happened to a packet; it is the "outcome" label of
// the packet counter.
type Outcome string

// Outcomes of a packet.
const (
	Offered          Outcome = "offered"
	Acked            Outcome = "acked"
	Nacked           Outcome = "nacked"
	Declined         Outcome = "declined"
	Released         Outcome = "released"
	Informed         Outcome = "informed"
	NoAddress        Outcome = "no_address" // pool exhausted: no OFFER
	IgnoredNotForUs  Outcome = "ignored_not_for_us"
	IgnoredRelayed   Outcome = "ignored_relayed" // giaddr set: out of scope
	IgnoredRateLimit Outcome = "ignored_rate_limit"
	DroppedBusy      Outcome = "dropped_busy"
	Malformed        Outcome = "malformed"
	SendFailed       Outcome = "send_failed"
	LeaseWriteFailed Outcome = "lease_write_failed" // no ACK without the lease on disk
)

// Metrics of the DHCP server.
type Metrics struct {
	Packets   *prometheus.CounterVec
	Leases    prometheus.Gauge
	PoolSize  prometheus.Gauge
	Conflicts *prometheus.CounterVec
}

// NewMetrics makes the server's metrics and registers them with reg (which
// may be nil, for tests).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Packets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bootserve_dhcpserver_packets_total",
			Help: "DHCP packets received by the DHCP server on port 67, by message type and outcome.",
		}, []string{"type", "outcome"}),
		Leases: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bootserve_dhcpserver_leases",
			Help: "Addresses leased right now.",
		}),
		PoolSize: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bootserve_dhcpserver_pool_addresses",
			Help: "Addresses in the dynamic pool.",
		}),
		Conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bootserve_dhcpserver_conflicts_total",
			Help: "Addresses found in use by a host without a lease, by how: ping (before an offer) or decline (by a client).",
		}, []string{"source"}),
	}
	if reg != nil {
		reg.MustRegister(m.Packets, m.Leases, m.PoolSize, m.Conflicts)
	}
	return m
}

// LeaseEvent reports one request and its answer, for the status page.
type LeaseEvent struct {
	Time    time.Time
	MsgType string // discover, request, decline, release, inform
	Outcome Outcome
	MAC     net.HardwareAddr
	// IP is the address offered, leased, refused, declined or released.
	IP       netip.Addr
	Hostname string
	// Expires is the end of the lease (ACK only).
	Expires time.Time
	// BootFile is the boot file the reply carried, if any.
	BootFile string
	Reason   string
}

// Server is the DHCP server. Set the exported fields, call Listen (which
// needs root: ports 67 and 68 and a raw ICMP socket), then Serve.
type Server struct {
	// Interface to serve on; empty chooses one (dhcpproxy.ChooseInterface).
	Interface string
	// Address is the server identifier and siaddr; it must be an address
	// of the interface. Invalid means the interface's first IPv4 address.
	Address netip.Addr
	Config  Config
	Logger  *slog.Logger
	Metrics *Metrics
	// OnLease, if set, is called for every request answered or refused.
	OnLease func(LeaseEvent)
	// OnBoot, if set, is called for every network-boot client, with
	// dhcpproxy's event (so the status page shows both modes alike).
	OnBoot func(dhcpproxy.Event)
	// MaxInFlight bounds requests handled at once. Default 64.
	MaxInFlight int
	// RepeatInterval and RepeatBurst bound how often one MAC's message
	// type is handled. Defaults: 3, then one per 500ms.
	RepeatInterval time.Duration
	RepeatBurst    int
	// PingTimeout is how long to wait for an echo reply before offering
	// an address nobody leases. Default 300ms; negative skips the check.
	PingTimeout time.Duration
	// ProbeWait is how long Listen waits for other DHCP servers to answer
	// its DISCOVER (unless Config.AllowOtherServers). Default 2s.
	ProbeWait time.Duration

	policy  atomic.Pointer[dhcpproxy.Policy]
	ifi     *net.Interface
	conn    *ipv4.PacketConn
	ping    *pinger
	pool    *pool
	opts    netOptions
	inUse   func(context.Context, netip.Addr) bool
	now     func() time.Time
	saveMu  sync.Mutex
	limiter *dhcpnet.Limiter
	logOnce *dhcpnet.OnceSet
	workers *dhcpnet.Workers
}

// SetPolicy installs what network-boot clients are answered with (the same
// Policy as dhcpproxy's); safe at any time.
func (s *Server) SetPolicy(p *dhcpproxy.Policy) { s.policy.Store(p) }

// InterfaceName is the interface Listen chose.
func (s *Server) InterfaceName() string {
	if s.ifi == nil {
		return ""
	}
	return s.ifi.Name
}

// Leases returns the active address records (leases, offers, conflicts)
// sorted by address, for the status page.
func (s *Server) Leases() []Lease {
	if s.pool == nil {
		return nil
	}
	return s.pool.snapshot(s.now())
}

func (s *Server) defaults() {
	if s.Logger == nil {
		s.Logger = slog.New(slog.DiscardHandler)
	}
	if s.Metrics == nil {
		s.Metrics = NewMetrics(nil)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.logOnce == nil {
		s.logOnce = dhcpnet.NewOnceSet()
	}
}

// Listen chooses the interface, checks the config against it, loads the
// lease file, makes sure no other DHCP server answers on the segment, and
// binds UDP 67 and the ICMP socket.
func (s *Server) Listen(ctx context.Context) error {
	s.defaults()
	ifi, err := dhcpproxy.ChooseInterface(s.Interface)
	if err != nil {
		return err
	}
	if !s.Address.IsValid() {
		a, err := dhcpproxy.InterfaceIPv4(ifi)
		if err != nil {
			return fmt.Errorf("%w: give the interface a static IPv4 address for DHCP server mode", err)
		}
		s.Address = a
	}
	prefix, err := interfacePrefix(ifi, s.Address)
	if err != nil {
		return err
	}
	s.ifi = ifi
	if err := s.setup(prefix); err != nil {
		return err
	}
	if !s.Config.AllowOtherServers {
		// Before our own socket exists, so our DISCOVER cannot reach it.
		wait := s.ProbeWait
		if wait <= 0 {
			wait = 2 * time.Second
		}
		others, err := ProbeOtherServers(ctx, ifi.Name, wait)
		if err != nil {
			return err
		}
		if len(others) > 0 {
			return fmt.Errorf("another DHCP server at %v answers on %s: use ProxyDHCP mode (the default), or set [dhcp] allow_other_servers = true", others[0], ifi.Name)
		}
		s.Logger.Info("no other DHCP server answered on the segment", "interface", ifi.Name, "waited", wait)
	}
	c, err := dhcpnet.ListenUDP(ctx, ifi.Name, dhcpproxy.PortDHCP)
	if err != nil {
		return err
	}
	pc := ipv4.NewPacketConn(c)
	if err := pc.SetControlMessage(ipv4.FlagInterface, true); err != nil {
		c.Close()
		return fmt.Errorf("udp port 67: ask for packet info: %w", err)
	}
	s.conn = pc
	if s.PingTimeout >= 0 {
		p, err := listenICMP(ctx, ifi.Name)
		if err != nil {
			s.Close()
			return err
		}
		s.ping = p
		timeout := s.PingTimeout
		if timeout == 0 {
			timeout = 300 * time.Millisecond
		}
		s.inUse = func(ctx context.Context, a netip.Addr) bool { return p.inUse(ctx, a, timeout) }
	}
	return nil
}

// interfacePrefix is the prefix of the interface address a.
func interfacePrefix(ifi *net.Interface, a netip.Addr) (netip.Prefix, error) {
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("addresses of %s: %w", ifi.Name, err)
	}
	for _, ad := range addrs {
		n, ok := ad.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP.To4())
		ones, bits := n.Mask.Size()
		if ok && ip == a && bits == 32 {
			return netip.PrefixFrom(ip, ones), nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("%v is not an address of %s: the DHCP server must use one of the interface's own addresses", a, ifi.Name)
}

// setup resolves the config against the interface prefix and loads the
// lease file.
func (s *Server) setup(prefix netip.Prefix) error {
	s.defaults()
	sn, warn, err := s.Config.resolve(s.Address, prefix)
	if err != nil {
		return err
	}
	if warn != "" {
		s.Logger.Warn(warn)
	}
	s.pool = newPool(&s.Config, sn)
	s.opts = newNetOptions(&s.Config, sn)
	s.Metrics.PoolSize.Set(float64(s.pool.size()))
	if s.Config.LeaseFile == "" {
		s.Logger.Warn("dhcp.lease_file is not set: leases are kept in memory only and forgotten at restart")
		return nil
	}
	ls, err := readLeases(s.Config.LeaseFile)
	if err != nil {
		return err
	}
	now := s.now()
	if dropped := s.pool.load(ls, now); dropped > 0 {
		s.Logger.Info("lease file: dropped expired leases and leases the current pool does not cover", "file", s.Config.LeaseFile, "dropped", dropped)
	}
	s.Metrics.Leases.Set(float64(s.pool.bound(now)))
	return nil
}

// Close releases the sockets.
func (s *Server) Close() {
	if s.conn != nil {
		s.conn.Close()
	}
	if s.ping != nil {
		s.ping.close()
	}
}

// Serve answers requests until ctx is cancelled.
func (s *Server) Serve(ctx context.Context) error {
	if s.conn == nil || s.pool == nil {
		return errors.New("dhcpserver: Serve before Listen")
	}
	s.defaults()
	// Rewrite the lease file now, pruned: this also proves, after the
	// privilege drop, that the file can be written before the first ACK
	// needs it.
	if err := s.persist(); err != nil {
		s.Close()
		return err
	}
	s.workers = dhcpnet.NewWorkers(s.MaxInFlight)
	s.limiter = dhcpnet.NewLimiter(s.RepeatInterval, s.RepeatBurst)
	if s.ping != nil {
		go s.ping.run()
	}
	s.Logger.Info("dhcp server listening", "interface", s.InterfaceName(), "address", s.Address,
		"pool", fmt.Sprintf("%v-%v", s.Config.PoolStart, s.Config.PoolEnd), "lease_time", s.pool.leaseTime, "leases", s.pool.bound(s.now()))

	errc := make(chan error, 1)
	go func() { errc <- s.readLoop(ctx) }()
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-tick.C:
			now := s.now()
			s.pool.sweep(now)
			s.Metrics.Leases.Set(float64(s.pool.bound(now)))
		}
	}
	s.Close()
	err := <-errc
	s.workers.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

func (s *Server) readLoop(ctx context.Context) error {
	malformed := func(net.Addr, int, error) {
		s.Metrics.Packets.WithLabelValues("unknown", string(Malformed)).Inc()
	}
	return dhcpnet.ReadLoop(ctx, s.conn, s.ifi.Index, malformed, func(req *dhcpv4.DHCPv4, _ net.Addr) {
		typ := dhcpproxy.MsgTypeLabel(req)
		if o, ok := precheck(req); !ok {
			s.Metrics.Packets.WithLabelValues(typ, string(o)).Inc()
			if o == IgnoredRelayed && s.logOnce.First("relay "+req.GatewayIPAddr.String()) {
				s.Logger.Info("ignoring relayed DHCP requests: the DHCP server serves its own segment only (logged once per relay)", "relay", req.GatewayIPAddr.String())
			}
			return
		}
		if !s.limiter.Allow(req.ClientHWAddr.String()+"/"+typ, time.Now()) {
			s.Metrics.Packets.WithLabelValues(typ, string(IgnoredRateLimit)).Inc()
			return
		}
		if !s.workers.Go(func() { s.handle(ctx, req) }) {
			s.Metrics.Packets.WithLabelValues(typ, string(DroppedBusy)).Inc()
		}
	})
}

// precheck drops what the server never answers, cheaply, in the read loop.
func precheck(req *dhcpv4.DHCPv4) (Outcome, bool) {
	if req.OpCode != dhcpv4.OpcodeBootRequest || len(req.ClientHWAddr) != 6 {
		return IgnoredNotForUs, false
	}
	if gi := req.GatewayIPAddr; gi != nil && !gi.IsUnspecified() {
		return IgnoredRelayed, false
	}
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeDecline,
		dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeInform:
		return "", true
	}
	// BOOTP (no message type), and replies from other servers.
	return IgnoredNotForUs, false
}

// handle answers one request and reports it.
func (s *Server) handle(ctx context.Context, req *dhcpv4.DHCPv4) {
	reply, ev := s.respond(ctx, req)
	if reply != nil {
		dst := destination(req, reply)
		var cm *ipv4.ControlMessage
		if s.ifi != nil {
			cm = &ipv4.ControlMessage{IfIndex: s.ifi.Index}
		}
		if _, err := s.conn.WriteTo(reply.ToBytes(), cm, dst); err != nil {
			s.Logger.Warn("send dhcp reply", "type", reply.MessageType().String(), "mac", req.ClientHWAddr.String(), "to", dst, "err", err)
			ev.Outcome = SendFailed
		}
	}
	s.Metrics.Packets.WithLabelValues(ev.MsgType, string(ev.Outcome)).Inc()
	if s.OnLease != nil && ev.Outcome != IgnoredNotForUs {
		s.OnLease(ev)
	}
}

// respond decides the reply to one request (nil for none) and changes the
// lease state; it writes the lease file before returning an ACK.
func (s *Server) respond(ctx context.Context, req *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, LeaseEvent) {
	now := s.now()
	c := client{mac: req.ClientHWAddr, id: req.GetOneOption(dhcpv4.OptionClientIdentifier), hostname: cleanHostname(req.HostName())}
	ev := LeaseEvent{Time: now, MsgType: dhcpproxy.MsgTypeLabel(req), MAC: c.mac, Hostname: c.hostname}
	log := s.Logger.With("mac", c.mac.String())
	sid := addrOf(req.ServerIdentifier())
	forOther := sid.IsValid() && sid != s.Address
	fail := func(o Outcome, reason string) (*dhcpv4.DHCPv4, LeaseEvent) {
		ev.Outcome, ev.Reason = o, reason
		return nil, ev
	}
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		a, conflicts, err := s.pool.offer(ctx, c, addrOf(req.RequestedIPAddress()), s.now, s.inUse)
		for _, x := range conflicts {
			s.Metrics.Conflicts.WithLabelValues("ping").Inc()
			log.Warn("address answers ping but has no lease: not offering it", "ip", x, "retry_after", s.pool.conflictHold)
		}
		if err != nil {
			log.Warn("no address to offer: DISCOVER left unanswered", "pool", fmt.Sprintf("%v-%v", s.pool.start, s.pool.end),
				"pool_size", s.pool.size(), "leased", s.pool.bound(now), "reason", err)
			return fail(NoAddress, err.Error())
		}
		ev.IP = a
		boot := s.boot(ctx, req, a)
		r, err := buildReply(req, answer{typ: dhcpv4.MessageTypeOffer, yiaddr: a, lease: s.pool.leaseTime, boot: boot}, s.opts)
		if err != nil {
			log.Error("build dhcp offer", "err", err)
			return fail(SendFailed, err.Error())
		}
		ev.Outcome, ev.BootFile = Offered, bootFile(boot)
		log.Debug("dhcp offer", "ip", a, "boot_file", ev.BootFile)
		return r, ev

	case dhcpv4.MessageTypeRequest:
		if forOther {
			// The client took another server's offer: free ours.
			s.pool.forget(c)
			return fail(IgnoredNotForUs, "chose server "+sid.String())
		}
		target := addrOf(req.RequestedIPAddress())
		if ci := addrOf(req.ClientIPAddr); ci.IsValid() {
			// RENEWING or REBINDING: the address is in ciaddr.
			target = ci
		}
		if !target.IsValid() {
			return fail(Malformed, "REQUEST names no address")
		}
		ev.IP = target
		l, err := s.pool.bind(c, target, now)
		if err != nil {
			log.Info("dhcp nak", "ip", target, "reason", err)
			r, berr := buildReply(req, answer{typ: dhcpv4.MessageTypeNak, message: err.Error()}, s.opts)
			if berr != nil {
				return fail(SendFailed, berr.Error())
			}
			ev.Outcome, ev.Reason = Nacked, err.Error()
			return r, ev
		}
		s.Metrics.Leases.Set(float64(s.pool.bound(now)))
		if err := s.persist(); err != nil {
			// An ACK the lease file does not hold could be handed out
			// again after a restart: no ACK, the client retries.
			log.Error("lease not acknowledged: the lease file cannot be written", "ip", target, "err", err)
			return fail(LeaseWriteFailed, err.Error())
		}
		boot := s.boot(ctx, req, target)
		r, err := buildReply(req, answer{typ: dhcpv4.MessageTypeAck, yiaddr: target, lease: s.pool.leaseTime, boot: boot}, s.opts)
		if err != nil {
			log.Error("build dhcp ack", "err", err)
			return fail(SendFailed, err.Error())
		}
		ev.Outcome, ev.Expires, ev.BootFile = Acked, l.Expires, bootFile(boot)
		log.Info("dhcp lease", "ip", target, "hostname", c.hostname, "expires", l.Expires.Format(time.RFC3339), "boot_file", ev.BootFile)
		return r, ev

	case dhcpv4.MessageTypeDecline:
		a := addrOf(req.RequestedIPAddress())
		ev.IP = a
		if forOther || !a.IsValid() || !s.pool.decline(c, a, now) {
			return fail(IgnoredNotForUs, "not a lease of this client")
		}
		s.Metrics.Conflicts.WithLabelValues("decline").Inc()
		s.Metrics.Leases.Set(float64(s.pool.bound(now)))
		log.Warn("client declined its address: another host uses it", "ip", a, "retry_after", s.pool.conflictHold)
		if err := s.persist(); err != nil {
			log.Error("write lease file", "err", err)
		}
		ev.Outcome = Declined
		return nil, ev

	case dhcpv4.MessageTypeRelease:
		a := addrOf(req.ClientIPAddr)
		ev.IP = a
		if forOther || !a.IsValid() || !s.pool.release(c, a, now) {
			return fail(IgnoredNotForUs, "not a lease of this client")
		}
		s.Metrics.Leases.Set(float64(s.pool.bound(now)))
		log.Info("dhcp release", "ip", a)
		if err := s.persist(); err != nil {
			log.Error("write lease file", "err", err)
		}
		ev.Outcome = Released
		return nil, ev

	case dhcpv4.MessageTypeInform:
		// A client with a static address asks for the other options:
		// no address, no lease time (RFC 2131 3.4).
		ev.IP = addrOf(req.ClientIPAddr)
		r, err := buildReply(req, answer{typ: dhcpv4.MessageTypeAck}, s.opts)
		if err != nil {
			return fail(SendFailed, err.Error())
		}
		ev.Outcome = Informed
		return r, ev
	}
	return fail(IgnoredNotForUs, "")
}

// boot decides the network-boot part of a reply with dhcpproxy's Parse and
// Decide, and reports it. A client that is not a network-boot client, has
// no target, or has no boot program gets none: it still gets its address.
//
// Only DISCOVERs and REQUESTs naming this server get boot options:
// dhcpproxy.Parse ignores REQUESTs without a server identifier (renewals,
// INIT-REBOOT), which network-boot firmware does not send.
func (s *Server) boot(ctx context.Context, req *dhcpv4.DHCPv4, yiaddr netip.Addr) *bootChoice {
	pxe, _ := dhcpproxy.Parse(req, dhcpproxy.PortDHCP, net.IP(s.Address.AsSlice()))
	if pxe == nil {
		return nil
	}
	// Rules and templates see the address the machine is getting.
	pxe.IP = yiaddr
	arch, _, _ := dhcpproxy.ArchFor(pxe.ArchCode)
	ev := dhcpproxy.Event{
		Time: s.now(), MAC: pxe.MAC, Arch: arch, ArchName: dhcpproxy.ArchName(pxe.ArchCode), IP: yiaddr,
		UUID: pxe.UUID, Hostname: pxe.Hostname, Labels: pxe.Labels, VendorClass: pxe.VendorClass,
		Port: dhcpproxy.PortDHCP, MsgType: dhcpproxy.MsgTypeLabel(req),
	}
	if pxe.IPXE {
		ev.UserClass = "iPXE"
	}
	emit := func(o dhcpproxy.Outcome) {
		ev.Outcome = o
		if s.OnBoot != nil {
			s.OnBoot(ev)
		}
	}
	pol := s.policy.Load()
	if pol == nil || pol.Booter == nil {
		emit(dhcpproxy.IgnoredNoTarget)
		return nil
	}
	tgt, err := pol.Booter.Target(ctx, pxe.Identity(arch))
	if err != nil {
		ev.Reason = err.Error()
		if s.logOnce.First("target " + pxe.MAC.String()) {
			s.Logger.Info("network boot client gets an address but no boot file: no boot target for this machine (logged once per MAC)",
				"mac", pxe.MAC.String(), "arch", ev.ArchName, "uuid", pxe.UUID, "reason", err)
		}
		emit(dhcpproxy.IgnoredNoTarget)
		return nil
	}
	ev.Target = tgt.Name
	offer, outcome := dhcpproxy.Decide(pxe, dhcpproxy.Env{ServerIP: s.Address, Firmware: pol.Firmware, URLs: pol.URLs, SecureBoot: tgt.SecureBoot})
	ev.BootFile, ev.Reason = offer.BootFile, offer.Reason
	if outcome != dhcpproxy.Answered {
		if s.logOnce.First("arch " + pxe.MAC.String() + " " + ev.ArchName) {
			s.Logger.Warn("network boot client gets an address but no boot file: no boot program for its architecture",
				"mac", pxe.MAC.String(), "arch", ev.ArchName, "reason", offer.Reason)
		}
		emit(outcome)
		return nil
	}
	emit(dhcpproxy.Answered)
	return &bootChoice{client: pxe, offer: offer}
}

func bootFile(b *bootChoice) string {
	if b == nil {
		return ""
	}
	return b.offer.BootFile
}

// persist writes the lease file (when there is one) with the current
// leases. Saves are serialised; each snapshot is taken after the caller's
// change, so the change is on disk when persist returns.
func (s *Server) persist() error {
	if s.Config.LeaseFile == "" {
		return nil
	}
	s.saveMu.Lock()
	defer s.saveMu.Unlock()
	return writeLeases(s.Config.LeaseFile, s.pool.persistent(s.now()))
}

// addrOf converts a packet's IPv4 field; zero and absent are invalid.
func addrOf(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip.To4())
	if !ok || a.IsUnspecified() {
		return netip.Addr{}
	}
	return a
}

// cleanHostname keeps a host name (option 12) only when it is a printable
// word: it goes to logs, the lease file and the status page.
func cleanHostname(h string) string {
	if h == "" || len(h) > 64 || strings.ContainsFunc(h, func(r rune) bool { return r <= ' ' || r > '~' }) {
		return ""
	}
	return h
}
