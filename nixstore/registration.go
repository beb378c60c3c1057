package nixstore

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
)

// Where a netbooted machine finds its registration. These are nix-netboot-serve's paths,
// so NixOS configurations written for it (boot.postBootCommands =
// "PATH=${pkgs.nix}/bin /nix/.nix-netboot-serve-db/register") keep working. Unlike
// nix-netboot-serve, which ships one file per store path in a registration/ directory,
// bootserve ships one combined file: a combined dump loads in any order, while per-path
// dumps must be loaded references first.
const (
	RegistrationDir    = "/nix/.nix-netboot-serve-db"
	RegistrationFile   = RegistrationDir + "/registration"
	RegisterScriptFile = RegistrationDir + "/register"
)

// PathInfo is what the Nix database records about a valid store path, as far as a
// registration carries it.
type PathInfo struct {
	Path       string   // full store path
	NARHash    string   // SHA-256 of the path's NAR serialisation, lowercase hex
	NARSize    uint64   // length of the NAR serialisation in bytes
	Deriver    string   // the .drv that built it, "" if unknown
	References []string // store paths it refers to (itself included if it does), sorted
}

// FormatRegistration renders infos in the format of `nix-store --dump-db`, which
// `nix-store --load-db` reads. For each path, one value per line:
//
//	<store path>
//	<NAR hash: SHA-256, 64 lowercase hex digits, no "sha256:" prefix>
//	<NAR size, decimal>
//	<deriver store path, or an empty line>
//	<number of references, decimal>
//	<one reference store path per line>
//
// Records follow one another with no separator. Every record has exactly one 64-hex-digit
// line (its hash) and no other line can look like one, so counting such lines counts the
// paths.
func FormatRegistration(infos []PathInfo) []byte {
	var b bytes.Buffer
	for _, in := range infos {
		fmt.Fprintf(&b, "%s\n%s\n%d\n%s\n%d\n", in.Path, in.NARHash, in.NARSize, in.Deriver, len(in.References))
		for _, r := range in.References {
			b.WriteString(r)
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

// ParseRegistration reads the `nix-store --dump-db` format (see FormatRegistration).
func ParseRegistration(data []byte) ([]PathInfo, error) {
	lines := strings.Split(string(data), "\n")
	if len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	} else if len(data) > 0 {
		return nil, fmt.Errorf("registration: missing final newline")
	}
	var out []PathInfo
	i := 0
	next := func(what string) (string, error) {
		if i >= len(lines) {
			return "", fmt.Errorf("registration: line %d: want %s, got end of input", i+1, what)
		}
		i++
		return lines[i-1], nil
	}
	for i < len(lines) {
		var in PathInfo
		var err error
		if in.Path, err = next("store path"); err != nil {
			return nil, err
		}
		if !strings.HasPrefix(in.Path, "/") {
			return nil, fmt.Errorf("registration: line %d: want a store path, got %q", i, shorten(in.Path, 80))
		}
		if in.NARHash, err = next("NAR hash"); err != nil {
			return nil, err
		}
		if !isHexSHA256(in.NARHash) {
			return nil, fmt.Errorf("registration: line %d: want a hex SHA-256, got %q", i, shorten(in.NARHash, 80))
		}
		s, err := next("NAR size")
		if err != nil {
			return nil, err
		}
		if in.NARSize, err = strconv.ParseUint(s, 10, 64); err != nil {
			return nil, fmt.Errorf("registration: line %d: NAR size: %w", i, err)
		}
		if in.Deriver, err = next("deriver"); err != nil {
			return nil, err
		}
		if s, err = next("reference count"); err != nil {
			return nil, err
		}
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("registration: line %d: reference count: %w", i, err)
		}
		if n > uint64(len(lines)-i) {
			return nil, fmt.Errorf("registration: line %d: %d references announced, %d lines left", i, n, len(lines)-i)
		}
		in.References = make([]string, n)
		for k := range in.References {
			in.References[k], _ = next("reference")
		}
		out = append(out, in)
	}
	return out, nil
}

func isHexSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// RegisterScript returns the content of RegisterScriptFile, which loads RegistrationFile
// into the Nix database with `nix-store --load-db`, taking nix-store from PATH.
//
// With interpreter "" (recommended) the script has no "#!" line. A netboot root has no
// /bin/sh until NixOS's activation script creates it, and the NixOS closure is the only
// place a shell could come from, at a store path this package cannot know. Shells run a
// file without "#!" themselves when execve reports ENOEXEC (POSIX): bash in a subshell,
// busybox sh by re-executing itself through /proc/self/exe (so /proc must be mounted, as
// it is in NixOS's stages 1 and 2). So the documented caller —
// `PATH=${pkgs.nix}/bin /nix/.nix-netboot-serve-db/register` in boot.postBootCommands,
// run by NixOS's stage-2 bash — works, and so does any other shell at any stage. Only a caller that execs it without a shell (a systemd ExecStart=)
// needs "sh /nix/.nix-netboot-serve-db/register" or an interpreter given here, e.g. the
// store path of a shell known to be in the closure.
//
// The file must be installed executable (mode 0555): the shell needs execve to get as
// far as ENOEXEC.
func RegisterScript(interpreter string) []byte {
	var b strings.Builder
	if interpreter != "" {
		b.WriteString("#!" + interpreter + "\n")
	}
	b.WriteString("# Written by bootserve: registers this netbooted closure in the Nix database.\n")
	b.WriteString("# No #! line on purpose: any shell runs it (ENOEXEC fallback), even without /bin/sh.\n")
	b.WriteString("nix-store --load-db < " + RegistrationFile + "\n")
	return []byte(b.String())
}

// Registration returns the registration of paths (usually a whole closure, see Closure)
// in the `nix-store --dump-db` format, records in the order of paths. With BackendCLI it
// is Nix's own `nix-store --dump-db`; with BackendScan it is computed from the files.
func (s *Store) Registration(ctx context.Context, paths []string) ([]byte, error) {
	for _, p := range paths {
		if _, err := s.parseStorePath(p); err != nil {
			return nil, err
		}
	}
	if s.backend == BackendScan {
		infos, err := s.scanPathInfos(ctx, paths)
		if err != nil {
			return nil, err
		}
		return FormatRegistration(infos), nil
	}
	return s.dumpDB(ctx, paths)
}

// PathInfos returns what the registration of paths says about each, in order.
func (s *Store) PathInfos(ctx context.Context, paths []string) ([]PathInfo, error) {
	for _, p := range paths {
		if _, err := s.parseStorePath(p); err != nil {
			return nil, err
		}
	}
	if s.backend == BackendScan {
		return s.scanPathInfos(ctx, paths)
	}
	reg, err := s.dumpDB(ctx, paths)
	if err != nil {
		return nil, err
	}
	infos, err := ParseRegistration(reg)
	if err != nil {
		return nil, fmt.Errorf("nix-store --dump-db: %w", err)
	}
	if len(infos) != len(paths) {
		return nil, fmt.Errorf("nix-store --dump-db: asked for %d paths, got %d records", len(paths), len(infos))
	}
	return infos, nil
}

// maxDumpArgBytes keeps one nix-store command line well under Linux's argument limits.
// nix-store --dump-db prints one record per argument in argument order, so the outputs of
// several batches concatenate to exactly the output of one call.
const maxDumpArgBytes = 256 << 10

func (s *Store) dumpDB(ctx context.Context, paths []string) ([]byte, error) {
	var out bytes.Buffer
	for len(paths) > 0 {
		n, size := 0, 0
		for n < len(paths) && (n == 0 || size+len(paths[n])+1 <= s.dumpArgBytes) {
			size += len(paths[n]) + 1
			n++
		}
		args := append(s.storeArgs(), "--dump-db")
		args = append(args, paths[:n]...)
		b, err := s.run(ctx, s.nixStore, args)
		if err != nil {
			if l, ok := stderrLine(err, "is not valid"); ok {
				return nil, notFoundf(err, "registration: %s", shorten(l, 300))
			}
			return nil, fmt.Errorf("registration of %d paths: %w", len(paths), err)
		}
		out.Write(b)
		paths = paths[n:]
	}
	return out.Bytes(), nil
}
