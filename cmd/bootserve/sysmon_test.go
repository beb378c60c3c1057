package main

import (
	"slices"
	"testing"
)

func TestSysmonEnv(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      []string
		godebug string // GODEBUG wanted in the result; "" with ok false
		ok      bool
	}{
		{"no GODEBUG", []string{"PATH=/bin", "HOME=/root"}, "GODEBUG=" + sysmonSetting, true},
		{"other settings kept", []string{"GODEBUG=madvdontneed=1,gctrace=0", "PATH=/bin"}, "GODEBUG=madvdontneed=1,gctrace=0," + sysmonSetting, true},
		{"empty GODEBUG", []string{"GODEBUG="}, "GODEBUG=" + sysmonSetting, true},
		{"user turned it off", []string{"GODEBUG=schedtrace=0"}, "", false},
		{"user's own interval", []string{"PATH=/bin", "GODEBUG=gctrace=1, schedtrace=1000"}, "", false},
		{"a longer name is not schedtrace", []string{"GODEBUG=xschedtrace=5"}, "GODEBUG=xschedtrace=5," + sysmonSetting, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, ok := sysmonEnv(slices.Clone(tc.in))
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v (%q)", ok, tc.ok, out)
			}
			if !ok {
				if !slices.Equal(out, tc.in) {
					t.Fatalf("environment changed although not re-executing: %q", out)
				}
				return
			}
			var godebug []string
			for _, kv := range out {
				if len(kv) >= 8 && kv[:8] == "GODEBUG=" {
					godebug = append(godebug, kv)
				}
			}
			if len(godebug) != 1 || godebug[0] != tc.godebug {
				t.Fatalf("GODEBUG entries %q, want exactly %q", godebug, tc.godebug)
			}
			for _, kv := range tc.in {
				if kv[:min(8, len(kv))] != "GODEBUG=" && !slices.Contains(out, kv) {
					t.Fatalf("%q lost from the environment: %q", kv, out)
				}
			}
		})
	}
	for _, c := range []string{"boot", "serve", "nix", "api"} {
		if !servingCommand(c) {
			t.Errorf("%s should re-exec", c)
		}
	}
	for _, c := range []string{"check", "warm", "help", "--help"} {
		if servingCommand(c) {
			t.Errorf("%s should not re-exec", c)
		}
	}
}
