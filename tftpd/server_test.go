package tftpd

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pin/tftp/v3"
)

func TestNewConfig(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New without a Source succeeded")
	}
	if _, err := New(Config{Source: Map{}, Retries: -1}); err == nil {
		t.Error("New with negative Retries succeeded")
	}
	s, err := New(Config{Source: Map{}})
	if err != nil {
		t.Fatal(err)
	}
	if s.cfg.MaxTransfers != DefaultMaxTransfers || s.cfg.Timeout != DefaultTimeout || s.cfg.Retries != DefaultRetries || s.cfg.ShutdownGrace != DefaultShutdownGrace {
		t.Errorf("defaults not applied: %+v", s.cfg)
	}
}

func TestTsizeAndBlksize(t *testing.T) {
	file := randomBytes(t, 300_000)
	ts := startServer(t, Config{Source: Map{"f.bin": file, "empty": nil}}, "")

	for _, blksize := range []int{8, 512, 1432, 1468, 8192, 65464} {
		c := newRawClient(t)
		oack, got := c.get(ts.addr, "f.bin", "tsize", "0", "blksize", strconv.Itoa(blksize))
		if oack["tsize"] != strconv.Itoa(len(file)) {
			t.Errorf("blksize %d: OACK tsize = %q, want %d", blksize, oack["tsize"], len(file))
		}
		// pin/tftp refuses blksize < 512 by ignoring the option (RFC 2347
		// allows it): blocks are then 512 bytes and blksize is not in the OACK.
		wantBlk := strconv.Itoa(blksize)
		if blksize < 512 {
			wantBlk = ""
		}
		if oack["blksize"] != wantBlk {
			t.Errorf("blksize %d: OACK blksize = %q, want %q (the client's request honoured, no MTU clamp)", blksize, oack["blksize"], wantBlk)
		}
		if !bytes.Equal(got, file) {
			t.Errorf("blksize %d: got %d bytes, content differs", blksize, len(got))
		}
	}

	// tsize only, no blksize: OACK with tsize, then 512-byte blocks.
	c := newRawClient(t)
	oack, got := c.get(ts.addr, "f.bin", "tsize", "0")
	if oack["tsize"] != strconv.Itoa(len(file)) || len(oack) != 1 || !bytes.Equal(got, file) {
		t.Errorf("tsize only: OACK %v, %d bytes", oack, len(got))
	}
	// No options: no OACK, straight to DATA 1.
	oack, got = c.get(ts.addr, "f.bin")
	if oack != nil || !bytes.Equal(got, file) {
		t.Errorf("no options: OACK %v, %d bytes", oack, len(got))
	}
	// Empty file: pin/tftp leaves tsize=0 out of the OACK (engine.go).
	_, got = c.get(ts.addr, "empty", "tsize", "0", "blksize", "1468")
	if len(got) != 0 {
		t.Errorf("empty file: got %d bytes", len(got))
	}
	ts.waitOutcome(t, OutcomeOK, 9)
}

func TestReplyFromRequestAddress(t *testing.T) {
	// The server listens on 127.0.0.2 and the client is on 127.0.0.1. A
	// transfer socket bound to the wildcard address would answer from
	// 127.0.0.1 (the kernel's choice for that destination); clients drop
	// replies from an address they did not talk to.
	ts := startServer(t, Config{Source: Map{"f": []byte("hello")}}, "127.0.0.2:0")
	c := newRawClient(t)
	c.send(ts.addr, rq(opRRQ, "f", "octet", "tsize", "0"))
	p := c.mustRecv()
	if !p.from.IP.Equal(ts.addr.IP) {
		t.Fatalf("reply from %v, request went to %v", p.from.IP, ts.addr.IP)
	}
	if p.from.Port == ts.addr.Port {
		t.Errorf("reply from the server port %d: each transfer should have its own port", p.from.Port)
	}
	c.send(p.from, errorPacket(0, "done"))

	_, got := newRawClient(t).get(ts.addr, "f") // see abortNote
	if string(got) != "hello" {
		t.Errorf("got %q", got)
	}
}

