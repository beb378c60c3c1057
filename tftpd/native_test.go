package tftpd

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bootserve/bootserve/tftpd/tftpclient"
)

// Tests of the native engine's protocol: windows, loss, rollover, strangers,
// error codes. The engine-independent behaviour is in server_test.go.

// expectData receives DATA packets numbered first..last (wrapping) from
// peer and returns their data.
func (c *rawClient) expectData(peer *net.UDPAddr, first, last uint16) []byte {
	c.t.Helper()
	var data []byte
	for b := first; ; b++ {
		p := c.mustRecv()
		if p.op() != opDATA || p.block() != b || p.from.Port != peer.Port {
			c.t.Fatalf("got %v from %v, want DATA %d from %v", p, p.from, b, peer)
		}
		data = append(data, p.data()...)
		if b == last {
			return data
		}
	}
}

// start sends an RRQ with opts, expects an OACK, acknowledges it and
// returns the OACK and the transfer's address.
func (c *rawClient) start(server *net.UDPAddr, name string, opts ...string) (map[string]string, *net.UDPAddr) {
	c.t.Helper()
	c.send(server, rq(opRRQ, name, "octet", opts...))
	p := c.mustRecv()
	if p.op() != opOACK {
		c.t.Fatalf("got %v, want OACK", p)
	}
	c.send(p.from, ackPacket(0))
	return p.oack(), p.from
}

// endEvents collects the end events of a server's transfers.
func endEvents(cfg *Config) chan Transfer {
	ch := make(chan Transfer, 100)
	cfg.OnTransfer = func(tr Transfer) {
		if tr.Done {
			ch <- tr
		}
	}
	return ch
}

func nextEvent(t *testing.T, ch chan Transfer) Transfer {
	t.Helper()
	select {
	case tr := <-ch:
		return tr
	case <-time.After(10 * time.Second):
		t.Fatal("no transfer ended within 10 s")
		return Transfer{}
	}
}

func TestWindowsizeNegotiation(t *testing.T) {
	file := randomBytes(t, 200*512+100) // 201 blocks of 512
	cfg := Config{Source: Map{"f": file}, Timeout: 2 * time.Second}
	ended := endEvents(&cfg)
	ts := startServer(t, cfg, "")

	for _, tc := range []struct{ ask, want int }{{1, 1}, {4, 4}, {16, 16}, {64, 64}, {1000, DefaultMaxWindowSize}} {
		// The first window: exactly want blocks, then the server waits.
		c := newRawClient(t)
		oack, peer := c.start(ts.addr, "f", "blksize", "512", "windowsize", strconv.Itoa(tc.ask))
		if oack["windowsize"] != strconv.Itoa(tc.want) {
			t.Errorf("windowsize %d: OACK %v, want windowsize %d", tc.ask, oack, tc.want)
		}
		c.expectData(peer, 1, uint16(tc.want))
		c.quiet("windowsize "+strconv.Itoa(tc.ask)+" after the first window", 200*time.Millisecond)
		c.send(peer, ackPacket(uint16(tc.want)))
		c.expectData(peer, uint16(tc.want)+1, uint16(2*tc.want))
		c.send(peer, errorPacket(0, "enough"))
		if tr := nextEvent(t, ended); tr.Outcome != OutcomeFailed || tr.WindowSize != tc.want || tr.Bytes != int64(tc.want*512) {
			t.Errorf("windowsize %d: aborted transfer %+v", tc.ask, tr)
		}

		// A whole download with a windowed client.
		var buf bytes.Buffer
		res, err := tftpclient.Get(context.Background(), ts.addr.AddrPort(), "f", &buf,
			tftpclient.Options{BlockSize: 512, WindowSize: tc.ask, TSize: true})
		if err != nil || !bytes.Equal(buf.Bytes(), file) || res.WindowSize != tc.want || res.Reacks != 0 {
			t.Errorf("windowsize %d: %v, %d bytes, result %+v", tc.ask, err, buf.Len(), res)
		}
		if tr := nextEvent(t, ended); tr.Outcome != OutcomeOK || tr.WindowSize != tc.want || tr.Retransmits != 0 || tr.Bytes != int64(len(file)) {
			t.Errorf("windowsize %d: transfer %+v", tc.ask, tr)
		}
	}

	// A configured cap.
	cfg = Config{Source: Map{"f": file}, MaxWindowSize: 8}
	ts = startServer(t, cfg, "")
	if oack, _ := newRawClient(t).get(ts.addr, "f", "windowsize", "16"); oack["windowsize"] != "8" {
		t.Errorf("MaxWindowSize 8, client asks 16: OACK %v", oack)
	}
}

