package cpiocache

import (
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Compression selects how each member is compressed. It is part of the cache
// key: members of different compressions live side by side under different
// file suffixes.
type Compression int

const (
	// Zstd is the default: one zstd frame per member, 8 MiB window, checksum
	// on. Linux ≥ 5.9 can unpack it.
	Zstd Compression = iota
	// Gzip is for kernels without zstd initramfs support.
	Gzip
	// None writes plain newc archives. Useful for the base member and for
	// debugging; it makes the initrd as big as the closure.
	None
)

// zstdWindow stays at 8 MiB: the kernel's decoder accepts windows up to
// 128 MiB, and 8 MiB is what klauspost's streaming encoder produces by
// default, which has been booted here.
const zstdWindow = 8 << 20

// defaultZstdLevel was chosen with BenchmarkColdBuild on a synthetic
// 300 MB closure (2 cores): SpeedBetterCompression made the initrd 1% smaller
// but built it 15-40% slower, and a cold build is what a booting machine
// waits for.
const defaultZstdLevel = zstd.SpeedDefault

// ParseCompression maps a configuration string ("zstd", "gzip", "none"; ""
// means zstd) to a Compression.
func ParseCompression(s string) (Compression, error) {
	switch s {
	case "", "zstd":
		return Zstd, nil
	case "gzip":
		return Gzip, nil
	case "none":
		return None, nil
	}
	return 0, fmt.Errorf("unknown compression %q: use zstd, gzip or none", s)
}

// String returns the configuration name of c.
func (c Compression) String() string {
	switch c {
	case Zstd:
		return "zstd"
	case Gzip:
		return "gzip"
	case None:
		return "none"
	}
	return fmt.Sprintf("Compression(%d)", int(c))
}

// Suffix returns the cache file suffix of c, e.g. ".cpio.zst".
func (c Compression) Suffix() string {
	switch c {
	case Zstd:
		return ".cpio.zst"
	case Gzip:
		return ".cpio.gz"
	case None:
		return ".cpio"
	}
	return ""
}

func (c Compression) valid() bool { return c >= Zstd && c <= None }

// compressor is the part of zstd.Encoder and gzip.Writer used here, so one
// compressor can be reused for many members (zstd encoders are costly to set
// up). Every Reset..Close cycle produces exactly one complete stream: for zstd
// one frame, which is what the kernel requires of a compressed member.
type compressor interface {
	io.Writer
	Reset(w io.Writer)
	Close() error
}

func newCompressor(c Compression, level zstd.EncoderLevel) (compressor, error) {
	switch c {
	case Zstd:
		if level == 0 {
			level = defaultZstdLevel
		}
		// Concurrency 1: parallelism comes from building several members at
		// once, bounded by Options.Parallelism, so one member never takes
		// more than one core. No padding (the kernel rejects the skippable
		// frame it adds).
		return zstd.NewWriter(nil,
			zstd.WithEncoderLevel(level),
			zstd.WithWindowSize(zstdWindow),
			zstd.WithEncoderConcurrency(1),
			zstd.WithEncoderCRC(true))
	case Gzip:
		return gzip.NewWriterLevel(nil, gzip.DefaultCompression)
	case None:
		return &plainWriter{}, nil
	}
	return nil, fmt.Errorf("unknown compression %d", int(c))
}

// plainWriter is the identity "compressor".
type plainWriter struct{ w io.Writer }

func (p *plainWriter) Write(b []byte) (int, error) { return p.w.Write(b) }
func (p *plainWriter) Reset(w io.Writer)           { p.w = w }
func (p *plainWriter) Close() error                { return nil }
