package tftpd

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/bootserve/bootserve/tftpd/tftpclient"
	"github.com/pin/tftp/v3"
)

// download fetches name from the server at addr with one real client,
// asking for blksize (and windowsize) where the client can.
type download func(t *testing.T, addr, name string, blksize, windowsize int) []byte

func pinDownload(t *testing.T, addr, name string, blksize, _ int) []byte {
	c, err := tftp.NewClient(addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetBlockSize(blksize)
	c.RequestTSize(true)
	c.SetTimeout(2 * time.Second)
	wt, err := c.Receive(name, "octet")
	if err != nil {
		t.Fatalf("pin/tftp client: %s: %v", name, err)
	}
	// Size is only valid before WriteTo, which consumes the options.
	tsize, ok := wt.(tftp.IncomingTransfer).Size()
	var buf bytes.Buffer
	if _, err := wt.WriteTo(&buf); err != nil {
		t.Fatalf("pin/tftp client: %s: %v", name, err)
	}
	// pin/tftp's server leaves tsize=0 out, so there an empty file has none.
	if (ok && tsize != int64(buf.Len())) || (!ok && buf.Len() != 0) {
		t.Errorf("pin/tftp client: %s: tsize %d (present %v), file has %d bytes", name, tsize, ok, buf.Len())
	}
	return buf.Bytes()
}

// hpaDownload uses tftp-hpa's client, which sends no options: plain RFC 1350
// with 512-byte blocks.
func hpaDownload(t *testing.T, addr, name string, _, _ int) []byte {
	tool(t, "tftp", "tftp-hpa")
	host, port := splitAddr(t, addr)
	out := filepath.Join(t.TempDir(), "out")
	cmd := exec.Command("tftp", "-v", "-m", "binary", host, port, "-c", "get", name, out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tftp-hpa: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("tftp-hpa wrote no file: %v", err)
	}
	return b
}

// curlDownload uses curl, which asks tsize, blksize and timeout.
func curlDownload(t *testing.T, addr, name string, blksize, _ int) []byte {
	tool(t, "curl", "curl")
	cmd := exec.Command("curl", "--silent", "--show-error", "--max-time", "20",
		"--tftp-blksize", strconv.Itoa(blksize), "--output", "-", "tftp://"+addr+"/"+name)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, stderr.Bytes())
	}
	return b
}

// atftpDownload uses atftp (Debian's atftp 0.8), which implements RFC 7440
// windows. It does not ask tsize unless told.
func atftpDownload(t *testing.T, addr, name string, blksize, windowsize int) []byte {
	tool(t, "atftp", "atftp")
	host, port := splitAddr(t, addr)
	out := filepath.Join(t.TempDir(), "out")
	args := []string{"--get", "--remote-file", name, "--local-file", out, "--option", "blksize " + strconv.Itoa(blksize),
		"--option", "tsize enable"}
	if windowsize > 0 {
		args = append(args, "--option", "windowsize "+strconv.Itoa(windowsize))
	}
	cmd := exec.Command("atftp", append(args, host, port)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("atftp: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("atftp wrote no file: %v", err)
	}
	return b
}

// windowedDownload uses this package's own test client (tftpclient), which
// asks tsize, blksize and windowsize as EDK2 does.
func windowedDownload(t *testing.T, addr, name string, blksize, windowsize int) []byte {
	var buf bytes.Buffer
	res, err := tftpclient.Get(context.Background(), netip.MustParseAddrPort(addr), name, &buf,
		tftpclient.Options{BlockSize: blksize, WindowSize: windowsize, TSize: true})
	if err != nil {
		t.Fatalf("tftpclient: %s: %v", name, err)
	}
	if res.TSize >= 0 && res.TSize != int64(buf.Len()) {
		t.Errorf("tftpclient: %s: tsize %d, file has %d bytes", name, res.TSize, buf.Len())
	}
	return buf.Bytes()
}

func tool(t *testing.T, bin, pkg string) {
	if _, err := exec.LookPath(bin); err != nil {
		t.Fatalf("%s not found: apt-get install %s (the test needs a real client)", bin, pkg)
	}
}

func splitAddr(t *testing.T, addr string) (string, string) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return host, port
}

// TestRealClients downloads, with independent client implementations, a
// 1 MB random file, an empty file and a file that is an exact multiple of
// the block size (which ends with an empty DATA block): lock-step with
// pin/tftp's client, tftp-hpa and curl, windowed with atftp and tftpclient.
func TestRealClients(t *testing.T) { forEachEngine(t, testRealClients) }

