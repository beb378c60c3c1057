package tftpd

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// testServer is a Server running on a loopback socket for one test.
type testServer struct {
	*Server
	addr    *net.UDPAddr
	metrics *Metrics
	logs    *logSink
	stop    func() error // cancels Serve and returns its result
}

// enginePoller is, for tests only, the native engine with every transfer
// on a netpoller socket instead of a thread socket (conn.go); startServer
// knows it.
const enginePoller = "native-poller"

// resolveEngine turns the test-only engine name into its Config.
func resolveEngine(cfg *Config) {
	if cfg.Engine == enginePoller {
		cfg.Engine, cfg.threadTransfers = EngineNative, -1
	}
}

// forEachEngine runs f as a subtest per engine.
func forEachEngine(t *testing.T, f func(t *testing.T, engine string)) {
	for _, e := range []string{EngineNative, enginePoller, EnginePin} {
		t.Run(e, func(t *testing.T) { f(t, e) })
	}
}

// startServer serves cfg on laddr ("127.0.0.1:0" if empty). Metrics and
// Logger are filled in when nil.
func startServer(t testing.TB, cfg Config, laddr string) *testServer {
	t.Helper()
	if laddr == "" {
		laddr = "127.0.0.1:0"
	}
	ts := &testServer{logs: &logSink{}}
	resolveEngine(&cfg)
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(prometheus.NewRegistry())
	}
	ts.metrics = cfg.Metrics
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewJSONHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts.Server = srv
	conn, err := net.ListenPacket("udp", laddr)
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = conn.LocalAddr().(*net.UDPAddr)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, conn) }()
	var once sync.Once
	var result error
	ts.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case result = <-served:
			case <-time.After(30 * time.Second):
				result = errors.New("Serve did not return 30 s after cancel")
			}
		})
		return result
	}
	t.Cleanup(func() {
		if err := ts.stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ts
}

func testutilFloat(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

func (ts *testServer) outcomes(o Outcome) float64 {
	return testutil.ToFloat64(ts.metrics.transfers.WithLabelValues(string(o)))
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitOutcome waits until the counter for o reaches n, and fails if it passes n.
func (ts *testServer) waitOutcome(t testing.TB, o Outcome, n float64) {
	t.Helper()
	waitFor(t, string(o)+" = "+strconv.FormatFloat(n, 'f', -1, 64), func() bool { return ts.outcomes(o) >= n })
	if got := ts.outcomes(o); got != n {
		t.Fatalf("%s = %v, want %v", o, got, n)
	}
}

// logSink collects JSON log lines.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logSink) lines(t testing.TB) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.buf.String()), "\n") {
		if line == "" {
			continue
		}
		m := map[string]any{}
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// linesAt returns the log lines at level ("INFO", "WARN", ...).
func (l *logSink) linesAt(t testing.TB, level string) []map[string]any {
	var out []map[string]any
	for _, m := range l.lines(t) {
		if m["level"] == level {
			out = append(out, m)
		}
	}
	return out
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TFTP packets, built by hand so the tests do not trust the engines under
// test (only the opcode constants are shared).

// rq builds an RRQ or WRQ; opts are name, value pairs.
func rq(op uint16, name, mode string, opts ...string) []byte {
	b := binary.BigEndian.AppendUint16(nil, op)
	for _, s := range append([]string{name, mode}, opts...) {
		b = append(append(b, s...), 0)
	}
	return b
}

func ackPacket(block uint16) []byte {
	return binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, opACK), block)
}

func errorPacket(code uint16, msg string) []byte {
	b := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, opERROR), code)
	return append(append(b, msg...), 0)
}

// expectError receives the next packet and checks it is an ERROR with code
// (skipped when code < 0: pin/tftp sends every error with code 1) and msg
// (skipped when empty).
func (c *rawClient) expectError(what string, code int, msg string) packet {
	c.t.Helper()
	p := c.mustRecv()
	if p.op() != opERROR || (code >= 0 && int(p.block()) != code) || (msg != "" && p.errMsg() != msg) {
		c.t.Errorf("%s: got %v, want ERROR %d %q", what, p, code, msg)
	}
	return p
}

// quiet fails if a packet arrives within d.
func (c *rawClient) quiet(what string, d time.Duration) {
	c.t.Helper()
	if p, ok := c.recv(d); ok {
		c.t.Errorf("%s: got %v, want nothing", what, p)
	}
}

// packet is a received TFTP packet.
type packet struct {
	from *net.UDPAddr
	b    []byte
}

func (p packet) op() uint16 { return binary.BigEndian.Uint16(p.b) }

// block is the block number of DATA/ACK, the code of ERROR.
func (p packet) block() uint16 { return binary.BigEndian.Uint16(p.b[2:]) }

func (p packet) data() []byte { return p.b[4:] }

func (p packet) errMsg() string { return string(bytes.TrimRight(p.b[4:], "\x00")) }

