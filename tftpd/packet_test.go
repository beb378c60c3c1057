package tftpd

import (
	"bytes"
	"encoding/binary"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseRequest(t *testing.T) {
	for _, tc := range []struct {
		pkt    []byte
		want   wireRequest
		answer int // -1 well-formed, 0 malformed without an answer, else the error code
	}{
		{rq(opRRQ, "f", "octet"), wireRequest{name: "f", mode: "octet"}, -1},
		{rq(opRRQ, "/grub/grub.cfg", "OCTET"), wireRequest{name: "/grub/grub.cfg", mode: "octet"}, -1},
		{rq(opRRQ, "f", "NetASCII"), wireRequest{name: "f", mode: "netascii"}, -1},
		{rq(opWRQ, "up", "octet"), wireRequest{write: true, name: "up", mode: "octet"}, -1},
		{rq(opRRQ, "", "octet"), wireRequest{name: "", mode: "octet"}, -1}, // the policy refuses the name
		{rq(opRRQ, "f", "octet", "tsize", "0", "blksize", "1468", "windowsize", "4"), // EDK2
			wireRequest{name: "f", mode: "octet", opts: reqOptions{blksize: 1468, windowsize: 4, tsize: true}}, -1},
		{rq(opRRQ, "f", "octet", "BlkSize", "00512", "TIMEOUT", "255", "TSize", "enable"),
			wireRequest{name: "f", mode: "octet", opts: reqOptions{blksize: 512, timeout: 255, tsize: true}}, -1},
		{rq(opRRQ, "f", "octet", "blksize", "8", "windowsize", "65536"),
			wireRequest{name: "f", mode: "octet", opts: reqOptions{blksize: 8, windowsize: 65536}}, -1},
		{rq(opRRQ, "f", "octet", "blksize", "99999999999999999999999"),
			wireRequest{name: "f", mode: "octet", opts: reqOptions{blksize: ^uint64(0)}}, -1},
		{rq(opRRQ, "f", "octet", "multicast", "", "utimeout", "x", "", ""), wireRequest{name: "f", mode: "octet"}, -1},
		{append(rq(opRRQ, "f", "octet", "tsize", "0"), 0), wireRequest{name: "f", mode: "octet", opts: reqOptions{tsize: true}}, -1},

		{nil, wireRequest{}, 0},
		{[]byte{0}, wireRequest{}, 0},
		{errorPacket(1, "x"), wireRequest{}, 0},
		{[]byte{0, opERROR}, wireRequest{}, 0},
		{ackPacket(0), wireRequest{}, 4},
		{[]byte{0, opDATA, 0, 1}, wireRequest{}, 4},
		{[]byte{0, opOACK}, wireRequest{}, 4},
		{[]byte{0, 0}, wireRequest{}, 4},
		{[]byte{0, 7, 'f', 0, 'o', 0}, wireRequest{}, 4},
		{[]byte{0, opRRQ}, wireRequest{}, 4},
		{[]byte("\x00\x01f\x00"), wireRequest{}, 4},
		{[]byte("\x00\x01f\x00octet"), wireRequest{}, 4},
		{[]byte("\x00\x01f\x00octet\x00blksize\x00512"), wireRequest{}, 4},
		{rq(opRRQ, "f", "mail"), wireRequest{}, 4},
		{rq(opRRQ, "f", ""), wireRequest{}, 4},
		{rq(opRRQ, "f", "octet", "blksize", "7"), wireRequest{}, 8},
		{rq(opRRQ, "f", "octet", "blksize", "+512"), wireRequest{}, 8},
		{rq(opRRQ, "f", "octet", "blksize", " 512"), wireRequest{}, 8},
		{rq(opRRQ, "f", "octet", "blksize", "0x200"), wireRequest{}, 8},
		{rq(opRRQ, "f", "octet", "windowsize", "0"), wireRequest{}, 8},
		{rq(opRRQ, "f", "octet", "timeout", "256"), wireRequest{}, 8},
		{rq(opRRQ, "f", "octet", "timeout", "0"), wireRequest{}, 8},
		{rq(opRRQ, "f", "octet", "tsize", "0", "TSIZE", "0"), wireRequest{}, 8},
		{rq(opRRQ, "f", "octet", "blksize"), wireRequest{}, 8},
	} {
		got, reason, reply := parseRequest(tc.pkt)
		switch {
		case tc.answer == -1 && (reason != "" || reply != nil):
			t.Errorf("%q: malformed (%s), want %+v", tc.pkt, reason, tc.want)
		case tc.answer == -1 && got != tc.want:
			t.Errorf("%q: got %+v, want %+v", tc.pkt, got, tc.want)
		case tc.answer >= 0 && reason == "":
			t.Errorf("%q: accepted as %+v, want malformed", tc.pkt, got)
		case tc.answer == 0 && reply != nil:
			t.Errorf("%q: answered %v, want no answer", tc.pkt, reply)
		case tc.answer > 0 && (reply == nil || int(reply.code) != tc.answer):
			t.Errorf("%q: answer %v, want code %d", tc.pkt, reply, tc.answer)
		}
	}
}

func TestNegotiate(t *testing.T) {
	lim := limits{maxBlockSize: 1468, maxWindowSize: 64, timeout: 3 * time.Second}
	for _, tc := range []struct {
		o      reqOptions
		mode   string
		size   int64
		window int
		blk    int
		oack   string // options in the OACK, NULs as spaces
	}{
		{reqOptions{}, "octet", 10, 1, 512, ""},
		{reqOptions{tsize: true}, "octet", 0, 1, 512, "tsize 0 "},
		{reqOptions{tsize: true}, "netascii", 7, 1, 512, ""}, // tsize is octet only
		{reqOptions{blksize: 9000, windowsize: 1000, tsize: true}, "octet", 5, 64, 1468, "blksize 1468 windowsize 64 tsize 5 "},
		{reqOptions{blksize: 8, windowsize: 1, timeout: 1}, "octet", 5, 1, 8, "blksize 8 windowsize 1 timeout 1 "},
		{reqOptions{blksize: ^uint64(0)}, "octet", 5, 1, 1468, "blksize 1468 "},
	} {
		n := negotiate(tc.o, tc.mode, tc.size, lim)
		oack := ""
		if n.oack != nil {
			if binary.BigEndian.Uint16(n.oack) != opOACK {
				t.Errorf("%+v: OACK opcode %x", tc.o, n.oack[:2])
			}
			oack = strings.ReplaceAll(string(n.oack[2:]), "\x00", " ")
		}
		wantTimeout := lim.timeout
		if tc.o.timeout != 0 {
			wantTimeout = time.Duration(tc.o.timeout) * time.Second
		}
		if n.windowSize != tc.window || n.blockSize != tc.blk || oack != tc.oack || n.timeout != wantTimeout {
			t.Errorf("%+v %s: got window %d blk %d timeout %v OACK %q, want %d %d %v %q",
				tc.o, tc.mode, n.windowSize, n.blockSize, n.timeout, oack, tc.window, tc.blk, wantTimeout, tc.oack)
		}
	}
}

// FuzzParseRequest checks the request parser and option negotiation alone
// (pure functions, fast): no panic, a well-formed request survives being
// encoded again, negotiated values stay within the limits and the client's
// asks, and the OACK carries only what was asked.
func FuzzParseRequest(f *testing.F) {
	for _, seed := range [][]byte{
		rq(opRRQ, "f", "octet", "tsize", "0", "blksize", "1468", "windowsize", "4"),
		rq(opRRQ, "f", "netascii", "timeout", "5", "blksize", "8"),
		rq(opWRQ, "f", "octet", "blksize", "abc"),
		rq(opRRQ, "f", "octet", "windowsize", "65536", "", ""),
		rq(opRRQ, "f", "octet", "blksize"),
		[]byte("\x00\x01f\x00octet\x00blk"),
		ackPacket(3), errorPacket(1, "x"), {0, 9}, {},
	} {
		f.Add(seed, uint16(1468), uint16(64))
	}
	f.Fuzz(func(t *testing.T, b []byte, maxBlk, maxWin uint16) {
		req, reason, reply := parseRequest(b)
		if reason != "" {
			if reply != nil && reply.code != 4 && reply.code != 8 {
				t.Fatalf("%q: answer code %d", b, reply.code)
			}
			if wantAnswer := len(b) >= 2 && binary.BigEndian.Uint16(b) != opERROR; wantAnswer != (reply != nil) {
				t.Fatalf("%q: answer %v", b, reply)
			}
			return
		}
		if reply != nil {
			t.Fatalf("%q: well-formed with an answer %v", b, reply)
		}
		o := req.opts
		if strings.IndexByte(req.name, 0) >= 0 || (req.mode != "octet" && req.mode != "netascii") ||
			(o.blksize != 0 && o.blksize < MinBlockSize) || o.timeout < 0 || o.timeout > 255 {
			t.Fatalf("%q: parsed %+v", b, req)
		}
		// Encoded again, with canonical option spellings, it parses the same.
		op := uint16(opRRQ)
		if req.write {
			op = opWRQ
		}
		var opts []string
		for _, kv := range []struct {
			name string
			v    uint64
		}{{"blksize", o.blksize}, {"windowsize", o.windowsize}, {"timeout", uint64(o.timeout)}} {
			if kv.v != 0 {
				opts = append(opts, kv.name, strconv.FormatUint(kv.v, 10))
			}
		}
		if o.tsize {
			opts = append(opts, "tsize", "0")
		}
		if again, reason, _ := parseRequest(rq(op, req.name, req.mode, opts...)); reason != "" || again != req {
			t.Fatalf("%q: parsed %+v, encoded again %+v (%s)", b, req, again, reason)
		}

		lim := limits{
			maxBlockSize:  int(max(maxBlk, MinBlockSize)),
			maxWindowSize: int(max(maxWin, 1)),
			timeout:       time.Second,
		}
		size := int64(len(b)) * 1000
		n := negotiate(o, req.mode, size, lim)
		if n.blockSize < MinBlockSize || n.blockSize > max(lim.maxBlockSize, defaultBlockSize) ||
			n.windowSize < 1 || n.windowSize > lim.maxWindowSize ||
			(o.blksize != 0 && uint64(n.blockSize) > o.blksize) || (o.windowsize != 0 && uint64(n.windowSize) > o.windowsize) {
			t.Fatalf("%+v with %+v: negotiated %+v", o, lim, n)
		}
		if n.oack == nil {
			if n.blockSize != defaultBlockSize || n.windowSize != 1 || o.blksize != 0 || o.windowsize != 0 || o.timeout != 0 {
				t.Fatalf("%+v: no OACK but %+v", o, n)
			}
			return
		}
		fields := bytes.Split(bytes.TrimSuffix(n.oack[2:], []byte{0}), []byte{0})
		if binary.BigEndian.Uint16(n.oack) != opOACK || len(fields)%2 != 0 {
			t.Fatalf("OACK %q", n.oack)
		}
		for i := 0; i < len(fields); i += 2 {
			v, err := strconv.ParseUint(string(fields[i+1]), 10, 64)
			if err != nil {
				t.Fatalf("OACK %q: %v", n.oack, err)
			}
			switch name := string(fields[i]); {
			case name == "blksize" && o.blksize != 0 && v == uint64(n.blockSize):
			case name == "windowsize" && o.windowsize != 0 && v == uint64(n.windowSize):
			case name == "timeout" && v == uint64(o.timeout) && n.timeout == time.Duration(v)*time.Second:
			case name == "tsize" && o.tsize && req.mode == "octet" && v == uint64(size):
			default:
				t.Fatalf("OACK %q for %+v", n.oack, o)
			}
		}
	})
}
