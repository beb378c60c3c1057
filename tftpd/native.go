package tftpd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// nativeEngine is bootserve's own TFTP engine: RFC 1350 reads with the
// options of RFC 2347/2348/2349 and RFC 7440 windows. Each transfer runs on
// its own goroutine and socket (bound to the address the request was sent
// to) and reads the file with ReadAt, so a retransmitted window re-reads its
// blocks without shared seek state.
type nativeEngine struct {
	srv *Server
	ctx context.Context // cancelled when running transfers must stop
	lim limits

	mu       sync.Mutex
	conn     *net.UDPConn
	loopDone chan struct{}
	wg       sync.WaitGroup // transfers

	replies tokenBucket   // answers to malformed packets, used by the request loop only
	threads chan struct{} // one token per transfer on a thread socket (conn.go)
	bufs    sync.Pool     // *[transferBufSize]byte, see transferBufs
}

func newNativeEngine(s *Server, ctx context.Context) *nativeEngine {
	return &nativeEngine{
		srv: s, ctx: ctx,
		lim:      limits{maxBlockSize: s.cfg.MaxBlockSize, maxWindowSize: s.cfg.MaxWindowSize, timeout: s.cfg.Timeout},
		loopDone: make(chan struct{}),
		// Answers to junk are few and small, but a flood must not turn the
		// server into a packet reflector: 100 a second, bursts of 100.
		replies: tokenBucket{rate: 100, burst: 100},
		threads: make(chan struct{}, max(0, s.cfg.threadTransfers)),
	}
}

// requestConn reads requests with the address each was sent to.
type requestConn struct {
	p4 *ipv4.PacketConn // one of p4, p6 is set
	p6 *ipv6.PacketConn
}

func (e *nativeEngine) serve(conn *net.UDPConn) error {
	defer close(e.loopDone)
	e.mu.Lock()
	e.conn = conn
	e.mu.Unlock()

	var rc requestConn
	var cmErr error
	if la, _ := conn.LocalAddr().(*net.UDPAddr); la != nil && la.IP.To4() != nil {
		rc.p4 = ipv4.NewPacketConn(conn)
		cmErr = rc.p4.SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true)
	} else {
		rc.p6 = ipv6.NewPacketConn(conn)
		cmErr = rc.p6.SetControlMessage(ipv6.FlagDst|ipv6.FlagInterface, true)
	}
	if cmErr != nil {
		// Transfers then answer from the kernel's choice of address, which
		// is right unless the host has several addresses on one subnet.
		e.srv.log.Warn("tftp cannot learn the address requests are sent to; replies may leave from another address",
			"addr", conn.LocalAddr().String(), "err", cmErr)
	}

	buf := make([]byte, maxRequest)
	for {
		var (
			n       int
			src     net.Addr
			dst     net.IP
			ifIndex int
			err     error
		)
		if rc.p4 != nil {
			var cm *ipv4.ControlMessage
			n, cm, src, err = rc.p4.ReadFrom(buf)
			if cm != nil {
				dst, ifIndex = cm.Dst, cm.IfIndex
			}
		} else {
			var cm *ipv6.ControlMessage
			n, cm, src, err = rc.p6.ReadFrom(buf)
			if cm != nil {
				dst, ifIndex = cm.Dst, cm.IfIndex
			}
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		ua, ok := src.(*net.UDPAddr)
		if !ok {
			continue
		}
		peer := netip.AddrPortFrom(ipAddr(ua.IP), uint16(ua.Port))
		local := ipAddr(dst)
		if local.IsLinkLocalUnicast() && ifIndex > 0 {
			local = local.WithZone(strconv.Itoa(ifIndex))
		}
		if local.IsMulticast() || local == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			local = netip.Addr{} // answer from the kernel's choice, as for no control message
		}
		e.request(rc, buf[:n], peer, local)
	}
}

// request handles one datagram sent to the server port: a malformed one is
// counted and, where an answer is due, answered from the server port; a
// request starts a transfer goroutine.
func (e *nativeEngine) request(rc requestConn, b []byte, peer netip.AddrPort, local netip.Addr) {
	req, reason, reply := parseRequest(b)
	if reason != "" {
		e.srv.malformed(fmt.Errorf("from %s: %s", peer, reason))
		if reply != nil && e.replies.allow(time.Now()) {
			e.replyFromServerPort(rc, encodeError(reply), peer, local)
		}
		return
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.transfer(req, peer, local)
	}()
}

