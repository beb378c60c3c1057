package sidebyside

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bootserve/bootserve/e2e/netlab"
	"github.com/bootserve/bootserve/tftpd/tftpclient"
)

var (
	flagWinRuns   = flag.Int("window-runs", 5, "timed runs per server and window size (after one warm-up)")
	flagWinSizes  = flag.String("window-sizes", "1,4,16", "RFC 7440 window sizes to ask for")
	flagWinMiB    = flag.Int("window-mib", 50, "size of the file, MiB")
	flagWinBlk    = flag.Int("window-blksize", 1468, "blksize to ask for")
	flagWinReport = flag.String("window-report", "", "write TestTFTPWindow's Markdown table to this file")
)

// TestTFTPWindow downloads one file over TFTP with RFC 7440 windows of 1, 4
// and 16 blocks from bootserve and from dnsmasq, both running at once in
// two server namespaces of one lab, from the router namespace with
// tftpclient. Runs alternate between the servers (and which goes first),
// so drifting machine load spreads over both.
//
//	sudo BOOTSERVE_BENCH=1 go test -run TestTFTPWindow -v -timeout 20m ./bench/sidebyside -args -window-report /tmp/win.md
func TestTFTPWindow(t *testing.T) {
	requireBench(t)
	var sizes []int
	for _, f := range strings.Split(*flagWinSizes, ",") {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			t.Fatalf("-window-sizes: %q is not a window size", f)
		}
		sizes = append(sizes, n)
	}
	bin := t.TempDir()
	goBuild(t, "../../cmd/bootserve", filepath.Join(bin, "bootserve"))
	assets := netlab.Assets(t)

	dir, err := os.MkdirTemp("", "tftpwindow-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { // bootserve serves as nobody
		t.Fatal(err)
	}
	const name = "big.bin"
	size := int64(*flagWinMiB) << 20
	want := writeRandom(t, filepath.Join(dir, name), size)

	lab := netlab.New(t, netlab.Options{SecondServer: true})
	conf := fmt.Sprintf("[tftp]\nroot = %q\n\n[default]\nkernel = %q\ninitrds = [%q]\ncmdline = %q\n",
		dir, assets.Kernel, assets.Initrd, netlab.BaseCmdline)
	confPath := filepath.Join(dir, "bootserve.toml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	bs := lab.Start(t, lab.ServerCmd(context.Background(), filepath.Join(bin, "bootserve"), "serve", "--config", confPath,
		"--interface", lab.ServerIface()))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := bs.WaitLog(ctx, netlab.Text("bootserve ready")); err != nil {
		t.Fatalf("bootserve did not start: %v\n%s", err, bs.Tail(30))
	}
	// The script URL is never fetched: no PXE client runs here.
	dm := lab.StartDnsmasqProxy(t, netlab.DnsmasqProxyOptions{ScriptURL: "http://" + lab.Server2().IP.String() + "/boot.ipxe",
		TFTPRoot: dir, Host: lab.Server2()})

	type target struct {
		name string
		addr netip.AddrPort
		proc *netlab.Proc
	}
	targets := []target{
		{"bootserve", netip.AddrPortFrom(lab.ServerIP(), 69), bs},
		{"dnsmasq " + dnsmasqVersion(), netip.AddrPortFrom(lab.Server2().IP, 69), dm},
	}
	type key struct {
		server string
		window int
	}
	runs := map[key][]windowRun{}
	oacks := map[key]map[string]string{}
	load0 := loadAvg()
	for round := 0; round <= *flagWinRuns; round++ {
		for _, ws := range sizes {
			order := slices.Clone(targets)
			if round%2 == 1 {
				slices.Reverse(order)
			}
			for _, tg := range order {
				check := round == 0 // the warm-up run also checks the bytes
				r, err := windowGet(lab.Router(), tg.addr, name, *flagWinBlk, ws, check)
				if err != nil {
					t.Fatalf("%s windowsize %d: %v\n%s", tg.name, ws, err, tg.proc.Tail(20))
				}
				if r.res.Bytes != size {
					t.Fatalf("%s windowsize %d: got %d bytes, want %d", tg.name, ws, r.res.Bytes, size)
				}
				k := key{tg.name, ws}
				if check {
					if !bytes.Equal(r.sum, want) {
						t.Fatalf("%s windowsize %d: content differs from the file", tg.name, ws)
					}
					oacks[k] = r.res.OACK
					t.Logf("%s windowsize %d: OACK %v", tg.name, ws, r.res.OACK)
					continue
				}
				t.Logf("%s windowsize %d run %d: %.3f s, %.1f MB/s, %d re-ACKs", tg.name, ws, round, r.seconds,
					float64(size)/r.seconds/1e6, r.res.Reacks)
				runs[k] = append(runs[k], r)
			}
		}
	}

	var md strings.Builder
	fmt.Fprintf(&md, "Run %s on %s (%d CPUs, no KVM); load average at start: %s, at end: %s\n\n",
		time.Now().Format("2006-01-02 15:04 MST"), hostName(), runtime.NumCPU(), load0, loadAvg())
	fmt.Fprintf(&md, "%d MiB file (%d bytes), blksize %d asked, tftpclient in the router namespace, both servers running at once "+
		"(bootserve %s, dnsmasq %s). Median of %d runs after one warm-up that also checked the bytes; MB/s = 10^6 bytes/s of the median run. "+
		"\"Negotiated\" is what the server's OACK granted; without windowsize in the OACK the client falls back to one block at a time (RFC 7440).\n\n",
		*flagWinMiB, size, *flagWinBlk, lab.ServerIP(), lab.Server2().IP, *flagWinRuns)
	md.WriteString("| windowsize asked | server | negotiated blksize / windowsize | median s | MB/s | min–max s | re-ACKs (median) | bootserve / server (speed) |\n|---|---|---|---|---|---|---|---|\n")
	for _, ws := range sizes {
		ref := median(secondsOfWin(runs[key{targets[0].name, ws}]))
		for _, tg := range targets {
			k := key{tg.name, ws}
			xs := secondsOfWin(runs[k])
			var re []float64
			for _, r := range runs[k] {
				re = append(re, float64(r.res.Reacks))
			}
			ratio := "—"
			if tg.name != targets[0].name {
				ratio = fmt.Sprintf("%.2f", median(xs)/ref)
			}
			neg := fmt.Sprintf("%s / %s", orDash(oacks[k]["blksize"]), orDash(oacks[k]["windowsize"]))
			fmt.Fprintf(&md, "| %d | %s | %s | %.3f | %.1f | %.3f–%.3f | %.0f | %s |\n", ws, tg.name, neg, median(xs),
				float64(size)/median(xs)/1e6, slices.Min(xs), slices.Max(xs), median(re), ratio)
		}
	}
	t.Log("\n" + md.String())
	if *flagWinReport != "" {
		if err := os.WriteFile(*flagWinReport, []byte(md.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

type windowRun struct {
	seconds float64
	res     tftpclient.Result
	sum     []byte // sha256 of the content, when checked
}

// windowGet downloads name once from the router namespace. Only a checked
// run hashes the content: hashing 50 MB would be timed with the transfer.
func windowGet(h *netlab.Host, server netip.AddrPort, name string, blksize, window int, check bool) (windowRun, error) {
	pc, err := h.ListenPacket("udp4", ":0")
	if err != nil {
		return windowRun{}, err
	}
	conn := pc.(*net.UDPConn)
	defer conn.Close()
	// What tftpclient sets on sockets it opens itself: whole windows fit
	// even when this process is slow to read.
	if err := conn.SetReadBuffer(4 << 20); err != nil {
		return windowRun{}, err
	}
	var w io.Writer = io.Discard
	hs := sha256.New()
	if check {
		w = hs
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	res, err := tftpclient.Get(ctx, server, name, w, tftpclient.Options{BlockSize: blksize, WindowSize: window, TSize: true, Conn: conn})
	r := windowRun{seconds: time.Since(start).Seconds(), res: res}
	if check {
		r.sum = hs.Sum(nil)
	}
	return r, err
}

// writeRandom writes size random bytes to path and returns their sha256.
func writeRandom(t *testing.T, path string, size int64) []byte {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	if err := f.Chmod(0o644); err != nil {
		t.Fatal(err)
	}
	return h.Sum(nil)
}

func secondsOfWin(rs []windowRun) []float64 {
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = r.seconds
	}
	return xs
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

// dnsmasqVersion is the installed dnsmasq's version number ("2.90").
func dnsmasqVersion() string {
	out, err := exec.Command("dnsmasq", "--version").Output()
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(out))
	if len(f) >= 3 && f[0] == "Dnsmasq" && f[1] == "version" {
		return f[2]
	}
	return "?"
}
