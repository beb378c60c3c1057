package tftpd

import (
	"bytes"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pin/tftp/v3"
)

// download fetches name from the server at addr with one real client,
// asking for blksize where the client can.
type download func(t *testing.T, addr, name string, blksize int) []byte

func pinDownload(t *testing.T, addr, name string, blksize int) []byte {
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
	// pin/tftp's server leaves tsize=0 out, so an empty file has none.
	if (ok && tsize != int64(buf.Len())) || (!ok && buf.Len() != 0) {
		t.Errorf("pin/tftp client: %s: tsize %d (present %v), file has %d bytes", name, tsize, ok, buf.Len())
	}
	return buf.Bytes()
}

// hpaDownload uses tftp-hpa's client, which sends no options: plain RFC 1350
// with 512-byte blocks.
func hpaDownload(t *testing.T, addr, name string, _ int) []byte {
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

// curlDownload uses curl, which asks tsize and blksize.
func curlDownload(t *testing.T, addr, name string, blksize int) []byte {
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

// TestRealClients downloads, with three independent client implementations,
// a 1 MB random file, an empty file and a file that is an exact multiple of
// the block size (which ends with an empty DATA block).
func TestRealClients(t *testing.T) {
	files := Map{
		"random.bin": randomBytes(t, 1_000_000),
		"empty.bin":  {},
	}
	clients := []struct {
		name    string
		get     download
		blksize int
	}{
		{"pin-tftp", pinDownload, 1468},
		{"tftp-hpa", hpaDownload, 512},
		{"curl", curlDownload, 1468},
		{"curl-8k", curlDownload, 8192},
	}
	for _, c := range clients {
		name := "multiple-" + strconv.Itoa(c.blksize) + ".bin"
		files[name] = randomBytes(t, 64*c.blksize)
	}
	var mu sync.Mutex
	blockSizes := map[string]int{} // file → block size of its last transfer
	ts := startServer(t, Config{Source: files, OnTransfer: func(tr Transfer) {
		if tr.Done {
			mu.Lock()
			blockSizes[tr.File] = tr.BlockSize
			mu.Unlock()
		}
	}}, "")

	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			for _, name := range []string{"random.bin", "empty.bin", "multiple-" + strconv.Itoa(c.blksize) + ".bin"} {
				got := c.get(t, ts.addr.String(), name, c.blksize)
				if !bytes.Equal(got, files[name]) {
					t.Errorf("%s: got %d bytes, want %d, or content differs", name, len(got), len(files[name]))
				}
				// The end event is emitted after the client got its last ACK
				// answered; wait for it.
				waitFor(t, name+" end event", func() bool {
					mu.Lock()
					defer mu.Unlock()
					_, ok := blockSizes[name]
					return ok
				})
				mu.Lock()
				bs := blockSizes[name]
				delete(blockSizes, name)
				mu.Unlock()
				if bs != c.blksize {
					t.Errorf("%s: transfer used blksize %d, client asked %d", name, bs, c.blksize)
				}
			}
		})
	}
	if got := ts.outcomes(OutcomeOK); got != float64(3*len(clients)) {
		t.Errorf("ok = %v, want %d", got, 3*len(clients))
	}
	for _, o := range []Outcome{OutcomeFailed, OutcomeAbortedProbe, OutcomeNotFound, OutcomeRefused} {
		if got := ts.outcomes(o); got != 0 {
			t.Errorf("%s = %v, want 0", o, got)
		}
	}
}

// BenchmarkTransfer measures one download over loopback with pin/tftp's
// client; the MB/s column is the throughput.
func BenchmarkTransfer(b *testing.B) {
	for _, size := range []struct {
		name string
		n    int
	}{{"1MB", 1 << 20}, {"50MB", 50 << 20}} {
		file := randomBytes(b, size.n)
		ts := startServer(b, Config{Source: Map{"f": file}, Logger: slog.New(slog.DiscardHandler)}, "")
		for _, blksize := range []int{512, 1468, 8192} {
			b.Run(size.name+"/blksize="+strconv.Itoa(blksize), func(b *testing.B) {
				c, err := tftp.NewClient(ts.addr.String())
				if err != nil {
					b.Fatal(err)
				}
				c.SetBlockSize(blksize)
				c.RequestTSize(true)
				b.SetBytes(int64(size.n))
				for b.Loop() {
					wt, err := c.Receive("f", "octet")
					if err != nil {
						b.Fatal(err)
					}
					n, err := wt.WriteTo(discard{})
					if err != nil || n != int64(size.n) {
						b.Fatalf("got %d bytes: %v", n, err)
					}
				}
			})
		}
		ts.stop()
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
