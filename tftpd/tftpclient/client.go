// Package tftpclient is a small read-only TFTP client for bootserve's tests
// and benchmarks. It speaks RFC 1350 with the options of RFC 2347/2348/2349
// and, unlike pin/tftp's client, tftp-hpa and curl, RFC 7440 windows, the
// way firmware does: it acknowledges the last block of each window, and on
// a gap (a lost block) acknowledges the last block received in order so the
// server resends from there.
//
// It is written apart from the server's engine (it shares no code with
// package tftpd) so that tests of one check the other.
package tftpclient

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// Options configures one download. The zero value asks for no options:
// plain RFC 1350, 512-byte blocks, one block at a time.
type Options struct {
	BlockSize  int  // blksize to ask for; 0 asks none
	WindowSize int  // windowsize to ask for; 0 asks none
	TSize      bool // ask for the file size
	// ServerTimeout is the timeout option (seconds) to ask for; 0 asks none.
	ServerTimeout int
	// Mode is "octet" (default) or "netascii" (data is returned as sent).
	Mode string
	// Timeout is how long this client waits for a packet before sending
	// its last packet again; Retries how often it does so in a row before
	// giving up. Defaults 1 s and 5.
	Timeout time.Duration
	Retries int
	// SizeOnly asks for tsize and stops at the OACK, aborting the
	// transfer with an ERROR, as EDK2's size probe does; Result.TSize is
	// the answer (an OACK without tsize, or DATA, is an error).
	SizeOnly bool
	// Conn, if set, is the socket to use (e.g. one opened inside a network
	// namespace); it is not closed. Otherwise Get opens one with a 4 MB
	// receive buffer (or the system's maximum), so that whole windows fit
	// even when this process is slow to read.
	Conn *net.UDPConn
}

// Result describes a finished download.
type Result struct {
	Bytes int64
	// OACK holds the options the server acknowledged (names lower-cased),
	// nil if it answered the request with DATA.
	OACK       map[string]string
	BlockSize  int
	WindowSize int
	TSize      int64 // from the OACK, -1 if absent
	// Reacks counts ACKs this client sent again: after a timeout, or on a
	// block out of order (a block was lost, or the server resent).
	Reacks int
	// Rerequests counts requests sent again because no answer came (a
	// server at its transfer limit stays silent).
	Rerequests int
}

// ServerError is an ERROR packet from the server.
type ServerError struct {
	Code uint16
	Msg  string
}

func (e *ServerError) Error() string { return fmt.Sprintf("TFTP error %d: %s", e.Code, e.Msg) }

const (
	opRRQ   = 1
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6
)