// A client that got block 1 and 2 of a window of 4, but not 3, acknowledges
// 2: the server sends the next window from 3.
func TestPartialAck(t *testing.T) {
	file := randomBytes(t, 20*512+1) // 21 blocks
	cfg := Config{Source: Map{"f": file}, Timeout: 5 * time.Second}
	ended := endEvents(&cfg)
	ts := startServer(t, cfg, "")
	c := newRawClient(t)
	_, peer := c.start(ts.addr, "f", "windowsize", "4")
	got := c.expectData(peer, 1, 4)[:2*512] // blocks 3 and 4 "lost"
	c.send(peer, ackPacket(2))
	got = append(got, c.expectData(peer, 3, 6)...) // at once: no timeout involved
	for _, b := range []uint16{6, 10, 14, 18} {
		c.send(peer, ackPacket(b))
		got = append(got, c.expectData(peer, b+1, min(b+4, 21))...)
	}
	c.send(peer, ackPacket(21))
	if tr := nextEvent(t, ended); tr.Outcome != OutcomeOK || tr.Retransmits != 2 {
		t.Errorf("transfer %+v, want ok with 2 retransmissions (blocks 3 and 4)", tr)
	}
	if !bytes.Equal(got, file) {
		t.Error("content differs")
	}
	if got := testutilFloat(ts.metrics.resent); got != 2 {
		t.Errorf("retransmitted_packets_total = %v, want 2", got)
	}
}

// A lost ACK: the server resends the window once its timeout passes, and
// gives up after Retries resends.
func TestLostAck(t *testing.T) {
	const timeout = 200 * time.Millisecond
	file := randomBytes(t, 12*512+7) // 13 blocks
	cfg := Config{Source: Map{"f": file}, Timeout: timeout, Retries: 2}
	ended := endEvents(&cfg)
	ts := startServer(t, cfg, "")

	c := newRawClient(t)
	_, peer := c.start(ts.addr, "f", "windowsize", "4")
	c.expectData(peer, 1, 4)
	sent := time.Now()
	// The client's ACK 4 is "lost": nothing is sent.
	c.expectData(peer, 1, 4)
	if d := time.Since(sent); d < timeout*9/10 {
		t.Errorf("window resent after %v, before the %v timeout", d, timeout)
	}
	c.send(peer, ackPacket(4))
	c.expectData(peer, 5, 8)
	c.send(peer, ackPacket(8))
	c.expectData(peer, 9, 12)
	c.send(peer, ackPacket(12))
	c.expectData(peer, 13, 13)
	c.send(peer, ackPacket(13))
	if tr := nextEvent(t, ended); tr.Outcome != OutcomeOK || tr.Retransmits != 4 {
		t.Errorf("transfer %+v, want ok with 4 retransmissions", tr)
	}

	// A client that stops acknowledging windows: each is sent 1 + Retries
	// times, then the transfer fails with an ERROR.
	c = newRawClient(t)
	_, peer = c.start(ts.addr, "f", "windowsize", "4")
	for range 3 {
		c.expectData(peer, 1, 4)
	}
	c.expectError("after the retries", 0, errTimedOut.msg)
	if tr := nextEvent(t, ended); tr.Outcome != OutcomeFailed || tr.Retransmits != 8 {
		t.Errorf("transfer %+v, want failed with 8 retransmissions", tr)
	}
}

