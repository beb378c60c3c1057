// Package tftpd is bootserve's read-only TFTP server: it answers read requests
// from a Source (the firmware set, a directory, files generated per client),
// refuses writes, and reports every request to the log, Prometheus metrics and
// an optional callback.
//
// The protocol runs in an engine (engine.go): bootserve's own (native.go,
// the default, with RFC 7440 windows) or github.com/pin/tftp/v3. This file
// holds the policy both share: names, limits, outcomes, shutdown.
package tftpd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Defaults for the zero values in Config.
const (
	DefaultMaxTransfers  = 256
	DefaultTimeout       = time.Second
	DefaultRetries       = 5
	DefaultShutdownGrace = 5 * time.Second
	// DefaultMaxWindowSize bounds RFC 7440 windows: shim and EDK2 ask for 4,
	// and 64 blocks of 1468 bytes (94 KB) fit the default socket buffers of
	// a receiving Linux or firmware stack.
	DefaultMaxWindowSize = 64

	// defaultThreadTransfers is how many transfers at once wait on their own
	// thread (conn.go): the handful a LAN normally has. A storm's hundreds
	// of transfers are better served by the netpoller than by as many
	// threads.
	defaultThreadTransfers = 32
)

// Engines for Config.Engine.
const (
	EngineNative = "native"
	EnginePin    = "pin"
)

// Config configures a Server. Only Source is required.
type Config struct {
	Source Source
	// Logger receives one line per request (info for completed transfers and
	// missing files, warn for failures and refusals, debug for size probes and
	// malformed packets). Nil discards.
	Logger *slog.Logger
	// Metrics may be nil.
	Metrics *Metrics
	// OnTransfer, if set, is called when a transfer starts sending (Done
	// false) and once when every read request ends (Done true), including
	// requests that were refused or not found and so never started. It runs
	// on the transfer's goroutine, concurrently with other transfers: it must
	// be safe for concurrent use, quick, and must not block.
	OnTransfer func(Transfer)
	// MaxTransfers bounds concurrent read transfers. The native engine leaves
	// a request over the bound unanswered, so the client sends it again after
	// its timeout and is served once a transfer has ended (firmware takes an
	// ERROR as the end of its boot attempt: in a boot storm "server busy"
	// would fail every machine past the bound); the pin engine answers
	// "server busy". Either way the request is counted as refused.
	// Default DefaultMaxTransfers.
	MaxTransfers int
	// Timeout is how long to wait for an ACK before retransmitting; Retries
	// is how many retransmissions of one packet are made before the transfer
	// is given up, so a client that stops answering holds its slot for at most
	// Timeout×(Retries+1). Defaults DefaultTimeout and DefaultRetries.
	Timeout time.Duration
	Retries int
	// ShutdownGrace is how long Serve lets running transfers finish after its
	// context is cancelled before aborting them. Default DefaultShutdownGrace.
	ShutdownGrace time.Duration
	// Engine runs the protocol: EngineNative (the default) or EnginePin.
	// engine.go says why there are two.
	Engine string
	// MaxBlockSize caps the block size a client may negotiate (RFC 2348
	// allows 8..65464, the default cap). There is no MTU clamp: clients ask
	// for what fits their link, and larger blocks are fragmented by IP. The
	// pin engine needs a cap above 512 and ignores requests below 512.
	MaxBlockSize int
	// MaxWindowSize caps the RFC 7440 window a client may negotiate
	// (1..65535; default DefaultMaxWindowSize). The pin engine does not
	// negotiate windows: it always sends one block at a time.
	MaxWindowSize int

	// threadTransfers is how many native transfers at once get a thread
	// socket (conn.go); New sets 0 to the default, -1 to none. Unexported:
	// tests set it to cover the netpoller path.
	threadTransfers int
}

// Outcome classifies how a read request ended; the values are also the
// "outcome" label of bootserve_tftp_transfers_total.
type Outcome string

const (
	OutcomeOK     Outcome = "ok"
	OutcomeFailed Outcome = "failed"
	// OutcomeAbortedProbe: the client ended the transfer after the option
	// acknowledgement, before taking any data. EDK2 does this on purpose to
	// learn a file's size (tsize) before the real read; it is not a failure.
	OutcomeAbortedProbe Outcome = "aborted_probe"
	OutcomeNotFound     Outcome = "not_found"
	// OutcomeRefused: a bad file name, a write request, or the server was busy.
	OutcomeRefused Outcome = "refused"
)

