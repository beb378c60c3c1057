package machines

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/bootserve/bootserve/firmware"
)

func mac(s string) net.HardwareAddr { m, _ := ParseMAC(s); return m }

func TestSelectionPrecedence(t *testing.T) {
	const u1 = "8c2c8a3e-1f2b-4c5d-9e6f-0a1b2c3d4e5f"
	table := &Table{
		Rules: []Rule{
			{Name: "all-efi", Arches: []firmware.Arch{firmware.EFIX64}},
			{Name: "rack1", Labels: []string{"rack1"}},
			{Name: "rack1-efi", Labels: []string{"rack1"}, Arches: []firmware.Arch{firmware.EFIX64}},
			{Name: "by-uuid", UUIDs: []string{u1}},
			{Name: "by-mac", MACs: []net.HardwareAddr{mac("52:54:00:00:00:01"), mac("52:54:00:00:00:02")}},
			{Name: "mac-bios", MACs: []net.HardwareAddr{mac("52:54:00:00:00:03")}, Arches: []firmware.Arch{firmware.BIOS}},
		},
		Default: &Target{Name: "default"},
	}
	for i := range table.Rules {
		table.Rules[i].Target.Name = table.Rules[i].Name
	}
	cases := []struct {
		id   Identity
		want string
	}{
		{Identity{MAC: mac("52:54:00:00:00:09"), Arch: firmware.BIOS}, "default"},
		{Identity{MAC: mac("52:54:00:00:00:09"), Arch: firmware.EFIX64}, "all-efi"},
		{Identity{MAC: mac("52:54:00:00:00:09"), Arch: firmware.BIOS, Labels: []string{"rack1"}}, "rack1"},
		// arch (2) beats labels (1); both beat neither.
		{Identity{MAC: mac("52:54:00:00:00:09"), Arch: firmware.EFIX64, Labels: []string{"rack1"}}, "rack1-efi"},
		{Identity{MAC: mac("52:54:00:00:00:09"), Arch: firmware.EFIX64, UUID: u1, Labels: []string{"rack1"}}, "by-uuid"},
		// MAC beats UUID.
		{Identity{MAC: mac("52:54:00:00:00:02"), Arch: firmware.EFIX64, UUID: u1}, "by-mac"},
		// A rule needs all its selectors: MAC right, arch wrong.
		{Identity{MAC: mac("52:54:00:00:00:03"), Arch: firmware.EFIX64}, "all-efi"},
		{Identity{MAC: mac("52:54:00:00:00:03"), Arch: firmware.BIOS}, "mac-bios"},
		// An unknown UUID matches no UUID rule.
		{Identity{MAC: mac("52:54:00:00:00:09"), Arch: firmware.BIOS, UUID: ""}, "default"},
	}
	for _, c := range cases {
		got, err := table.Target(context.Background(), c.id)
		if err != nil || got.Name != c.want {
			t.Errorf("%+v: got %v %v, want %s", c.id, got, err, c.want)
		}
	}
	table.Default = nil
	if _, err := table.Target(context.Background(), Identity{MAC: mac("52:54:00:00:00:09")}); !errors.Is(err, ErrNoTarget) {
		t.Errorf("no match, no default: %v", err)
	}
	if ties := table.CheckTies(); len(ties) != 0 {
		t.Errorf("unexpected ties %+v", ties)
	}
}

func TestTies(t *testing.T) {
	cases := []struct {
		a, b Rule
		tie  bool
	}{
		{Rule{Arches: []firmware.Arch{firmware.EFIX64}}, Rule{Arches: []firmware.Arch{firmware.BIOS, firmware.EFIX64}}, true},
		{Rule{Arches: []firmware.Arch{firmware.EFIX64}}, Rule{Arches: []firmware.Arch{firmware.BIOS}}, false},
		{Rule{Labels: []string{"a"}}, Rule{Labels: []string{"b"}}, true}, // a machine may carry both
		{Rule{Labels: []string{"a"}}, Rule{Arches: []firmware.Arch{firmware.BIOS}}, false},
		{Rule{UUIDs: []string{"x"}, Arches: []firmware.Arch{firmware.BIOS}}, Rule{UUIDs: []string{"x"}, Arches: []firmware.Arch{firmware.EFIX64}}, false},
		{Rule{MACs: []net.HardwareAddr{mac("52:54:00:00:00:01")}}, Rule{MACs: []net.HardwareAddr{mac("52:54:00:00:00:01")}}, true},
	}
	for i, c := range cases {
		tb := &Table{Rules: []Rule{c.a, c.b}}
		if got := len(tb.CheckTies()) == 1; got != c.tie {
			t.Errorf("case %d: tie %v, want %v", i, got, c.tie)
		}
	}
}
