package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/pin/tftp/v3"
	"golang.org/x/sys/unix"

	"github.com/bootserve/bootserve/e2e/netlab"
)

// rssKB reads a process's resident memory.
func rssKB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("bootserve is gone: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

// junk makes a hostile datagram: random bytes, truncated or corrupted
// DHCP, DHCP with nonsense options, random TFTP opcodes and strings.
func junk(r *rand.Rand, valid []byte) []byte {
	switch r.IntN(6) {
	case 0:
		b := make([]byte, r.IntN(1400))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	case 1:
		return valid[:r.IntN(len(valid))] // truncated
	case 2:
		b := bytes.Clone(valid)
		for range 1 + r.IntN(20) {
			b[240+r.IntN(len(b)-240)] = byte(r.Uint32()) // corrupted options
		}
		return b
	case 3:
		b := bytes.Clone(valid)
		b[len(b)-1] = 0xfe // no end option, option running off the end
		return append(b, 0x40)
	case 4:
		b := make([]byte, 2+r.IntN(600))
		binary.BigEndian.PutUint16(b, uint16(r.IntN(12)))
		for i := 2; i < len(b); i++ {
			b[i] = byte('a' + r.IntN(30))
		}
		return b
	default:
		return []byte{0, 1, '.', '.', '/', 0, 'o', 'c', 't', 'e', 't', 0, 'b', 'l', 'k', 's', 'i', 'z', 'e', 0}
	}
}

func pxeDiscover(t *testing.T, mac net.HardwareAddr) *dhcpv4.DHCPv4 {
	p, err := dhcpv4.NewDiscovery(mac, dhcpv4.WithBroadcast(true),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64)),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003000")))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestFlood sends 100,000 malformed or random datagrams to ports 67, 4011
// and 69 from the lab's router namespace, interleaved with valid DISCOVERs
// from distinct MACs: bootserve must not crash, must answer the valid
// requests, must stay within a memory bound, must answer a burst of
// identical requests only at a bounded rate, and must still serve TFTP.
func TestFlood(t *testing.T) {
	assets := netlab.Assets(t)
	lab := netlab.New(t, netlab.Options{})
	srv := startBootserve(t, lab, "boot", assets.Kernel, assets.Initrd)
	pid := srv.Cmd.Process.Pid
	rss0 := rssKB(t, pid)
	server := lab.ServerIP().AsSlice()

	// Replies to DISCOVERs are broadcast to port 68 on the LAN.
	var sock, rx net.PacketConn
	err := lab.Router().Do(func() error {
		var err error
		if sock, err = net.ListenPacket("udp4", ":0"); err != nil {
			return err
		}
		lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
			return serr
		}}
		rx, err = lc.ListenPacket(context.Background(), "udp4", ":68")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	defer rx.Close()
	var mu sync.Mutex
	offers := map[dhcpv4.TransactionID]int{}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, _, err := rx.ReadFrom(buf)
			if err != nil {
				return
			}
			if p, err := dhcpv4.FromBytes(buf[:n]); err == nil && p.MessageType() == dhcpv4.MessageTypeOffer && p.ServerIPAddr.Equal(server) {
				if !p.YourIPAddr.IsUnspecified() {
					t.Errorf("offer with yiaddr %v", p.YourIPAddr)
				}
				mu.Lock()
				offers[p.TransactionID]++
				mu.Unlock()
			}
		}
	}()

	r := rand.New(rand.NewPCG(1, 2))
	template := pxeDiscover(t, net.HardwareAddr{2, 0, 0, 0, 0, 0}).ToBytes()
	ports := []int{67, 4011, 69}
	var valid []dhcpv4.TransactionID
	const total, every = 100000, 1000
	start := time.Now()
	for i := 0; i < total; i++ {
		to := &net.UDPAddr{IP: server, Port: ports[i%3]}
		sock.WriteTo(junk(r, template), to)
		if i%every == every-1 {
			p := pxeDiscover(t, net.HardwareAddr{2, 0, 0, 0, byte(i / every >> 8), byte(i / every)})
			valid = append(valid, p.TransactionID)
			sock.WriteTo(p.ToBytes(), &net.UDPAddr{IP: server, Port: 67})
			time.Sleep(5 * time.Millisecond) // a firmware's DISCOVER among the junk
		}
	}
	t.Logf("sent %d junk datagrams and %d valid DISCOVERs in %v", total, len(valid), time.Since(start).Round(time.Millisecond))
	// The kernel's UDP counters in the server namespace: RcvbufErrors are
	// datagrams dropped before bootserve could read them.
	if out, err := lab.Server().Command(context.Background(), "cat", "/proc/net/snmp").Output(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "Udp:") {
				t.Log(l)
			}
		}
	}

	time.Sleep(time.Second)
	mu.Lock()
	answered := 0
	for _, x := range valid {
		if offers[x] > 0 {
			answered++
		}
	}
	mu.Unlock()
	if answered < len(valid)*95/100 {
		t.Errorf("answered %d of %d valid DISCOVERs during the flood", answered, len(valid))
	}
	rss1 := rssKB(t, pid)
	t.Logf("answered %d/%d valid DISCOVERs; RSS %d kB before, %d kB after", answered, len(valid), rss0, rss1)
	if rss1-rss0 > 64*1024 {
		t.Errorf("RSS grew by %d kB during the flood", rss1-rss0)
	}

	// 200 identical DISCOVERs at once from one MAC: a few answers, not 200.
	same := pxeDiscover(t, net.HardwareAddr{2, 0, 0, 0xaa, 0, 1})
	for range 200 {
		sock.WriteTo(same.ToBytes(), &net.UDPAddr{IP: server, Port: 67})
	}
	time.Sleep(time.Second)
	mu.Lock()
	n := offers[same.TransactionID]
	mu.Unlock()
	if n < 1 || n > 5 {
		t.Errorf("%d offers to 200 identical DISCOVERs, want a bounded few", n)
	}

	// TFTP still serves its files, and the counters saw the junk.
	var got bytes.Buffer
	err = lab.Router().Do(func() error {
		c, err := tftp.NewClient(net.JoinHostPort(lab.ServerIP().String(), "69"))
		if err != nil {
			return err
		}
		c.SetTimeout(2 * time.Second)
		wt, err := c.Receive("efi-x64/snponly.efi", "octet")
		if err != nil {
			return err
		}
		_, err = wt.WriteTo(&got)
		return err
	})
	if err != nil || got.Len() < 100000 {
		t.Errorf("TFTP after the flood: %v, %d bytes", err, got.Len())
	}
	resp, err := lab.Router().HTTPClient().Get("http://" + net.JoinHostPort(lab.ServerIP().String(), "80") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	malformed := metricValue(t, string(m), "bootserve_dhcp_packets_total", `outcome="malformed"`)
	tftpBad := metricValue(t, string(m), "bootserve_tftp_malformed_packets_total")
	limited := metricValue(t, string(m), "bootserve_dhcp_packets_total", `outcome="ignored_rate_limit"`)
	t.Logf("counted: %v malformed DHCP, %v malformed TFTP, %v rate-limited", malformed, tftpBad, limited)
	for _, l := range strings.Split(string(m), "\n") {
		if strings.HasPrefix(l, "bootserve_dhcp") {
			t.Log(l)
		}
	}
	if malformed < 10000 || tftpBad < 1000 || limited < 150 {
		t.Errorf("counters did not see the flood: malformed DHCP %v, TFTP %v, rate-limited %v", malformed, tftpBad, limited)
	}
}