func TestWriteRefused(t *testing.T) {
	ts := startServer(t, Config{Source: Map{}}, "")

	cl, err := tftp.NewClient(ts.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	cl.SetTimeout(time.Second)
	if _, err := cl.Send("upload.bin", "octet"); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("pin/tftp client upload: err = %v, want a read-only refusal", err)
	}

	c := newRawClient(t)
	c.send(ts.addr, rq(opWRQ, "x", "octet"))
	if p := c.mustRecv(); p.op() != opERROR || !strings.Contains(p.errMsg(), "read-only") {
		t.Errorf("raw WRQ: got %v, want ERROR read-only", p)
	}
	ts.waitOutcome(t, OutcomeRefused, 2)
}

func TestNotFoundAndTraversal(t *testing.T) {
	var events []Transfer
	var mu sync.Mutex
	ts := startServer(t, Config{
		Source: Dir(traversalTree(t)),
		OnTransfer: func(tr Transfer) {
			mu.Lock()
			events = append(events, tr)
			mu.Unlock()
		},
	}, "")
	c := newRawClient(t)
	expectError := func(name string, wantMsg string) {
		t.Helper()
		c.send(ts.addr, rq(opRRQ, name, "octet", "tsize", "0"))
		p := c.mustRecv()
		if p.op() != opERROR || p.errMsg() != wantMsg {
			t.Errorf("RRQ %q: got %v, want ERROR %q", name, p, wantMsg)
		}
		if strings.Contains(p.errMsg(), "/") {
			t.Errorf("RRQ %q: error %q shows a server path", name, p.errMsg())
		}
	}
	// pin/tftp sends every error with code 1; the message tells them apart.
	for _, name := range []string{"missing", "/etc/passwd", `..\secret.txt`, "%2e%2e/secret.txt", "sub", "fifo"} {
		expectError(name, errNotFound.msg)
	}
	for _, name := range []string{"../secret.txt", "/../secret.txt", "a/../../secret.txt", "//etc/passwd", "./ok.bin"} {
		expectError(name, errAccess.msg)
	}
	for _, name := range []string{"escape", "sub/escape", "abs"} { // symlinks leaving the root
		expectError(name, errOpen.msg)
	}
	ts.waitOutcome(t, OutcomeNotFound, 6)
	ts.waitOutcome(t, OutcomeRefused, 5)
	ts.waitOutcome(t, OutcomeFailed, 3)

	// One log line per request: info for not found, warn for the rest.
	if n := len(ts.logs.linesAt(t, "INFO")); n != 6 {
		t.Errorf("%d info lines, want 6 (one per missing file)", n)
	}
	if n := len(ts.logs.linesAt(t, "WARN")); n != 8 {
		t.Errorf("%d warn lines, want 8 (one per refused or failed request)", n)
	}

	// Leading slash stripped once; subdirectories and inner symlinks work.
	for name, want := range map[string]string{"/ok.bin": "ok", "sub/deep.bin": "deep", "/inside": "deep"} {
		if _, got := c.get(ts.addr, name); string(got) != want {
			t.Errorf("RRQ %q: got %q, want %q", name, got, want)
		}
	}
	ts.waitOutcome(t, OutcomeOK, 3)

	mu.Lock()
	defer mu.Unlock()
	var nf *Transfer
	for i := range events {
		if events[i].File == "missing" {
			nf = &events[i]
		}
	}
	if nf == nil || !nf.Done || nf.Outcome != OutcomeNotFound || !errors.Is(nf.Err, fs.ErrNotExist) || nf.Size != -1 {
		t.Errorf("not-found event = %+v", nf)
	}
}