func (p packet) oack() map[string]string {
	f := bytes.Split(bytes.TrimSuffix(p.b[2:], []byte{0}), []byte{0})
	m := map[string]string{}
	for i := 0; i+1 < len(f); i += 2 {
		m[strings.ToLower(string(f[i]))] = string(f[i+1])
	}
	return m
}

func (p packet) String() string {
	switch p.op() {
	case opDATA:
		return "DATA " + strconv.Itoa(int(p.block())) + " (" + strconv.Itoa(len(p.data())) + " bytes)"
	case opERROR:
		return "ERROR " + strconv.Itoa(int(p.block())) + " " + p.errMsg()
	case opOACK:
		return "OACK " + strings.ReplaceAll(string(p.b[2:]), "\x00", " ")
	}
	return "opcode " + strconv.Itoa(int(p.op()))
}

// rawClient speaks TFTP by hand from a loopback socket.
//
// abortNote: pin/tftp answers a client's ERROR with an ERROR of its own
// (RFC 1350 says an ERROR is not acknowledged), sent to the client's port.
// A client that reused that port for its next request could take the stray
// ERROR for the answer, so tests open a fresh client after aborting (the
// native engine sends nothing back: TestClientErrorNotAnswered).
type rawClient struct {
	t    testing.TB
	conn *net.UDPConn
	buf  []byte
}

func newRawClient(t testing.TB) *rawClient {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// Room for whole windows even when the machine is busy: loopback drops
	// datagrams only when a socket buffer is full.
	conn.SetReadBuffer(4 << 20)
	return &rawClient{t: t, conn: conn}
}

func (c *rawClient) send(to *net.UDPAddr, b []byte) {
	c.t.Helper()
	if _, err := c.conn.WriteToUDP(b, to); err != nil {
		c.t.Fatal(err)
	}
}

// recv returns the next packet, or ok=false after timeout.
func (c *rawClient) recv(timeout time.Duration) (packet, bool) {
	c.t.Helper()
	if c.buf == nil {
		c.buf = make([]byte, 65536)
	}
	buf := c.buf
	if err := c.conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		c.t.Fatal(err)
	}
	n, from, err := c.conn.ReadFromUDP(buf)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return packet{}, false
		}
		c.t.Fatal(err)
	}
	if n < 4 {
		c.t.Fatalf("short packet from server: %x", buf[:n])
	}
	return packet{from: from, b: bytes.Clone(buf[:n])}, true
}

func (c *rawClient) mustRecv() packet {
	c.t.Helper()
	p, ok := c.recv(5 * time.Second)
	if !ok {
		c.t.Fatal("no reply from server within 5 s")
	}
	return p
}

// get sends an RRQ with opts and runs the transfer to the end, checking
// each DATA block's number, sender and length, and acknowledging the last
// block of each window (every block unless a windowsize was acknowledged).
// Blocks must arrive in order: loopback loses nothing at these sizes. It
// returns the OACK options (nil if none) and the file.
func (c *rawClient) get(server *net.UDPAddr, name string, opts ...string) (map[string]string, []byte) {
	c.t.Helper()
	c.send(server, rq(opRRQ, name, "octet", opts...))
	p := c.mustRecv()
	peer := p.from
	blksize, window := 512, 1
	var oack map[string]string
	if p.op() == opOACK {
		oack = p.oack()
		for name, dst := range map[string]*int{"blksize": &blksize, "windowsize": &window} {
			if v, ok := oack[name]; ok {
				n, err := strconv.Atoi(v)
				if err != nil || n < 1 {
					c.t.Fatalf("OACK %s %q", name, v)
				}
				*dst = n
			}
		}
		c.send(peer, ackPacket(0))
		p = c.mustRecv()
	}
	var file []byte
	inWindow := 0
	for want := uint16(1); ; want++ {
		// With short server timeouts a busy host sees retransmissions: a
		// second OACK or an earlier DATA is a duplicate, not an error.
		for (p.op() == opOACK && oack != nil) || (p.op() == opDATA && p.block() < want) {
			p = c.mustRecv()
		}
		if p.op() != opDATA {
			c.t.Fatalf("got %v, want DATA %d", p, want)
		}
		if !p.from.IP.Equal(peer.IP) || p.from.Port != peer.Port {
			c.t.Fatalf("DATA from %v, transfer is with %v", p.from, peer)
		}
		if p.block() != want {
			c.t.Fatalf("DATA %d, want %d", p.block(), want)
		}
		if len(p.data()) > blksize {
			c.t.Fatalf("DATA %d carries %d bytes, blksize is %d", want, len(p.data()), blksize)
		}
		file = append(file, p.data()...)
		last := len(p.data()) < blksize
		if inWindow++; inWindow == window || last {
			c.send(peer, ackPacket(want))
			inWindow = 0
		}
		if last {
			return oack, file
		}
		p = c.mustRecv()
	}
}