// Transfer describes one request, for Config.OnTransfer.
type Transfer struct {
	Client netip.AddrPort
	// Local is the server address the request was sent to (invalid if the
	// request came to a broadcast address).
	Local netip.Addr
	// File is the canonical name (see Source), or the name as sent when it
	// was refused.
	File string
	// Write is true for a (refused) write request.
	Write bool
	// Size is the file's size, -1 if it was not opened.
	Size int64
	// Bytes is how many bytes of the file were sent (0 in the start event).
	Bytes int64
	// BlockSize is the negotiated block size, 0 if unknown.
	BlockSize int
	// WindowSize is the negotiated number of blocks sent before waiting
	// for an ACK (RFC 7440): 1 is lock-step, 0 unknown.
	WindowSize int
	// Retransmits counts packets sent again (after a timeout or a lost
	// block); only the native engine counts them.
	Retransmits int
	Start       time.Time
	Duration    time.Duration
	// Done is false in the start event and true in the end event.
	Done    bool
	Outcome Outcome // set when Done
	Err     error   // why, for any Outcome but OutcomeOK
}

// Server is a read-only TFTP server. Create it with New.
type Server struct {
	cfg   Config
	log   *slog.Logger
	slots chan struct{} // one token per running transfer
}

// New checks cfg, fills in defaults and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Source == nil {
		return nil, errors.New("tftpd: Config.Source is nil: give the server files to serve (e.g. tftpd.Dir or tftpd.Map)")
	}
	if cfg.MaxTransfers < 0 || cfg.Timeout < 0 || cfg.Retries < 0 || cfg.ShutdownGrace < 0 {
		return nil, fmt.Errorf("tftpd: negative MaxTransfers (%d), Timeout (%s), Retries (%d) or ShutdownGrace (%s): use 0 for the default",
			cfg.MaxTransfers, cfg.Timeout, cfg.Retries, cfg.ShutdownGrace)
	}
	switch cfg.Engine {
	case "":
		cfg.Engine = EngineNative
	case EngineNative, EnginePin:
	default:
		return nil, fmt.Errorf("tftpd: unknown Engine %q: use %q (the default) or %q", cfg.Engine, EngineNative, EnginePin)
	}
	if cfg.MaxBlockSize == 0 {
		cfg.MaxBlockSize = MaxBlockSizeLimit
	}
	if cfg.MaxBlockSize < MinBlockSize || cfg.MaxBlockSize > MaxBlockSizeLimit {
		return nil, fmt.Errorf("tftpd: MaxBlockSize %d outside %d..%d (RFC 2348): use 0 for no cap", cfg.MaxBlockSize, MinBlockSize, MaxBlockSizeLimit)
	}
	if cfg.Engine == EnginePin && cfg.MaxBlockSize <= defaultBlockSize {
		return nil, fmt.Errorf("tftpd: MaxBlockSize %d: the pin engine can only cap block sizes above %d; use the native engine", cfg.MaxBlockSize, defaultBlockSize)
	}
	if cfg.MaxWindowSize == 0 {
		cfg.MaxWindowSize = DefaultMaxWindowSize
	}
	if cfg.MaxWindowSize < 1 || cfg.MaxWindowSize > MaxWindowSizeLimit {
		return nil, fmt.Errorf("tftpd: MaxWindowSize %d outside 1..%d (RFC 7440): use 0 for the default %d", cfg.MaxWindowSize, MaxWindowSizeLimit, DefaultMaxWindowSize)
	}
	if cfg.MaxTransfers == 0 {
		cfg.MaxTransfers = DefaultMaxTransfers
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Retries == 0 {
		cfg.Retries = DefaultRetries
	}
	if cfg.ShutdownGrace == 0 {
		cfg.ShutdownGrace = DefaultShutdownGrace
	}
	if cfg.threadTransfers == 0 {
		cfg.threadTransfers = defaultThreadTransfers
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, log: log, slots: make(chan struct{}, cfg.MaxTransfers)}, nil
}

