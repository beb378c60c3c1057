package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/bootserve/bootserve/configs"
)

// account is the user bootserve serves as once its ports are bound.
type account struct {
	name     string
	uid, gid int
}

// targetAccount decides who to become. Started as root, bootserve becomes
// name (default "nobody"); name "root" keeps root, but only with allowRoot,
// so running a network daemon as root is a decision, not an accident.
// Started unprivileged (systemd with capabilities), it stays who it is.
func targetAccount(name string, allowRoot bool) (*account, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	if name == "" {
		name = "nobody"
	}
	if name == "root" || name == "0" {
		if !allowRoot {
			return nil, errors.New(`refusing to serve as root: set user (default "nobody") or pass --allow-root`)
		}
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("user %q: %w (set user in the config or --user)", name, err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("user %q has a non-numeric uid/gid", name)
	}
	if uid == 0 && !allowRoot {
		return nil, fmt.Errorf("user %q has uid 0: pass --allow-root to serve as root", name)
	}
	return &account{name: name, uid: uid, gid: gid}, nil
}

// prepareDir creates a directory bootserve writes to and gives it (and what
// it holds) to the account, so a cache made by an earlier root run stays
// usable.
func (a *account) prepareDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if a == nil {
		return nil
	}
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, a.uid, a.gid)
	})
}

// prepareStateFile readies the directory of a state file that bootserve
// replaces by rename (the DHCP lease file), so the account can write it
// after the drop. A directory made here, and bootserve's own default state
// directory, are given to the account; any other existing directory may be
// shared (/var/lib, /tmp), so it is only checked, never chowned. A lease
// file left by an earlier root run is given to the account too.
func (a *account) prepareStateFile(path string) error {
	dir := filepath.Dir(path)
	ours := dir == filepath.Dir(configs.DefaultLeaseFile)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		ours = true
	}
	if a == nil {
		return nil
	}
	if ours {
		if err := os.Lchown(dir, a.uid, a.gid); err != nil {
			return err
		}
	}
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !a.canWrite(st) {
		return fmt.Errorf("directory %s is not writable by user %s: chown it to %s or choose another directory", dir, a.name, a.name)
	}
	if err := os.Lchown(path, a.uid, a.gid); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// canWrite says whether the account may create files in a directory, by
// its mode bits (the account has no supplementary groups after the drop).
func (a *account) canWrite(st fs.FileInfo) bool {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return true // cannot tell: the first lease write will say
	}
	m := st.Mode().Perm()
	switch {
	case int(sys.Uid) == a.uid:
		return m&0o300 == 0o300
	case int(sys.Gid) == a.gid:
		return m&0o030 == 0o030
	}
	return m&0o003 == 0o003
}

// drop switches the whole process (all threads: Go applies setuid to each)
// to the account, without supplementary groups.
func (a *account) drop(log *slog.Logger) error {
	if a == nil {
		log.Info("serving as", "uid", os.Getuid(), "gid", os.Getgid())
		return nil
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("drop supplementary groups: %w", err)
	}
	if err := syscall.Setgid(a.gid); err != nil {
		return fmt.Errorf("setgid %d: %w", a.gid, err)
	}
	if err := syscall.Setuid(a.uid); err != nil {
		return fmt.Errorf("setuid %d: %w", a.uid, err)
	}
	if os.Geteuid() != a.uid || os.Getegid() != a.gid {
		return fmt.Errorf("still uid %d gid %d after dropping privileges", os.Geteuid(), os.Getegid())
	}
	log.Info("dropped privileges", "user", a.name, "uid", a.uid, "gid", a.gid)
	return nil
}

// checkReadableAll reports boot files that cannot be read. Called after
// the drop: a root-only kernel would otherwise fail only when a machine
// boots.
func checkReadableAll(paths []string) error {
	var errs []error
	for _, p := range paths {
		if p == "" || !filepath.IsAbs(p) {
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		f.Close()
	}
	if len(errs) > 0 {
		return fmt.Errorf("after dropping privileges, boot files are not readable (chmod them, or choose another user): %w", errors.Join(errs...))
	}
	return nil
}

// checkNixAccess fails early when the Nix store cannot be used by the
// current user: a single-user Nix owned by root answers nobody's queries
// with "Permission denied" at boot time, which is much harder to read.
func checkNixAccess(root string) error {
	if os.Geteuid() == 0 {
		return nil
	}
	state := filepath.Join(root, "/nix/var/nix")
	if _, err := os.Stat(filepath.Join(state, "daemon-socket/socket")); err == nil {
		return nil // multi-user Nix: the daemon answers any user
	}
	if unix.Access(filepath.Join(state, "db/big-lock"), unix.W_OK) == nil {
		return nil
	}
	return fmt.Errorf("the Nix store under %s is single-user and not writable by uid %d, so Nix refuses queries: "+
		"use a multi-user Nix (nix-daemon), serve as its owner (user = \"root\" with --allow-root), or read the store without Nix (store_backend = \"scan\")", state, os.Geteuid())
}