// Duplicate ACKs never cause a resend on their own (Sorcerer's Apprentice
// Syndrome): only new ACKs or a timeout do.
func TestDuplicateAck(t *testing.T) {
	file := randomBytes(t, 30*512) // 31 blocks, the last one empty
	cfg := Config{Source: Map{"f": file}, Timeout: 3 * time.Second}
	ended := endEvents(&cfg)
	ts := startServer(t, cfg, "")

	// Lock-step.
	c := newRawClient(t)
	c.send(ts.addr, rq(opRRQ, "f", "octet"))
	p := c.mustRecv()
	peer := p.from
	c.send(peer, ackPacket(1))
	c.expectData(peer, 2, 2)
	for range 3 {
		c.send(peer, ackPacket(1))
	}
	c.send(peer, ackPacket(0)) // older still
	c.quiet("after duplicate ACKs in lock-step", 300*time.Millisecond)
	c.send(peer, ackPacket(2))
	c.expectData(peer, 3, 3)
	c.send(peer, errorPacket(0, "enough"))
	if tr := nextEvent(t, ended); tr.Retransmits != 0 {
		t.Errorf("lock-step transfer %+v, want no retransmission", tr)
	}

	// Windows of 4, and an ACK for a block not sent yet (ignored too).
	c = newRawClient(t)
	_, peer = c.start(ts.addr, "f", "windowsize", "4")
	c.expectData(peer, 1, 4)
	c.send(peer, ackPacket(4))
	c.expectData(peer, 5, 8)
	for _, b := range []uint16{4, 4, 4, 3, 0, 9, 20} {
		c.send(peer, ackPacket(b))
	}
	c.quiet("after duplicate ACKs with windows", 300*time.Millisecond)
	for b := uint16(8); b < 32; b += 4 {
		c.send(peer, ackPacket(b))
		c.expectData(peer, b+1, min(b+4, 31))
	}
	c.send(peer, ackPacket(31))
	if tr := nextEvent(t, ended); tr.Outcome != OutcomeOK || tr.Retransmits != 0 {
		t.Errorf("windowed transfer %+v, want ok without retransmission", tr)
	}
}

// A file of 70000 blocks of 512 bytes: block numbers wrap from 65535 to 0.
func TestRollover(t *testing.T) {
	if testing.Short() {
		t.Skip("36 MB transfers")
	}
	file := randomBytes(t, 70000*512-100)
	cfg := Config{Source: Map{"big": file}}
	ended := endEvents(&cfg)
	ts := startServer(t, cfg, "")
	// rawClient.get counts blocks in a uint16 from 1 and checks each
	// number, so it expects 65535, 0, 1, ...
	for _, window := range []string{"1", "16"} {
		oack, got := newRawClient(t).get(ts.addr, "big", "blksize", "512", "windowsize", window)
		if !bytes.Equal(got, file) || oack["windowsize"] != window {
			t.Errorf("windowsize %s: OACK %v, %d bytes or content differs", window, oack, len(got))
		}
		if tr := nextEvent(t, ended); tr.Outcome != OutcomeOK || tr.Retransmits != 0 || tr.Bytes != int64(len(file)) {
			t.Errorf("windowsize %s: transfer %+v", window, tr)
		}
	}
	var buf bytes.Buffer
	buf.Grow(len(file)) // growing 36 MB mid-transfer can stall a -race build past the 1 s timeout
	res, err := tftpclient.Get(context.Background(), ts.addr.AddrPort(), "big", &buf,
		tftpclient.Options{BlockSize: 512, WindowSize: 64, TSize: true})
	if err != nil || !bytes.Equal(buf.Bytes(), file) || res.Reacks != 0 {
		t.Errorf("tftpclient windowsize 64: %v, %d bytes, %+v", err, buf.Len(), res)
	}
	if tr := nextEvent(t, ended); tr.Outcome != OutcomeOK || tr.Retransmits != 0 || tr.Bytes != int64(len(file)) {
		t.Errorf("windowsize 64: transfer %+v", tr)
	}
}