// ListenAndServe binds addr (e.g. "0.0.0.0:69") and calls Serve.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	conn, err := Listen(ctx, addr)
	if err != nil {
		return err
	}
	return s.Serve(ctx, conn)
}

// recvBuffer is the receive buffer asked for the request socket, so a
// burst of requests (a boot storm, a flood) waits instead of being dropped.
const recvBuffer = 4 << 20

// Listen binds the request socket for Serve, with a large receive buffer
// (SO_RCVBUFFORCE when privileged, else what the system allows).
func Listen(ctx context.Context, addr string) (net.PacketConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, recvBuffer) != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, recvBuffer)
			}
		})
	}}
	conn, err := lc.ListenPacket(ctx, "udp", addr)
	switch {
	case errors.Is(err, syscall.EACCES):
		return nil, fmt.Errorf("tftp: listen on %s: %w: port 69 needs root or CAP_NET_BIND_SERVICE", addr, err)
	case errors.Is(err, syscall.EADDRINUSE):
		return nil, fmt.Errorf("tftp: listen on %s: %w: stop the other TFTP server (tftpd-hpa, dnsmasq) or disable bootserve's", addr, err)
	case err != nil:
		return nil, fmt.Errorf("tftp: listen on %s: %w", addr, err)
	}
	return conn, nil
}

// Serve answers TFTP requests arriving on conn until ctx is cancelled.
//
// conn must be a *net.UDPConn. Each transfer gets its own socket bound to the
// address the request was sent to (taken from the packet's IP_PKTINFO), so
// replies leave from the address the client talked to, which clients check;
// requests sent to a broadcast address are answered from the kernel's choice.
//
// On cancellation Serve stops taking requests, lets running transfers finish
// for up to ShutdownGrace, then aborts the rest (each notices at its next
// block, at most Timeout×(Retries+1) later) and returns nil once all have
// ended. Serve closes conn before it returns; do not close conn while Serve
// runs. A Server may serve several sockets at once (e.g. IPv4 and IPv6);
// MaxTransfers is shared among them.
func (s *Server) Serve(ctx context.Context, conn net.PacketConn) error {
	udp, ok := conn.(*net.UDPConn)
	if !ok {
		conn.Close()
		return fmt.Errorf("tftp: Serve needs a *net.UDPConn, got %T", conn)
	}
	// Transfers outlive ctx by up to ShutdownGrace; abortCtx ends them.
	abortCtx, abort := context.WithCancel(context.WithoutCancel(ctx))
	defer abort()
	var eng engine
	if s.cfg.Engine == EnginePin {
		eng = newPinEngine(s, abortCtx)
	} else {
		eng = newNativeEngine(s, abortCtx)
	}
	served := make(chan error, 1)
	go func() { served <- eng.serve(udp) }()

	select {
	case err := <-served:
		eng.shutdown()
		udp.Close()
		return fmt.Errorf("tftp: serve on %s: %w", udp.LocalAddr(), err)
	case <-ctx.Done():
	}

	s.log.Debug("tftp shutting down", "addr", udp.LocalAddr().String())
	stopped := make(chan struct{})
	go func() {
		// Close first: pin/tftp only closes a socket it has already
		// recorded, and a Serve cancelled at once could otherwise leave its
		// request loop blocked in a read forever. Closing also ends the
		// native engine's request loop.
		udp.Close()
		eng.shutdown()
		close(stopped)
	}()
	grace := time.NewTimer(s.cfg.ShutdownGrace)
	defer grace.Stop()
	select {
	case <-stopped:
	case <-grace.C:
		s.log.Warn("tftp shutdown grace period over: aborting running transfers", "grace", s.cfg.ShutdownGrace)
		abort()
		<-stopped
	}
	<-served
	return nil
}

// request is a read or write request as the engine parsed it.
type request struct {
	client netip.AddrPort
	local  netip.Addr // the address the request was sent to, if known
	name   string     // as sent
}

// outgoing is the engine's half of one read transfer.
type outgoing interface {
	// send transmits r (exactly r.size bytes; pin/tftp reads it with Read
	// and Seek, the native engine with ReadAt). When it returns an error the
	// engine has already told the client, if that was due.
	send(r *fileReader) (sendStats, error)
}

