package tftpd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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
	if s.cfg.MaxTransfers != DefaultMaxTransfers || s.cfg.Timeout != DefaultTimeout || s.cfg.Retries != DefaultRetries || s.cfg.ShutdownGrace != DefaultShutdownGrace ||
		s.cfg.Engine != EngineNative || s.cfg.MaxBlockSize != MaxBlockSizeLimit || s.cfg.MaxWindowSize != DefaultMaxWindowSize {
		t.Errorf("defaults not applied: %+v", s.cfg)
	}
	for _, bad := range []Config{
		{Engine: "atftpd"},
		{MaxBlockSize: 7},
		{MaxBlockSize: 65465},
		{MaxBlockSize: -1},
		{MaxWindowSize: -1},
		{MaxWindowSize: 65536},
		{Engine: EnginePin, MaxBlockSize: 512}, // pin/tftp cannot cap at or below 512
	} {
		bad.Source = Map{}
		if _, err := New(bad); err == nil {
			t.Errorf("New(%+v) succeeded", bad)
		}
	}
	for _, good := range []Config{{Engine: EnginePin}, {MaxBlockSize: 8, MaxWindowSize: 65535}, {Engine: EnginePin, MaxBlockSize: 1468}} {
		good.Source = Map{}
		if _, err := New(good); err != nil {
			t.Errorf("New(%+v): %v", good, err)
		}
	}
}

func TestTsizeAndBlksize(t *testing.T) { forEachEngine(t, testTsizeAndBlksize) }