// Packets from another address or port get "unknown transfer ID" and do
// not disturb the transfer.
func TestForeignTID(t *testing.T) {
	file := randomBytes(t, 10*512+3)
	cfg := Config{Source: Map{"f": file}, Timeout: 3 * time.Second}
	ended := endEvents(&cfg)
	ts := startServer(t, cfg, "")
	c := newRawClient(t)
	_, peer := c.start(ts.addr, "f", "windowsize", "2")
	got := c.expectData(peer, 1, 2)

	stranger := newRawClient(t) // same address, other port
	stranger.send(peer, ackPacket(2))
	stranger.expectError("stranger's ACK", 5, errBadTID.msg)
	stranger.send(peer, errorPacket(0, "go away")) // an ERROR is never answered...
	stranger.quiet("after the stranger's ERROR", 200*time.Millisecond)
	other, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 3)}) // other address
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	far := &rawClient{t: t, conn: other}
	far.send(peer, rq(opRRQ, "f", "octet"))
	far.expectError("RRQ to the transfer port from another address", 5, "")

	// ...and did not end or advance the transfer: nothing was resent either.
	c.quiet("client, after the strangers", 200*time.Millisecond)
	for b := uint16(2); b < 11; b += 2 {
		c.send(peer, ackPacket(b))
		got = append(got, c.expectData(peer, b+1, min(b+2, 11))...)
	}
	c.send(peer, ackPacket(11))
	if !bytes.Equal(got, file) {
		t.Error("content differs")
	}
	if tr := nextEvent(t, ended); tr.Outcome != OutcomeOK || tr.Retransmits != 0 {
		t.Errorf("transfer %+v", tr)
	}
}

// An ERROR from the client ends the transfer, and is not answered.
func TestClientErrorNotAnswered(t *testing.T) {
	const timeout = 100 * time.Millisecond
	cfg := Config{Source: Map{"f": randomBytes(t, 10_000)}, Timeout: timeout}
	ended := endEvents(&cfg)
	ts := startServer(t, cfg, "")

	c := newRawClient(t)
	c.send(ts.addr, rq(opRRQ, "f", "octet"))
	p := c.mustRecv()
	c.send(p.from, errorPacket(0, "user aborted"))
	c.quiet("after the client's ERROR during the data", 5*timeout)
	if tr := nextEvent(t, ended); tr.Outcome != OutcomeFailed || !strings.Contains(tr.Err.Error(), "user aborted") {
		t.Errorf("transfer %+v", tr)
	}

	c = newRawClient(t)
	c.send(ts.addr, rq(opRRQ, "f", "octet", "tsize", "0"))
	p = c.mustRecv()
	c.send(p.from, errorPacket(8, "tsize probe done"))
	c.quiet("after the client's ERROR after the OACK", 5*timeout)
	if tr := nextEvent(t, ended); tr.Outcome != OutcomeAbortedProbe {
		t.Errorf("transfer %+v", tr)
	}
	// The client may reuse its port at once.
	if _, got := c.get(ts.addr, "f"); len(got) != 10_000 {
		t.Errorf("same port again: %d bytes", len(got))
	}
}

// Every refusal carries the RFC 1350 code its case deserves.
func TestErrorCodes(t *testing.T) {
	denied := SourceFunc(func(context.Context, string, netip.Addr) (File, int64, error) {
		return nil, 0, &fs.PathError{Op: "open", Path: "x", Err: fs.ErrPermission}
	})
	broken := SourceFunc(func(context.Context, string, netip.Addr) (File, int64, error) {
		return nil, 0, &fs.PathError{Op: "open", Path: "x", Err: fs.ErrClosed}
	})
	src := Chain(Map{"f": []byte("data")}, prefixed{"denied/", denied}, prefixed{"broken/", broken})
	ts := startServer(t, Config{Source: src, MaxTransfers: 1, Timeout: 5 * time.Second}, "")

	for _, tc := range []struct {
		what string
		pkt  []byte
		code uint16
	}{
		{"not found", rq(opRRQ, "missing", "octet"), 1},
		{"name leaving the root", rq(opRRQ, "../f", "octet"), 2},
		{"permission denied by the source", rq(opRRQ, "denied/x", "octet"), 2},
		{"write request", rq(opWRQ, "f", "octet"), 2},
		{"source failure", rq(opRRQ, "broken/x", "octet"), 0},
		{"bad blksize", rq(opRRQ, "f", "octet", "blksize", "4"), 8},
		{"bad windowsize", rq(opRRQ, "f", "octet", "windowsize", "0"), 8},
		{"bad timeout", rq(opRRQ, "f", "octet", "timeout", "300"), 8},
		{"unknown opcode", []byte{0, 42, 'f', 0}, 4},
		{"netascii is fine, mail is not", rq(opRRQ, "f", "mail"), 4},
	} {
		c := newRawClient(t)
		c.send(ts.addr, tc.pkt)
		c.expectError(tc.what, int(tc.code), "")
	}

	// Busy: one transfer holds the only slot.
	holder := newRawClient(t)
	holder.send(ts.addr, rq(opRRQ, "f", "octet"))
	p := holder.mustRecv()
	c := newRawClient(t)
	c.send(ts.addr, rq(opRRQ, "f", "octet"))
	c.quiet("busy", 500*time.Millisecond) // testConcurrencyLimit checks the retry is served
	// Unknown transfer ID.
	c.send(p.from, ackPacket(1))
	c.expectError("unknown transfer ID", 5, errBadTID.msg)
	holder.send(p.from, ackPacket(1))
}