// sendStats is what an engine reports about a transfer.
type sendStats struct {
	bytes       int64 // file bytes sent (native: acknowledged)
	blockSize   int   // 0 if unknown
	windowSize  int
	retransmits int
}

// tftpError is what a client is told. code is the RFC 1350 error code the
// case deserves; pin/tftp sends every error with code 1 (engine.go), so with
// that engine only msg tells them apart. Messages never carry server paths.
type tftpError struct {
	code uint16
	msg  string
}

func (e *tftpError) Error() string { return e.msg }

var (
	errNotFound     = &tftpError{1, "file not found"}
	errAccess       = &tftpError{2, "access violation"}
	errReadOnly     = &tftpError{2, "write requests are not supported: this TFTP server is read-only"}
	errBusy         = &tftpError{0, "server busy: too many transfers, try again later"}
	errOpen         = &tftpError{0, "cannot open file"}
	errRead         = &tftpError{0, "read error on server"}
	errShortFile    = &tftpError{0, "file changed on server during transfer"}
	errShuttingDown = &tftpError{0, "server shutting down"}
)

// serveRead runs one read request. A non-nil result is the error the engine
// must send the client; nil means the client has been answered.
func (s *Server) serveRead(ctx context.Context, req request, out outgoing) error {
	t := Transfer{Client: req.client, Local: req.local, File: req.name, Size: -1, Start: time.Now()}
	name, err := cleanName(req.name)
	if err != nil {
		s.finish(t, OutcomeRefused, err)
		return errAccess
	}
	t.File = name
	select {
	case s.slots <- struct{}{}:
	default:
		s.finish(t, OutcomeRefused, fmt.Errorf("%d transfers running (max_transfers): %w", cap(s.slots), errBusy))
		return errBusy
	}
	s.cfg.Metrics.activeAdd(1)
	defer func() {
		<-s.slots
		s.cfg.Metrics.activeAdd(-1)
	}()

	f, size, err := s.cfg.Source.Open(ctx, name, req.client.Addr())
	if err == nil && (f == nil || size < 0) {
		if f != nil {
			f.Close()
		}
		err = fmt.Errorf("source returned no file or a negative size (%d) without an error", size)
	}
	if err != nil {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			s.finish(t, OutcomeNotFound, err)
			return errNotFound
		case errors.Is(err, ErrInvalidName), errors.Is(err, fs.ErrPermission):
			s.finish(t, OutcomeRefused, err)
			return errAccess
		default:
			s.finish(t, OutcomeFailed, err)
			return errOpen
		}
	}
	defer f.Close()
	t.Size = size
	s.emit(t)

	_, osFile := f.(*os.File)
	r := &fileReader{ctx: ctx, sr: io.NewSectionReader(f, 0, size), size: size, osFile: osFile}
	var st sendStats
	st, err = out.send(r)
	t.Bytes, t.BlockSize, t.WindowSize, t.Retransmits = st.bytes, st.blockSize, st.windowSize, st.retransmits
	switch {
	case err == nil:
		s.finish(t, OutcomeOK, nil)
	case !r.started:
		// Failed before the first data block: the client ended the exchange
		// at the option acknowledgement (ERROR packet or silence).
		s.finish(t, OutcomeAbortedProbe, err)
	default:
		if r.err != nil {
			err = r.err // the server-side cause, not the message the client got
		}
		s.finish(t, OutcomeFailed, err)
	}
	return nil
}

// refuseWrite answers a write request.
func (s *Server) refuseWrite(req request) error {
	s.finish(Transfer{Client: req.client, Local: req.local, File: req.name, Write: true, Size: -1, Start: time.Now()}, OutcomeRefused, errReadOnly)
	return errReadOnly
}

// malformed records a packet that was not a well-formed request, or a
// packet during a transfer that was neither ACK nor ERROR.
func (s *Server) malformed(err error) {
	s.cfg.Metrics.malformedPacket()
	s.log.Debug("tftp malformed packet", "err", err)
}

