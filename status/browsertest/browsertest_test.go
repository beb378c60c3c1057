package browsertest

import (
	"bytes"
	"context"
	"image/png"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bootserve/bootserve/dhcpproxy"
	"github.com/bootserve/bootserve/dhcpserver"
	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/httpboot"
	"github.com/bootserve/bootserve/status"
	"github.com/bootserve/bootserve/tftpd"
)

// needBrowser skips unless BOOTSERVE_BROWSER=1, and then insists on Chromium.
func needBrowser(t *testing.T) {
	t.Helper()
	if os.Getenv("BOOTSERVE_BROWSER") != "1" {
		t.Skip("set BOOTSERVE_BROWSER=1 to run the headless Chromium tests")
	}
	if _, err := FindChromium(); err != nil {
		t.Fatal(err)
	}
}

func hw(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// feeder plays the servers' events for one machine's boot in real time.
type feeder struct {
	tr  *status.Tracker
	mac net.HardwareAddr
	ip  netip.Addr
}

func (f feeder) dhcp(userClass string, withIP bool) {
	ev := dhcpproxy.Event{Time: time.Now(), MAC: f.mac, Arch: firmware.EFIX64, ArchName: "EFI x86-64 (7)", Hostname: "rack1-node07",
		UserClass: userClass, VendorClass: "PXEClient:Arch:00007:UNDI:003016", Port: 67, MsgType: "discover",
		Outcome: dhcpproxy.Answered, Target: "nixos-installer", BootFile: "efi-x64/ipxe.efi"}
	if withIP {
		ev.IP = f.ip
	}
	f.tr.DHCP(ev)
}

func (f feeder) tftp(file string, size int64) {
	start := time.Now()
	c := netip.AddrPortFrom(f.ip, 1490)
	f.tr.TFTP(tftpd.Transfer{Client: c, File: file, Size: size, Start: start})
	time.Sleep(150 * time.Millisecond)
	f.tr.TFTP(tftpd.Transfer{Client: c, File: file, Size: size, Bytes: size, Start: start, Duration: time.Since(start), Done: true, Outcome: tftpd.OutcomeOK})
}

func (f feeder) script(target string) {
	f.tr.HTTP(httpboot.Event{Time: time.Now(), Stage: httpboot.StageScript, Phase: "done", MAC: f.mac.String(), IP: f.ip, Name: "script", Target: target, Status: 200})
}

// file sends a file in steps over about d, with progress events.
func (f feeder) file(stage httpboot.Stage, name string, size int64, d time.Duration, steps int) {
	ev := httpboot.Event{Stage: stage, Phase: "start", MAC: f.mac.String(), IP: f.ip, Name: name, Size: size}
	f.tr.HTTP(ev)
	for i := 1; i <= steps; i++ {
		time.Sleep(d / time.Duration(steps))
		ev.Phase, ev.Bytes = "progress", size*int64(i)/int64(steps)
		if i == steps {
			ev.Phase, ev.Status = "done", 200
		}
		f.tr.HTTP(ev)
	}
}

// newStatusServer serves a tracker with a realistic header and a few
// machines already known, and tells when the page was first served.
func newStatusServer(t *testing.T, opts status.Options) (*status.Tracker, *httptest.Server, <-chan struct{}) {
	tr := status.New(opts)
	tr.SetConfigSummary(status.ConfigSummary{
		Version: "v0.9.0-dev", Interface: "enp3s0", Address: "192.168.10.2",
		Services: []status.Service{{Name: "ProxyDHCP", Ports: []int{67, 4011}}, {Name: "TFTP", Ports: []int{69}}, {Name: "HTTP", Ports: []int{8080}}},
		BootPrograms: []status.BootProgram{
			{Arch: "bios", Name: "bios/undionly.kpxe", Origin: "/usr/lib/ipxe/undionly.kpxe"},
			{Arch: "efi-x64", Name: "efi-x64/snponly.efi", Origin: "built-in"},
			{Arch: "efi-arm64", Name: "efi-arm64/snp.efi", Origin: "built-in"},
		},
		Rules: 4, ConfigFile: "/etc/bootserve/config.toml", Started: time.Now(),
	})
	tr.DHCP(dhcpproxy.Event{Time: time.Now(), MAC: hw("3c:ec:ef:10:aa:01"), ArchName: "Intel x86PC (0)", Arch: firmware.BIOS,
		Hostname: "<b>printer</b>", MsgType: "discover", Port: 67, Outcome: dhcpproxy.IgnoredNoTarget,
		Reason: `no rule matches 3c:ec:ef:10:aa:01 (arch bios)`})
	tr.Error("config", "reload of /etc/bootserve/config.toml failed: line 12: machine.mac: \"zz\" is not a MAC address")

	opened := make(chan struct{})
	var once sync.Once
	h := tr.Handler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/" {
			once.Do(func() { close(opened) })
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return tr, srv, opened
}

// bootAfterLoad plays a whole boot once the page is open, so everything it
// shows about this machine came after the page loaded.
func bootAfterLoad(tr *status.Tracker, opened <-chan struct{}, f feeder) {
	go func() {
		<-opened
		time.Sleep(300 * time.Millisecond)
		f.dhcp("", false)
		time.Sleep(200 * time.Millisecond)
		f.dhcp("", true) // the REQUEST to port 4011 names the address
		f.tftp("efi-x64/snponly.efi", 1_050_000)
		time.Sleep(200 * time.Millisecond)
		f.dhcp("iPXE", false)
		f.script("nixos-installer")
		f.file(httpboot.StageKernel, "bzImage", 12_400_000, 400*time.Millisecond, 2)
		f.file(httpboot.StageInitrd, "initrd.zst", 412_000_000, 3*time.Second, 12)
	}()
}

func checkPNG(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%s is not a PNG: %v", path, err)
	}
	if r := img.Bounds(); r.Dx() < 300 || r.Dy() < 300 {
		t.Fatalf("%s is only %v", path, r)
	}
	t.Logf("screenshot %s: %d bytes, %v", path, len(b), img.Bounds().Size())
}

