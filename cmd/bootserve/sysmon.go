package main

import (
	"os"
	"strings"
	"syscall"
)

// sysmonSetting keeps the Go runtime's sysmon thread out of its deep sleep.
//
// Why: when every P is idle (between two boot files), sysmon parks, and the
// next system call wakes it with its poll interval reset to 20 µs; it then
// polls every 20 µs for over a millisecond. Each poll is a thread wake-up,
// and in the paravirtualized guests a homelab serves from, a wake-up is
// dear: it was 15 % of the server's CPU for a 1 MB HTTP file, and what
// made a 174 KB TFTP transfer slower than dnsmasq's. With schedtrace set,
// the runtime never parks sysmon (so it can print on time); its interval
// then grows to 10 ms while idle and is reset only when it has real work.
// The value is the largest the runtime takes: a trace line every 24.8
// days of uptime. Measured in docs/benchmarks.md ("sysmon").
const sysmonSetting = "schedtrace=2147483647"

// servingCommand reports whether cmd runs until stopped, where the sysmon
// setting pays for the one exec it costs.
func servingCommand(cmd string) bool {
	switch cmd {
	case "boot", "serve", "nix", "api":
		return true
	}
	return false
}

// sysmonEnv returns environ with sysmonSetting added to GODEBUG, and false
// if GODEBUG already says something about schedtrace (the user's choice
// wins: GODEBUG=schedtrace=0 turns this off).
func sysmonEnv(environ []string) ([]string, bool) {
	out := make([]string, 0, len(environ)+1)
	godebug := ""
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			godebug = v
			continue
		}
		out = append(out, kv)
	}
	for _, s := range strings.Split(godebug, ",") {
		if k, _, _ := strings.Cut(s, "="); strings.TrimSpace(k) == "schedtrace" {
			return environ, false
		}
	}
	if godebug != "" {
		godebug += ","
	}
	return append(out, "GODEBUG="+godebug+sysmonSetting), true
}

// execWithSysmonSetting re-executes bootserve with the sysmon setting: the
// runtime reads schedtrace only at start. It returns only if it did not
// exec (not a serving command, the user set schedtrace, or exec failed, in
// which case bootserve serves as it is).
func execWithSysmonSetting(args []string) {
	if len(args) < 2 || !servingCommand(args[1]) {
		return
	}
	env, ok := sysmonEnv(os.Environ())
	if !ok {
		return
	}
	// The binary's own path keeps the process's name (ps, pgrep) bootserve;
	// /proc/self/exe (named "exe") is the fallback for a binary replaced
	// by an upgrade since it started.
	if exe, err := os.Executable(); err == nil {
		_ = syscall.Exec(exe, args, env)
	}
	_ = syscall.Exec("/proc/self/exe", args, env)
}