// replyFromServerPort sends b to peer from the server port, with the source
// address the request was sent to.
func (e *nativeEngine) replyFromServerPort(rc requestConn, b []byte, peer netip.AddrPort, local netip.Addr) {
	to := net.UDPAddrFromAddrPort(peer)
	var err error
	if rc.p4 != nil {
		var cm *ipv4.ControlMessage
		if local.IsValid() {
			cm = &ipv4.ControlMessage{Src: local.AsSlice()}
		}
		_, err = rc.p4.WriteTo(b, cm, to)
	} else {
		var cm *ipv6.ControlMessage
		if local.IsValid() {
			cm = &ipv6.ControlMessage{Src: net.IP(local.AsSlice())}
		}
		_, err = rc.p6.WriteTo(b, cm, to)
	}
	if err != nil {
		e.srv.log.Debug("tftp cannot answer a malformed packet", "client", peer.String(), "err", err)
	}
}

func (e *nativeEngine) shutdown() {
	e.mu.Lock()
	if e.conn != nil {
		e.conn.Close() // Serve closed it already; this only makes shutdown self-contained
	}
	e.mu.Unlock()
	<-e.loopDone // no wg.Add after this
	e.wg.Wait()
}

// transfer runs one request on its own socket.
func (e *nativeEngine) transfer(req wireRequest, peer netip.AddrPort, local netip.Addr) {
	thread := false
	select {
	case e.threads <- struct{}{}:
		thread = true
		defer func() { <-e.threads }()
	default:
	}
	conn, err := listenTransfer(local, peer, thread)
	if err != nil {
		// E.g. out of file descriptors: the request is lost and the client will retry.
		e.srv.log.Error("tftp cannot open a transfer socket", "client", peer.String(), "err", err)
		return
	}
	defer conn.close()
	t := &nativeTransfer{e: e, conn: conn, peer: peer, req: req}
	r := request{client: peer, local: local.WithZone(""), name: req.name}
	var refusal error
	if req.write {
		refusal = e.srv.refuseWrite(r)
	} else {
		refusal = e.srv.serveRead(e.ctx, r, t)
	}
	if refusal == errBusy {
		// No answer: the client retries after its timeout (Config.MaxTransfers).
		return
	}
	if refusal != nil {
		t.sendError(refusal)
	}
}

// nativeTransfer is one read transfer.
type nativeTransfer struct {
	e    *nativeEngine
	conn transferConn
	peer netip.AddrPort
	req  wireRequest

	neg   negotiated
	stats sendStats
	rbuf  []byte // ACKs and ERRORs; anything longer is not for us
	pkt   []byte // DATA: 4 + block size
}

var (
	// errTimedOut is what a client that stopped acknowledging is told.
	errTimedOut = &tftpError{0, "timeout: no acknowledgement from client"}
	// errDeadline is next's report that the deadline passed.
	errDeadline = errors.New("deadline passed")
)

// clientError is an ERROR packet from the client: the transfer ends and,
// as RFC 1350 says, the ERROR is not answered.
type clientError struct {
	code uint16
	msg  string
}

func (e *clientError) Error() string {
	return fmt.Sprintf("client sent error %d: %q", e.code, e.msg)
}

// send runs the transfer of r: option acknowledgement, then windows of DATA.
func (t *nativeTransfer) send(r *fileReader) (sendStats, error) {
	t.neg = negotiate(t.req.opts, t.req.mode, r.size, t.e.lim)
	t.stats = sendStats{blockSize: t.neg.blockSize, windowSize: t.neg.windowSize}
	bufs, release := t.e.transferBufs(t.neg.blockSize, r.osFile)
	defer release()
	t.rbuf, t.pkt = bufs.rbuf, bufs.pkt
	// Shutdown wakes a transfer blocked waiting for an ACK at once.
	stop := context.AfterFunc(t.e.ctx, t.conn.wake)
	defer stop()

	var src blockSource
	if t.req.mode == "netascii" {
		src = &asciiBlocks{enc: newNetasciiEncoder(io.NewSectionReader(r, 0, r.size)), size: r.size}
	} else {
		src = &octetBlocks{r: r, size: r.size, blockSize: t.neg.blockSize, chunk: bufs.chunk}
	}
	if t.neg.oack != nil {
		if err := t.sendOACK(); err != nil {
			return t.stats, t.fail(err)
		}
	}
	err := t.sendData(src)
	if err == nil {
		t.stats.bytes = r.size
	}
	return t.stats, t.fail(err)
}

