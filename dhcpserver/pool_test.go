package dhcpserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

func testPool(t *testing.T, cfg Config) (*pool, *clock) {
	t.Helper()
	sn, _, err := cfg.resolve(addr("10.9.0.1"), netip.MustParsePrefix("10.9.0.1/24"))
	if err != nil {
		t.Fatal(err)
	}
	return newPool(&cfg, sn), &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func cl(last byte) client { return client{mac: mac(last)} }

// mustLease offers then binds an address for c.
func mustLease(t *testing.T, p *pool, c client, requested netip.Addr, now time.Time) netip.Addr {
	t.Helper()
	a, _, err := p.choose(c, requested, now)
	if err != nil {
		t.Fatalf("choose for %v: %v", c.mac, err)
	}
	if _, err := p.bind(c, a, now); err != nil {
		t.Fatalf("bind %v for %v: %v", a, c.mac, err)
	}
	return a
}

func TestPoolDistinctAddressesUnderConcurrency(t *testing.T) {
	cfg := baseConfig()
	cfg.PoolEnd = addr("10.9.0.139") // 40 addresses
	p, clk := testPool(t, cfg)
	var mu sync.Mutex
	got := map[netip.Addr]string{}
	var exhausted int
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			c := cl(byte(i))
			a, _, err := p.offer(context.Background(), c, netip.Addr{}, clk.now, nil)
			mu.Lock()
			defer mu.Unlock()
			if errors.Is(err, errPoolExhausted) {
				exhausted++
				return
			}
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := p.bind(c, a, clk.now()); err != nil {
				t.Errorf("bind %v: %v", a, err)
			}
			if other, dup := got[a]; dup {
				t.Errorf("%v handed to %v and %v", a, other, c.mac)
			}
			got[a] = c.mac.String()
		})
	}
	wg.Wait()
	if len(got) != 40 || exhausted != 10 {
		t.Errorf("%d addresses leased, %d clients refused; want 40 and 10", len(got), exhausted)
	}
	if n := p.bound(clk.now()); n != 40 {
		t.Errorf("bound = %d", n)
	}
}

func TestPoolReturningClient(t *testing.T) {
	p, clk := testPool(t, baseConfig())
	a1 := mustLease(t, p, cl(1), netip.Addr{}, clk.now())
	a2 := mustLease(t, p, cl(2), netip.Addr{}, clk.now())
	if a1 == a2 {
		t.Fatalf("same address %v twice", a1)
	}
	// While bound, and after expiry when the address was not reused.
	for _, d := range []time.Duration{time.Minute, 2 * time.Hour} {
		clk.advance(d)
		a, check, err := p.choose(cl(2), netip.Addr{}, clk.now())
		if err != nil || a != a2 {
			t.Fatalf("after %v: returning client got %v (%v), want %v", d, a, err, a2)
		}
		if d == time.Minute && check {
			t.Error("the client's own current lease must not be pinged (it answers)")
		}
		if d == 2*time.Hour && !check {
			t.Error("an expired lease must be checked before it is offered again")
		}
		if _, err := p.bind(cl(2), a, clk.now()); err != nil {
			t.Fatal(err)
		}
	}
	// A returning client is found by its client identifier when its MAC
	// changed, once its old lease has expired.
	withID := client{mac: mac(3), id: []byte{1, 2, 3}}
	a3 := mustLease(t, p, withID, netip.Addr{}, clk.now())
	swapped := client{mac: mac(4), id: []byte{1, 2, 3}}
	if a, _, _ := p.choose(swapped, netip.Addr{}, clk.now()); a == a3 {
		t.Errorf("%v given to a second MAC while its lease to %v runs", a3, withID.mac)
	}
	clk.advance(2 * time.Hour)
	p.sweep(clk.now())
	if a, _, _ := p.choose(swapped, netip.Addr{}, clk.now()); a != a3 {
		t.Errorf("swapped NIC with the same client id got %v, want its old %v", a, a3)
	}
}

