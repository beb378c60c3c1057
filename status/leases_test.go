package status

import (
	"encoding/json"
	"fmt"
	"html"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bootserve/bootserve/dhcpproxy"
	"github.com/bootserve/bootserve/dhcpserver"
)

// pool stands for the DHCP server's address table as its Leases method
// returns it: the records active at the time of the call, by address.
type pool struct {
	mu   sync.Mutex
	recs []dhcpserver.Lease
}

func (p *pool) set(recs ...dhcpserver.Lease) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.recs = recs
}

func (p *pool) leases() []dhcpserver.Lease {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	var out []dhcpserver.Lease
	for _, l := range p.recs {
		if now.Before(l.Expires) {
			out = append(out, l)
		}
	}
	return out
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func leaseByIP(t *testing.T, lt *Leases, ip string) Lease {
	t.Helper()
	for _, l := range lt.Rows {
		if l.IP == ip {
			return l
		}
	}
	t.Fatalf("no lease row for %s in %+v", ip, lt.Rows)
	return Lease{}
}

// Every state the DHCP server has, merged with what its events told.
func TestLeasesTable(t *testing.T) {
	tr := New(Options{})
	if s := tr.Snapshot(); s.Leases != nil {
		t.Fatalf("leases shown without a DHCP server: %+v", s.Leases)
	}
	p := &pool{}
	tr.WatchLeases(p.leases)
	now := time.Now()
	hour := now.Add(time.Hour)
	pxe, laptop, printer, gone, leaver := mustMAC(t, "52:54:00:00:01:01"), mustMAC(t, "52:54:00:00:01:02"),
		mustMAC(t, "52:54:00:00:01:03"), mustMAC(t, "52:54:00:00:01:04"), mustMAC(t, "52:54:00:00:01:05")

	// A PXE client: offered with a boot file, then bound; its boot shows
	// in the machines table.
	tr.DHCP(dhcpproxy.Event{Time: now, MAC: pxe, MsgType: "discover", Port: 67, Outcome: dhcpproxy.Answered, BootFile: "efi-x64/snponly.efi", IP: addr("10.0.0.100")})
	tr.Lease(dhcpserver.LeaseEvent{Time: now, MsgType: "discover", Outcome: dhcpserver.Offered, MAC: pxe, IP: addr("10.0.0.100"), BootFile: "efi-x64/snponly.efi"})
	tr.Lease(dhcpserver.LeaseEvent{Time: now, MsgType: "request", Outcome: dhcpserver.Acked, MAC: pxe, IP: addr("10.0.0.100"), Expires: hour, BootFile: "efi-x64/snponly.efi"})
	// A laptop that does not network-boot.
	tr.Lease(dhcpserver.LeaseEvent{Time: now, MsgType: "request", Outcome: dhcpserver.Acked, MAC: laptop, IP: addr("10.0.0.101"), Hostname: "laptop", Expires: hour})
	// A printer that found its address in use.
	tr.Lease(dhcpserver.LeaseEvent{Time: now, MsgType: "decline", Outcome: dhcpserver.Declined, MAC: printer, IP: addr("10.0.0.102")})
	// A lease that ran out, and one given back.
	tr.Lease(dhcpserver.LeaseEvent{Time: now.Add(-2 * time.Hour), MsgType: "request", Outcome: dhcpserver.Acked, MAC: gone, IP: addr("10.0.0.104"), Expires: now.Add(-time.Hour)})
	tr.Lease(dhcpserver.LeaseEvent{Time: now, MsgType: "request", Outcome: dhcpserver.Acked, MAC: leaver, IP: addr("10.0.0.105"), Expires: hour})
	tr.Lease(dhcpserver.LeaseEvent{Time: now, MsgType: "release", Outcome: dhcpserver.Released, MAC: leaver, IP: addr("10.0.0.105")})
	// Refused requests change no row.
	tr.Lease(dhcpserver.LeaseEvent{Time: now, MsgType: "request", Outcome: dhcpserver.Nacked, MAC: laptop, IP: addr("10.9.9.9"), Reason: "not on this subnet"})
	tr.Lease(dhcpserver.LeaseEvent{Time: now, MsgType: "discover", Outcome: dhcpserver.NoAddress, MAC: mustMAC(t, "52:54:00:00:01:06"), Reason: "no free address in the pool"})

	p.set(
		dhcpserver.Lease{IP: addr("10.0.0.100"), MAC: pxe, State: dhcpserver.StateBound, Expires: hour},
		dhcpserver.Lease{IP: addr("10.0.0.101"), MAC: laptop, Hostname: "laptop", State: dhcpserver.StateBound, Expires: hour},
		dhcpserver.Lease{IP: addr("10.0.0.102"), State: dhcpserver.StateConflict, Expires: now.Add(10 * time.Minute)},
		dhcpserver.Lease{IP: addr("10.0.0.103"), State: dhcpserver.StateConflict, Expires: now.Add(10 * time.Minute)},                                 // answered ping
		dhcpserver.Lease{IP: addr("10.0.0.106"), MAC: mustMAC(t, "52:54:00:00:01:07"), State: dhcpserver.StateOffered, Expires: now.Add(time.Minute)}, // no event seen yet
		dhcpserver.Lease{IP: addr("10.0.0.107"), MAC: mustMAC(t, "52:54:00:00:01:08"), State: dhcpserver.StateBound, Expires: now.Add(-time.Second)},  // just ran out
	)
	s := tr.Snapshot()
	lt := s.Leases
	if lt == nil {
		t.Fatal("no leases with a DHCP server")
	}
	var ips []string
	for _, l := range lt.Rows {
		ips = append(ips, l.IP)
	}
	if got := strings.Join(ips, " "); got != "10.0.0.100 10.0.0.101 10.0.0.102 10.0.0.103 10.0.0.104 10.0.0.105 10.0.0.106" {
		t.Fatalf("rows %s", got)
	}
	if lt.Bound != 2 || lt.Offered != 1 || lt.Hidden != 0 {
		t.Fatalf("counts %+v", lt)
	}
	for ip, want := range map[string]Lease{
		"10.0.0.100": {MAC: pxe.String(), State: LeaseBound, Expires: hour, NetBoot: true, BootStage: StageOffered},
		"10.0.0.101": {MAC: laptop.String(), Hostname: "laptop", State: LeaseBound, Expires: hour},
		"10.0.0.102": {MAC: printer.String(), State: LeaseDeclined, Expires: now.Add(10 * time.Minute)},
		"10.0.0.103": {State: LeaseConflict, Expires: now.Add(10 * time.Minute)},
		"10.0.0.104": {MAC: gone.String(), State: LeaseExpired, Expires: now.Add(-time.Hour)},
		"10.0.0.105": {MAC: leaver.String(), State: LeaseReleased, Expires: now},
		"10.0.0.106": {MAC: "52:54:00:00:01:07", State: LeaseOffered, Expires: now.Add(time.Minute)},
	} {
		got := leaseByIP(t, lt, ip)
		if got.MAC != want.MAC || got.Hostname != want.Hostname || got.State != want.State || !got.Expires.Equal(want.Expires) ||
			got.NetBoot != want.NetBoot || got.BootStage != want.BootStage {
			t.Errorf("%s: got %+v, want %+v", ip, got, want)
		}
	}
	// The admin hears of a lease and of an exhausted pool.
	var msgs []string
	for _, e := range s.Events {
		msgs = append(msgs, e.Message)
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{"leased 10.0.0.101 until", "to laptop", "declined 10.0.0.102", "released 10.0.0.105", "no address: no free address in the pool"} {
		if !strings.Contains(all, want) {
			t.Errorf("events lack %q:\n%s", want, all)
		}
	}
	if strings.Contains(all, "10.9.9.9") {
		t.Errorf("a refused request made an event line:\n%s", all)
	}
	if len(s.Errors) != 1 || !strings.Contains(s.Errors[0].Message, "no free address") {
		t.Errorf("errors %+v", s.Errors)
	}

	// A renewal is not news.
	n := len(s.Events)
	tr.Lease(dhcpserver.LeaseEvent{Time: now.Add(time.Minute), MsgType: "request", Outcome: dhcpserver.Acked, MAC: laptop, IP: addr("10.0.0.101"), Expires: hour.Add(time.Minute)})
	if s := tr.Snapshot(); len(s.Events) != n {
		t.Errorf("renewal added an event: %+v", s.Events[0])
	}
}

// The rows are capped; what is held now is shown before what has ended,
// and the page says how many rows it left out.
func TestLeasesBounded(t *testing.T) {
	tr := New(Options{MaxLeases: 3})
	p := &pool{}
	tr.WatchLeases(p.leases)
	now := time.Now()
	for i := range 4 { // history beyond the cap keeps the newest 3
		ip := netip.AddrFrom4([4]byte{10, 0, 0, byte(10 + i)})
		tr.Lease(dhcpserver.LeaseEvent{Time: now.Add(time.Duration(i) * time.Second), Outcome: dhcpserver.Released, MsgType: "release",
			MAC: mustMAC(t, fmt.Sprintf("52:54:00:00:02:%02x", i)), IP: ip})
	}
	if lt := tr.Snapshot().Leases; len(lt.Rows) != 3 || lt.Hidden != 0 || lt.Rows[0].IP != "10.0.0.11" {
		t.Fatalf("history not bounded to 3: %+v", lt)
	}
	var recs []dhcpserver.Lease
	for i := range 5 {
		recs = append(recs, dhcpserver.Lease{IP: netip.AddrFrom4([4]byte{10, 0, 0, byte(100 + i)}), MAC: mustMAC(t, fmt.Sprintf("52:54:00:00:03:%02x", i)),
			State: dhcpserver.StateBound, Expires: now.Add(time.Hour)})
	}
	p.set(recs...)
	lt := tr.Snapshot().Leases
	if len(lt.Rows) != 3 || lt.Hidden != 5 || lt.Bound != 5 {
		t.Fatalf("rows %d hidden %d bound %d", len(lt.Rows), lt.Hidden, lt.Bound)
	}
	for _, r := range lt.Rows {
		if r.State != LeaseBound {
			t.Fatalf("an ended lease shown before a current one: %+v", lt.Rows)
		}
	}
	srv := newServer(t, tr.Handler())
	_, page := get(t, srv.URL+"/")
	if !strings.Contains(page, "5 bound · 0 offered · 5 more not shown") || strings.Count(page, `data-state="bound"`) != 3 {
		t.Fatalf("page does not say rows were left out:\n%s", page)
	}
}

// The leases section is in the page and in /status.json only in full-DHCP
// mode, and a host name from the network is shown as text.
func TestLeasesPageAndJSON(t *testing.T) {
	plain := New(Options{})
	srv := newServer(t, plain.Handler())
	_, page := get(t, srv.URL+"/")
	if !strings.Contains(page, `<section class="panel" id="leases-panel" hidden>`) {
		t.Fatalf("leases section not hidden in ProxyDHCP mode:\n%s", page)
	}
	_, body := get(t, srv.URL+"/status.json")
	if strings.Contains(body, `"leases"`) {
		t.Fatalf("status.json has leases in ProxyDHCP mode: %s", body)
	}

	tr := New(Options{})
	p := &pool{}
	tr.WatchLeases(p.leases)
	mac := mustMAC(t, "52:54:00:00:04:01")
	exp := time.Now().Add(90 * time.Minute)
	tr.Lease(dhcpserver.LeaseEvent{Time: time.Now(), MsgType: "request", Outcome: dhcpserver.Acked, MAC: mac, IP: addr("10.0.0.120"), Hostname: hostile, Expires: exp})
	p.set(dhcpserver.Lease{IP: addr("10.0.0.120"), MAC: mac, Hostname: hostile, State: dhcpserver.StateBound, Expires: exp})
	srv = newServer(t, tr.Handler())

	_, page = get(t, srv.URL+"/")
	for _, bad := range []string{"<script>alert", "<img", "onerror=alert(2)>"} {
		if strings.Contains(page, bad) {
			t.Fatalf("page contains %q unescaped:\n%s", bad, page)
		}
	}
	row := regexp.MustCompile(`(?s)<tr data-ip="10\.0\.0\.120".*?</tr>`).FindString(page)
	if row == "" || strings.Contains(page, `id="leases-panel" hidden`) {
		t.Fatalf("no visible lease row:\n%s", page)
	}
	for _, want := range []string{`data-state="bound"`, mac.String(), html.EscapeString(hostile), `class="pill ls-bound">bound<`,
		`data-at="` + exp.UTC().Format(time.RFC3339Nano) + `"`, ">in 1h29m<", `<span class="sub">no</span>`} {
		if !strings.Contains(row, want) {
			t.Errorf("lease row lacks %q:\n%s", want, row)
		}
	}
	if !strings.Contains(page, "1 bound · 0 offered<") {
		t.Errorf("lease counts missing:\n%s", page)
	}

	_, body = get(t, srv.URL+"/status.json")
	if strings.Contains(body, "<script>") {
		t.Fatalf("JSON carries raw markup: %s", body)
	}
	var s Snapshot
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatal(err)
	}
	if s.Leases == nil || len(s.Leases.Rows) != 1 {
		t.Fatalf("status.json leases: %s", body)
	}
	if l := s.Leases.Rows[0]; l.IP != "10.0.0.120" || l.MAC != mac.String() || l.Hostname != hostile || l.State != LeaseBound ||
		!l.Expires.Equal(exp) || l.NetBoot || s.Leases.Bound != 1 {
		t.Fatalf("JSON must carry the lease as it is: %+v", l)
	}
}

// A lease that runs out reaches the open pages without any other event.
func TestLeasesExpiryIsPushed(t *testing.T) {
	tr := New(Options{Heartbeat: time.Hour})
	p := &pool{}
	tr.WatchLeases(p.leases)
	mac := mustMAC(t, "52:54:00:00:05:01")
	exp := time.Now().Add(700 * time.Millisecond)
	tr.Lease(dhcpserver.LeaseEvent{Time: time.Now(), MsgType: "request", Outcome: dhcpserver.Acked, MAC: mac, IP: addr("10.0.0.130"), Expires: exp})
	p.set(dhcpserver.Lease{IP: addr("10.0.0.130"), MAC: mac, State: dhcpserver.StateBound, Expires: exp})
	srv := newServer(t, tr.Handler())
	s := openStream(t, srv.URL+"/events")
	if first := s.snapshot(5 * time.Second); first.Leases == nil || len(first.Leases.Rows) != 1 || first.Leases.Rows[0].State != LeaseBound {
		t.Fatalf("first update: %+v", first.Leases)
	}
	snap := s.snapshot(5 * time.Second)
	if time.Now().Before(exp) {
		t.Fatalf("update before the expiry: %+v", snap.Leases)
	}
	if l := snap.Leases.Rows[0]; l.State != LeaseExpired || !l.Expires.Equal(exp) || snap.Leases.Bound != 0 {
		t.Fatalf("after the expiry: %+v", snap.Leases)
	}
}

func TestRelText(t *testing.T) {
	for sec, want := range map[float64]string{0: "in 0s", 42.7: "in 42s", -42.7: "42s ago", 187: "in 3m07s", -3600: "1h00m ago",
		5399: "in 1h29m", 86400 + 7200: "in 1d02h"} {
		if got := relText(sec); got != want {
			t.Errorf("relText(%v) = %q, want %q", sec, got, want)
		}
	}
}