// Get downloads name from server into w.
func Get(ctx context.Context, server netip.AddrPort, name string, w io.Writer, o Options) (Result, error) {
	if o.Mode == "" {
		o.Mode = "octet"
	}
	if o.Timeout == 0 {
		o.Timeout = time.Second
	}
	if o.Retries == 0 {
		o.Retries = 5
	}
	conn := o.Conn
	if conn == nil {
		var err error
		conn, err = net.ListenUDP("udp", nil)
		if err != nil {
			return Result{}, err
		}
		defer conn.Close()
		conn.SetReadBuffer(4 << 20)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
	defer stop()
	defer conn.SetReadDeadline(time.Time{})

	req := binary.BigEndian.AppendUint16(nil, opRRQ)
	add := func(s string) { req = append(append(req, s...), 0) }
	add(name)
	add(o.Mode)
	asked := map[string]int{}
	for _, opt := range []struct {
		name string
		v    int
	}{{"blksize", o.BlockSize}, {"windowsize", o.WindowSize}, {"timeout", o.ServerTimeout}} {
		if opt.v > 0 {
			add(opt.name)
			add(strconv.Itoa(opt.v))
			asked[opt.name] = opt.v
		}
	}
	if o.SizeOnly {
		o.TSize = true
	}
	if o.TSize {
		add("tsize")
		add("0")
	}

	c := &client{conn: conn, server: server, timeout: o.Timeout, buf: make([]byte, 65536)}
	res := Result{BlockSize: 512, WindowSize: 1, TSize: -1}
	last := req // what a timeout resends
	if err := c.send(req, server); err != nil {
		return res, err
	}
	var (
		expect  uint64 = 1 // next block wanted
		inWin   int        // blocks received in order since the last ACK
		gapAck  bool       // a gap ACK was sent since the last block in order
		tries   int
		started bool // a reply came: the transfer ID is fixed
	)
	for {
		p, from, err := c.recv(ctx)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if tries++; tries > o.Retries {
				return res, fmt.Errorf("no answer from %s after %d tries %s apart (block %d)", server, tries, o.Timeout, expect)
			}
			if started {
				res.Reacks++
				inWin = 0
			} else {
				res.Rerequests++
			}
			if err := c.send(last, c.peer(server, started)); err != nil {
				return res, err
			}
			continue
		}
		if err != nil {
			return res, err
		}
		if !started {
			if from.Addr() != server.Addr() {
				continue // not from the server we asked
			}
			c.tid = from
		} else if from != c.tid {
			c.send(errPacket(5, "unknown transfer ID"), from)
			continue
		}
		if len(p) < 4 {
			return res, fmt.Errorf("%d-byte packet from the server", len(p))
		}
		op, blk := binary.BigEndian.Uint16(p), binary.BigEndian.Uint16(p[2:])
		switch {
		case op == opERROR:
			msg, _, _ := bytes.Cut(p[4:], []byte{0})
			return res, &ServerError{Code: blk, Msg: string(msg)}
		case op == opOACK && !started:
			started = true
			if err := res.parseOACK(p[2:], asked, o.TSize); err != nil {
				c.send(errPacket(8, err.Error()), c.tid)
				return res, err
			}
			if o.SizeOnly {
				c.send(errPacket(0, "size probe done"), c.tid)
				if res.TSize < 0 {
					return res, errors.New("the server's OACK has no tsize")
				}
				return res, nil
			}
			last = ack(0)
			if err := c.send(last, c.tid); err != nil {
				return res, err
			}
		case op == opOACK && expect == 1:
			// The server did not get our ACK of its OACK and sent it again.
			res.Reacks++
			if err := c.send(ack(0), c.tid); err != nil {
				return res, err
			}
		case op == opDATA && o.SizeOnly:
			return res, errors.New("the server ignored the tsize option: it sent DATA, not an OACK")
		case op == opDATA:
			started = true
			data := p[4:]
			if len(data) > res.BlockSize {
				return res, fmt.Errorf("DATA %d carries %d bytes, block size is %d", blk, len(data), res.BlockSize)
			}
			if blk != uint16(expect) {
				// Out of order: a block was lost, or the server resent a
				// window whose ACK it did not get. Say once where we are.
				if !gapAck {
					gapAck, inWin = true, 0
					res.Reacks++
					last = ack(uint16(expect - 1))
					if err := c.send(last, c.tid); err != nil {
						return res, err
					}
				}
				continue
			}
			tries, gapAck = 0, false
			if _, err := w.Write(data); err != nil {
				return res, err
			}
			res.Bytes += int64(len(data))
			expect++
			inWin++
			final := len(data) < res.BlockSize
			if final || inWin == res.WindowSize {
				inWin = 0
				last = ack(blk)
				if err := c.send(last, c.tid); err != nil {
					return res, err
				}
			}
			if final {
				if res.TSize >= 0 && res.TSize != res.Bytes && o.Mode == "octet" {
					return res, fmt.Errorf("got %d bytes, the OACK announced tsize %d", res.Bytes, res.TSize)
				}
				return res, nil
			}
		default:
			return res, fmt.Errorf("unexpected opcode %d from the server", op)
		}
	}
}

// parseOACK checks the acknowledged options against what was asked.
func (r *Result) parseOACK(b []byte, asked map[string]int, tsize bool) error {
	r.OACK = map[string]string{}
	f := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	if len(f)%2 != 0 {
		return fmt.Errorf("OACK with an option without a value: %q", b)
	}
	for i := 0; i < len(f); i += 2 {
		name, v := strings.ToLower(f[i]), f[i+1]
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("OACK %s=%q is not a number", name, v)
		}
		r.OACK[name] = v
		switch name {
		case "blksize", "windowsize", "timeout":
			want, ok := asked[name]
			if !ok || n < 1 || n > int64(want) || (name == "timeout" && n != int64(want)) {
				return fmt.Errorf("OACK %s=%d, asked %d", name, n, want)
			}
			switch name {
			case "blksize":
				r.BlockSize = int(n)
			case "windowsize":
				r.WindowSize = int(n)
			}
		case "tsize":
			if !tsize {
				return errors.New("OACK has tsize, which was not asked")
			}
			r.TSize = n
		default:
			return fmt.Errorf("OACK has option %q, which was not asked", name)
		}
	}
	return nil
}

type client struct {
	conn    *net.UDPConn
	server  netip.AddrPort
	tid     netip.AddrPort
	timeout time.Duration
	buf     []byte
}

func (c *client) peer(server netip.AddrPort, started bool) netip.AddrPort {
	if started {
		return c.tid
	}
	return server
}

func (c *client) send(b []byte, to netip.AddrPort) error {
	_, err := c.conn.WriteToUDPAddrPort(b, to)
	return err
}

func (c *client) recv(ctx context.Context) ([]byte, netip.AddrPort, error) {
	c.conn.SetReadDeadline(time.Now().Add(c.timeout))
	if err := ctx.Err(); err != nil {
		return nil, netip.AddrPort{}, err
	}
	n, from, err := c.conn.ReadFromUDPAddrPort(c.buf)
	if err != nil {
		if ctx.Err() != nil {
			return nil, from, ctx.Err()
		}
		return nil, from, err
	}
	return c.buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), nil
}

func ack(blk uint16) []byte {
	return binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, opACK), blk)
}

func errPacket(code uint16, msg string) []byte {
	b := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, opERROR), code)
	return append(append(b, msg...), 0)
}
