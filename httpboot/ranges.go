package httpboot

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// byteRange is [Start, Start+Length).
type byteRange struct{ Start, Length int64 }

var errUnsatisfiable = errors.New("range not satisfiable")

// parseRange reads a Range header for a body of size bytes. It returns nil
// for "send everything": no header, a header it does not understand, or
// several ranges (RFC 9110 lets a server ignore Range, and boot clients only
// ever ask for one).
func parseRange(h string, size int64) (*byteRange, error) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return nil, nil
	}
	first, last, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return nil, nil
	}
	if first == "" {
		n, err := strconv.ParseInt(last, 10, 64)
		if err != nil || n < 0 {
			return nil, nil
		}
		if n == 0 || size == 0 {
			return nil, errUnsatisfiable
		}
		n = min(n, size)
		return &byteRange{size - n, n}, nil
	}
	start, err := strconv.ParseInt(first, 10, 64)
	if err != nil || start < 0 {
		return nil, nil
	}
	if start >= size {
		return nil, errUnsatisfiable
	}
	end := size - 1
	if last != "" {
		e, err := strconv.ParseInt(last, 10, 64)
		if err != nil || e < start {
			return nil, nil
		}
		end = min(e, size-1)
	}
	return &byteRange{start, end - start + 1}, nil
}

// body is something servable with a known size: a file, or a concatenation
// of cached archives.
type body interface {
	Size() int64
	// WriteRange writes bytes [off, off+n) to w.
	WriteRange(w io.Writer, off, n int64) error
}

// serveBody answers GET and HEAD for a body, with Content-Length known
// before the first byte and a single Range honoured. etag may be empty.
func serveBody(w http.ResponseWriter, r *http.Request, b body, contentType, etag string, modtime time.Time) error {
	size := b.Size()
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Accept-Ranges", "bytes")
	if etag != "" {
		h.Set("ETag", etag)
	}
	if !modtime.IsZero() {
		h.Set("Last-Modified", modtime.UTC().Format(http.TimeFormat))
	}
	rng, err := parseRange(r.Header.Get("Range"), size)
	if ir := r.Header.Get("If-Range"); ir != "" && (etag == "" || ir != etag) {
		rng, err = nil, nil // the client's copy is stale: send it all
	}
	if err != nil {
		h.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		http.Error(w, err.Error(), http.StatusRequestedRangeNotSatisfiable)
		return nil
	}
	off, n, code := int64(0), size, http.StatusOK
	if rng != nil {
		off, n, code = rng.Start, rng.Length, http.StatusPartialContent
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, off+n-1, size))
	}
	h.Set("Content-Length", strconv.FormatInt(n, 10))
	w.WriteHeader(code)
	if r.Method == http.MethodHead || n == 0 {
		return nil
	}
	if c, ok := r.Context().Value(connKey{}).(*net.TCPConn); ok && n >= corkMin {
		// The header goes out at once, on its own; the body is corked
		// (nginx's tcp_nopush), so sendfile fills whole segments and
		// the tail leaves when the cork is pulled. Corking the header
		// too delayed the first byte; see docs/benchmarks.md.
		if err := http.NewResponseController(w).Flush(); err != nil {
			return err
		}
		setCork(c, true)
		defer setCork(c, false)
	}
	return b.WriteRange(w, off, n)
}

// corkMin is the smallest body worth the two setsockopt calls of corking.
const corkMin = 64 << 10

// connKey keys the request's connection in its context (Server.Serve's
// ConnContext), for corking.
type connKey struct{}

// fileBody serves one open file. Writes go through io.Copy from an
// io.LimitedReader over the *os.File, the shape net.TCPConn turns into
// sendfile(2).
type fileBody struct {
	f    *os.File
	size int64
}

func (fb fileBody) Size() int64 { return fb.size }

func (fb fileBody) WriteRange(w io.Writer, off, n int64) error {
	if _, err := fb.f.Seek(off, io.SeekStart); err != nil {
		return err
	}
	_, err := io.Copy(w, &io.LimitedReader{R: fb.f, N: n})
	return err
}
