package tftpd

import (
	"bytes"
	"log/slog"
	"testing"
	"time"
)

// FuzzPacket sends arbitrary datagrams to a live server, each followed by a
// real read: whatever arrives, the server keeps serving files correctly.
func FuzzPacket(f *testing.F) {
	file := bytes.Repeat([]byte("0123456789abcdef"), 100)
	// Junk that is a valid request starts a transfer nobody acknowledges:
	// short timeouts and a high bound keep those from filling the slots,
	// which is the concurrency limit working, not what is fuzzed here. The
	// timeouts still leave a loaded host (fuzz workers, CI's VMs) 400 ms to
	// schedule the real client's ACK.
	// Logs are discarded: kept in memory over millions of inputs, the test
	// sink grew to hundreds of MB and its copies stalled the server.
	ts := startServer(f, Config{Source: Map{"f": file}, Timeout: 100 * time.Millisecond, Retries: 3, MaxTransfers: 1 << 16,
		Logger: slog.New(slog.DiscardHandler)}, "")
	for _, seed := range [][]byte{
		rq(opRRQ, "f", "octet", "blksize", "1468", "tsize", "0", "windowsize", "4"),
		rq(opRRQ, "../../etc/passwd", "octet"),
		rq(opWRQ, "f", "octet"),
		rq(opRRQ, "f", "netascii", "blksize", "abc"),
		ackPacket(1), errorPacket(8, "aborted"), {0, 1, 'f'}, {0, 9}, {},
	} {
		f.Add(seed)
	}
	// One junk socket for the whole run: transfers the junk started keep
	// sending (OACK, DATA) to its port, and a fresh socket per input could
	// be given that port and take them for its own.
	junk := newRawClient(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		junk.t = t
		junk.send(ts.addr, b)
		c := newRawClient(t)
		_, got := c.get(ts.addr, "f", "blksize", "512")
		if !bytes.Equal(got, file) {
			t.Fatalf("after %x the server served %d wrong bytes", b, len(got))
		}
	})
}