func TestPoolRequestedAddress(t *testing.T) {
	p, clk := testPool(t, baseConfig())
	if a := mustLease(t, p, cl(1), addr("10.9.0.105"), clk.now()); a != addr("10.9.0.105") {
		t.Errorf("free requested address not honoured: got %v", a)
	}
	// Held by another client, outside the pool, off the subnet: ignored.
	for _, req := range []string{"10.9.0.105", "10.9.0.50", "192.168.1.5", "10.9.0.1"} {
		a, _, err := p.choose(cl(2), addr(req), clk.now())
		if err != nil || a == addr(req) || !p.inPool(a) {
			t.Errorf("requested %s: got %v, %v", req, a, err)
		}
	}
	// A REQUEST for them is refused.
	for _, req := range []string{"10.9.0.105", "10.9.0.50", "192.168.1.5", "10.9.0.1", "10.9.0.255"} {
		if _, err := p.bind(cl(3), addr(req), clk.now()); err == nil {
			t.Errorf("bind of %s to another client succeeded", req)
		}
	}
}

func TestPoolExpiry(t *testing.T) {
	cfg := baseConfig()
	cfg.PoolEnd = addr("10.9.0.101")
	cfg.LeaseTime = time.Hour
	p, clk := testPool(t, cfg)
	mustLease(t, p, cl(1), netip.Addr{}, clk.now())
	a2 := mustLease(t, p, cl(2), netip.Addr{}, clk.now())
	if _, _, err := p.choose(cl(3), netip.Addr{}, clk.now()); !errors.Is(err, errPoolExhausted) {
		t.Fatalf("full pool: %v", err)
	}
	// Client 1 renews; client 2 does not.
	clk.advance(40 * time.Minute)
	if _, err := p.bind(cl(1), addr("10.9.0.100"), clk.now()); err != nil {
		t.Fatal(err)
	}
	clk.advance(19 * time.Minute)
	if _, _, err := p.choose(cl(3), netip.Addr{}, clk.now()); !errors.Is(err, errPoolExhausted) {
		t.Fatalf("a lease one minute before expiry was taken: %v", err)
	}
	clk.advance(2 * time.Minute)
	a, _, err := p.choose(cl(3), netip.Addr{}, clk.now())
	if err != nil || a != a2 {
		t.Fatalf("after expiry: %v %v, want %v", a, err, a2)
	}
	// Client 2 comes back too late: its address is offered to 3, so it
	// gets none, and its REQUEST for the old one is refused.
	if _, err := p.bind(cl(2), a2, clk.now()); err == nil {
		t.Error("bind of an address offered to another client succeeded")
	}
}

func TestPoolPrefersUnusedOverExpired(t *testing.T) {
	p, clk := testPool(t, baseConfig())
	a1 := mustLease(t, p, cl(1), netip.Addr{}, clk.now())
	clk.advance(3 * time.Hour)
	a, _, _ := p.choose(cl(2), netip.Addr{}, clk.now())
	if a == a1 {
		t.Errorf("an expired lease was reused while unused addresses remain")
	}
}

func TestPoolReservations(t *testing.T) {
	cfg := baseConfig()
	cfg.Reservations = []Reservation{{MAC: mac(7), IP: addr("10.9.0.100")}, {MAC: mac(8), IP: addr("10.9.0.20")}}
	p, clk := testPool(t, cfg)
	// Nobody else gets a reserved address, even asking for it.
	for i := range 9 {
		a := mustLease(t, p, cl(byte(20+i)), addr("10.9.0.100"), clk.now())
		if a == addr("10.9.0.100") {
			t.Fatalf("reserved address given to %v", mac(byte(20+i)))
		}
	}
	if _, _, err := p.choose(cl(30), netip.Addr{}, clk.now()); !errors.Is(err, errPoolExhausted) {
		t.Errorf("pool with its reserved address left: %v, want exhausted", err)
	}
	if _, err := p.bind(cl(30), addr("10.9.0.100"), clk.now()); err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("bind of a reserved address by another MAC: %v", err)
	}
	for m, want := range map[byte]string{7: "10.9.0.100", 8: "10.9.0.20"} {
		if a := mustLease(t, p, cl(m), netip.Addr{}, clk.now()); a != addr(want) {
			t.Errorf("%v got %v, want its reservation %s", mac(m), a, want)
		}
	}
}

