package e2e

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/bootserve/bootserve/e2e/netlab"
	"github.com/bootserve/bootserve/status/browsertest"
)

// forwardToLab listens on the host's loopback and carries each connection
// into the lab (dialled from the router namespace, as a machine on the LAN
// would), so a program on the host — a browser — can reach bootserve.
// Nothing leaves loopback and the lab.
func forwardToLab(t *testing.T, lab *netlab.Lab, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				u, err := lab.Router().DialContext(context.Background(), "tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				done := make(chan struct{}, 2)
				go func() { io.Copy(u, c); done <- struct{}{} }()
				go func() { io.Copy(c, u); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return ln.Addr().String()
}

// metricValue reads one sample from a Prometheus text exposition.
func metricValue(t *testing.T, body, name string, labels ...string) float64 {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, name) || strings.HasPrefix(l, "#") {
			continue
		}
		rest := l[len(name):]
		if rest != "" && rest[0] != '{' && rest[0] != ' ' {
			continue // a longer metric name
		}
		ok := true
		for _, lb := range labels {
			ok = ok && strings.Contains(rest, lb)
		}
		if !ok {
			continue
		}
		f := strings.Fields(l)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", l, err)
		}
		return v
	}
	return 0
}

// TestStatusPageAndMetrics boots a UEFI VM while headless Chromium watches
// the status page: the page must show the VM's MAC and reach "booted"
// without a reload. Then /metrics must have moved by what that one boot
// does, and an HTML-looking host name and user class sent by a client must
// show up escaped.
func TestStatusPageAndMetrics(t *testing.T) {
	chromium, err := browsertest.FindChromium()
	if err != nil {
		netlab.Require(t)
		t.Fatal(err)
	}
	assets := netlab.Assets(t)
	lab := netlab.New(t, netlab.Options{})
	startBootserve(t, lab, "boot", assets.Kernel, assets.Initrd, "--cmdline", cmdlineBase+" status=1")
	web := forwardToLab(t, lab, net.JoinHostPort(lab.ServerIP().String(), "80"))
	const mac = "52:54:00:5a:7a:75"

	shot := filepath.Join(t.TempDir(), "status.png")
	type browserResult struct {
		r   *browsertest.Result
		err error
	}
	browserDone := make(chan browserResult, 1)
	go func() {
		r, err := browsertest.Run(context.Background(), browsertest.Options{
			URL: "http://" + web + "/", Until: browsertest.MachineStage(mac, "booted"),
			Screenshot: shot, Timeout: 4 * time.Minute, ExecPath: chromium,
		})
		browserDone <- browserResult{r, err}
	}()
	time.Sleep(3 * time.Second) // let the page load before the machine appears

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	vm := lab.MustBoot(t, ctx, netlab.VM{Firmware: netlab.UEFI, MAC: mac})
	t.Logf("VM booted in %.1f s", vm.Seconds())
	br := <-browserDone
	if br.err != nil {
		t.Fatalf("the status page did not show %s booted without a reload: %v", mac, br.err)
	}
	if len(br.r.Problems) > 0 {
		t.Errorf("browser problems: %q", br.r.Problems)
	}
	if st, err := os.Stat(shot); err != nil || st.Size() == 0 {
		t.Fatalf("screenshot %s: %v", shot, err)
	}
	if out := os.Getenv("BOOTSERVE_SCREENSHOT_OUT"); out != "" {
		b, _ := os.ReadFile(shot)
		os.WriteFile(out, b, 0o644)
	}
	t.Logf("status page reached booted %.1f s after load; screenshot %s", br.r.Elapsed.Seconds(), shot)

	// One UEFI boot: OVMF's DISCOVER and 4011 REQUEST, snponly.efi over
	// TFTP (after EDK2's size probe), iPXE's DISCOVER, one script, a
	// kernel and an initrd over HTTP, one boot-duration observation.
	client := lab.Router().HTTPClient()
	metrics := func() string {
		resp, err := client.Get("http://" + net.JoinHostPort(lab.ServerIP().String(), "80") + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	m := metrics()
	kernel, _ := os.Stat(assets.Kernel)
	initrd, _ := os.Stat(assets.Initrd)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
		atMost bool
	}{
		{"bootserve_dhcp_packets_total", []string{`type="discover"`, `outcome="answered"`}, 2, false},
		{"bootserve_dhcp_packets_total", []string{`type="request"`, `outcome="answered"`}, 1, false},
		{"bootserve_tftp_transfers_total", []string{`outcome="ok"`}, 1, false},
		{"bootserve_http_requests_total", []string{`route="script"`, `code="200"`}, 1, false},
		{"bootserve_http_requests_total", []string{`route="file"`, `code="200"`}, 2, false},
		{"bootserve_http_response_bytes_total", []string{`route="file"`}, float64(kernel.Size() + initrd.Size()), false},
		{"bootserve_boot_duration_seconds_count", nil, 1, false},
		{"bootserve_dhcp_packets_total", []string{`outcome="malformed"`}, 0, false},
	} {
		if got := metricValue(t, m, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if d := metricValue(t, m, "bootserve_boot_duration_seconds_sum"); d <= 0 || d > vm.Seconds() {
		t.Errorf("boot duration %v s, want within the VM's %.1f s", d, vm.Seconds())
	}

	// A client with an HTML-looking host name and user class.
	evil := `<img src=x onerror=alert(1)>`
	sendEvilDiscover(t, lab, evil)
	resp, err := client.Get("http://" + net.JoinHostPort(lab.ServerIP().String(), "80") + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(page), evil) || strings.Contains(string(page), "<script>alert") {
		t.Errorf("the status page shows client data unescaped")
	}
	if !strings.Contains(string(page), "&lt;img src=x onerror=alert(1)&gt;") {
		t.Errorf("the client's host name is not on the page (escaped)")
	}
	if resp.Header.Get("Content-Security-Policy") == "" {
		t.Error("no Content-Security-Policy")
	}
}

// sendEvilDiscover sends, from the router namespace, a PXE DISCOVER whose
// host name and user class are HTML.
func sendEvilDiscover(t *testing.T, lab *netlab.Lab, evil string) {
	t.Helper()
	p, err := dhcpv4.NewDiscovery(net.HardwareAddr{0x52, 0x54, 0, 0xe, 0xf, 0x11},
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64)),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003000")),
		dhcpv4.WithOption(dhcpv4.OptHostName(evil)),
		dhcpv4.WithOption(dhcpv4.OptRFC3004UserClass([]string{"<script>alert(2)</script>"})))
	if err != nil {
		t.Fatal(err)
	}
	var conn net.PacketConn
	err = lab.Router().Do(func() error {
		var err error
		conn, err = net.ListenPacket("udp4", ":0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Unicast to the server's port 67: a broadcast from this namespace
	// would need SO_BROADCAST and reaches the same socket.
	if _, err := conn.WriteTo(p.ToBytes(), &net.UDPAddr{IP: lab.ServerIP().AsSlice(), Port: 67}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // let the server and tracker see it
}