// The page follows a boot live over server-sent events, without a reload,
// and runs under its CSP without a single violation or script error.
func TestStatusPageLive(t *testing.T) {
	needBrowser(t)
	tr, srv, opened := newStatusServer(t, status.Options{Settle: 500 * time.Millisecond})
	// A machine half way through when the page loads, to show a progress bar.
	other := feeder{tr: tr, mac: hw("52:54:00:aa:00:02"), ip: netip.MustParseAddr("192.168.10.52")}
	other.dhcp("iPXE", true)
	other.script("k8s-worker")
	other.file(httpboot.StageKernel, "vmlinuz", 9_800_000, 300*time.Millisecond, 2)
	initrd := httpboot.Event{Time: time.Now(), Stage: httpboot.StageInitrd, Phase: "start", MAC: other.mac.String(), IP: other.ip, Name: "initrd", Size: 96_000_000}
	other.tr.HTTP(initrd)
	initrd.Time, initrd.Phase, initrd.Bytes = initrd.Time.Add(4*time.Second), "progress", 38_000_000
	other.tr.HTTP(initrd)

	f := feeder{tr: tr, mac: hw("52:54:00:12:34:56"), ip: netip.MustParseAddr("192.168.10.51")}
	bootAfterLoad(tr, opened, f)

	shot := filepath.Join(t.ArtifactDir(), "status-desktop.png")
	res, err := Run(context.Background(), Options{URL: srv.URL + "/", Until: MachineStage(f.mac.String(), "booted"), Screenshot: shot, Timeout: 90 * time.Second})
	if err != nil {
		t.Fatalf("%v\nconsole:\n%s", err, strings.Join(res.Console, "\n"))
	}
	if len(res.Problems) > 0 {
		t.Fatalf("the page reported problems:\n%s", strings.Join(res.Problems, "\n"))
	}
	checkPNG(t, shot)

	// The same page on a phone: the table turns into cards.
	phone := filepath.Join(t.ArtifactDir(), "status-phone.png")
	res, err = Run(context.Background(), Options{URL: srv.URL + "/", Until: `document.querySelector('#conn').dataset.state === 'live'`,
		Screenshot: phone, Width: 390, Height: 844, Timeout: 60 * time.Second})
	if err != nil {
		t.Fatalf("%v\nconsole:\n%s", err, strings.Join(res.Console, "\n"))
	}
	checkPNG(t, phone)
}

