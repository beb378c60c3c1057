package cpiocache

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// testClosure writes a small closure with varied member sizes and returns
// the FS root and the logical paths.
func testClosure(t *testing.T) (string, []string) {
	t.Helper()
	root := t.TempDir()
	paths := []string{fixture(t, root, "fixture")}
	for i, size := range []int{1, 2, 3, 1000, 256 << 10} {
		paths = append(paths, mkPath(t, root, fmt.Sprintf("r%d", i), map[string][]byte{
			"bin/x": randBytes(uint64(i), size), "share/t": textBytes(uint64(i), size*3),
		}))
	}
	single := "/nix/store/" + strings.Replace(testHash, "0", "1", 1) + "-single.sh"
	os.WriteFile(filepath.Join(root, single), []byte("echo\n"), 0o555)
	return root, append(paths, single)
}

var testExtra = []Entry{
	{Name: "nix/.nix-netboot-serve-db/registration", Body: []byte("registration text")},
	{Name: "init", Linkname: "/nix/store/x-system/init"},
}

// expectedConcat lays out base and members independently of Concat.
func expectedConcat(t *testing.T, base []byte, ms []Member) ([]byte, []int64) {
	var out []byte
	var starts []int64
	add := func(b []byte) {
		for len(out)%4 != 0 {
			out = append(out, 0)
		}
		starts = append(starts, int64(len(out)))
		out = append(out, b...)
	}
	if len(base) > 0 {
		add(base)
	}
	for _, m := range ms {
		add(readMember(t, m))
	}
	return out, starts
}

func TestConcat(t *testing.T) {
	root, paths := testClosure(t)
	for _, tc := range []struct {
		cache, base Compression
	}{{Zstd, None}, {Zstd, Zstd}, {Gzip, Zstd}, {None, None}, {Gzip, Gzip}} {
		t.Run(tc.cache.String()+"+base-"+tc.base.String(), func(t *testing.T) {
			c := openCache(t, Options{FSRoot: root, Compression: tc.cache})
			base, err := BaseMember(testExtra, tc.base)
			if err != nil {
				t.Fatal(err)
			}
			// Repeated paths are kept once.
			ci, err := c.Initrd(context.Background(), base, append(paths, paths[0]))
			if err != nil {
				t.Fatal(err)
			}
			defer ci.Close()
			var ms []Member
			for _, p := range paths {
				m, err := c.Member(context.Background(), p)
				if err != nil {
					t.Fatal(err)
				}
				ms = append(ms, m)
			}
			want, starts := expectedConcat(t, base, ms)
			if ci.Size() != int64(len(want)) {
				t.Fatalf("Size %d, want %d", ci.Size(), len(want))
			}
			var full bytes.Buffer
			if n, err := ci.WriteTo(&full); err != nil || n != ci.Size() {
				t.Fatalf("WriteTo: %d, %v", n, err)
			}
			if !bytes.Equal(full.Bytes(), want) {
				t.Fatal("concatenation differs from base + padded members")
			}

			check := func(off, n int64) {
				var b bytes.Buffer
				k, err := ci.WriteRange(&b, off, n)
				if err != nil || k != n || !bytes.Equal(b.Bytes(), want[off:off+n]) {
					t.Fatalf("WriteRange(%d, %d): %d bytes, %v, equal %v", off, n, k, err, bytes.Equal(b.Bytes(), want[off:off+n]))
				}
			}
			size := ci.Size()
			// Every part boundary, from both sides, with padding.
			for _, s := range append(starts, size) {
				for d := int64(-5); d <= 5; d++ {
					off := s + d
					if off < 0 || off > size {
						continue
					}
					for _, n := range []int64{0, 1, 2, 3, 4, 5, 7, 100} {
						if n <= size-off {
							check(off, n)
						}
					}
					if d == 0 {
						check(off, size-off)
						check(0, off)
					}
				}
			}
			rng := rand.New(rand.NewPCG(5, 6))
			for range 200 {
				off := rng.Int64N(size + 1)
				check(off, rng.Int64N(size-off+1))
			}
			for _, bad := range [][2]int64{{-1, 1}, {0, -1}, {0, size + 1}, {size, 1}, {size + 1, 0}} {
				if _, err := ci.WriteRange(io.Discard, bad[0], bad[1]); err == nil {
					t.Errorf("WriteRange(%d, %d) succeeded", bad[0], bad[1])
				}
			}

			// Unpacked as the kernel does, the initrd holds every tree
			// and the base entries.
			files, members, err := unpackInitrd(want)
			if err != nil {
				t.Fatal(err)
			}
			if members != len(paths)+1 {
				t.Errorf("%d members, want %d", members, len(paths)+1)
			}
			for _, p := range paths {
				checkEntries(t, files, root, p)
			}
			con := files["dev/console"]
			if con.mode != 0o20600 || con.rdevMaj != 5 || con.rdevMin != 1 || string(files["init"].body) != testExtra[1].Linkname {
				t.Errorf("base entries wrong: console %+v", con)
			}
		})
	}
}