func testTsizeAndBlksize(t *testing.T, engine string) {
	file := randomBytes(t, 300_000)
	ts := startServer(t, Config{Engine: engine, Source: Map{"f.bin": file, "empty": nil}}, "")

	for _, blksize := range []int{8, 512, 1432, 1468, 8192, 65464} {
		c := newRawClient(t)
		oack, got := c.get(ts.addr, "f.bin", "tsize", "0", "blksize", strconv.Itoa(blksize))
		if oack["tsize"] != strconv.Itoa(len(file)) {
			t.Errorf("blksize %d: OACK tsize = %q, want %d", blksize, oack["tsize"], len(file))
		}
		// pin/tftp refuses blksize < 512 by ignoring the option (RFC 2347
		// allows it): blocks are then 512 bytes and blksize is not in the
		// OACK. The native engine honours RFC 2348's whole range.
		wantBlk := strconv.Itoa(blksize)
		if blksize < 512 && engine == EnginePin {
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
	// Empty file: the native engine announces tsize 0; pin/tftp leaves
	// tsize=0 out of the OACK (engine.go).
	oack, got = c.get(ts.addr, "empty", "tsize", "0", "blksize", "1468")
	if len(got) != 0 {
		t.Errorf("empty file: got %d bytes", len(got))
	}
	if tsize, ok := oack["tsize"]; (engine != EnginePin && tsize != "0") || (engine == EnginePin && ok) {
		t.Errorf("empty file: OACK %v", oack)
	}
	ts.waitOutcome(t, OutcomeOK, 9)
}

func TestMaxBlockSize(t *testing.T) { forEachEngine(t, testMaxBlockSize) }

func testMaxBlockSize(t *testing.T, engine string) {
	file := randomBytes(t, 20_000)
	ts := startServer(t, Config{Engine: engine, Source: Map{"f": file}, MaxBlockSize: 1468}, "")
	for ask, want := range map[string]string{"8192": "1468", "1468": "1468", "1024": "1024"} {
		oack, got := newRawClient(t).get(ts.addr, "f", "blksize", ask)
		if oack["blksize"] != want || !bytes.Equal(got, file) {
			t.Errorf("blksize %s with MaxBlockSize 1468: OACK %v, %d bytes", ask, oack, len(got))
		}
	}
}

func TestReplyFromRequestAddress(t *testing.T) { forEachEngine(t, testReplyFromRequestAddress) }

func testReplyFromRequestAddress(t *testing.T, engine string) {
	// The server listens on 127.0.0.2 and the client is on 127.0.0.1. A
	// transfer socket bound to the wildcard address would answer from
	// 127.0.0.1 (the kernel's choice for that destination); clients drop
	// replies from an address they did not talk to.
	ts := startServer(t, Config{Engine: engine, Source: Map{"f": []byte("hello")}}, "127.0.0.2:0")
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
	// Errors too come from the address the client talked to.
	c = newRawClient(t)
	c.send(ts.addr, rq(opRRQ, "missing", "octet"))
	if p := c.mustRecv(); p.op() != opERROR || !p.from.IP.Equal(ts.addr.IP) {
		t.Errorf("not found: %v from %v, want ERROR from %v", p, p.from, ts.addr.IP)
	}
	if engine != EnginePin {
		c.send(ts.addr, []byte{0, 9}) // malformed: answered from the server port
		if p := c.mustRecv(); p.op() != opERROR || !p.from.IP.Equal(ts.addr.IP) || p.from.Port != ts.addr.Port {
			t.Errorf("malformed: %v from %v, want ERROR from %v", p, p.from, ts.addr)
		}
	}
}

func TestWriteRefused(t *testing.T) { forEachEngine(t, testWriteRefused) }

func testWriteRefused(t *testing.T, engine string) {
	ts := startServer(t, Config{Engine: engine, Source: Map{}}, "")

	cl, err := tftp.NewClient(ts.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	cl.SetTimeout(time.Second)
	if _, err := cl.Send("upload.bin", "octet"); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("pin/tftp client upload: err = %v, want a read-only refusal", err)
	}

	c := newRawClient(t)
	c.send(ts.addr, rq(opWRQ, "x", "octet", "blksize", "1468"))
	if p := c.expectError("raw WRQ", code(engine, 2), ""); !strings.Contains(p.errMsg(), "read-only") {
		t.Errorf("raw WRQ: got %v, want ERROR read-only", p)
	}
	ts.waitOutcome(t, OutcomeRefused, 2)
}

// code is the error code engine sends for a case that deserves want:
// pin/tftp sends 1 whatever the case.
func code(engine string, want int) int {
	if engine == EnginePin {
		return 1
	}
	return want
}

func TestNotFoundAndTraversal(t *testing.T) { forEachEngine(t, testNotFoundAndTraversal) }

func testNotFoundAndTraversal(t *testing.T, engine string) {
	var events []Transfer
	var mu sync.Mutex
	ts := startServer(t, Config{
		Engine: engine,
		Source: Dir(traversalTree(t)),
		OnTransfer: func(tr Transfer) {
			mu.Lock()
			events = append(events, tr)
			mu.Unlock()
		},
	}, "")
	c := newRawClient(t)
	expectError := func(name string, want *tftpError) {
		t.Helper()
		c.send(ts.addr, rq(opRRQ, name, "octet", "tsize", "0"))
		p := c.expectError("RRQ "+name, code(engine, int(want.code)), want.msg)
		if strings.Contains(p.errMsg(), "/") {
			t.Errorf("RRQ %q: error %q shows a server path", name, p.errMsg())
		}
	}
	// pin/tftp sends every error with code 1; the message tells them apart.
	for _, name := range []string{"missing", "/etc/passwd", `..\secret.txt`, "%2e%2e/secret.txt", "sub", "fifo"} {
		expectError(name, errNotFound)
	}
	for _, name := range []string{"../secret.txt", "/../secret.txt", "a/../../secret.txt", "//etc/passwd", "./ok.bin"} {
		expectError(name, errAccess)
	}
	for _, name := range []string{"escape", "sub/escape", "abs"} { // symlinks leaving the root
		expectError(name, errOpen)
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

func TestTransferEventsAndLog(t *testing.T) { forEachEngine(t, testTransferEventsAndLog) }

func testTransferEventsAndLog(t *testing.T, engine string) {
	file := randomBytes(t, 100_000)
	events := make(chan Transfer, 10)
	ts := startServer(t, Config{Engine: engine, Source: Map{"f": file}, OnTransfer: func(tr Transfer) { events <- tr }}, "")
	c := newRawClient(t)
	c.get(ts.addr, "/f", "blksize", "1468", "tsize", "0", "windowsize", "4")
	window := 4
	if engine == EnginePin {
		window = 1 // pin/tftp does not negotiate windows
	}

	start, end := <-events, <-events
	client := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(c.conn.LocalAddr().(*net.UDPAddr).Port))
	if start.Done || start.Client != client || start.File != "f" || start.Size != int64(len(file)) || start.Bytes != 0 {
		t.Errorf("start event = %+v", start)
	}
	if !end.Done || end.Outcome != OutcomeOK || end.Err != nil || end.Bytes != int64(len(file)) || end.BlockSize != 1468 || end.WindowSize != window ||
		end.Client != client || end.Local != client.Addr() || end.Duration <= 0 || !end.Start.Equal(start.Start) {
		t.Errorf("end event = %+v", end)
	}

	info := ts.logs.linesAt(t, "INFO")
	if len(info) != 1 {
		t.Fatalf("info lines: %v, want exactly one", info)
	}
	l := info[0]
	if l["client"] != client.String() || l["server"] != "127.0.0.1" || l["file"] != "f" || l["size"] != float64(len(file)) || l["blksize"] != float64(1468) ||
		l["windowsize"] != float64(window) || l["duration"] == nil || l["mb_per_s"] == nil {
		t.Errorf("transfer log line = %v", l)
	}
	if got := testutilFloat(ts.metrics.bytes); got != float64(len(file)) {
		t.Errorf("bytes_total = %v, want %d", got, len(file))
	}
}

func TestMalformedPackets(t *testing.T) { forEachEngine(t, testMalformedPackets) }

func testMalformedPackets(t *testing.T, engine string) {
	file := randomBytes(t, 5000)
	ts := startServer(t, Config{Engine: engine, Source: Map{"f": file}, Timeout: 200 * time.Millisecond, Retries: 1}, "")
	c := newRawClient(t)
	garbage := []struct {
		b         []byte
		code      int  // what the native engine answers, -1 for nothing
		pinServes bool // pin/tftp takes it for a request and sends DATA 1
	}{
		{[]byte{}, -1, false},                                   // empty datagram
		{[]byte{0}, -1, false},                                  // 1 byte
		{[]byte{0, 1, 'a'}, 4, false},                           // RRQ too short
		{[]byte{0, 9, 'x', 0, 'o', 0}, 4, false},                // unknown opcode
		{[]byte{0xff, 0xff}, 4, false},                          // unknown opcode, 2 bytes
		{[]byte("\x00\x01no-terminator"), 4, false},             // RRQ without any NUL
		{[]byte("\x00\x01f\x00octet\x00blk"), 4, true},          // last string without its NUL
		{rq(opRRQ, "f", "mail"), 4, true},                       // mode not supported
		{ackPacket(1), 4, false},                                // ACK to the server port
		{[]byte{0, opDATA, 0, 1, 'd', 'a', 't', 'a'}, 4, false}, // DATA to the server port
		{errorPacket(0, "stray"), -1, false},                    // ERROR to the server port: never answered
	}
	malformed := 0
	for _, g := range garbage {
		if engine == EnginePin && g.pinServes {
			c := newRawClient(t) // see abortNote
			c.send(ts.addr, g.b)
			p := c.mustRecv()
			if p.op() != opDATA {
				t.Errorf("%q: pin/tftp answered %v, want DATA 1", g.b, p)
			}
			c.send(p.from, errorPacket(0, "enough"))
			continue
		}
		malformed++
		c.send(ts.addr, g.b)
		if engine != EnginePin && g.code >= 0 {
			c.expectError(fmt.Sprintf("%q", g.b), g.code, "")
		}
	}
	c.quiet("after the garbage", 100*time.Millisecond)

	// Bad option values: the native engine refuses them with error 8 and
	// counts them. pin/tftp ignores them, as RFC 2347 permits, and sends
	// 512-byte blocks (see engine.go: not counted).
	for _, opts := range [][]string{
		{"blksize", "abc"}, {"blksize", "1"}, {"blksize", "-5"}, {"blksize", ""}, {"blksize", "7"},
		{"windowsize", "0"}, {"windowsize", "x"}, {"timeout", "0"}, {"timeout", "256"},
		{"blksize", "1468", "BLKSIZE", "1468"}, // twice
		{"blksize", "1468", "tsize"},           // an option without a value
	} {
		c := newRawClient(t) // see abortNote
		c.send(ts.addr, rq(opRRQ, "f", "octet", opts...))
		p := c.mustRecv()
		if engine != EnginePin {
			if p.op() != opERROR || p.block() != 8 {
				t.Errorf("%q: got %v, want ERROR 8", opts, p)
			}
			malformed++
			continue
		}
		if p.op() != opDATA && p.op() != opOACK {
			t.Errorf("%q: got %v, want DATA or OACK", opts, p)
		}
		c.send(p.from, errorPacket(0, "enough"))
	}
	// Options the server does not know, NUL padding, an oversized blksize
	// (capped) and a long request are fine, and not counted.
	for _, opts := range [][]string{
		{"blksize", "99999999999999999999"}, {"multicast", ""}, {"utimeout", "abc", "windowsize", "2"},
		{"tsize", "0", "", ""}, {"tsize", "enable"}, {strings.Repeat("x", 600), "1", "blksize", "1468"},
	} {
		_, got := newRawClient(t).get(ts.addr, "f", opts...)
		if !bytes.Equal(got, file) {
			t.Errorf("%q: got %d bytes", opts, len(got))
		}
	}
	want := float64(malformed)
	waitFor(t, "malformed counter", func() bool { return testutilFloat(ts.metrics.malformed) >= want })
	if got := testutilFloat(ts.metrics.malformed); got != want {
		t.Errorf("malformed = %v, want %v", got, want)
	}
	// Still serving.
	if _, got := newRawClient(t).get(ts.addr, "f", "blksize", "1468"); !bytes.Equal(got, file) {
		t.Errorf("after garbage: got %d bytes", len(got))
	}
	if n := len(ts.logs.linesAt(t, "DEBUG")); n < malformed {
		t.Errorf("%d debug lines, want one per malformed packet", n)
	}
}

func TestClientNeverAcks(t *testing.T) { forEachEngine(t, testClientNeverAcks) }

func testClientNeverAcks(t *testing.T, engine string) {
	const timeout, retries = 100 * time.Millisecond, 2
	ts := startServer(t, Config{Engine: engine, Source: Map{"f": randomBytes(t, 10_000)}, Timeout: timeout, Retries: retries, MaxTransfers: 1}, "")
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

func TestConcurrencyLimit(t *testing.T) { forEachEngine(t, testConcurrencyLimit) }

func testConcurrencyLimit(t *testing.T, engine string) {
	file := randomBytes(t, 3000)
	ts := startServer(t, Config{Engine: engine, Source: Map{"f": file}, MaxTransfers: 2, Timeout: 5 * time.Second}, "")
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
	if engine == EnginePin {
		c.expectError("third client", code(engine, 0), errBusy.msg)
	} else {
		// Unanswered, so that firmware retries instead of giving up.
		c.quiet("third client", 500*time.Millisecond)
	}
	ts.waitOutcome(t, OutcomeRefused, 1)

	// One holder gives up: its slot is released and the third client's
	// retransmitted request is served, from the same port.
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
func TestEDK2SizeProbe(t *testing.T) { forEachEngine(t, testEDK2SizeProbe) }

func testEDK2SizeProbe(t *testing.T, engine string) {
	file := randomBytes(t, 200_000)
	ts := startServer(t, Config{Engine: engine, Source: Map{"snponly.efi": file}, Timeout: 100 * time.Millisecond, Retries: 2}, "")
	edk2 := []string{"tsize", "0", "blksize", "1468", "windowsize", "4"}

	for i, abort := range []string{"error packet", "silence"} {
		c := newRawClient(t)
		c.send(ts.addr, rq(opRRQ, "snponly.efi", "octet", edk2...))
		p := c.mustRecv()
		if p.op() != opOACK {
			t.Fatalf("%s: got %v, want OACK", abort, p)
		}
		o := p.oack()
		window := "4"
		if engine == EnginePin {
			window = "" // not negotiated
		}
		if o["tsize"] != strconv.Itoa(len(file)) || o["blksize"] != "1468" || o["windowsize"] != window {
			t.Errorf("%s: OACK %v, want tsize=%d blksize=1468 windowsize=%q", abort, o, len(file), window)
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

func TestShutdown(t *testing.T) { forEachEngine(t, testShutdown) }

func testShutdown(t *testing.T, engine string) {
	// Idle: Serve returns at once.
	ts := startServer(t, Config{Engine: engine, Source: Map{}}, "")
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
	ts = startServer(t, Config{Engine: engine, Source: Map{"f": randomBytes(t, 1<<20)}, ShutdownGrace: grace}, "")
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
	if p.op() != opERROR || p.errMsg() != errShuttingDown.msg || int(p.block()) != code(engine, 0) {
		t.Errorf("got %v, want ERROR %d %q", p, code(engine, 0), errShuttingDown.msg)
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

func TestListenAndServe(t *testing.T) { forEachEngine(t, testListenAndServe) }

func testListenAndServe(t *testing.T, engine string) {
	cfg := Config{Engine: engine, Source: Map{"f": []byte("x")}}
	resolveEngine(&cfg)
	s, err := New(cfg)
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
