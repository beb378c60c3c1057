package httpboot

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/machines"
)

// slowFixture serves a 4 MB kernel with short timeouts and the given
// transfer bound.
func slowFixture(t *testing.T, maxTransfers int) (srv *Server, base string, kdata []byte) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return kernelFixture(t, Options{IdleTimeout: time.Second, ReadHeaderTimeout: time.Second, MaxTransfers: maxTransfers}, ln, 4<<20)
}

// kernelFixture serves a random kernel of size bytes on ln with opts.
func kernelFixture(t *testing.T, opts Options, ln net.Listener, size int) (srv *Server, base string, kdata []byte) {
	t.Helper()
	dir := t.TempDir()
	k := filepath.Join(dir, "vmlinuz")
	kdata = make([]byte, size)
	rand.Read(kdata)
	os.WriteFile(k, kdata, 0o644)
	fw, _ := firmware.Load(firmware.Config{SearchDir: dir})
	srv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv.SetPolicy(&Policy{Booter: machines.Static{T: machines.Target{Kind: machines.KindKernel, Name: "k", Kernel: k}}, Firmware: fw})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	return srv, "http://" + ln.Addr().String(), kdata
}

// stalledReader asks for a file and never reads the answer.
func stalledReader(t *testing.T, addr, path string) net.Conn {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	// A small receive window makes the server block writing at once.
	c.(*net.TCPConn).SetReadBuffer(4096)
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
	return c
}

// TestSlowClientsAreCutOff holds 500 slow connections — 250 sending their
// request a byte at a time (slowloris), 250 asking for the kernel and never
// reading — while a normal client boots: it is served, and the slow ones
// are cut off by the timeouts.
func TestSlowClientsAreCutOff(t *testing.T) {
	_, base, kdata := slowFixture(t, 0)
	addr := strings.TrimPrefix(base, "http://")
	kernelURL := regexp.MustCompile(`/f/\S+/vmlinuz`).FindString(strings.ReplaceAll(scriptAt(t, base), base, ""))
	var slow []net.Conn
	for range 250 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("GET /ipxe?mac=52:54:00:00:00:01 HTTP/1.1\r\nHo"))
		slow = append(slow, c)
	}
	for range 250 {
		slow = append(slow, stalledReader(t, addr, kernelURL))
	}
	defer func() {
		for _, c := range slow {
			c.Close()
		}
	}()
	time.Sleep(300 * time.Millisecond) // all 500 accepted
	start := time.Now()
	resp, err := http.Get(base + kernelURL)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(got, kdata) {
		t.Fatalf("normal client among 500 slow ones: %d, %d bytes", resp.StatusCode, len(got))
	}
	if !strings.Contains(scriptAt(t, base), "kernel ") {
		t.Fatal("normal client's script request failed")
	}
	t.Logf("normal client served in %v among 500 slow connections", time.Since(start).Round(time.Millisecond))

	// Every slow connection is closed by the server: the header timeout
	// (1 s here) for slowloris, the write idle timeout (1 s) for readers
	// that stalled. The server's side of each connection leaves the
	// ESTABLISHED state (what the client's kernel does with data still in
	// flight is its business).
	port := addr[strings.LastIndexByte(addr, ':')+1:]
	if n := established(t, port); n < 500 {
		t.Fatalf("only %d server-side connections established before the timeouts", n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := established(t, port)
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d slow connections still established on the server 10 s after the timeouts", n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// established counts the server-side TCP connections on a local port that
// are in state ESTABLISHED, from /proc/net/tcp.
func established(t *testing.T, port string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Skip("no /proc/net/tcp")
	}
	var p int
	fmt.Sscan(port, &p)
	want := fmt.Sprintf(":%04X", p)
	n := 0
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) > 3 && strings.HasSuffix(f[1], want) && f[3] == "01" {
			n++
		}
	}
	return n
}

func scriptAt(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/ipxe?mac=52:54:00:00:00:09")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestTransferLimit: with the bound reached by stalled readers, a further
// file request gets 503 + Retry-After, scripts are still served, and a slot
// frees when a stalled reader is cut off.
func TestTransferLimit(t *testing.T) {
	_, base, _ := slowFixture(t, 20)
	addr := strings.TrimPrefix(base, "http://")
	kernelURL := regexp.MustCompile(`/f/\S+/vmlinuz`).FindString(strings.ReplaceAll(scriptAt(t, base), base, ""))
	var stalled []net.Conn
	for range 20 {
		stalled = append(stalled, stalledReader(t, addr, kernelURL))
	}
	defer func() {
		for _, c := range stalled {
			c.Close()
		}
	}()
	time.Sleep(200 * time.Millisecond)
	resp, err := http.Get(base + kernelURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("21st transfer: %d Retry-After %q, want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if !strings.Contains(scriptAt(t, base), "kernel ") {
		t.Error("scripts are refused too")
	}
	// The stalled readers are cut off after the idle timeout (1 s here);
	// then transfers are served again.
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(base + kernelURL)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slots never freed: still %d", resp.StatusCode)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
