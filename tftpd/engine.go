package tftpd

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/pin/tftp/v3"
)

// engine runs the TFTP protocol on one socket and calls the Server's policy
// (serveRead, refuseWrite, malformed) for each request.
//
// Why two engines: github.com/pin/tftp/v3 is the project's TFTP library and
// served the first releases, but its server cannot negotiate RFC 7440
// windows, which shim and EDK2 ask for and which Secure Boot boots need
// (their kernels and initrds come over TFTP), and it has the gaps listed at
// pinEngine. The native engine (native.go) fills those and is the default;
// the pin engine stays selectable (Config.Engine) and tested, as a fallback
// should a client turn out to dislike the native one, and as the reference
// the native engine was checked against.
type engine interface {
	serve(conn *net.UDPConn) error // returns after shutdown
	shutdown()                     // stop taking requests, wait for transfers to end
}

// pinEngine adapts github.com/pin/tftp/v3. What that library decides for us:
//   - It parses requests itself and calls us only with the file name. A
//     malformed packet (too short, unknown opcode, DATA/ACK/ERROR/OACK sent to
//     the server port, a request without a NUL-terminated name) reaches us as
//     a Hook failure without an address, which we count and drop. A bad
//     option value (blksize=abc, blksize=1) is not reported: the library
//     ignores the option as RFC 2347 permits and sends 512-byte blocks, so
//     those packets are served, not counted. A request whose last string
//     lacks its NUL is accepted.
//   - Every error packet it sends has code 1, whatever we return; the message
//     is ours.
//   - It answers tsize by seeking the reader, but drops a tsize of 0, so the
//     OACK for an empty file carries no tsize.
//   - Options other than blksize and tsize (windowsize, timeout) are ignored.
//   - It reads requests into a 516-byte buffer: a longer request is cut, and
//     options past the cut are lost (firmware requests are far shorter).
//   - It answers a client's ERROR with an ERROR of its own (RFC 1350 says
//     not to); harmless unless the client reuses that port at once.
type pinEngine struct {
	srv *Server
	ctx context.Context // cancelled when running transfers must stop
	ps  *tftp.Server

	mu      sync.Mutex
	pending map[netip.AddrPort]*pinTransfer // read transfers in ReadFrom, for the hook
}

// pinTransfer receives what only pin/tftp's hook knows about a transfer.
type pinTransfer struct {
	blockSize int
}

func newPinEngine(s *Server, ctx context.Context) *pinEngine {
	e := &pinEngine{srv: s, ctx: ctx, pending: make(map[netip.AddrPort]*pinTransfer)}
	e.ps = tftp.NewServer(e.read, e.write)
	// The default clamps blksize to the interface MTU, and on loopback or
	// when the MTU lookup fails to 512, which cut throughput 6x. Clients ask
	// for what fits their link (iPXE <= 1432, EDK2 1468), so honour it.
	e.ps.SetBlockSizeNegotiation(false)
	if s.cfg.MaxBlockSize < MaxBlockSizeLimit {
		e.ps.SetBlockSize(s.cfg.MaxBlockSize) // a cap, > 512 (checked in New)
	}
	e.ps.SetTimeout(s.cfg.Timeout)
	e.ps.SetRetries(s.cfg.Retries)
	// The library sleeps up to 1 s (random) after each timeout by default;
	// the timeout already was the wait, so retransmit at once.
	e.ps.SetBackoff(func(int) time.Duration { return 0 })
	e.ps.SetHook(pinHook{e})
	return e
}

func (e *pinEngine) serve(conn *net.UDPConn) error { return e.ps.Serve(conn) }

func (e *pinEngine) shutdown() { e.ps.Shutdown() }

// read is pin/tftp's read handler, called on a fresh goroutine per request
// with the transfer's socket already bound.
func (e *pinEngine) read(filename string, rf io.ReaderFrom) error {
	req := pinRequest(filename, rf)
	return e.srv.serveRead(e.ctx, req, &pinOutgoing{e: e, rf: rf, client: req.client})
}

// write is pin/tftp's write handler; returning an error makes it send that
// error to the client.
func (e *pinEngine) write(filename string, wt io.WriterTo) error {
	return e.srv.refuseWrite(pinRequest(filename, wt))
}

func pinRequest(filename string, t any) request {
	req := request{name: filename}
	if ot, ok := t.(interface{ RemoteAddr() net.UDPAddr }); ok {
		ra := ot.RemoteAddr()
		req.client = netip.AddrPortFrom(ipAddr(ra.IP), uint16(ra.Port))
	}
	if pi, ok := t.(tftp.RequestPacketInfo); ok {
		// pin/tftp reports 0.0.0.0 for a request sent to the broadcast address.
		if a := ipAddr(pi.LocalIP()); !a.IsUnspecified() {
			req.local = a
		}
	}
	return req
}

func ipAddr(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

type pinOutgoing struct {
	e      *pinEngine
	rf     io.ReaderFrom
	client netip.AddrPort
}

func (o *pinOutgoing) send(r *fileReader) (sendStats, error) {
	pt := &pinTransfer{}
	o.e.mu.Lock()
	// A client that retransmits its request gets two transfers from one
	// address and port; the first one registered gets the hook's details.
	registered := o.e.pending[o.client] == nil
	if registered {
		o.e.pending[o.client] = pt
	}
	o.e.mu.Unlock()

	n, err := o.rf.ReadFrom(r)

	o.e.mu.Lock()
	if registered {
		delete(o.e.pending, o.client)
	}
	blockSize := pt.blockSize
	o.e.mu.Unlock()
	// pin/tftp sends one block at a time (SetAnticipate is not negotiated).
	return sendStats{bytes: n, blockSize: blockSize, windowSize: 1}, err
}

// pinHook receives pin/tftp's transfer reports.
type pinHook struct{ e *pinEngine }

func (h pinHook) OnSuccess(st tftp.TransferStats) { h.note(st) }

func (h pinHook) OnFailure(st tftp.TransferStats, err error) {
	if st.RemoteAddr != nil {
		h.note(st)
		return
	}
	// No address: the error came from the request loop, not a transfer.
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		// Binding the transfer socket failed (e.g. out of file descriptors):
		// the request is lost and the client will retry.
		h.e.srv.log.Error("tftp cannot open a transfer socket", "err", err)
		return
	}
	h.e.srv.malformed(err)
}

// note copies the negotiated block size to the transfer waiting in send.
func (h pinHook) note(st tftp.TransferStats) {
	key := netip.AddrPortFrom(ipAddr(st.RemoteAddr), uint16(st.Tid))
	blockSize := 512 // RFC 1350's, when blksize was not negotiated
	if v, ok := st.Opts["blksize"]; ok {
		if n, err := strconv.Atoi(v); err == nil {
			blockSize = n
		}
	}
	h.e.mu.Lock()
	if pt := h.e.pending[key]; pt != nil {
		pt.blockSize = blockSize
	}
	h.e.mu.Unlock()
}