func TestTransferEventsAndLog(t *testing.T) {
	file := randomBytes(t, 100_000)
	events := make(chan Transfer, 10)
	ts := startServer(t, Config{Source: Map{"f": file}, OnTransfer: func(tr Transfer) { events <- tr }}, "")
	c := newRawClient(t)
	c.get(ts.addr, "/f", "blksize", "1468", "tsize", "0")

	start, end := <-events, <-events
	client := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(c.conn.LocalAddr().(*net.UDPAddr).Port))
	if start.Done || start.Client != client || start.File != "f" || start.Size != int64(len(file)) || start.Bytes != 0 {
		t.Errorf("start event = %+v", start)
	}
	if !end.Done || end.Outcome != OutcomeOK || end.Err != nil || end.Bytes != int64(len(file)) || end.BlockSize != 1468 ||
		end.Client != client || end.Local != client.Addr() || end.Duration <= 0 || !end.Start.Equal(start.Start) {
		t.Errorf("end event = %+v", end)
	}

	info := ts.logs.linesAt(t, "INFO")
	if len(info) != 1 {
		t.Fatalf("info lines: %v, want exactly one", info)
	}
	l := info[0]
	if l["client"] != client.String() || l["server"] != "127.0.0.1" || l["file"] != "f" || l["size"] != float64(len(file)) || l["blksize"] != float64(1468) ||
		l["duration"] == nil || l["mb_per_s"] == nil {
		t.Errorf("transfer log line = %v", l)
	}
	if got := testutilFloat(ts.metrics.bytes); got != float64(len(file)) {
		t.Errorf("bytes_total = %v, want %d", got, len(file))
	}
}

func TestMalformedPackets(t *testing.T) {
	file := randomBytes(t, 5000)
	ts := startServer(t, Config{Source: Map{"f": file}, Timeout: 200 * time.Millisecond, Retries: 1}, "")
	c := newRawClient(t)
	garbage := [][]byte{
		{},                                    // empty datagram
		{0},                                   // 1 byte
		{0, 1, 'a'},                           // RRQ too short
		{0, 9, 'x', 0, 'o', 0},                // unknown opcode
		{0xff, 0xff},                          // unknown opcode, 2 bytes
		[]byte("\x00\x01no-terminator"),       // RRQ without any NUL
		ackPacket(1),                          // ACK to the server port
		{0, opDATA, 0, 1, 'd', 'a', 't', 'a'}, // DATA to the server port
		errorPacket(0, "stray"),               // ERROR to the server port
	}
	for _, g := range garbage {
		c.send(ts.addr, g)
	}
	// Bad option values are ignored, not refused: the transfer runs with
	// 512-byte blocks (see engine.go: these are not counted).
	for _, v := range []string{"abc", "1", "-5", "99999999999999999999", ""} {
		c := newRawClient(t) // see abortNote
		c.send(ts.addr, rq(opRRQ, "f", "octet", "blksize", v))
		p := c.mustRecv()
		if p.op() != opDATA || len(p.data()) != 512 {
			t.Errorf("blksize=%q: got %v, want DATA 1 with 512 bytes", v, p)
		}
		c.send(p.from, errorPacket(0, "enough"))
	}
	want := float64(len(garbage))
	waitFor(t, "malformed counter", func() bool { return testutilFloat(ts.metrics.malformed) >= want })
	if got := testutilFloat(ts.metrics.malformed); got != want {
		t.Errorf("malformed = %v, want %v", got, want)
	}
	// Still serving.
	if _, got := c.get(ts.addr, "f", "blksize", "1468"); !bytes.Equal(got, file) {
		t.Errorf("after garbage: got %d bytes", len(got))
	}
	if n := len(ts.logs.linesAt(t, "DEBUG")); n < len(garbage) {
		t.Errorf("%d debug lines, want one per malformed packet", n)
	}
}