// With the stream refused (all slots taken), the page polls and still
// follows the boot.
func TestStatusPageFallsBackToPolling(t *testing.T) {
	needBrowser(t)
	tr, srv, opened := newStatusServer(t, status.Options{Settle: 500 * time.Millisecond, MaxSSEClients: 1})
	// Hold the only stream slot.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	f := feeder{tr: tr, mac: hw("52:54:00:12:34:57"), ip: netip.MustParseAddr("192.168.10.53")}
	bootAfterLoad(tr, opened, f)

	shot := filepath.Join(t.ArtifactDir(), "status-polling.png")
	until := MachineStage(f.mac.String(), "booted") + ` && document.querySelector('#conn').dataset.state === 'polling'`
	res, err := Run(context.Background(), Options{URL: srv.URL + "/", Until: until, Screenshot: shot, Timeout: 90 * time.Second})
	if err != nil {
		t.Fatalf("%v\nconsole:\n%s", err, strings.Join(res.Console, "\n"))
	}
	for _, p := range res.Problems {
		// The refused stream is expected; nothing else is.
		if !strings.Contains(p, "503") && !strings.Contains(strings.ToLower(p), "eventsource") {
			t.Errorf("unexpected problem: %s", p)
		}
	}
	checkPNG(t, shot)
}

// In full-DHCP mode the leases table follows the DHCP server live, shows a
// host name from the network as text, and counts its expiry down; on a
// phone the rows turn into cards like the machines.
func TestStatusPageLeasesLive(t *testing.T) {
	needBrowser(t)
	tr, srv, opened := newStatusServer(t, status.Options{})
	var mu sync.Mutex
	var recs []dhcpserver.Lease
	tr.WatchLeases(func() []dhcpserver.Lease {
		mu.Lock()
		defer mu.Unlock()
		return append([]dhcpserver.Lease(nil), recs...)
	})
	lease := func(ev dhcpserver.LeaseEvent, st dhcpserver.LeaseState) {
		mu.Lock()
		recs = append(recs, dhcpserver.Lease{IP: ev.IP, MAC: ev.MAC, Hostname: ev.Hostname, State: st, Expires: ev.Expires})
		mu.Unlock()
		tr.Lease(ev)
	}
	const host = `<b>printer</b>`
	lease(dhcpserver.LeaseEvent{Time: time.Now(), MsgType: "request", Outcome: dhcpserver.Acked, MAC: hw("3c:ec:ef:10:aa:01"),
		IP: netip.MustParseAddr("192.168.10.100"), Hostname: host, Expires: time.Now().Add(12 * time.Hour)}, dhcpserver.StateBound)
	go func() {
		<-opened
		time.Sleep(300 * time.Millisecond)
		lease(dhcpserver.LeaseEvent{Time: time.Now(), MsgType: "request", Outcome: dhcpserver.Acked, MAC: hw("52:54:00:12:34:58"),
			IP: netip.MustParseAddr("192.168.10.101"), Hostname: "rack1-node08", BootFile: "efi-x64/snponly.efi",
			Expires: time.Now().Add(time.Hour)}, dhcpserver.StateBound)
	}()
	until := `(function () {
		var rows = document.querySelectorAll('#leases tr');
		var late = document.querySelector('#leases tr[data-ip="192.168.10.101"]');
		var first = document.querySelector('#leases tr[data-ip="192.168.10.100"]');
		return !document.querySelector('#leases-panel').hidden && rows.length === 2 && late !== null &&
			late.dataset.state === 'bound' && late.querySelector('.rel').textContent.indexOf('in 59m') === 0 &&
			late.querySelector('td[data-label="Network boot"]').textContent === 'yes' &&
			first.querySelector('.sub').textContent === ` + "'" + host + "'" + ` && first.querySelector('b') === null;
	})()`
	shot := filepath.Join(t.ArtifactDir(), "status-leases-phone.png")
	res, err := Run(context.Background(), Options{URL: srv.URL + "/", Until: until, Screenshot: shot, Width: 390, Height: 844, Timeout: 60 * time.Second})
	if err != nil {
		t.Fatalf("%v\nconsole:\n%s", err, strings.Join(res.Console, "\n"))
	}
	if len(res.Problems) > 0 {
		t.Fatalf("the page reported problems:\n%s", strings.Join(res.Problems, "\n"))
	}
	checkPNG(t, shot)
}
