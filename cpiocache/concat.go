package cpiocache

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"sync"
)

// Concat is an initrd assembled from parts: an in-memory base member and
// member files. Each part starts at a 4-byte-aligned offset, with zero bytes
// before it as needed: the kernel skips zeros between members and needs an
// uncompressed member to start on a 4-byte boundary. Its size is known before
// anything is sent.
//
// WriteRange may be called from many goroutines at once. Close releases the
// files once all WriteRange calls in progress have returned.
type Concat struct {
	parts []part
	size  int64

	mu     sync.Mutex
	active int
	closed bool
}

type part struct {
	off, size int64
	data      []byte   // in-memory part, or
	f         *os.File // bytes [0, size) of f
	fi        os.FileInfo
}

// newConcat lays out base and the first sizes[i] bytes of files[i]. It takes
// ownership of the files.
func newConcat(base []byte, files []*os.File, sizes []int64) (*Concat, error) {
	c := &Concat{}
	var pos int64
	add := func(p part) {
		pos = (pos + 3) &^ 3
		p.off = pos
		pos += p.size
		c.parts = append(c.parts, p)
	}
	if len(base) > 0 {
		add(part{size: int64(len(base)), data: base})
	}
	for i, f := range files {
		fi, err := f.Stat()
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			return nil, err
		}
		if sizes[i] > 0 {
			add(part{size: sizes[i], f: f, fi: fi})
		} else {
			f.Close()
		}
	}
	c.size = pos
	return c, nil
}

// Size returns the number of bytes of the initrd.
func (c *Concat) Size() int64 { return c.size }

// WriteTo writes the whole initrd to w.
func (c *Concat) WriteTo(w io.Writer) (int64, error) { return c.WriteRange(w, 0, c.size) }

// WriteRange writes bytes [off, off+n) of the initrd to w. File parts are
// copied with io.Copy from an *io.LimitedReader over an *os.File, which a
// *net.TCPConn (directly or under net/http's ResponseWriter) sends with
// sendfile(2).
func (c *Concat) WriteRange(w io.Writer, off, n int64) (int64, error) {
	if off < 0 || n < 0 || off > c.size || n > c.size-off {
		return 0, fmt.Errorf("range [%d, %d+%d) is outside the initrd's %d bytes", off, off, n, c.size)
	}
	if !c.enter() {
		return 0, ErrClosed
	}
	defer c.leave()

	var zeros [3]byte
	var buf []byte // copy buffer, needed only if w is not an io.ReaderFrom
	_, readerFrom := w.(io.ReaderFrom)
	pos, end := off, off+n
	i := sort.Search(len(c.parts), func(i int) bool { return c.parts[i].off+c.parts[i].size > pos })
	for pos < end {
		// Padding before part i.
		if gap := min(end, c.parts[i].off) - pos; gap > 0 {
			k, err := w.Write(zeros[:gap])
			if err != nil {
				return pos - off + int64(k), err
			}
			pos += gap
			continue
		}
		p := &c.parts[i]
		from := pos - p.off
		l := min(end, p.off+p.size) - pos
		var k int64
		var err error
		if p.data != nil {
			var kk int
			kk, err = w.Write(p.data[from : from+l])
			k = int64(kk)
		} else {
			if buf == nil && !readerFrom {
				buf = make([]byte, 64<<10)
			}
			k, err = copyFilePart(w, p, from, l, buf)
		}
		pos += k
		if err != nil {
			return pos - off, err
		}
		i++
	}
	return n, nil
}

// copyFilePart copies bytes [from, from+n) of p's file to w. The Concat's
// *os.File is shared by all requests, and sendfile reads at the file's
// offset, so each copy reopens the file through /proc/self/fd: a new open
// file with its own offset, which works even after eviction unlinked the
// file. Without /proc it falls back to pread (no sendfile).
func copyFilePart(w io.Writer, p *part, from, n int64, buf []byte) (int64, error) {
	r, err := reopen(p.f, p.fi)
	if err != nil {
		k, err := io.CopyBuffer(w, io.NewSectionReader(p.f, from, n), buf)
		return k, checkShort(p, k, n, err)
	}
	defer r.Close()
	if from > 0 {
		if _, err := r.Seek(from, io.SeekStart); err != nil {
			return 0, err
		}
	}
	k, err := io.CopyBuffer(w, &io.LimitedReader{R: r, N: n}, buf)
	return k, checkShort(p, k, n, err)
}

func checkShort(p *part, k, n int64, err error) error {
	if err == nil && k < n {
		return fmt.Errorf("member file %s ended %d bytes early: %w", p.f.Name(), n-k, io.ErrUnexpectedEOF)
	}
	return err
}

func reopen(f *os.File, fi os.FileInfo) (*os.File, error) {
	sc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var r *os.File
	var oerr error
	// Control keeps the descriptor from being closed while it is used.
	err = sc.Control(func(fd uintptr) {
		r, oerr = os.Open("/proc/self/fd/" + strconv.FormatUint(uint64(fd), 10))
	})
	if err = errors.Join(err, oerr); err != nil {
		if r != nil {
			r.Close()
		}
		return nil, err
	}
	rfi, err := r.Stat()
	if err != nil || !os.SameFile(fi, rfi) {
		r.Close()
		return nil, errors.New("reopened a different file")
	}
	return r, nil
}

func (c *Concat) enter() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.active++
	return true
}

func (c *Concat) leave() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.active--
	if c.closed && c.active == 0 {
		c.closeFiles()
	}
}

// Close releases the member files, at once or when the last WriteRange in
// progress returns. Later WriteRange calls fail with ErrClosed.
func (c *Concat) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if c.active == 0 {
		return c.closeFiles()
	}
	return nil
}

func (c *Concat) closeFiles() error {
	var errs []error
	for _, p := range c.parts {
		if p.f != nil {
			errs = append(errs, p.f.Close())
		}
	}
	return errors.Join(errs...)
}