// fail tells the client why the transfer ends (unless the client ended it
// or cannot be reached) and returns err.
func (t *nativeTransfer) fail(err error) error {
	var ce *clientError
	var ne *net.OpError
	switch {
	case err == nil, errors.As(err, &ce), errors.As(err, &ne):
	default:
		t.sendError(err)
	}
	return err
}

// sendError sends the ERROR for err: its code and message when it is a
// *tftpError, else a generic message (causes are for the log, not clients).
func (t *nativeTransfer) sendError(err error) {
	var te *tftpError
	if !errors.As(err, &te) {
		te = &tftpError{0, "transfer failed"}
	}
	t.conn.send(encodeError(te), t.peer)
}

// sendOACK sends the option acknowledgement until the client acknowledges
// it with ACK 0.
func (t *nativeTransfer) sendOACK() error {
	for try := 0; ; try++ {
		if err := t.conn.send(t.neg.oack, t.peer); err != nil {
			return err
		}
		deadline := time.Now().Add(t.neg.timeout)
		for {
			blk, err := t.next(deadline)
			if errors.Is(err, errDeadline) {
				break
			}
			if err != nil {
				return err
			}
			if blk == 0 {
				return nil
			}
			// An ACK for data never sent: ignore it.
		}
		if try == t.e.srv.cfg.Retries {
			return fmt.Errorf("no ACK for the option acknowledgement after %d tries %s apart: %w", try+1, t.neg.timeout, errTimedOut)
		}
		t.stats.retransmits++
	}
}

// sendData sends the file in windows of up to windowSize blocks. After each
// window it waits for an ACK: an ACK for block n acknowledges every block up
// to n, and the next window starts at n+1, so an ACK in the middle of a
// window (the client lost a block) resends from the lost one. A duplicate
// ACK alone never causes a resend (no Sorcerer's Apprentice Syndrome); a
// timeout resends the window. Block numbers are the low 16 bits of the
// block's index: they wrap from 65535 to 0.
func (t *nativeTransfer) sendData(src blockSource) error {
	bs, window := t.neg.blockSize, uint64(t.neg.windowSize)
	pkt := t.pkt
	binary.BigEndian.PutUint16(pkt, opDATA)
	var (
		acked   uint64 // every block up to acked is acknowledged
		sent    uint64 // the last block of the current window
		maxSent uint64 // the highest block ever sent
		last    uint64 // the final (short) block, once read
		tries   int    // timeouts in a row without progress
	)
	for {
		if t.e.ctx.Err() != nil {
			return errShuttingDown
		}
		for b := acked + 1; b <= acked+window && (last == 0 || b <= last); b++ {
			n, err := src.block(b, pkt[4:])
			if err != nil {
				return err
			}
			binary.BigEndian.PutUint16(pkt[2:], uint16(b))
			if err := t.conn.send(pkt[:4+n], t.peer); err != nil {
				return err
			}
			if b <= maxSent {
				t.stats.retransmits++
			} else {
				maxSent = b
			}
			sent = b
			if n < bs {
				last = b
			}
		}
		deadline := time.Now().Add(t.neg.timeout)
		for {
			blk, err := t.next(deadline)
			if errors.Is(err, errDeadline) {
				tries++
				if tries > t.e.srv.cfg.Retries {
					return fmt.Errorf("no ACK for blocks %d to %d after %d tries %s apart: %w", acked+1, sent, tries, t.neg.timeout, errTimedOut)
				}
				break // resend the window
			}
			if err != nil {
				return err
			}
			// The ACK's block among acked..sent (at most 65536 values, so
			// the 16-bit number names one); anything else is ignored.
			d := uint64(blk - uint16(acked))
			if d == 0 || d > sent-acked {
				continue
			}
			acked += d
			tries = 0
			t.stats.bytes = src.sent(acked)
			src.release(acked)
			if acked == last {
				return nil
			}
			break
		}
	}
}

