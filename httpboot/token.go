package httpboot

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// signer makes and checks the tokens in file URLs. A token names a file
// source (a local path or an http(s) URL) that bootserve itself put in a
// script, so a client can fetch only what it was given: it can never make
// bootserve read an arbitrary path or fetch an arbitrary URL.
type signer struct {
	key []byte
}

// newSigner makes a signer with a key made at start: tokens die with the
// process, and a booting machine whose token went stale re-fetches its script.
func newSigner() (*signer, error) {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("make URL signing key: %w", err)
	}
	return &signer{key: k}, nil
}

// fileRef is what a token carries.
type fileRef struct {
	Src string `json:"s"`           // local path or http(s) URL
	MAC string `json:"m,omitempty"` // the machine the script was made for, for the status page
}

var errBadToken = errors.New("bad or tampered file token")

func (s *signer) mac(payload []byte) []byte {
	h := hmac.New(sha256.New, s.key)
	h.Write(payload)
	return h.Sum(nil)[:16]
}

func (s *signer) sign(ref fileRef) string {
	payload, _ := json.Marshal(ref) // a struct of strings always marshals
	enc := base64.RawURLEncoding
	return enc.EncodeToString(payload) + "." + enc.EncodeToString(s.mac(payload))
}

func (s *signer) verify(tok string) (fileRef, error) {
	enc := base64.RawURLEncoding
	p, m, ok := strings.Cut(tok, ".")
	if !ok {
		return fileRef{}, errBadToken
	}
	payload, err1 := enc.DecodeString(p)
	sum, err2 := enc.DecodeString(m)
	if err1 != nil || err2 != nil || !hmac.Equal(sum, s.mac(payload)) {
		return fileRef{}, errBadToken
	}
	var ref fileRef
	if err := json.Unmarshal(payload, &ref); err != nil || ref.Src == "" {
		return fileRef{}, errBadToken
	}
	return ref, nil
}
