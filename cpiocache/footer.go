package cpiocache

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// A cache file is the member (the bytes that are served) followed by a
// footer that makes the file self-checking:
//
//	uint32 LE 0x184D2A5B     zstd skippable-frame magic, so `zstd -t` on the
//	uint32 LE payload length  whole file still passes
//	store path               (variable)
//	uint64 LE member length
//	[32]byte                 SHA-256 of the member
//	uint8                    Compression
//	uint16 LE                length of the store path
//	[8]byte                  "bsCPIO\x00" + format version
//
// The footer is written before the file is fsynced and renamed into place. A
// truncated file fails the length check when the cache is opened; a corrupt
// one fails the hash check the first time it is used by this process. The
// footer is never served (the kernel rejects skippable frames).
const (
	skippableMagic = 0x184D2A5B
	// formatVersion changes when archives of the same store path would come
	// out different, so that old members are rebuilt.
	formatVersion = 1
	footerFixed   = 8 + 32 + 1 + 2 + 8 // after the path
	footerHead    = 8                  // skippable frame header
	maxFooterLen  = footerHead + maxPathLen + footerFixed
)

var footerMagic = [8]byte{'b', 's', 'C', 'P', 'I', 'O', 0, formatVersion}

type footer struct {
	storePath string
	dataLen   int64
	sum       [sha256.Size]byte
	comp      Compression
}

func (f *footer) len() int64 { return int64(footerHead + len(f.storePath) + footerFixed) }

func (f *footer) appendTo(b []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, skippableMagic)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(f.storePath)+footerFixed))
	b = append(b, f.storePath...)
	b = binary.LittleEndian.AppendUint64(b, uint64(f.dataLen))
	b = append(b, f.sum[:]...)
	b = append(b, byte(f.comp))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(f.storePath)))
	return append(b, footerMagic[:]...)
}

var errNoFooter = errors.New("no valid integrity footer (truncated, foreign or older format)")

// readFooter reads and checks the footer of a cache file of the given size.
func readFooter(r io.ReaderAt, size int64) (footer, error) {
	var f footer
	n := min(size, maxFooterLen)
	if n < footerHead+footerFixed {
		return f, errNoFooter
	}
	b := make([]byte, n)
	if _, err := r.ReadAt(b, size-n); err != nil {
		return f, err
	}
	if !bytes.Equal(b[n-8:], footerMagic[:]) {
		return f, errNoFooter
	}
	pathLen := int64(binary.LittleEndian.Uint16(b[n-10:]))
	flen := footerHead + pathLen + footerFixed
	if flen > n {
		return f, errNoFooter
	}
	b = b[n-flen:]
	if binary.LittleEndian.Uint32(b) != skippableMagic ||
		int64(binary.LittleEndian.Uint32(b[4:])) != flen-footerHead {
		return f, errNoFooter
	}
	b = b[footerHead:]
	f.storePath = string(b[:pathLen])
	b = b[pathLen:]
	f.dataLen = int64(binary.LittleEndian.Uint64(b))
	copy(f.sum[:], b[8:])
	f.comp = Compression(b[40])
	if f.dataLen != size-flen {
		return f, fmt.Errorf("member is %d bytes, footer says %d: %w", size-flen, f.dataLen, errNoFooter)
	}
	return f, nil
}

// verifyFile reads the member part of the cache file at p and checks it
// against its footer. buf is the read buffer.
func verifyFile(p string, buf []byte) (footer, error) {
	fh, err := os.Open(p)
	if err != nil {
		return footer{}, err
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return footer{}, err
	}
	ft, err := readFooter(fh, st.Size())
	if err != nil {
		return ft, err
	}
	h := sha256.New()
	if _, err := io.CopyBuffer(h, io.NewSectionReader(fh, 0, ft.dataLen), buf); err != nil {
		return ft, err
	}
	if !bytes.Equal(h.Sum(nil), ft.sum[:]) {
		return ft, errors.New("SHA-256 of the member does not match its footer (corrupt file)")
	}
	return ft, nil
}