// prefixed routes names under prefix to s.
type prefixed struct {
	prefix string
	s      Source
}

func (p prefixed) Open(ctx context.Context, name string, client netip.Addr) (File, int64, error) {
	if !strings.HasPrefix(name, p.prefix) {
		return nil, 0, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return p.s.Open(ctx, name, client)
}

// The timeout option (RFC 2349) replaces the server's retransmission timeout.
func TestTimeoutOption(t *testing.T) {
	ts := startServer(t, Config{Source: Map{"f": randomBytes(t, 5000)}, Timeout: 10 * time.Second}, "")
	c := newRawClient(t)
	oack, peer := c.start(ts.addr, "f", "timeout", "1")
	if oack["timeout"] != "1" {
		t.Errorf("OACK %v, want timeout 1", oack)
	}
	c.expectData(peer, 1, 1)
	start := time.Now()
	p, ok := c.recv(8 * time.Second)
	d := time.Since(start)
	if !ok || p.op() != opDATA || p.block() != 1 {
		t.Fatalf("got %v (%v), want DATA 1 again", p, ok)
	}
	if d < 900*time.Millisecond || d > 5*time.Second {
		t.Errorf("DATA 1 resent after %v: the client asked for 1 s, the server's own timeout is 10 s", d)
	}
	c.send(peer, errorPacket(0, "enough"))
}

// netascii (tftp-hpa's default mode): LF goes out as CR LF, CR as CR NUL;
// no tsize, since the bytes sent are not the file's size.
func TestNetascii(t *testing.T) {
	text := []byte("line one\nline two\r\nbare\rcr\n")
	binary := randomBytes(t, 100_000)
	ts := startServer(t, Config{Source: Map{"text": text, "bin": binary}}, "")

	c := newRawClient(t)
	c.send(ts.addr, rq(opRRQ, "text", "netascii"))
	p := c.mustRecv()
	if p.op() != opDATA || string(p.data()) != "line one\r\nline two\r\x00\r\nbare\r\x00cr\r\n" {
		t.Errorf("got %v %q", p, p.data())
	}
	c.send(p.from, ackPacket(1))

	// Windows over a converted stream, and a real client decoding it.
	c = newRawClient(t)
	c.send(ts.addr, rq(opRRQ, "bin", "netascii", "tsize", "0", "blksize", "1000", "windowsize", "8"))
	p = c.mustRecv()
	if o := p.oack(); p.op() != opOACK || o["tsize"] != "" || o["windowsize"] != "8" {
		t.Errorf("got %v, want an OACK without tsize", p)
	}
	c.send(p.from, errorPacket(0, "enough"))

	tool(t, "tftp", "tftp-hpa")
	host, port := splitAddr(t, ts.addr.String())
	for _, name := range []string{"text", "bin"} {
		out := filepath.Join(t.TempDir(), name)
		if b, err := exec.Command("tftp", "-m", "ascii", host, port, "-c", "get", name, out).CombinedOutput(); err != nil {
			t.Fatalf("tftp-hpa: %v\n%s", err, b)
		}
		got, _ := os.ReadFile(out)
		want := text
		if name == "bin" {
			want = binary
		}
		if !bytes.Equal(got, want) {
			t.Errorf("tftp-hpa netascii %s: got %d bytes, want %d, or content differs", name, len(got), len(want))
		}
	}
}

// tftpclient's size probe (the storm generator plays EDK2 with it) reads
// tsize from the OACK and aborts; a request the server leaves unanswered
// because it is at its transfer limit is sent again and then served.
func TestClientSizeProbeAndRerequest(t *testing.T) {
	file := randomBytes(t, 3000)
	ts := startServer(t, Config{Source: Map{"f": file}, MaxTransfers: 1, Timeout: 5 * time.Second}, "")
	ctx := context.Background()
	res, err := tftpclient.Get(ctx, ts.addr.AddrPort(), "f", io.Discard, tftpclient.Options{SizeOnly: true, BlockSize: 1468, WindowSize: 4})
	if err != nil || res.TSize != int64(len(file)) || res.Bytes != 0 {
		t.Fatalf("size probe: %v, result %+v", err, res)
	}
	ts.waitOutcome(t, OutcomeAbortedProbe, 1)
	waitFor(t, "the probe's slot free", func() bool { return testutilFloat(ts.metrics.active) == 0 })

	// A holder takes the only slot and sits on DATA 1.
	holder := newRawClient(t)
	holder.send(ts.addr, rq(opRRQ, "f", "octet"))
	p := holder.mustRecv()
	waitFor(t, "1 active transfer", func() bool { return testutilFloat(ts.metrics.active) == 1 })
	go func() {
		time.Sleep(300 * time.Millisecond)
		holder.conn.WriteToUDP(errorPacket(0, "bye"), p.from)
	}()
	var buf bytes.Buffer
	res, err = tftpclient.Get(ctx, ts.addr.AddrPort(), "f", &buf, tftpclient.Options{Timeout: 200 * time.Millisecond})
	if err != nil || !bytes.Equal(buf.Bytes(), file) || res.Rerequests < 1 {
		t.Errorf("behind a busy slot: %v, %d bytes, result %+v (want Rerequests ≥ 1)", err, buf.Len(), res)
	}
}

// octetBlocks serves every block, in order and after jumps back (a
// retransmitted window) and forward, straight from the file (no chunk) and
// from chunks of one block up to many.
func TestOctetBlocks(t *testing.T) {
	for _, size := range []int{0, 1, 511, 512, 513, 5000, 70001} {
		file := randomBytes(t, size)
		for _, chunkCap := range []int{0, 512, 3*512 + 7, 64 << 10} {
			o := &octetBlocks{r: bytes.NewReader(file), size: int64(size), blockSize: 512}
			if chunkCap > 0 {
				o.chunk = make([]byte, 0, chunkCap)
			}
			last := uint64(size/512 + 1)
			order := []uint64{}
			for b := uint64(1); b <= last; b++ {
				order = append(order, b)
			}
			order = append(order, last, 1, last/2+1, 2, last) // jumps
			p := make([]byte, 512)
			for _, b := range order {
				n, err := o.block(b, p)
				off := min(int(b-1)*512, size)
				want := file[off:min(off+512, size)]
				if err != nil || !bytes.Equal(p[:n], want) {
					t.Fatalf("size %d, chunk %d, block %d: %d bytes, %v; want %d bytes", size, chunkCap, b, n, err, len(want))
				}
			}
		}
	}
}

// A file that shrinks while being sent ends the transfer with an ERROR,
// never with a short last block the client would take for the end.
func TestFileShrinksDuringTransfer(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	file := randomBytes(t, 300<<10) // several chunks
	if err := os.WriteFile(path, file, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Source: Dir(dir)}
	ended := endEvents(&cfg)
	ts := startServer(t, cfg, "")
	c := newRawClient(t)
	c.send(ts.addr, rq(opRRQ, "f", "octet"))
	p := c.mustRecv()
	if p.op() != opDATA || p.block() != 1 {
		t.Fatalf("got %v, want DATA 1", p)
	}
	if err := os.Truncate(path, 1000); err != nil {
		t.Fatal(err)
	}
	for b := uint16(1); ; b++ {
		c.send(p.from, ackPacket(b))
		p = c.mustRecv()
		if p.op() == opERROR {
			if p.errMsg() != errShortFile.msg {
				t.Errorf("ERROR %q, want %q", p.errMsg(), errShortFile.msg)
			}
			break
		}
		if p.op() != opDATA || p.block() != b+1 || len(p.data()) != 512 {
			t.Fatalf("got %v, want a full DATA %d or an ERROR", p, b+1)
		}
	}
	if tr := nextEvent(t, ended); tr.Outcome != OutcomeFailed || !strings.Contains(tr.Err.Error(), "changed during the transfer") {
		t.Errorf("transfer %+v, want failed because the file changed", tr)
	}
}
