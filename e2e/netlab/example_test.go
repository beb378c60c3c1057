package netlab_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bootserve/bootserve/e2e/netlab"
)

// A typical end-to-end test: the server under test runs in the server namespace next to the
// lab's plain DHCP router, and a UEFI VM must boot the kernel with this test's token.
func Example() {
	var t *testing.T // the test's *testing.T
	assets := netlab.Assets(t)
	lab := netlab.New(t, netlab.Options{})
	ctx := context.Background()

	srv := lab.Start(t, lab.ServerCmd(ctx, "/path/to/bootserve",
		"-iface", lab.ServerIface(), "-kernel", assets.Kernel, "-initrd", assets.Initrd,
		"-cmdline", "bootserve.marker=vm1"))
	_ = srv.WaitLog(ctx, netlab.Text("serving"))

	r := lab.MustBoot(t, ctx, netlab.VM{Name: "vm1", Firmware: netlab.UEFI})
	if !strings.Contains(r.MarkerLine, "bootserve.marker=vm1") {
		t.Errorf("wrong boot: %s", r.MarkerLine)
	}
	t.Logf("booted in %.1f s, capture in %s", r.Seconds(), r.Pcap)
}

// Following a boot step by step, and checking that something does not happen.
func ExampleMachine_Expect() {
	var t *testing.T
	lab := netlab.New(t, netlab.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var looped bool
	m, err := lab.StartVM(ctx, netlab.VM{Firmware: netlab.BIOS, OnLine: func(l netlab.Line) {
		looped = looped || strings.Contains(l.Text, "undionly.kpxe")
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []netlab.Pattern{netlab.Text("iPXE initialising"), netlab.Regexp(`^NETBOOT-OK `)} {
		if _, err := m.Expect(ctx, p); err != nil {
			t.Fatalf("%v\n%s", err, m.Stop().Tail(20))
		}
	}
	if r := m.Wait(); looped {
		t.Errorf("iPXE chainloaded iPXE again; serial log %s", r.SerialLog)
	}
}