// next returns the block number of the next ACK from the client, waiting
// until deadline (errDeadline). Packets from other addresses or ports are
// answered "unknown transfer ID" and otherwise ignored (RFC 1350), as are
// malformed packets from the client.
func (t *nativeTransfer) next(deadline time.Time) (uint16, error) {
	for {
		if t.e.ctx.Err() != nil {
			return 0, errShuttingDown
		}
		n, from, err := t.conn.recv(t.rbuf, deadline)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if t.e.ctx.Err() != nil {
					return 0, errShuttingDown
				}
				if !time.Now().Before(deadline) {
					return 0, errDeadline
				}
				continue
			}
			return 0, err
		}
		p := t.rbuf[:n]
		if from.Addr().WithZone("") != t.peer.Addr().WithZone("") || from.Port() != t.peer.Port() {
			// RFC 1350: tell the stranger, do not disturb the transfer. An
			// ERROR is never answered.
			if n < 2 || binary.BigEndian.Uint16(p) != opERROR {
				t.conn.send(encodeError(errBadTID), from)
			}
			continue
		}
		switch {
		case n >= 4 && binary.BigEndian.Uint16(p) == opACK:
			return binary.BigEndian.Uint16(p[2:]), nil
		case n >= 2 && binary.BigEndian.Uint16(p) == opERROR:
			ce := &clientError{}
			if n >= 4 {
				ce.code = binary.BigEndian.Uint16(p[2:])
				msg, _, _ := cutNUL(p[4:])
				ce.msg = string(msg)
			}
			return 0, ce
		default:
			t.e.srv.malformed(fmt.Errorf("from %s during a transfer: %d-byte packet, neither ACK nor ERROR", from, n))
		}
	}
}

func cutNUL(b []byte) ([]byte, []byte, bool) {
	for i, c := range b {
		if c == 0 {
			return b[:i], b[i+1:], true
		}
	}
	return b, nil, false
}

// blockSource produces the DATA blocks of a transfer, numbered from 1. A
// block shorter than the block size is the last one.
type blockSource interface {
	// block fills p (block size long) with block n and returns its length.
	block(n uint64, p []byte) (int, error)
	// release says blocks up to n are acknowledged: never asked again.
	release(n uint64)
	// sent is how many bytes of the file blocks 1..n carry.
	sent(n uint64) int64
}

// octetBlocks reads the file a chunk of whole blocks at a time and serves
// blocks from the chunk: one read per chunk, not one per block (a syscall
// per 512 bytes for a lock-step client). Without a chunk (in-memory files)
// it reads each block straight into the packet.
type octetBlocks struct {
	r         io.ReaderAt
	size      int64
	blockSize int
	chunk     []byte // nil, or its capacity holds at least one block

	first uint64 // the block at chunk[0]; 0: nothing read
}

func (o *octetBlocks) block(n uint64, p []byte) (int, error) {
	off := int64(n-1) * int64(o.blockSize)
	if off >= o.size {
		return 0, nil // the empty block that ends a file of whole blocks
	}
	if o.chunk == nil {
		return o.r.ReadAt(p[:min(int64(o.blockSize), o.size-off)], off)
	}
	if o.first == 0 || n < o.first || n >= o.first+uint64(len(o.chunk)/o.blockSize) {
		o.first = 0 // until the read succeeds
		o.chunk = o.chunk[:min(int64(cap(o.chunk)/o.blockSize*o.blockSize), o.size-off)]
		if _, err := o.r.ReadAt(o.chunk, off); err != nil {
			return 0, err
		}
		o.first = n
	}
	i := int(n-o.first) * o.blockSize
	return copy(p, o.chunk[i:min(i+o.blockSize, len(o.chunk))]), nil
}

func (o *octetBlocks) release(uint64) {}

func (o *octetBlocks) sent(n uint64) int64 { return min(int64(n)*int64(o.blockSize), o.size) }

