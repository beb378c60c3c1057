package httpboot

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"strings"
	"sync"
)

// signer makes and checks the tokens in file URLs. A token names a file
// source (a local path or an http(s) URL) that bootserve itself put in a
// script, so a client can fetch only what it was given: it can never make
// bootserve read an arbitrary path or fetch an arbitrary URL.
type signer struct {
	// macs holds keyed HMACs: every kernel and initrd request checks a
	// token, and a reset HMAC restores its keyed state by copy instead of
	// hashing the key again.
	macs sync.Pool
}

// newSigner makes a signer with a key made at start: tokens die with the
// process, and a booting machine whose token went stale re-fetches its script.
func newSigner() (*signer, error) {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("make URL signing key: %w", err)
	}
	s := &signer{}
	s.macs.New = func() any { return hmac.New(sha256.New, k) }
	return s, nil
}

// fileRef is what a token carries.
type fileRef struct {
	Src string // local path or http(s) URL
	MAC string // the machine the script was made for, for the status page; may be empty
}

// A token is base64(payload) "." base64(tag); the payload is the source's
// length (uvarint), the source and the MAC. The format only has to last as
// long as the process's key.
const tagLen = 16

var errBadToken = errors.New("bad or tampered file token")

func encodeRef(ref fileRef) []byte {
	b := binary.AppendUvarint(make([]byte, 0, binary.MaxVarintLen64+len(ref.Src)+len(ref.MAC)), uint64(len(ref.Src)))
	return append(append(b, ref.Src...), ref.MAC...)
}

func decodeRef(payload []byte) (fileRef, bool) {
	n, k := binary.Uvarint(payload)
	if k <= 0 || n == 0 || n > uint64(len(payload)-k) {
		return fileRef{}, false
	}
	rest := payload[k:]
	return fileRef{Src: string(rest[:n]), MAC: string(rest[n:])}, true
}

func (s *signer) tag(dst, payload []byte) []byte {
	h := s.macs.Get().(hash.Hash)
	h.Reset()
	h.Write(payload)
	dst = h.Sum(dst)
	s.macs.Put(h)
	return dst[:len(dst)-sha256.Size+tagLen]
}

func (s *signer) sign(ref fileRef) string {
	payload := encodeRef(ref)
	enc := base64.RawURLEncoding
	return enc.EncodeToString(payload) + "." + enc.EncodeToString(s.tag(nil, payload))
}

func (s *signer) verify(tok string) (fileRef, error) {
	// Strict: a token has one spelling (unused bits of the last
	// character must be zero).
	enc := base64.RawURLEncoding.Strict()
	p, t, ok := strings.Cut(tok, ".")
	if !ok || enc.DecodedLen(len(t)) != tagLen {
		return fileRef{}, errBadToken
	}
	var got, want [sha256.Size]byte
	payload, err1 := enc.DecodeString(p)
	_, err2 := enc.Decode(got[:], []byte(t))
	if err1 != nil || err2 != nil || !hmac.Equal(got[:tagLen], s.tag(want[:0], payload)) {
		return fileRef{}, errBadToken
	}
	ref, ok := decodeRef(payload)
	if !ok {
		return fileRef{}, errBadToken
	}
	return ref, nil
}
