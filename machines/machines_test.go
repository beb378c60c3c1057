package machines

import (
	"context"
	"testing"
)

func TestParseMAC(t *testing.T) {
	for _, in := range []string{"52:54:00:12:34:56", "52-54-00-12-34-56", "52:54:00:12:34:56 ", "5254.0012.3456"} {
		hw, err := ParseMAC(in)
		if err != nil || hw.String() != "52:54:00:12:34:56" {
			t.Errorf("ParseMAC(%q) = %v, %v", in, hw, err)
		}
	}
	hw, err := ParseMAC("AA-BB-CC-DD-EE-FF")
	if err != nil || hw.String() != "aa:bb:cc:dd:ee:ff" {
		t.Errorf("upper case: %v %v", hw, err)
	}
	for _, bad := range []string{"", "zz:bb:cc:dd:ee:ff", "52:54:00:12:34", "hello"} {
		if _, err := ParseMAC(bad); err == nil {
			t.Errorf("ParseMAC(%q) accepted", bad)
		}
	}
}

func TestUUID(t *testing.T) {
	want := "8c2c8a3e-1f2b-4c5d-9e6f-0a1b2c3d4e5f"
	for _, in := range []string{want, "{8C2C8A3E-1F2B-4C5D-9E6F-0A1B2C3D4E5F}", "8c2c8a3e1f2b4c5d9e6f0a1b2c3d4e5f"} {
		got, err := ParseUUID(in)
		if err != nil || got != want {
			t.Errorf("ParseUUID(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseUUID("8c2c8a3e-1f2b"); err == nil {
		t.Error("short UUID accepted")
	}
	// The same UUID in EFI wire order: first three fields byte-swapped.
	wire := []byte{0x3e, 0x8a, 0x2c, 0x8c, 0x2b, 0x1f, 0x5d, 0x4c, 0x9e, 0x6f, 0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f}
	if got := UUIDFromWire(wire); got != want {
		t.Errorf("UUIDFromWire = %q, want %q", got, want)
	}
	if got := UUIDFromWire(make([]byte, 16)); got != "" {
		t.Errorf("zero GUID = %q, want empty", got)
	}
	if got := UUIDFromWire([]byte{1, 2}); got != "" {
		t.Errorf("short GUID = %q", got)
	}
}

func TestStaticAndKinds(t *testing.T) {
	s := Static{T: Target{Kind: KindKernel, Kernel: "/k", Initrds: []string{"/i"}}}
	a, _ := s.Target(context.Background(), Identity{})
	a.Initrds[0] = "/changed"
	a.Kernel = "/other"
	b, _ := s.Target(context.Background(), Identity{})
	if b.Kernel != "/k" || b.Initrds[0] != "/i" {
		t.Error("Static target shared between callers")
	}
	if KindNixProfile.String() != "nix_profile" || Kind(0).String() != "none" || Kind(99).String() != "none" {
		t.Error("Kind names")
	}
}
