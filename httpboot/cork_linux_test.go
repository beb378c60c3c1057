package httpboot

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// connRecorder hands the server its accepted connections unchanged (the
// cork needs a *net.TCPConn) and gives the test the server's end.
type connRecorder struct {
	net.Listener
	conns chan *net.TCPConn
}

func (l connRecorder) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		l.conns <- tc
	}
	return c, err
}

func corked(t *testing.T, c *net.TCPConn) bool {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_CORK) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v != 0
}

// waitCork waits (not a timing assertion: up to 10 s) for the server's end
// of the connection to reach the wanted TCP_CORK state.
func waitCork(t *testing.T, c *net.TCPConn, want bool, what string) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); corked(t, c) != want; {
		if time.Now().After(end) {
			t.Fatalf("%s: TCP_CORK on the server's socket is %v, want %v", what, !want, want)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestBodyCorked: a file body goes out corked (the header first, on its
// own), the cork is pulled when the body is done, and the next answer on the
// same keep-alive connection is not held back.
func TestBodyCorked(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec := connRecorder{Listener: ln, conns: make(chan *net.TCPConn, 4)}
	// 32 MiB: more than the socket buffers hold, so the server is still
	// sending while the client waits.
	_, base, kdata := kernelFixture(t, Options{}, rec, 32<<20)
	script := scriptAt(t, base)
	<-rec.conns // the script's connection
	kernelURL := regexp.MustCompile(`/f/\S+/vmlinuz`).FindString(strings.ReplaceAll(script, base, ""))

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A receive window below one segment would stall a corked sender
	// (Linux holds a partial segment up to 200 ms); real clients' windows
	// are many segments, and loopback's segments are 64 KB.
	c.(*net.TCPConn).SetReadBuffer(512 << 10)
	srv := <-rec.conns
	br := bufio.NewReader(c)
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", kernelURL)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("kernel: %s", resp.Status)
	}
	waitCork(t, srv, true, "while the body is sent")
	got, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(got, kdata) {
		t.Fatalf("kernel body: %d bytes, err %v; want the file's %d bytes", len(got), err, len(kdata))
	}
	waitCork(t, srv, false, "after the body")

	fmt.Fprintf(c, "GET /ipxe?mac=52:54:00:00:00:07 HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "kernel ") {
		t.Fatalf("script on the same connection: %s %q", resp.Status, b)
	}
	if corked(t, srv) {
		t.Fatal("TCP_CORK set after a small answer")
	}
}
