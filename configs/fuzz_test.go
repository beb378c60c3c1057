package configs

import (
	"os"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary text to the config loader: it must never panic,
// and every error must be located ("f.toml[:line]: ...").
func FuzzParse(f *testing.F) {
	for _, p := range []string{"example.toml", "homelab-rescue.toml", "full-dhcp-secureboot.toml"} {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Add("[[machine]]\nmac = [\"52:54:00:00:00:01\", 3]\nlocal = true\n")
	f.Add("[default.menu]\n[[default.menu.entry]]\nlocal = true\n[default.menu.entry.menu]\n")
	f.Add("a.b.c = \"\"\"\nx\n\"\"\"\n[t]\nk = [\n1,\n]\n")
	f.Fuzz(func(t *testing.T, src string) {
		c, err := Parse("f.toml", src)
		if err == nil {
			if c.Rules == nil {
				t.Fatal("accepted config without a rule table")
			}
			return
		}
		if !strings.HasPrefix(err.Error(), "f.toml") {
			t.Fatalf("error does not name the file: %q", err)
		}
	})
}
