package dhcpserver

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// leaseFileVersion is the format version written in the file.
const leaseFileVersion = 1

type leaseFile struct {
	Version int         `json:"version"`
	Leases  []fileLease `json:"leases"`
}

type fileLease struct {
	IP       netip.Addr `json:"ip"`
	MAC      string     `json:"mac,omitempty"`
	ClientID string     `json:"client_id,omitempty"` // hex
	Hostname string     `json:"hostname,omitempty"`
	Expires  time.Time  `json:"expires"`
	State    LeaseState `json:"state"`
}

// tempPrefix names the temporary files saveLeases writes beside path.
func tempPrefix(path string) string { return "." + filepath.Base(path) + ".tmp-" }

// readLeases reads a lease file; a missing file is no leases. Temporary
// files left by a crash in the middle of a save are removed: the file they
// were to replace is still whole.
func readLeases(path string) ([]Lease, error) {
	dir := filepath.Dir(path)
	if ents, err := os.ReadDir(dir); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), tempPrefix(path)) {
				_ = os.Remove(filepath.Join(dir, e.Name()))
			}
		}
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read lease file: %w (check dhcp.lease_file)", err)
	}
	var f leaseFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("lease file %s is damaged: %w: move it away to start with no leases", path, err)
	}
	if f.Version != leaseFileVersion {
		return nil, fmt.Errorf("lease file %s has format version %d, this bootserve reads %d: move it away to start with no leases", path, f.Version, leaseFileVersion)
	}
	out := make([]Lease, 0, len(f.Leases))
	for i, fl := range f.Leases {
		l := Lease{IP: fl.IP, Hostname: fl.Hostname, Expires: fl.Expires, State: fl.State}
		if fl.MAC != "" {
			if l.MAC, err = net.ParseMAC(fl.MAC); err != nil {
				return nil, fmt.Errorf("lease file %s: lease %d: %w: move it away to start with no leases", path, i, err)
			}
		}
		if fl.ClientID != "" {
			if l.ClientID, err = hex.DecodeString(fl.ClientID); err != nil {
				return nil, fmt.Errorf("lease file %s: lease %d: client_id: %w: move it away to start with no leases", path, i, err)
			}
		}
		out = append(out, l)
	}
	return out, nil
}

// writeLeases replaces the lease file atomically: a new file is written
// and synced beside it, renamed over it, and the directory synced, so a
// crash at any point leaves either the old or the new file whole.
func writeLeases(path string, ls []Lease) error {
	f := leaseFile{Version: leaseFileVersion, Leases: make([]fileLease, 0, len(ls))}
	for _, l := range ls {
		fl := fileLease{IP: l.IP, Hostname: l.Hostname, Expires: l.Expires.UTC(), State: l.State}
		if l.MAC != nil {
			fl.MAC = l.MAC.String()
		}
		if l.ClientID != nil {
			fl.ClientID = hex.EncodeToString(l.ClientID)
		}
		f.Leases = append(f.Leases, fl)
	}
	b, err := json.MarshalIndent(f, "", " ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, tempPrefix(path))
	if err != nil {
		return fmt.Errorf("write lease file: %w (make %s writable by the user bootserve runs as, or set dhcp.lease_file)", err, dir)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(b); err != nil {
		return fmt.Errorf("write lease file %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync lease file %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close lease file %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replace lease file: %w", err)
	}
	done = true
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync lease directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync lease directory %s: %w", dir, err)
	}
	return nil
}