// serveRanges serves the Concat on a loopback TCP listener: each connection
// sends "off n\n" and gets those bytes.
func serveRanges(t *testing.T, ci *Concat) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				var off, n int64
				if _, err := fmt.Fscanf(bufio.NewReader(conn), "%d %d\n", &off, &n); err != nil {
					return
				}
				ci.WriteRange(conn, off, n)
			}()
		}
	}()
	return ln.Addr().String()
}

func fetchRange(addr string, off, n int64) ([]byte, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	fmt.Fprintf(conn, "%d %d\n", off, n)
	return io.ReadAll(conn)
}

// TestConcatConcurrentClients streams whole initrds and ranges to many
// clients at once over loopback TCP (sendfile) and HTTP.
func TestConcatConcurrentClients(t *testing.T) {
	root, paths := testClosure(t)
	c := openCache(t, Options{FSRoot: root})
	base, _ := BaseMember(testExtra, Zstd)
	ci, err := c.Initrd(context.Background(), base, paths)
	if err != nil {
		t.Fatal(err)
	}
	defer ci.Close()
	var full bytes.Buffer
	ci.WriteTo(&full)
	want := full.Bytes()
	addr := serveRanges(t, ci)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		off, _ := strconv.ParseInt(r.URL.Query().Get("off"), 10, 64)
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		ci.WriteRange(w, off, n)
	}))
	defer hs.Close()

	size := ci.Size()
	var wg sync.WaitGroup
	errc := make(chan error, 100)
	for g := range 12 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 9))
			for i := range 6 {
				off, n := int64(0), size
				if i > 0 {
					off = rng.Int64N(size)
					n = rng.Int64N(size - off + 1)
				}
				var got []byte
				var err error
				if g%3 == 0 {
					var resp *http.Response
					resp, err = http.Get(fmt.Sprintf("%s/?off=%d&n=%d", hs.URL, off, n))
					if err == nil {
						got, err = io.ReadAll(resp.Body)
						resp.Body.Close()
					}
				} else {
					got, err = fetchRange(addr, off, n)
				}
				if err == nil && !bytes.Equal(got, want[off:off+n]) {
					err = fmt.Errorf("client %d: range %d+%d: got %d bytes, wrong content", g, off, n, len(got))
				}
				if err != nil {
					errc <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
}

// slowWriter lets WriteRange proceed one write at a time.
type slowWriter struct {
	buf  bytes.Buffer
	step chan struct{}
}

func (s *slowWriter) Write(p []byte) (int, error) {
	<-s.step
	return s.buf.Write(p)
}

func TestConcatCloseDuringTransfer(t *testing.T) {
	root, paths := testClosure(t)
	c := openCache(t, Options{FSRoot: root})
	base, _ := BaseMember(testExtra, None)
	ci, err := c.Initrd(context.Background(), base, paths)
	if err != nil {
		t.Fatal(err)
	}
	var full bytes.Buffer
	ci.WriteTo(&full)

	w := &slowWriter{step: make(chan struct{})}
	done := make(chan error)
	go func() {
		_, err := ci.WriteRange(w, 0, ci.Size())
		done <- err
	}()
	w.step <- struct{}{} // the transfer is under way
	if err := ci.Close(); err != nil {
		t.Fatal(err)
	}
	// Evicting everything does not disturb the transfer either.
	for _, p := range paths {
		m, _ := c.Member(context.Background(), p)
		os.Remove(m.File)
	}
	// Let the transfer finish.
wait:
	for {
		select {
		case w.step <- struct{}{}:
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			break wait
		}
	}
	if !bytes.Equal(w.buf.Bytes(), full.Bytes()) {
		t.Fatal("transfer in progress during Close was corrupted")
	}
	if _, err := ci.WriteRange(io.Discard, 0, 1); !errors.Is(err, ErrClosed) {
		t.Errorf("WriteRange after Close: %v", err)
	}
	for _, p := range ci.parts {
		if p.f != nil {
			if _, err := p.f.Stat(); !errors.Is(err, os.ErrClosed) {
				t.Errorf("file %s still open after Close and the last transfer", p.f.Name())
			}
		}
	}
}

// TestSendfileUsed runs the serving code under strace and checks that the
// member files go out through sendfile(2), both to a bare TCP connection
// and through net/http.
func TestSendfileUsed(t *testing.T) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace not installed")
	}
	root, paths := testClosure(t)
	dir := t.TempDir()
	c, err := Open(Options{Dir: dir, FSRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	var fileBytes int64
	for _, p := range paths {
		m, err := c.Member(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		fileBytes += m.Size
	}
	c.Close()

	log := filepath.Join(t.TempDir(), "strace.log")
	cmd := exec.Command(strace, "-f", "-qq", "-e", "trace=sendfile", "-o", log, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "CPIOCACHE_TEST_HELPER=serve", "HELPER_DIR="+dir, "HELPER_ROOT="+root,
		"HELPER_PATHS="+strings.Join(paths, " "))
	if out, err := cmd.CombinedOutput(); err != nil {
		if strings.Contains(string(out), "PTRACE_TRACEME") || strings.Contains(string(out), "Operation not permitted") {
			t.Skipf("strace cannot trace here: %s", out)
		}
		t.Fatalf("helper under strace: %v\n%s", err, out)
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	var sent int64
	calls := 0
	for _, m := range regexp.MustCompile(`(?m)sendfile.*= (\d+)$`).FindAllStringSubmatch(string(b), -1) {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		sent += n
		calls++
	}
	// Two transfers (TCP, HTTP) of every member file, except that net/http
	// copies the first 512 bytes of a response itself (content sniffing).
	if sent > 2*fileBytes || sent < 2*fileBytes-512 {
		t.Errorf("sendfile sent %d bytes in %d calls, want 2 × %d member bytes (less at most 512)", sent, calls, fileBytes)
	}
	t.Logf("sendfile: %d calls, %d bytes", calls, sent)
}

// helperServe runs under strace for TestSendfileUsed.
func helperServe() int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, err); return 1 }
	c, err := Open(Options{Dir: os.Getenv("HELPER_DIR"), FSRoot: os.Getenv("HELPER_ROOT")})
	if err != nil {
		return fail(err)
	}
	defer c.Close()
	base, _ := BaseMember(testExtra, Zstd)
	ci, err := c.Initrd(context.Background(), base, strings.Fields(os.Getenv("HELPER_PATHS")))
	if err != nil {
		return fail(err)
	}
	defer ci.Close()
	var full bytes.Buffer
	ci.WriteRange(&full, 0, ci.Size()) // not a socket: no sendfile
	want := sha256.Sum256(full.Bytes())

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	go func() {
		conn, err := ln.Accept()
		if err == nil {
			ci.WriteRange(conn, 0, ci.Size())
			conn.Close()
		}
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return fail(err)
	}
	got, err := io.ReadAll(conn)
	if err != nil || sha256.Sum256(got) != want {
		return fail(fmt.Errorf("TCP transfer wrong: %v", err))
	}

	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.FormatInt(ci.Size(), 10))
		ci.WriteTo(w)
	}))
	defer hs.Close()
	resp, err := http.Get(hs.URL)
	if err != nil {
		return fail(err)
	}
	got, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || sha256.Sum256(got) != want {
		return fail(fmt.Errorf("HTTP transfer wrong: %v", err))
	}
	return 0
}
