package tftpd

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// TFTP opcodes (RFC 1350, RFC 2347).
const (
	opRRQ   = 1
	opWRQ   = 2
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6
)

// Limits of the negotiated options.
const (
	// MinBlockSize and MaxBlockSizeLimit bound blksize (RFC 2348).
	MinBlockSize      = 8
	MaxBlockSizeLimit = 65464
	// MaxWindowSizeLimit is the largest windowsize RFC 7440 allows.
	MaxWindowSizeLimit = 65535
	// defaultBlockSize is RFC 1350's block size, used when blksize is not negotiated.
	defaultBlockSize = 512
	// maxRequest bounds what is read of a request: a UDP payload, so a long
	// request with many options is never cut.
	maxRequest = 65535
)

// Errors the engine answers to malformed packets on the server port, and
// option refusals.
var (
	errIllegalOp = &tftpError{4, "illegal TFTP operation"}
	errBadOption = &tftpError{8, "option refused"}
	errBadTID    = &tftpError{5, "unknown transfer ID"}
)

// wireRequest is an RRQ or WRQ as parsed from the wire.
type wireRequest struct {
	write bool
	name  string // as sent, not yet checked (the policy does that)
	mode  string // "octet" or "netascii"
	opts  reqOptions
}

// reqOptions are the options of a request the server understands; zero
// values mean "not asked".
type reqOptions struct {
	blksize    uint64 // 0, or >= MinBlockSize (may exceed any limit: capped in negotiate)
	windowsize uint64 // 0, or >= 1
	timeout    int    // 0, or 1..255 seconds
	tsize      bool
}

// parseRequest parses a datagram sent to the server port. A nil error means
// a well-formed read or write request. Otherwise the packet is malformed:
// reason says why (for the log), and reply is the error to answer with, nil
// when no answer is due (an ERROR packet, which is never answered, or a
// datagram too short to carry an opcode).
func parseRequest(b []byte) (req wireRequest, reason string, reply *tftpError) {
	if len(b) < 2 {
		return req, fmt.Sprintf("%d-byte datagram", len(b)), nil
	}
	switch op := binary.BigEndian.Uint16(b); op {
	case opRRQ, opWRQ:
		req.write = op == opWRQ
	case opERROR:
		return req, "ERROR packet sent to the server port", nil
	case opDATA, opACK, opOACK:
		return req, fmt.Sprintf("opcode %d sent to the server port", op), errIllegalOp
	default:
		return req, fmt.Sprintf("unknown opcode %d", op), errIllegalOp
	}
	fields, rest := splitStrings(b[2:])
	if len(fields) < 2 {
		return req, "request without a NUL-terminated file name and mode", errIllegalOp
	}
	if len(rest) > 0 {
		return req, "request ends with a string that lacks its NUL", errIllegalOp
	}
	req.name = fields[0]
	req.mode = strings.ToLower(fields[1])
	if req.mode != "octet" && req.mode != "netascii" {
		return req, fmt.Sprintf("unsupported mode %.20q", fields[1]), errIllegalOp
	}
	opts := fields[2:]
	if len(opts)%2 == 1 {
		// Some clients pad requests with NUL bytes: a last empty string is
		// padding (and pairs of them empty options, ignored below).
		if last := opts[len(opts)-1]; last != "" {
			return req, fmt.Sprintf("option %.20q without a value", last), errBadOption
		}
		opts = opts[:len(opts)-1]
	}
	seen := map[string]bool{}
	for i := 0; i < len(opts); i += 2 {
		name, value := strings.ToLower(opts[i]), opts[i+1]
		switch name {
		case "blksize", "windowsize", "timeout", "tsize":
		default:
			continue // RFC 2347: options the server does not know are ignored
		}
		if seen[name] {
			return req, "option " + name + " given twice", errBadOption
		}
		seen[name] = true
		if name == "tsize" {
			// Its value in a read request carries nothing (RFC 2349 says
			// 0; atftp sends "enable"), so it is not checked.
			req.opts.tsize = true
			continue
		}
		n, ok := parseDecimal(value)
		switch {
		case !ok:
			return req, fmt.Sprintf("option %s=%.20q is not a number", name, value), errBadOption
		case name == "blksize" && n < MinBlockSize:
			return req, fmt.Sprintf("blksize %d below %d", n, MinBlockSize), errBadOption
		case name == "windowsize" && n < 1:
			return req, "windowsize 0", errBadOption
		case name == "timeout" && (n < 1 || n > 255):
			return req, fmt.Sprintf("timeout %d outside 1..255", n), errBadOption
		}
		switch name {
		case "blksize":
			req.opts.blksize = n
		case "windowsize":
			req.opts.windowsize = n
		case "timeout":
			req.opts.timeout = int(n)
		}
	}
	return req, "", nil
}

// splitStrings splits NUL-terminated strings; rest is what follows the last NUL.
func splitStrings(b []byte) (fields []string, rest []byte) {
	for {
		i := bytes.IndexByte(b, 0)
		if i < 0 {
			return fields, b
		}
		fields = append(fields, string(b[:i]))
		b = b[i+1:]
	}
}

// parseDecimal parses an unsigned decimal number; values too large for
// uint64 saturate (they are capped by negotiation anyway).
func parseDecimal(s string) (uint64, bool) {
	if s == "" {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return ^uint64(0), true // only ErrRange is possible here
	}
	return n, true
}

// limits are the server's side of option negotiation.
type limits struct {
	maxBlockSize  int
	maxWindowSize int
	timeout       time.Duration // when the client does not negotiate one
}

// negotiated is the outcome of option negotiation for one read transfer.
type negotiated struct {
	blockSize  int
	windowSize int
	timeout    time.Duration
	oack       []byte // the OACK packet, nil when no option was accepted
}

// negotiate decides the transfer parameters for a read request of a file of
// size bytes. tsize is answered in octet mode only: in netascii mode the
// bytes on the wire differ from the file size.
func negotiate(o reqOptions, mode string, size int64, l limits) negotiated {
	n := negotiated{blockSize: defaultBlockSize, windowSize: 1, timeout: l.timeout}
	var oack []byte
	add := func(name string, v uint64) {
		oack = append(append(oack, name...), 0)
		oack = append(strconv.AppendUint(oack, v, 10), 0)
	}
	if o.blksize != 0 {
		n.blockSize = int(min(o.blksize, uint64(l.maxBlockSize)))
		add("blksize", uint64(n.blockSize))
	}
	if o.windowsize != 0 {
		n.windowSize = int(min(o.windowsize, uint64(l.maxWindowSize)))
		add("windowsize", uint64(n.windowSize))
	}
	if o.timeout != 0 {
		n.timeout = time.Duration(o.timeout) * time.Second
		add("timeout", uint64(o.timeout))
	}
	if o.tsize && mode == "octet" {
		add("tsize", uint64(size))
	}
	if oack != nil {
		n.oack = append([]byte{0, opOACK}, oack...)
	}
	return n
}

// encodeError encodes an ERROR packet.
func encodeError(e *tftpError) []byte {
	b := binary.BigEndian.AppendUint16(nil, opERROR)
	b = binary.BigEndian.AppendUint16(b, e.code)
	return append(append(b, e.msg...), 0)
}