func TestPoolConflicts(t *testing.T) {
	p, clk := testPool(t, baseConfig())
	busy := map[netip.Addr]bool{addr("10.9.0.100"): true, addr("10.9.0.101"): true}
	inUse := func(_ context.Context, a netip.Addr) bool { return busy[a] }
	a, conflicts, err := p.offer(context.Background(), cl(1), netip.Addr{}, clk.now, inUse)
	if err != nil || a != addr("10.9.0.102") || len(conflicts) != 2 {
		t.Fatalf("offer = %v %v %v, want .102 after two conflicts", a, conflicts, err)
	}
	// Conflicts stay out of use, even when asked for, until they time out.
	if a, _, _ := p.choose(cl(2), addr("10.9.0.100"), clk.now()); a == addr("10.9.0.100") {
		t.Error("conflicting address offered")
	}
	if _, err := p.bind(cl(2), addr("10.9.0.100"), clk.now()); err == nil {
		t.Error("conflicting address bound")
	}
	clk.advance(p.conflictHold + time.Second)
	p.sweep(clk.now())
	if a, _, _ := p.choose(cl(3), addr("10.9.0.100"), clk.now()); a != addr("10.9.0.100") {
		t.Errorf("after the hold, got %v", a)
	}

	// DECLINE from the client that holds the address marks it.
	got := mustLease(t, p, cl(4), netip.Addr{}, clk.now())
	if !p.decline(cl(4), got, clk.now()) {
		t.Fatal("decline refused")
	}
	if a, _, _ := p.choose(cl(4), netip.Addr{}, clk.now()); a == got {
		t.Error("declined address offered again to its client")
	}
	// A forged DECLINE cannot take a bound lease away.
	other := mustLease(t, p, cl(5), netip.Addr{}, clk.now())
	if p.decline(cl(6), other, clk.now()) {
		t.Error("DECLINE by another MAC accepted")
	}
	if a, _, _ := p.choose(cl(5), netip.Addr{}, clk.now()); a != other {
		t.Error("lease lost to a forged DECLINE")
	}
}

func TestPoolReleaseAndForget(t *testing.T) {
	p, clk := testPool(t, baseConfig())
	a := mustLease(t, p, cl(1), netip.Addr{}, clk.now())
	if p.release(cl(2), a, clk.now()) {
		t.Error("release by another MAC accepted")
	}
	if !p.release(cl(1), a, clk.now()) || p.bound(clk.now()) != 0 {
		t.Fatal("release not applied")
	}
	if b, _, _ := p.choose(cl(1), netip.Addr{}, clk.now()); b != a {
		t.Errorf("released client came back to %v, want %v", b, a)
	}
	// The client chose another server: its offer is freed at once.
	o, _, _ := p.choose(cl(3), netip.Addr{}, clk.now())
	p.forget(cl(3))
	if b, _, _ := p.choose(cl(4), o, clk.now()); b != o {
		t.Errorf("forgotten offer %v still held (got %v)", o, b)
	}
}

func TestServerPoolExhaustedLogs(t *testing.T) {
	cfg := baseConfig()
	cfg.PoolEnd = addr("10.9.0.101")
	u := newUnitServer(t, cfg)
	u.lease(t, mac(1))
	u.lease(t, mac(2))
	r, ev := u.exchange(t, discover(t, mac(3)))
	if r != nil || ev.Outcome != NoAddress {
		t.Fatalf("full pool answered: %v %+v", r, ev)
	}
	if l := u.log.String(); !strings.Contains(l, "no address to offer") || !strings.Contains(l, "mac=52:54:00:12:34:03") {
		t.Errorf("no log line for the refused client:\n%s", l)
	}
}

func TestServerPingsOnlyNewAddresses(t *testing.T) {
	u := newUnitServer(t, baseConfig())
	u.busy[addr("10.9.0.100")] = true
	ack := u.lease(t, mac(1))
	if !ack.YourIPAddr.Equal(net.ParseIP("10.9.0.101")) {
		t.Fatalf("got %v, want .101 (.100 answers ping)", ack.YourIPAddr)
	}
	if n := len(u.pings); n != 2 {
		t.Errorf("%d pings, want 2 (.100 then .101)", n)
	}
	// The bound client's next DISCOVER is not pinged: it would answer.
	u.pings = nil
	if r, _ := u.exchange(t, discover(t, mac(1))); r == nil || !r.YourIPAddr.Equal(ack.YourIPAddr) {
		t.Fatalf("returning client: %v", r)
	}
	if len(u.pings) != 0 {
		t.Errorf("pinged the client's own address: %v", u.pings)
	}
	if l := u.log.String(); !strings.Contains(l, "answers ping but has no lease") {
		t.Errorf("conflict not logged:\n%s", l)
	}
}

