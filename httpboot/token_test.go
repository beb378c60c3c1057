package httpboot

import (
	"encoding/base64"
	"strings"
	"testing"
)

func TestTokenRoundTripAndTamper(t *testing.T) {
	s, err := newSigner()
	if err != nil {
		t.Fatal(err)
	}
	other, err := newSigner()
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []fileRef{
		{Src: "/srv/boot/vmlinuz", MAC: "52:54:00:00:00:01"},
		{Src: "http://images.example/initrd.img?x=1&y=%00"},
		{Src: "/odd\x00name", MAC: "\x00"},
		{Src: strings.Repeat("p", 300), MAC: "m"},
	} {
		tok := s.sign(ref)
		got, err := s.verify(tok)
		if err != nil || got != ref {
			t.Fatalf("verify(sign(%q)) = %q, %v", ref, got, err)
		}
		if _, err := other.verify(tok); err == nil {
			t.Errorf("%q: another key accepted the token", ref.Src)
		}
		// Any change to any character is refused.
		for i := range len(tok) {
			for _, c := range []byte{'A', 'b', '-', '.'} {
				if tok[i] == c {
					continue
				}
				bad := tok[:i] + string(c) + tok[i+1:]
				if got, err := s.verify(bad); err == nil {
					t.Fatalf("tampered token %q accepted as %q", bad, got)
				}
			}
		}
		for _, cut := range []int{1, len(tok) / 2, len(tok) - 1} {
			if _, err := s.verify(tok[:cut]); err == nil {
				t.Errorf("truncated token %q accepted", tok[:cut])
			}
		}
	}
	// A payload that claims more source than it holds, correctly signed,
	// is still refused rather than read past.
	enc := base64.RawURLEncoding
	bad := []byte{200, 1, 'x'}
	if _, err := s.verify(enc.EncodeToString(bad) + "." + enc.EncodeToString(s.tag(nil, bad))); err == nil {
		t.Error("a short payload was accepted")
	}
	if _, err := s.verify(enc.EncodeToString([]byte{0}) + "." + enc.EncodeToString(s.tag(nil, []byte{0}))); err == nil {
		t.Error("an empty source was accepted")
	}
}

func BenchmarkTokenVerify(b *testing.B) {
	s, err := newSigner()
	if err != nil {
		b.Fatal(err)
	}
	tok := s.sign(fileRef{Src: "/srv/boot/initrd.img", MAC: "52:54:00:00:00:01"})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.verify(tok); err != nil {
			b.Fatal(err)
		}
	}
}
