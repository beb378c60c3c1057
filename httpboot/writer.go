package httpboot

import (
	"io"
	"net/http"
	"os"
	"time"
)

// chunk is how much is sent between two write-deadline extensions and two
// progress reports.
const chunk = 1 << 20

// trackingWriter wraps a ResponseWriter to count bytes and status for the
// access log and metrics, to turn the write timeout into an idle timeout
// (a slow client that keeps reading is not cut off mid-initrd; a stuck one
// is), and to report progress. It implements io.ReaderFrom without losing
// sendfile: copies from a file are passed on in chunks that keep the
// *io.LimitedReader{*os.File} shape the kernel fast path needs.
type trackingWriter struct {
	http.ResponseWriter
	rc       *http.ResponseController
	idle     time.Duration
	status   int
	bytes    int64
	route    string // set by the handler, for metrics and the access log
	progress func(sent int64)
	lastProg time.Time
}

func newTrackingWriter(w http.ResponseWriter, idle time.Duration) *trackingWriter {
	return &trackingWriter{ResponseWriter: w, rc: http.NewResponseController(w), idle: idle, route: "other"}
}

func (t *trackingWriter) WriteHeader(code int) {
	if t.status == 0 {
		t.status = code
	}
	t.ResponseWriter.WriteHeader(code)
}

func (t *trackingWriter) bump() {
	if t.idle > 0 {
		_ = t.rc.SetWriteDeadline(time.Now().Add(t.idle))
	}
}

func (t *trackingWriter) report(force bool) {
	if t.progress == nil {
		return
	}
	if now := time.Now(); force || now.Sub(t.lastProg) >= 250*time.Millisecond {
		t.lastProg = now
		t.progress(t.bytes)
	}
}

func (t *trackingWriter) Write(p []byte) (int, error) {
	if t.status == 0 {
		t.status = http.StatusOK
	}
	var total int
	for len(p) > 0 {
		t.bump()
		n, err := t.ResponseWriter.Write(p[:min(len(p), chunk)])
		total += n
		t.bytes += int64(n)
		p = p[n:]
		if err != nil {
			return total, err
		}
		t.report(false)
	}
	return total, nil
}

func (t *trackingWriter) ReadFrom(r io.Reader) (int64, error) {
	if t.status == 0 {
		t.status = http.StatusOK
	}
	rf, ok := t.ResponseWriter.(io.ReaderFrom)
	lr, isLR := r.(*io.LimitedReader)
	var f *os.File
	if isLR {
		f, _ = lr.R.(*os.File)
	}
	if !ok || f == nil {
		return io.Copy(writerOnly{t}, r)
	}
	var total int64
	for lr.N > 0 {
		t.bump()
		part := &io.LimitedReader{R: f, N: min(lr.N, chunk)}
		want := part.N
		n, err := rf.ReadFrom(part)
		lr.N -= n
		total += n
		t.bytes += n
		t.report(false)
		if err != nil {
			return total, err
		}
		if n < want {
			break // end of file
		}
	}
	return total, nil
}

// writerOnly hides ReadFrom so io.Copy falls back to Write.
type writerOnly struct{ io.Writer }

// Unwrap lets http.ResponseController reach the real writer.
func (t *trackingWriter) Unwrap() http.ResponseWriter { return t.ResponseWriter }