func TestServerRequestStates(t *testing.T) {
	u := newUnitServer(t, baseConfig())
	ack := u.lease(t, mac(1), dhcpv4.WithOption(dhcpv4.OptHostName("node-1")))
	ip := ack.YourIPAddr

	// RENEWING: unicast with ciaddr, no server id or requested address.
	renew, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(1)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithClientIP(ip))
	u.clock.advance(30 * time.Minute)
	r, ev := u.exchange(t, renew)
	if r == nil || r.MessageType() != dhcpv4.MessageTypeAck || !r.YourIPAddr.Equal(ip) || !ev.Expires.Equal(u.clock.now().Add(time.Hour)) {
		t.Fatalf("renew: %v %+v", r, ev)
	}
	if d := destination(renew, r); !d.IP.Equal(ip) || d.Port != 68 {
		t.Errorf("renewal ACK goes to %v, want %v:68", d, ip)
	}

	// INIT-REBOOT for another client's address: NAK, broadcast.
	reboot := func(hw net.HardwareAddr, want string) *dhcpv4.DHCPv4 {
		p, _ := dhcpv4.New(dhcpv4.WithHwAddr(hw), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP(want))))
		r, _ := u.exchange(t, p)
		return r
	}
	nak := reboot(mac(2), ip.String())
	if nak == nil || nak.MessageType() != dhcpv4.MessageTypeNak || !nak.YourIPAddr.IsUnspecified() {
		t.Fatalf("INIT-REBOOT for a leased address: %v", nak)
	}
	if d := destination(nil, nak); !d.IP.Equal(net.IPv4bcast) {
		t.Errorf("NAK goes to %v", d)
	}
	if nak.Options.Has(dhcpv4.OptionIPAddressLeaseTime) || nak.Options.Has(dhcpv4.OptionSubnetMask) || nak.Message() == "" {
		t.Errorf("NAK options: %v", nak.Summary())
	}
	// Another network (the client moved): NAK.
	if r := reboot(mac(2), "192.168.7.7"); r == nil || r.MessageType() != dhcpv4.MessageTypeNak {
		t.Errorf("INIT-REBOOT off the subnet: %v", r)
	}
	// A free pool address: this server is authoritative, ACK.
	if r := reboot(mac(2), "10.9.0.108"); r == nil || r.MessageType() != dhcpv4.MessageTypeAck {
		t.Errorf("INIT-REBOOT for a free address: %v", r)
	}

	// A REQUEST for another server frees our offer, silently.
	d := discover(t, mac(3))
	offer, _ := u.exchange(t, d)
	toOther := requestFor(t, d, offer, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP("10.9.0.254"))))
	if r, ev := u.exchange(t, toOther); r != nil || ev.Outcome != IgnoredNotForUs {
		t.Errorf("answered a REQUEST to another server: %v", r)
	}
	if leased := u.Leases(); len(leased) != 2 {
		t.Errorf("leases after a REQUEST elsewhere: %+v", leased)
	}

	// RELEASE, then INFORM.
	rel, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(1)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease), dhcpv4.WithClientIP(ip),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP("10.9.0.1"))))
	if r, ev := u.exchange(t, rel); r != nil || ev.Outcome != Released {
		t.Errorf("release: %v %+v", r, ev)
	}
	inf, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(9)), dhcpv4.WithMessageType(dhcpv4.MessageTypeInform), dhcpv4.WithClientIP(net.ParseIP("10.9.0.77")))
	r, _ = u.exchange(t, inf)
	if r == nil || r.MessageType() != dhcpv4.MessageTypeAck || !r.YourIPAddr.IsUnspecified() || r.Options.Has(dhcpv4.OptionIPAddressLeaseTime) || len(r.DNS()) != 2 {
		t.Fatalf("inform: %v", r)
	}
	if d := destination(inf, r); !d.IP.Equal(net.ParseIP("10.9.0.77")) {
		t.Errorf("INFORM reply goes to %v", d)
	}

	// DECLINE of a lease: counted, address kept out.
	ack4 := u.lease(t, mac(4))
	dec, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(4)), dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ack4.YourIPAddr)), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP("10.9.0.1"))))
	if _, ev := u.exchange(t, dec); ev.Outcome != Declined {
		t.Errorf("decline: %+v", ev)
	}
	if r, _ := u.exchange(t, discover(t, mac(4))); r == nil || r.YourIPAddr.Equal(ack4.YourIPAddr) {
		t.Errorf("declined address offered again: %v", r)
	}

	// Relayed requests are out of scope.
	relayed := discover(t, mac(5), dhcpv4.WithGatewayIP(net.ParseIP("10.50.0.1")))
	if r, ev := u.exchange(t, relayed); r != nil || ev.Outcome != IgnoredRelayed {
		t.Errorf("relayed: %v %+v", r, ev)
	}
}