// asciiBlocks produces netascii blocks. The encoding has no fixed relation
// between file offsets and block numbers, so blocks are encoded in order
// and kept until acknowledged (at most one window).
type asciiBlocks struct {
	enc   *netasciiEncoder
	size  int64
	first uint64 // the block in cache[0]
	cache [][]byte
	free  [][]byte // released buffers for reuse
	done  int64    // file bytes in released blocks
	ends  []int64  // file offset after each cached block
}

func (a *asciiBlocks) block(n uint64, p []byte) (int, error) {
	if a.first == 0 {
		a.first = 1
	}
	if n < a.first {
		return 0, fmt.Errorf("netascii block %d asked after its release", n)
	}
	for n >= a.first+uint64(len(a.cache)) {
		var b []byte
		if k := len(a.free); k > 0 {
			b, a.free = a.free[k-1][:len(p)], a.free[:k-1]
		} else {
			b = make([]byte, len(p))
		}
		m, err := io.ReadFull(a.enc, b)
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, err
		}
		a.cache = append(a.cache, b[:m])
		a.ends = append(a.ends, a.enc.consumed)
	}
	return copy(p, a.cache[n-a.first]), nil
}

func (a *asciiBlocks) release(n uint64) {
	for len(a.cache) > 0 && a.first <= n {
		a.free = append(a.free, a.cache[0])
		a.done = a.ends[0]
		a.cache, a.ends = a.cache[1:], a.ends[1:]
		a.first++
	}
}

func (a *asciiBlocks) sent(uint64) int64 { return a.done }

// netasciiEncoder converts a file to netascii (RFC 764 as used by RFC
// 1350): LF becomes CR LF and CR becomes CR NUL.
type netasciiEncoder struct {
	r        *bufio.Reader
	pending  int   // byte to emit before reading on, -1 if none
	consumed int64 // file bytes read
}

func newNetasciiEncoder(r io.Reader) *netasciiEncoder {
	return &netasciiEncoder{r: bufio.NewReader(r), pending: -1}
}

func (e *netasciiEncoder) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if e.pending >= 0 {
			p[n], e.pending = byte(e.pending), -1
			n++
			continue
		}
		c, err := e.r.ReadByte()
		if err != nil {
			if n > 0 && errors.Is(err, io.EOF) {
				return n, nil
			}
			return n, err
		}
		e.consumed++
		switch c {
		case '\n':
			p[n], e.pending = '\r', '\n'
		case '\r':
			p[n], e.pending = '\r', 0
		default:
			p[n] = c
		}
		n++
	}
	return n, nil
}

// tokenBucket is a rate limit: rate events a second, bursts of burst.
type tokenBucket struct {
	rate, burst float64
	tokens      float64
	last        time.Time
}

func (b *tokenBucket) allow(now time.Time) bool {
	if b.last.IsZero() {
		b.tokens = b.burst
	} else {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// transferBufSize is the size of a pooled transfer buffer. Buffers with a
// chunk are pooled because a fresh one costs page faults as it is first
// written, which on a virtual machine were a third of a small file's
// transfer time (12 faults, ~0.3 ms, for a 174 KB boot program). 32 KiB
// holds any block size up to 15 KiB with a chunk of at least one block.
const transferBufSize = 32 << 10

// transferBufs are the buffers of one transfer.
type transferBufs struct {
	rbuf, pkt, chunk []byte
}

// transferBufs returns buffers for a transfer with blocks of bs bytes and
// the function that gives them back. Only files read with a syscall get a
// chunk: in-memory files (boot programs, generated configs) are copied
// straight into the packet, and a storm of them should not hold 32 KiB each.
func (e *nativeEngine) transferBufs(bs int, chunked bool) (transferBufs, func()) {
	const rlen = 1500
	need := rlen + 4 + bs
	if chunked {
		need += bs // at least one block in the chunk
	}
	var buf []byte
	release := func() {}
	if chunked && need <= transferBufSize {
		p, _ := e.bufs.Get().(*[transferBufSize]byte)
		if p == nil {
			p = new([transferBufSize]byte)
		}
		buf = p[:]
		release = func() { e.bufs.Put(p) }
	} else {
		buf = make([]byte, need)
	}
	b := transferBufs{rbuf: buf[:rlen:rlen], pkt: buf[rlen : rlen+4+bs : rlen+4+bs]}
	if chunked {
		b.chunk = buf[rlen+4+bs : rlen+4+bs]
	}
	return b, release
}
