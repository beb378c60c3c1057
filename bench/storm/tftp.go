package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
)

// EDK2's MTFTP as its PXE driver uses it (PxeBcTftpGetFileSize, then
// PxeBcTftpReadFile): every packet waits 4 s for an answer and is sent at
// most 6 times; blksize 1468 and windowsize 4 are asked for; the first
// request only learns the size (tsize=0) and is aborted once the OACK comes.
const (
	edk2TFTPTimeout   = 4 * time.Second
	edk2TFTPTries     = 6
	edk2TFTPBlockSize = 1468
	edk2TFTPWindow    = 4
)

const (
	opRRQ   = 1
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6
)

// tftpServerError is a TFTP ERROR packet from the server. Firmware ends the
// boot attempt on one, so the generator does too.
type tftpServerError struct {
	code uint16
	msg  string
}

func (e *tftpServerError) Error() string {
	return fmt.Sprintf("server sent TFTP error %d %q", e.code, e.msg)
}

// tftpStats is what one read tells about the server.
type tftpStats struct {
	bytes       int64
	size        int64 // tsize from the OACK, -1 if none
	retransmits int   // requests and ACKs sent again after a timeout
}

// tftpGet reads name from the server port 69 the way EDK2 does, from the
// client's address. With probe it stops after the OACK and returns the size.
func tftpGet(ctx context.Context, local, server net.IP, name string, probe bool) (tftpStats, error) {
	st := tftpStats{size: -1}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: local})
	if err != nil {
		return st, fmt.Errorf("bind %s: %w", local, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
	defer stop()

	opts := [][2]string{{"blksize", strconv.Itoa(edk2TFTPBlockSize)}, {"windowsize", strconv.Itoa(edk2TFTPWindow)}}
	if probe {
		opts = append([][2]string{{"tsize", "0"}}, opts...)
	}
	rrq := binary.BigEndian.AppendUint16(nil, opRRQ)
	rrq = append(append(rrq, name...), 0)
	rrq = append(rrq, "octet\x00"...)
	for _, o := range opts {
		rrq = append(append(append(append(rrq, o[0]...), 0), o[1]...), 0)
	}

	// Until the first answer, packets go to port 69; then to the transfer's port (its TID).
	dst := &net.UDPAddr{IP: server, Port: 69}
	last := rrq // what a timeout sends again
	blockSize, window := 512, 1
	var expect uint16 = 1 // next DATA block
	inWindow := 0         // blocks received since the last ACK
	started := false
	buf := make([]byte, 65536)
	tries := 0
	send := func(p []byte) error {
		last = p
		_, err := conn.WriteToUDP(p, dst)
		return err
	}
	if err := send(rrq); err != nil {
		return st, fmt.Errorf("send RRQ: %w", err)
	}
	for {
		conn.SetReadDeadline(time.Now().Add(edk2TFTPTimeout))
		n, from, err := conn.ReadFromUDP(buf)
		if err != nil {
			if ctx.Err() != nil {
				return st, ctx.Err()
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				return st, err
			}
			tries++
			if tries >= edk2TFTPTries {
				return st, fmt.Errorf("no answer from the server after %d tries of %s (%d bytes so far)", tries, edk2TFTPTimeout, st.bytes)
			}
			st.retransmits++
			if _, err := conn.WriteToUDP(last, dst); err != nil {
				return st, err
			}
			continue
		}
		if !from.IP.Equal(server) || (started && from.Port != dst.Port) || n < 4 {
			continue // not our transfer
		}
		if !started {
			started = true
			dst = &net.UDPAddr{IP: server, Port: from.Port}
		}
		p := buf[:n]
		op, arg := binary.BigEndian.Uint16(p), binary.BigEndian.Uint16(p[2:])
		switch op {
		case opERROR:
			return st, &tftpServerError{code: arg, msg: cString(p[4:])}
		case opOACK:
			if expect != 1 || inWindow != 0 {
				continue // a late duplicate
			}
			tries = 0
			o := parseOptions(p[2:])
			if v, err := strconv.Atoi(o["blksize"]); err == nil {
				blockSize = v
			}
			if v, err := strconv.Atoi(o["windowsize"]); err == nil {
				window = v
			}
			if v, err := strconv.ParseInt(o["tsize"], 10, 64); err == nil {
				st.size = v
			}
			if probe {
				// EDK2 aborts the size probe with an ERROR once it has the size.
				abort := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, opERROR), 0)
				_, _ = conn.WriteToUDP(append(abort, "size probe done\x00"...), dst)
				if st.size < 0 {
					return st, errors.New("server sent no tsize in its OACK")
				}
				return st, nil
			}
			if err := send(ack(0)); err != nil {
				return st, err
			}
		case opDATA:
			if probe {
				return st, errors.New("server ignored the tsize option: sent DATA instead of an OACK")
			}
			if arg != expect {
				// Out of order (a window lost a block): ask for the rest again
				// from the last block in order; late duplicates are ignored.
				if int16(arg-expect) > 0 {
					if err := send(ack(expect - 1)); err != nil {
						return st, err
					}
					inWindow = 0
				}
				continue
			}
			tries = 0
			data := len(p) - 4
			st.bytes += int64(data)
			inWindow++
			if data < blockSize {
				_ = send(ack(arg))
				if st.size >= 0 && st.size != st.bytes {
					return st, fmt.Errorf("got %d bytes, tsize said %d", st.bytes, st.size)
				}
				return st, nil
			}
			expect++
			if inWindow >= window {
				inWindow = 0
				if err := send(ack(arg)); err != nil {
					return st, err
				}
			}
		}
	}
}

func ack(block uint16) []byte {
	return binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, opACK), block)
}

// parseOptions reads an OACK's NUL-separated name/value pairs.
func parseOptions(b []byte) map[string]string {
	out := map[string]string{}
	var fields []string
	for len(b) > 0 {
		i := 0
		for i < len(b) && b[i] != 0 {
			i++
		}
		fields = append(fields, string(b[:i]))
		if i == len(b) {
			break
		}
		b = b[i+1:]
	}
	for i := 0; i+1 < len(fields); i += 2 {
		out[fields[i]] = fields[i+1]
	}
	return out
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