func TestConfigChecks(t *testing.T) {
	server, iface := addr("10.9.0.1"), netip.MustParsePrefix("10.9.0.1/24")
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.PoolStart = netip.Addr{} }, "must both be set"},
		{func(c *Config) { c.PoolStart, c.PoolEnd = c.PoolEnd, c.PoolStart }, "swap them"},
		{func(c *Config) { c.PoolEnd = addr("10.9.1.20") }, "not inside the interface's subnet 10.9.0.0/24"},
		{func(c *Config) { c.PoolStart = addr("10.9.0.0") }, "network or broadcast"},
		{func(c *Config) { c.PoolStart = addr("10.9.0.1") }, "server's own address"},
		{func(c *Config) { c.Routers = []netip.Addr{addr("10.9.0.105")} }, "inside the pool"},
		{func(c *Config) { c.SubnetMask = addr("255.0.255.0") }, "not a contiguous mask"},
		{func(c *Config) { c.LeaseTime = time.Second }, "too short"},
		{func(c *Config) { c.DomainName = "a b" }, "dhcp.domain_name"},
		{func(c *Config) {
			c.Reservations = []Reservation{{MAC: mac(1), IP: addr("10.9.0.5")}, {MAC: mac(1), IP: addr("10.9.0.6")}}
		}, "reserved twice"},
		{func(c *Config) { c.Reservations = []Reservation{{MAC: mac(1), IP: addr("10.8.0.5")}} }, "not a usable host address"},
		{func(c *Config) { c.PoolStart, c.PoolEnd = addr("10.0.0.1"), addr("10.2.0.1") }, "at most 65536"},
	} {
		c := baseConfig()
		tc.mod(&c)
		_, _, err := c.resolve(server, iface)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want error with %q, got %v", tc.want, err)
		}
	}
	c := baseConfig()
	c.SubnetMask = addr("255.255.0.0")
	if _, warn, err := c.resolve(server, netip.MustParsePrefix("10.9.0.1/16")); err != nil || warn != "" {
		t.Errorf("matching mask: %q %v", warn, err)
	}
	sn, warn, err := c.resolve(server, iface)
	if err != nil || warn == "" || sn.prefix.String() != "10.9.0.0/16" {
		t.Errorf("differing mask: %v %q %v", sn.prefix, warn, err)
	}
}

func BenchmarkOfferNearlyFullPool(b *testing.B) {
	cfg := baseConfig()
	cfg.PoolStart, cfg.PoolEnd, cfg.Routers = addr("10.9.0.2"), addr("10.9.255.254"), nil
	sn, _, err := cfg.resolve(addr("10.9.0.1"), netip.MustParsePrefix("10.9.0.1/16"))
	if err != nil {
		b.Fatal(err)
	}
	p := newPool(&cfg, sn)
	now := time.Now()
	for i := range p.size() - 1 {
		c := client{mac: net.HardwareAddr{2, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)}}
		a, _, err := p.choose(c, netip.Addr{}, now)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := p.bind(c, a, now); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := range b.N {
		c := client{mac: net.HardwareAddr{4, 0, 0, 0, byte(i >> 8), byte(i)}}
		if _, _, err := p.choose(c, netip.Addr{}, now); err != nil {
			b.Fatal(fmt.Sprint(i, err))
		}
		p.forget(c)
	}
}