func TestClientNeverAcks(t *testing.T) {
	const timeout, retries = 100 * time.Millisecond, 2
	ts := startServer(t, Config{Source: Map{"f": randomBytes(t, 10_000)}, Timeout: timeout, Retries: retries, MaxTransfers: 1}, "")
	c := newRawClient(t)
	start := time.Now()
	c.send(ts.addr, rq(opRRQ, "f", "octet"))
	var datas int
	for {
		p, ok := c.recv(5 * time.Second)
		if !ok {
			t.Fatal("server still silent 5 s after the last packet: transfer never ended")
		}
		if p.op() == opERROR {
			break
		}
		if p.op() != opDATA || p.block() != 1 {
			t.Fatalf("got %v, want DATA 1 or ERROR", p)
		}
		datas++
	}
	elapsed := time.Since(start)
	if datas != retries+1 {
		t.Errorf("DATA 1 sent %d times, want %d (1 + Retries)", datas, retries+1)
	}
	if elapsed < timeout*(retries+1) {
		t.Errorf("gave up after %v, before the retry budget %v", elapsed, timeout*(retries+1))
	}
	ts.waitOutcome(t, OutcomeFailed, 1)
	waitFor(t, "active transfers 0", func() bool { return testutilFloat(ts.metrics.active) == 0 })
	// The one slot is free again.
	if _, got := newRawClient(t).get(ts.addr, "f"); len(got) != 10_000 {
		t.Errorf("after the dead client: got %d bytes", len(got))
	}
}

func TestConcurrencyLimit(t *testing.T) {
	file := randomBytes(t, 3000)
	ts := startServer(t, Config{Source: Map{"f": file}, MaxTransfers: 2, Timeout: 5 * time.Second}, "")
	// Two clients take both slots and sit on DATA 1.
	var holders []*rawClient
	var peers []*net.UDPAddr
	for range 2 {
		c := newRawClient(t)
		c.send(ts.addr, rq(opRRQ, "f", "octet"))
		p := c.mustRecv()
		if p.op() != opDATA {
			t.Fatalf("holder got %v", p)
		}
		holders, peers = append(holders, c), append(peers, p.from)
	}
	waitFor(t, "2 active transfers", func() bool { return testutilFloat(ts.metrics.active) == 2 })

	c := newRawClient(t)
	c.send(ts.addr, rq(opRRQ, "f", "octet"))
	if p := c.mustRecv(); p.op() != opERROR || p.errMsg() != errBusy.msg {
		t.Fatalf("third client got %v, want ERROR %q", p, errBusy.msg)
	}
	ts.waitOutcome(t, OutcomeRefused, 1)

	// One holder gives up: its slot is released and the third client is served.
	holders[0].send(peers[0], errorPacket(0, "bye"))
	ts.waitOutcome(t, OutcomeFailed, 1)
	if _, got := c.get(ts.addr, "f"); !bytes.Equal(got, file) {
		t.Errorf("after a slot freed: got %d bytes", len(got))
	}
	holders[1].send(peers[1], errorPacket(0, "bye"))
	ts.waitOutcome(t, OutcomeFailed, 2)
	waitFor(t, "active transfers 0", func() bool { return testutilFloat(ts.metrics.active) == 0 })
}