func (s *Server) finish(t Transfer, o Outcome, err error) {
	t.Done, t.Outcome, t.Err = true, o, err
	t.Duration = time.Since(t.Start)
	s.cfg.Metrics.transferDone(o, t.Bytes, t.Retransmits)
	s.logTransfer(t)
	s.emit(t)
}

func (s *Server) emit(t Transfer) {
	if s.cfg.OnTransfer != nil {
		s.cfg.OnTransfer(t)
	}
}

func (s *Server) logTransfer(t Transfer) {
	attrs := []any{"client", t.Client.String(), "file", t.File}
	if t.Local.IsValid() {
		attrs = append(attrs, "server", t.Local.String())
	}
	switch t.Outcome {
	case OutcomeOK:
		secs := t.Duration.Seconds()
		mbps := 0.0
		if secs > 0 {
			mbps = math.Round(float64(t.Bytes)/secs/1e5) / 10 // MB/s, one decimal
		}
		s.log.Info("tftp transfer complete", append(attrs, "size", t.Size, "blksize", t.BlockSize, "windowsize", t.WindowSize,
			"retransmits", t.Retransmits, "duration", t.Duration.Round(time.Microsecond), "mb_per_s", mbps)...)
	case OutcomeNotFound:
		s.log.Info("tftp file not found", append(attrs, "err", t.Err)...)
	case OutcomeAbortedProbe:
		s.log.Debug("tftp client ended transfer after option negotiation (size probe)", append(attrs, "size", t.Size, "err", t.Err)...)
	case OutcomeRefused:
		if t.Write {
			attrs = append(attrs, "op", "write")
		}
		s.log.Warn("tftp request refused", append(attrs, "err", t.Err)...)
	default:
		s.log.Warn("tftp transfer failed", append(attrs, "size", t.Size, "sent", t.Bytes, "blksize", t.BlockSize,
			"windowsize", t.WindowSize, "retransmits", t.Retransmits, "duration", t.Duration.Round(time.Microsecond), "err", t.Err)...)
	}
}

// fileReader feeds one transfer exactly size bytes. It is seekable so
// pin/tftp can answer tsize, has ReadAt for the native engine, notes whether
// the data phase started (to tell a size probe from a failure), and hands
// the engine client-safe errors while keeping the real cause for the log.
// One transfer goroutine uses it.
type fileReader struct {
	ctx     context.Context
	sr      *io.SectionReader
	size    int64
	started bool
	err     error
	osFile  bool // reads are syscalls: worth reading ahead
}

func (r *fileReader) Read(p []byte) (int, error) {
	r.started = true
	if r.ctx.Err() != nil {
		r.err = errShuttingDown
		return 0, errShuttingDown
	}
	n, err := r.sr.Read(p)
	switch {
	case err == nil:
		return n, nil
	case errors.Is(err, io.EOF):
		if pos, _ := r.sr.Seek(0, io.SeekCurrent); pos < r.size {
			// Sending a short last block would end the transfer "successfully"
			// with fewer bytes than the tsize we announced.
			r.err = fmt.Errorf("file ended at %d of the %d bytes announced: it changed during the transfer", pos, r.size)
			return n, errShortFile
		}
		return n, io.EOF
	default:
		r.err = fmt.Errorf("read: %w", err)
		return n, errRead
	}
}

func (r *fileReader) Seek(offset int64, whence int) (int64, error) {
	return r.sr.Seek(offset, whence)
}

// ReadAt reads len(p) bytes at off; callers never read past size.
func (r *fileReader) ReadAt(p []byte, off int64) (int, error) {
	r.started = true
	if r.ctx.Err() != nil {
		r.err = errShuttingDown
		return 0, errShuttingDown
	}
	n, err := r.sr.ReadAt(p, off)
	switch {
	case n == len(p):
		return n, nil // a SectionReader may add io.EOF when p reaches the end
	case errors.Is(err, io.EOF):
		if end := off + int64(n); end < r.size {
			r.err = fmt.Errorf("file ended at %d of the %d bytes announced: it changed during the transfer", end, r.size)
			return n, errShortFile
		}
		return n, io.EOF
	default:
		if err == nil {
			err = io.ErrNoProgress // a ReaderAt must not return a short read without an error
		}
		r.err = fmt.Errorf("read: %w", err)
		return n, errRead
	}
}
