package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"os/signal"
	"reflect"
	"syscall"
	"time"

	"github.com/bootserve/bootserve/configs"
)

// pollInterval is how often the config file is checked for changes; a
// stat and, when it changed, a hash: cheap enough, and no inotify quirks
// with editors that replace files.
const pollInterval = 2 * time.Second

// watchConfig reloads the config on SIGHUP and when the file changes. A bad
// new file is refused with its file:line errors and the old one stays in
// force. Settings that need new sockets (interface, address, ports, [nix],
// [tftp], [dhcp]) only take effect at the next start; a reload says so.
// The boot policy reaches both DHCP servers of full-DHCP mode.
func (sv *server) watchConfig(ctx context.Context, start settings) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	lastSum, _ := fileSum(start.ConfigPath)
	current := start
	var lastErr string
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		var why string
		select {
		case <-ctx.Done():
			return
		case <-hup:
			why = "SIGHUP"
		case <-tick.C:
			sum, err := fileSum(start.ConfigPath)
			if err != nil {
				// Say it once, not every tick: a file bootserve can no
				// longer read (after dropping privileges) is not watched.
				if err.Error() != lastErr {
					sv.log.Error("cannot read the config file to watch it for changes", "err", err)
					lastErr = err.Error()
				}
				continue
			}
			lastErr = ""
			if bytes.Equal(sum, lastSum) {
				continue
			}
			lastSum = sum
			why = "file changed"
		}
		next, ok := sv.reload(current, why)
		if ok {
			current = next
			lastSum, _ = fileSum(start.ConfigPath)
		}
	}
}

func fileSum(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s := sha256.Sum256(b)
	return s[:], nil
}

// reload loads the config again and installs it; ok is false when the new
// file was refused.
func (sv *server) reload(cur settings, why string) (settings, bool) {
	log := sv.log.With("config", cur.ConfigPath, "reason", why)
	c, err := configs.Load(cur.ConfigPath)
	if err != nil {
		log.Error("config reload refused; the previous config stays in force", "err", err)
		return cur, false
	}
	set, err := loadFirmware(sv.log, c.Firmware)
	if err != nil {
		log.Error("config reload refused; the previous config stays in force", "err", err)
		return cur, false
	}
	for _, w := range c.Warnings {
		log.Warn("config: " + w)
	}
	old := cur.File
	for key, changed := range map[string]bool{
		"interface":  c.Interface != old.Interface,
		"address":    c.Address != old.Address,
		"http_port":  c.HTTPPort != old.HTTPPort,
		"[nix]":      !reflect.DeepEqual(c.Nix, old.Nix),
		"[tftp]":     !reflect.DeepEqual(c.TFTP, old.TFTP),
		"[dhcp]":     !reflect.DeepEqual(c.DHCP, old.DHCP),
		"log_level":  c.LogLevel != old.LogLevel,
		"log_format": c.LogFormat != old.LogFormat,
	} {
		if changed {
			log.Warn("changed setting takes effect at the next start", "key", key)
		}
	}
	next := cur
	next.File, next.Firmware, next.Booter, next.API = c, c.Firmware, c.Rules, c.API
	if err := sv.install(next, set); err != nil {
		log.Error("config reload refused; the previous config stays in force", "err", err)
		return cur, false
	}
	sv.summarize(next, set)
	log.Info("config reloaded", "rules", len(c.Rules.Rules), "default", c.Rules.Default != nil)
	return next, true
}
