package dhcpserver

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

func TestLeaseFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.json")
	exp := time.Date(2026, 3, 1, 13, 0, 0, 0, time.UTC)
	in := []Lease{
		{IP: addr("10.9.0.100"), MAC: mac(1), ClientID: []byte{1, 0x52, 0x54, 0, 0x12, 0x34, 1}, Hostname: "node-1", Expires: exp, State: StateBound},
		{IP: addr("10.9.0.101"), MAC: mac(2), Expires: exp, State: StateBound},
		{IP: addr("10.9.0.102"), Expires: exp, State: StateConflict},
	}
	if err := writeLeases(path, in); err != nil {
		t.Fatal(err)
	}
	out, err := readLeases(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("round trip:\n in %+v\nout %+v", in, out)
	}
	if leases, err := readLeases(filepath.Join(t.TempDir(), "none.json")); err != nil || leases != nil {
		t.Errorf("missing file: %v %v", leases, err)
	}
}

// A crash between writing the temporary file and renaming it leaves the
// old file whole and a partial temporary beside it: the old leases load,
// the leftover goes away, and the next save works.
func TestLeaseFileCrashLeavesOldFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "leases.json")
	old := []Lease{{IP: addr("10.9.0.100"), MAC: mac(1), Expires: time.Date(2026, 3, 1, 13, 0, 0, 0, time.UTC), State: StateBound}}
	if err := writeLeases(path, old); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(path)
	leftover := filepath.Join(dir, tempPrefix(path)+"123456")
	if err := os.WriteFile(leftover, good[:len(good)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := readLeases(path)
	if err != nil || !reflect.DeepEqual(got, old) {
		t.Fatalf("after a crash: %+v %v", got, err)
	}
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Errorf("leftover temporary file not removed: %v", err)
	}
	if err := writeLeases(path, append(old, Lease{IP: addr("10.9.0.101"), MAC: mac(2), Expires: old[0].Expires, State: StateBound})); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("directory holds %d files after a save, want 1", len(ents))
	}
}

func TestLeaseFileDamagedRefuses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.json")
	if err := os.WriteFile(path, []byte(`{"version":1,"leases":[{"ip":"10.9.0.1`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := readLeases(path)
	if err == nil || !strings.Contains(err.Error(), "move it away") {
		t.Errorf("damaged file: %v", err)
	}
}

func TestLeaseFileWriteErrorSaysWhatToDo(t *testing.T) {
	err := writeLeases(filepath.Join(t.TempDir(), "no-such-dir", "leases.json"), nil)
	if err == nil || !strings.Contains(err.Error(), "writable") {
		t.Errorf("write into a missing directory: %v", err)
	}
}

// Leases survive a restart of the server (a new Server on the same file);
// expired ones and ones outside a changed pool are dropped.
func TestServerRestartKeepsLeases(t *testing.T) {
	cfg := baseConfig()
	cfg.LeaseFile = filepath.Join(t.TempDir(), "leases.json")
	u := newUnitServer(t, cfg)
	u.lease(t, mac(1))
	a2 := u.lease(t, mac(2)).YourIPAddr
	u.lease(t, mac(3))
	// Written before the ACK: read it back now, with no Serve loop.
	ls, err := readLeases(cfg.LeaseFile)
	if err != nil || len(ls) != 3 {
		t.Fatalf("lease file after 3 ACKs: %+v %v", ls, err)
	}

	u2 := newUnitServer(t, cfg)
	if r, _ := u2.exchange(t, discover(t, mac(2))); r == nil || !r.YourIPAddr.Equal(a2) {
		t.Fatalf("after restart mac 2 offered %v, want %v", r, a2)
	}
	// Nobody else gets the three leased addresses.
	if r, _ := u2.exchange(t, discover(t, mac(9))); r == nil || r.YourIPAddr.String() != "10.9.0.103" {
		t.Errorf("new client after restart offered %v, want 10.9.0.103", r)
	}

	// Two hours later all have expired; a pool change drops none here.
	u3 := newUnitServer(t, cfg)
	u3.clock.advance(2 * time.Hour)
	if err := u3.setup(netip.MustParsePrefix("10.9.0.1/24")); err != nil {
		t.Fatal(err)
	}
	if n := u3.pool.bound(u3.now()); n != 0 {
		t.Errorf("%d leases still bound after expiry", n)
	}
	if !strings.Contains(u3.log.String(), "dropped=3") {
		t.Errorf("expired leases not reported:\n%s", u3.log.String())
	}
}

// BenchmarkAckWritesLeaseFile measures a renewal ACK with 200 leases in
// the file: the file is rewritten and synced before each ACK.
func BenchmarkAckWritesLeaseFile(b *testing.B) {
	cfg := baseConfig()
	cfg.PoolStart, cfg.PoolEnd, cfg.Routers = addr("10.9.0.2"), addr("10.9.0.250"), nil
	cfg.LeaseFile = filepath.Join(b.TempDir(), "leases.json")
	u := newUnitServer(b, cfg)
	u.SetPolicy(nil)
	u.Config.LeaseFile = "" // no file while filling
	for i := range 200 {
		u.lease(b, net.HardwareAddr{2, 0, 0, 0, byte(i >> 8), byte(i)})
	}
	u.Config.LeaseFile = cfg.LeaseFile
	ip := u.Leases()[0].IP
	renew, _ := dhcpv4.New(dhcpv4.WithHwAddr(net.HardwareAddr{2, 0, 0, 0, 0, 0}), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithClientIP(ip.AsSlice()))
	b.ResetTimer()
	for range b.N {
		if r, ev := u.exchange(b, renew); r == nil || ev.Outcome != Acked {
			b.Fatalf("renewal: %+v", ev)
		}
	}
}