func testRealClients(t *testing.T, engine string) {
	files := Map{
		"random.bin": randomBytes(t, 1_000_000),
		"empty.bin":  {},
	}
	clients := []struct {
		name       string
		get        download
		blksize    int
		windowsize int
		noEmpty    bool
	}{
		{name: "pin-tftp", get: pinDownload, blksize: 1468},
		{name: "tftp-hpa", get: hpaDownload, blksize: 512},
		// curl refuses an OACK with tsize 0 ("invalid tsize -:0:- value in
		// OACK packet", exit 71; so it does with tftpd-hpa and dnsmasq), and
		// the native engine, like them, announces empty files as tsize 0.
		{name: "curl", get: curlDownload, blksize: 1468, noEmpty: engine != EnginePin},
		{name: "curl-8k", get: curlDownload, blksize: 8192, noEmpty: engine != EnginePin},
		{name: "atftp-window4", get: atftpDownload, blksize: 1468, windowsize: 4},
		{name: "atftp-window16", get: atftpDownload, blksize: 1024, windowsize: 16},
		{name: "tftpclient-window4", get: windowedDownload, blksize: 1468, windowsize: 4},
		{name: "tftpclient-window64", get: windowedDownload, blksize: 512, windowsize: 64},
	}
	for _, c := range clients {
		name := "multiple-" + strconv.Itoa(c.blksize) + ".bin"
		files[name] = randomBytes(t, 64*c.blksize)
	}
	var mu sync.Mutex
	ended := map[string]Transfer{} // file → end event of its last transfer
	ts := startServer(t, Config{Engine: engine, Source: files, OnTransfer: func(tr Transfer) {
		if tr.Done {
			mu.Lock()
			ended[tr.File] = tr
			mu.Unlock()
		}
	}}, "")

	transfers := 0
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			names := []string{"random.bin", "empty.bin", "multiple-" + strconv.Itoa(c.blksize) + ".bin"}
			if c.noEmpty {
				names = slices.Delete(names, 1, 2)
			}
			for _, name := range names {
				transfers++
				got := c.get(t, ts.addr.String(), name, c.blksize, c.windowsize)
				if !bytes.Equal(got, files[name]) {
					t.Errorf("%s: got %d bytes, want %d, or content differs", name, len(got), len(files[name]))
				}
				// The end event is emitted after the client got its last ACK
				// answered; wait for it.
				waitFor(t, name+" end event", func() bool {
					mu.Lock()
					defer mu.Unlock()
					_, ok := ended[name]
					return ok
				})
				mu.Lock()
				tr := ended[name]
				delete(ended, name)
				mu.Unlock()
				if tr.BlockSize != c.blksize {
					t.Errorf("%s: transfer used blksize %d, client asked %d", name, tr.BlockSize, c.blksize)
				}
				window := max(c.windowsize, 1)
				if engine == EnginePin {
					window = 1
				}
				if tr.WindowSize != window {
					t.Errorf("%s: transfer used windowsize %d, want %d", name, tr.WindowSize, window)
				}
				if tr.Retransmits != 0 {
					t.Errorf("%s: %d retransmissions on loopback", name, tr.Retransmits)
				}
			}
		})
	}
	if got := ts.outcomes(OutcomeOK); got != float64(transfers) {
		t.Errorf("ok = %v, want %d", got, transfers)
	}
	for _, o := range []Outcome{OutcomeFailed, OutcomeAbortedProbe, OutcomeNotFound, OutcomeRefused} {
		if got := ts.outcomes(o); got != 0 {
			t.Errorf("%s = %v, want 0", o, got)
		}
	}
}

// BenchmarkTransfer measures one download over loopback per engine, with
// pin/tftp's client (lock-step) and with tftpclient at several window
// sizes; the MB/s column is the throughput. bench/sidebyside's
// TestTFTPWindow compares with dnsmasq across a namespaced LAN.
func BenchmarkTransfer(b *testing.B) {
	const size = 8 << 20
	file := randomBytes(b, size)
	for _, engine := range []string{EngineNative, EnginePin} {
		ts := startServer(b, Config{Engine: engine, Source: Map{"f": file}, Logger: slog.New(slog.DiscardHandler)}, "")
		b.Run(engine+"/pin-client/blksize=1468", func(b *testing.B) {
			c, err := tftp.NewClient(ts.addr.String())
			if err != nil {
				b.Fatal(err)
			}
			c.SetBlockSize(1468)
			c.RequestTSize(true)
			b.SetBytes(size)
			for b.Loop() {
				wt, err := c.Receive("f", "octet")
				if err != nil {
					b.Fatal(err)
				}
				n, err := wt.WriteTo(discard{})
				if err != nil || n != size {
					b.Fatalf("got %d bytes: %v", n, err)
				}
			}
		})
		windows := []int{1, 4, 16, 64}
		if engine == EnginePin {
			windows = []int{1}
		}
		for _, w := range windows {
			b.Run(engine+"/tftpclient/blksize=1468/windowsize="+strconv.Itoa(w), func(b *testing.B) {
				b.SetBytes(size)
				for b.Loop() {
					res, err := tftpclient.Get(context.Background(), ts.addr.AddrPort(), "f", discard{},
						tftpclient.Options{BlockSize: 1468, WindowSize: w, TSize: true})
					if err != nil || res.Bytes != size {
						b.Fatalf("got %d bytes: %v", res.Bytes, err)
					}
				}
			})
		}
		ts.stop()
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
