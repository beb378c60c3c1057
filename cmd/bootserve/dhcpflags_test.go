package main

import (
	"flag"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/bootserve/bootserve/configs"
)

func parseDHCPFlags(t *testing.T, args ...string) dhcpFlags {
	t.Helper()
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var d dhcpFlags
	d.register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestDHCPFlags(t *testing.T) {
	var s settings
	if err := s.applyDHCP(parseDHCPFlags(t)); err != nil || s.DHCP.IsServer() {
		t.Fatalf("no flags: %v, mode %q", err, s.DHCP.Mode)
	}
	d := parseDHCPFlags(t, "--dhcp-server-pool", "10.0.0.100-10.0.0.200", "--dhcp-router", "10.0.0.1",
		"--dhcp-dns", "10.0.0.1, 10.0.0.2", "--dhcp-lease-time", "2h", "--dhcp-allow-other-servers")
	if err := s.applyDHCP(d); err != nil {
		t.Fatal(err)
	}
	c := s.DHCP.Server
	if !s.DHCP.IsServer() || c.PoolStart.String() != "10.0.0.100" || c.PoolEnd.String() != "10.0.0.200" || len(c.Routers) != 1 ||
		len(c.DNS) != 2 || c.LeaseTime.Hours() != 2 || !c.AllowOtherServers || c.LeaseFile != configs.DefaultLeaseFile {
		t.Errorf("server config %+v", c)
	}

	// Flags override a config's server keys.
	cfg, err := configs.Parse("b.toml", "[dhcp]\nmode = \"server\"\npool_start = \"10.0.0.100\"\npool_end = \"10.0.0.200\"\nlease_file = \"/x/leases.json\"\n[default]\nlocal = true\n")
	if err != nil {
		t.Fatal(err)
	}
	s = settingsFromConfig(cfg)
	if err := s.applyDHCP(parseDHCPFlags(t, "--dhcp-router", "10.0.0.254")); err != nil {
		t.Fatal(err)
	}
	if c := s.DHCP.Server; c.LeaseFile != "/x/leases.json" || len(c.Routers) != 1 || c.Routers[0].String() != "10.0.0.254" {
		t.Errorf("config with flags %+v", c)
	}

	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"--dhcp-router", "10.0.0.1"}, "add --dhcp-server-pool"},
		{[]string{"--dhcp-server-pool", "10.0.0.100"}, "want START-END"},
		{[]string{"--dhcp-server-pool", "10.0.0.200-10.0.0.100"}, "swap them"},
		{[]string{"--dhcp-server-pool", "10.0.0.100-10.0.0.200", "--dhcp-dns", "10.0.0.1,dns"}, "--dhcp-dns"},
		{[]string{"--dhcp-server-pool", "10.0.0.100-10.0.0.200", "--dhcp-lease-time", "10s"}, "too short"},
		{[]string{"--dhcp-server-pool", "10.0.0.100-10.0.0.200", "--dhcp-lease-file", ""}, "give a path"},
	} {
		var s settings
		err := s.applyDHCP(parseDHCPFlags(t, bad.args...))
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: error %v, want %q", bad.args, err, bad.want)
		}
	}
}

// The lease directory is made for, and given to, the user bootserve
// becomes; an existing shared directory is checked, never chowned.
func TestPrepareStateFile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it changes owners")
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	a := &account{name: "nobody", uid: uid, gid: gid}
	root := t.TempDir()
	os.Chmod(root, 0o755)

	lease := filepath.Join(root, "state", "sub", "leases.json")
	if err := a.prepareStateFile(lease); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Dir(lease))
	if err != nil || st.Sys().(*syscall.Stat_t).Uid != uint32(uid) {
		t.Fatalf("made directory %v owned by %v, want uid %d", err, st.Sys().(*syscall.Stat_t).Uid, uid)
	}

	// An existing root-owned directory is not taken over.
	shared := filepath.Join(root, "shared")
	os.Mkdir(shared, 0o755)
	err = a.prepareStateFile(filepath.Join(shared, "leases.json"))
	if err == nil || !strings.Contains(err.Error(), "not writable by user nobody") {
		t.Errorf("root-owned directory: %v", err)
	}
	if st, _ := os.Stat(shared); st.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Error("a shared directory was chowned")
	}
	// A world-writable one (like /tmp) is fine, and a lease file left by a
	// root run there is given to the user.
	os.Chmod(shared, 0o1777)
	old := filepath.Join(shared, "leases.json")
	os.WriteFile(old, []byte("{}"), 0o644)
	if err := a.prepareStateFile(old); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(old); st.Sys().(*syscall.Stat_t).Uid != uint32(uid) {
		t.Error("the old lease file was not given to the user")
	}
}