// EDK2 (OVMF) asks tsize, blksize 1468 and windowsize 4, reads the size from
// the OACK, ends that exchange, and then does the real read.
func TestEDK2SizeProbe(t *testing.T) {
	file := randomBytes(t, 200_000)
	ts := startServer(t, Config{Source: Map{"snponly.efi": file}, Timeout: 100 * time.Millisecond, Retries: 2}, "")
	edk2 := []string{"tsize", "0", "blksize", "1468", "windowsize", "4"}

	for i, abort := range []string{"error packet", "silence"} {
		c := newRawClient(t)
		c.send(ts.addr, rq(opRRQ, "snponly.efi", "octet", edk2...))
		p := c.mustRecv()
		if p.op() != opOACK {
			t.Fatalf("%s: got %v, want OACK", abort, p)
		}
		o := p.oack()
		if o["tsize"] != strconv.Itoa(len(file)) || o["blksize"] != "1468" || o["windowsize"] != "" {
			t.Errorf("%s: OACK %v, want tsize=%d blksize=1468 and no windowsize", abort, o, len(file))
		}
		if abort == "error packet" {
			c.send(p.from, errorPacket(8, "User aborted the transfer"))
		}
		oack, got := newRawClient(t).get(ts.addr, "snponly.efi", edk2...) // see abortNote
		if !bytes.Equal(got, file) || oack["tsize"] != strconv.Itoa(len(file)) {
			t.Fatalf("%s: real read got %d bytes, OACK %v", abort, len(got), oack)
		}
		ts.waitOutcome(t, OutcomeAbortedProbe, float64(i+1))
		ts.waitOutcome(t, OutcomeOK, float64(i+1))
	}
	if got := ts.outcomes(OutcomeFailed); got != 0 {
		t.Errorf("failed = %v: a size probe is not a failure", got)
	}
	if warns := ts.logs.linesAt(t, "WARN"); len(warns) != 0 {
		t.Errorf("warnings logged for size probes: %v", warns)
	}
	probes := 0
	for _, l := range ts.logs.linesAt(t, "DEBUG") {
		if strings.Contains(l["msg"].(string), "probe") {
			probes++
		}
	}
	if probes != 2 {
		t.Errorf("%d debug lines about probes, want 2", probes)
	}
}

func TestShutdown(t *testing.T) {
	// Idle: Serve returns at once.
	ts := startServer(t, Config{Source: Map{}}, "")
	start := time.Now()
	if err := ts.stop(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("idle shutdown took %v", d)
	}

	// A slow transfer is aborted once the grace period is over, and the
	// client is told.
	const grace = 300 * time.Millisecond
	ts = startServer(t, Config{Source: Map{"f": randomBytes(t, 1<<20)}, ShutdownGrace: grace}, "")
	c := newRawClient(t)
	c.send(ts.addr, rq(opRRQ, "f", "octet"))
	p := c.mustRecv()
	stopped := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		ts.stop()
		stopped <- time.Since(start)
	}()
	// ACK slowly; the server's reply after the grace period must be an ERROR.
	for p.op() == opDATA {
		time.Sleep(20 * time.Millisecond)
		c.send(p.from, ackPacket(p.block()))
		p = c.mustRecv()
	}
	if p.op() != opERROR || p.errMsg() != errShuttingDown.msg {
		t.Errorf("got %v, want ERROR %q", p, errShuttingDown.msg)
	}
	d := <-stopped
	if d < grace || d > grace+2*time.Second {
		t.Errorf("Serve returned %v after cancel, want just after the %v grace period", d, grace)
	}
	if got := ts.outcomes(OutcomeFailed); got != 1 {
		t.Errorf("failed = %v, want 1", got)
	}
}

func TestServeRejectsNonUDP(t *testing.T) {
	s, err := New(Config{Source: Map{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(context.Background(), fakePacketConn{}); err == nil {
		t.Error("Serve accepted a non-UDP PacketConn")
	}
}

type fakePacketConn struct{ net.PacketConn }

func (fakePacketConn) Close() error { return nil }

func TestListenAndServe(t *testing.T) {
	s, err := New(Config{Source: Map{"f": []byte("x")}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ListenAndServe(context.Background(), "256.0.0.1:69"); err == nil {
		t.Error("ListenAndServe on a bad address succeeded")
	}
	// Find a free port, then serve on it.
	probe, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.LocalAddr().String()
	probe.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ListenAndServe(ctx, addr) }()
	cl, err := tftp.NewClient(addr)
	if err != nil {
		t.Fatal(err)
	}
	cl.SetTimeout(200 * time.Millisecond)
	var buf bytes.Buffer
	waitFor(t, "server answering", func() bool {
		wt, err := cl.Receive("f", "octet")
		if err != nil {
			return false
		}
		buf.Reset()
		_, err = wt.WriteTo(&buf)
		return err == nil
	})
	if buf.String() != "x" {
		t.Errorf("got %q", buf.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("ListenAndServe: %v", err)
	}
}
