package status

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bootserve/bootserve/dhcpproxy"
	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/httpboot"
	"github.com/bootserve/bootserve/tftpd"
)

func mustMAC(t testing.TB, s string) net.HardwareAddr {
	t.Helper()
	hw, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return hw
}

// boot feeds one machine's events with explicit times, as the servers
// would emit them.
type boot struct {
	t    testing.TB
	tr   *Tracker
	mac  net.HardwareAddr
	ip   netip.Addr
	base time.Time
}

func newBoot(t testing.TB, tr *Tracker, mac, ip string, base time.Time) *boot {
	return &boot{t: t, tr: tr, mac: mustMAC(t, mac), ip: netip.MustParseAddr(ip), base: base}
}

func (b *boot) at(sec float64) time.Time {
	return b.base.Add(time.Duration(sec * float64(time.Second)))
}

func (b *boot) dhcp(sec float64, msgType, userClass string, withIP bool, outcome dhcpproxy.Outcome) {
	ev := dhcpproxy.Event{
		Time: b.at(sec), MAC: b.mac, Arch: firmware.BIOS, ArchName: "Intel x86PC (0)", UUID: "8a7c9b1e-0000-4000-8000-000000000001",
		Hostname: "node1", UserClass: userClass, VendorClass: "PXEClient:Arch:00000:UNDI:002001",
		Port: 67, MsgType: msgType, Outcome: outcome,
	}
	if withIP {
		ev.IP = b.ip
	}
	switch outcome {
	case dhcpproxy.Answered:
		ev.Target, ev.BootFile = "web", "bios/undionly.kpxe"
		if userClass == "iPXE" {
			ev.BootFile = "http://10.0.0.1/ipxe?mac=" + b.mac.String()
		}
	case dhcpproxy.IgnoredNoTarget:
		ev.Reason = "no rule matches " + b.mac.String()
	}
	b.tr.DHCP(ev)
}

func (b *boot) tftp(sec, dur float64, file string, size int64, outcome tftpd.Outcome, err error) {
	start := b.at(sec)
	client := netip.AddrPortFrom(b.ip, 2070)
	b.tr.TFTP(tftpd.Transfer{Client: client, File: file, Size: size, Start: start})
	b.tr.TFTP(tftpd.Transfer{Client: client, File: file, Size: size, Bytes: size, Start: start,
		Duration: time.Duration(dur * float64(time.Second)), Done: true, Outcome: outcome, Err: err})
}

func (b *boot) script(sec float64) {
	b.tr.HTTP(httpboot.Event{Time: b.at(sec), Stage: httpboot.StageScript, Phase: "done", MAC: b.mac.String(),
		IP: b.ip, Name: "script", Target: "web", Status: 200})
}

// file sends start, progress every quarter and done; mac may be empty to
// correlate by address only.
func (b *boot) file(stage httpboot.Stage, name, mac string, sec, dur float64, size int64) {
	ev := httpboot.Event{Stage: stage, MAC: mac, IP: b.ip, Name: name, Size: size}
	ev.Time, ev.Phase = b.at(sec), "start"
	b.tr.HTTP(ev)
	for i := 1; i < 4; i++ {
		ev.Time, ev.Phase, ev.Bytes = b.at(sec+dur*float64(i)/4), "progress", size*int64(i)/4
		b.tr.HTTP(ev)
	}
	ev.Time, ev.Phase, ev.Bytes, ev.Status = b.at(sec+dur), "done", size, 200
	b.tr.HTTP(ev)
}

// toKernel runs a boot up to a complete kernel: DHCP at 0 s, the script at
// 1 s, a 5 MB kernel from 2 to 3 s.
func toKernel(t testing.TB, tr *Tracker, mac, ip string, base time.Time) *boot {
	b := newBoot(t, tr, mac, ip, base)
	b.dhcp(0, "discover", "iPXE", false, dhcpproxy.Answered)
	b.script(1)
	b.file(httpboot.StageKernel, "vmlinuz", b.mac.String(), 2, 1, 5_000_000)
	return b
}

func rowOf(t testing.TB, tr *Tracker, key string) Machine {
	t.Helper()
	for _, m := range tr.Snapshot().Machines {
		if m.Key == key {
			return m
		}
	}
	t.Fatalf("no row %q in %+v", key, tr.Snapshot().Machines)
	return Machine{}
}

// waitStage polls until the row reaches stage; the "booted" decision is
// taken on a timer.
func waitStage(t testing.TB, tr *Tracker, key string, stage Stage) Machine {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		m := rowOf(t, tr, key)
		if m.Stage == stage {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("row %s stayed at %q, want %q: %+v", key, m.Stage, stage, m)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func stagesOf(m Machine) string {
	var s []string
	for _, st := range m.Stages {
		s = append(s, fmt.Sprintf("%s@%g", st.Stage, st.Offset))
	}
	return strings.Join(s, " ")
}

// A BIOS boot: the PXE ROM's DISCOVER has no address, the boot program
// comes over TFTP from an address nothing has named yet, iPXE's own
// DISCOVER is part of the same boot, and the script request finally ties
// the address to the MAC.
func TestTrackerCorrelatesABIOSBoot(t *testing.T) {
	reg := prometheus.NewRegistry()
	var mu sync.Mutex
	var boots []Boot
	tr := New(Options{Settle: 300 * time.Millisecond, Metrics: NewMetrics(reg), OnBooted: func(b Boot) {
		mu.Lock()
		boots = append(boots, b)
		mu.Unlock()
	}})
	b := newBoot(t, tr, "52:54:00:12:34:56", "10.0.0.5", time.Now().Add(-time.Minute))
	mac := b.mac.String()

	b.dhcp(0, "discover", "", false, dhcpproxy.Answered)
	b.tftp(1, 0.5, "bios/undionly.kpxe", 70000, tftpd.OutcomeOK, nil)
	if s := tr.Snapshot(); len(s.Machines) != 2 {
		t.Fatalf("before the address is known, want the MAC's row and the address's row, got %+v", s.Machines)
	}
	ipRow := rowOf(t, tr, "ip:10.0.0.5")
	if ipRow.Stage != StageFirmware || ipRow.MAC != "" || ipRow.Transfer == nil || ipRow.Transfer.Bytes != 70000 || !ipRow.Transfer.Done {
		t.Fatalf("address row: %+v", ipRow)
	}

	b.dhcp(2, "discover", "iPXE", false, dhcpproxy.Answered)
	b.script(3)
	s := tr.Snapshot()
	if len(s.Machines) != 1 {
		t.Fatalf("the script request names MAC and address: want one row, got %+v", s.Machines)
	}
	m := s.Machines[0]
	if m.Key != mac || m.IP != "10.0.0.5" || m.Boot != 1 || m.Stage != StageScript || m.UserClass != "iPXE" || m.Target != "web" {
		t.Fatalf("merged row: %+v", m)
	}
	if got, want := stagesOf(m), "offered@0 firmware@1 script@3"; got != want {
		t.Fatalf("stages %q, want %q", got, want)
	}

	b.file(httpboot.StageKernel, "vmlinuz", mac, 3.5, 0.5, 12_000_000)
	// The initrd carries only the address here: it must still land on the MAC's row.
	ev := httpboot.Event{Time: b.at(4), Stage: httpboot.StageInitrd, Phase: "start", IP: b.ip, Name: "initrd.zst", Size: 100_000_000}
	tr.HTTP(ev)
	ev.Time, ev.Phase, ev.Bytes = b.at(14), "progress", 40_000_000
	tr.HTTP(ev)
	m = rowOf(t, tr, mac)
	if m.Stage != StageInitrd || m.Transfer == nil || m.Transfer.Name != "initrd.zst" || m.Transfer.Bytes != 40_000_000 ||
		m.Transfer.Size != 100_000_000 || m.Transfer.Done {
		t.Fatalf("during the initrd: %+v %+v", m, m.Transfer)
	}
	if m.Transfer.BytesPerSec != 4_000_000 {
		t.Fatalf("speed %v B/s, want 4e6 (40 MB in 10 s)", m.Transfer.BytesPerSec)
	}
	ev.Time, ev.Phase, ev.Bytes, ev.Status = b.at(29), "done", 100_000_000, 200
	tr.HTTP(ev)

	m = waitStage(t, tr, mac, StageBooted)
	if got, want := stagesOf(m), "offered@0 firmware@1 script@3 kernel@3.5 initrd@4 booted@29"; got != want {
		t.Fatalf("stages %q, want %q", got, want)
	}
	if m.BootSeconds != 29 || !m.FromDHCP {
		t.Fatalf("boot seconds %v (from DHCP %v), want 29", m.BootSeconds, m.FromDHCP)
	}
	mu.Lock()
	if len(boots) != 1 || boots[0].Duration != 29*time.Second || boots[0].MAC != mac || boots[0].IP != b.ip || boots[0].Target != "web" {
		t.Fatalf("OnBooted got %+v", boots)
	}
	mu.Unlock()
	if n := testutil.CollectAndCount(reg, "bootserve_boot_duration_seconds"); n != 1 {
		t.Fatalf("histogram series: %d", n)
	}
	want := `
# HELP bootserve_boot_duration_seconds Time from a machine's first DHCP packet of a boot to the end of its last initrd (or kernel) transfer.
# TYPE bootserve_boot_duration_seconds histogram
bootserve_boot_duration_seconds_bucket{le="5"} 0
bootserve_boot_duration_seconds_bucket{le="10"} 0
bootserve_boot_duration_seconds_bucket{le="15"} 0
bootserve_boot_duration_seconds_bucket{le="20"} 0
bootserve_boot_duration_seconds_bucket{le="30"} 1
bootserve_boot_duration_seconds_bucket{le="45"} 1
bootserve_boot_duration_seconds_bucket{le="60"} 1
bootserve_boot_duration_seconds_bucket{le="90"} 1
bootserve_boot_duration_seconds_bucket{le="120"} 1
bootserve_boot_duration_seconds_bucket{le="180"} 1
bootserve_boot_duration_seconds_bucket{le="300"} 1
bootserve_boot_duration_seconds_bucket{le="600"} 1
bootserve_boot_duration_seconds_bucket{le="1200"} 1
bootserve_boot_duration_seconds_bucket{le="+Inf"} 1
bootserve_boot_duration_seconds_sum 29
bootserve_boot_duration_seconds_count 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "bootserve_boot_duration_seconds"); err != nil {
		t.Fatal(err)
	}
	if s := tr.Snapshot(); s.Counts != (Counts{Booted: 1}) || s.Events[0].Source != "boot" || !strings.Contains(s.Events[0].Message, "29.0s") {
		t.Fatalf("counts %+v, newest event %+v", s.Counts, s.Events[0])
	}
}

// UEFI PXE: the REQUEST on port 4011 carries the address, so the TFTP
// transfer lands on the MAC's row at once.
func TestTrackerLearnsAddressFromDHCP(t *testing.T) {
	tr := New(Options{})
	b := newBoot(t, tr, "52:54:00:00:00:02", "10.0.0.6", time.Now())
	b.dhcp(0, "discover", "", false, dhcpproxy.Answered)
	b.dhcp(0.2, "request", "", true, dhcpproxy.Answered)
	b.tftp(0.5, 0.1, "efi-x64/ipxe.efi", 1_000_000, tftpd.OutcomeOK, nil)
	s := tr.Snapshot()
	if len(s.Machines) != 1 || s.Machines[0].Stage != StageFirmware || s.Machines[0].Transfer.Name != "efi-x64/ipxe.efi" {
		t.Fatalf("%+v", s.Machines)
	}
}

func TestTrackerBootedDefinition(t *testing.T) {
	settle := 200 * time.Millisecond
	tr := New(Options{Settle: settle})
	base := time.Now()

	// No initrd: booted when the kernel was sent in full.
	k := toKernel(t, tr, "52:54:00:00:00:10", "10.0.0.10", base)
	if m := waitStage(t, tr, k.mac.String(), StageBooted); m.BootSeconds != 3 {
		t.Fatalf("kernel-only boot: %v s, want 3", m.BootSeconds)
	}

	// Two initrds: the first one done is not the end.
	d := newBoot(t, tr, "52:54:00:00:00:11", "10.0.0.11", base)
	mac := d.mac.String()
	d.dhcp(0, "discover", "iPXE", false, dhcpproxy.Answered)
	d.script(1)
	d.file(httpboot.StageKernel, "vmlinuz", mac, 2, 1, 5_000_000)
	d.file(httpboot.StageInitrd, "initrd", mac, 3, 1, 20_000_000)
	tr.HTTP(httpboot.Event{Time: d.at(4.01), Stage: httpboot.StageInitrd, Phase: "start", MAC: mac, IP: d.ip, Name: "modules.cpio", Size: 9_000_000})
	time.Sleep(2 * settle)
	if m := rowOf(t, tr, mac); m.Stage != StageInitrd {
		t.Fatalf("second initrd running: stage %q", m.Stage)
	}
	tr.HTTP(httpboot.Event{Time: d.at(6), Stage: httpboot.StageInitrd, Phase: "done", MAC: mac, IP: d.ip, Name: "modules.cpio", Size: 9_000_000, Bytes: 9_000_000, Status: 200})
	if m := waitStage(t, tr, mac, StageBooted); m.BootSeconds != 6 {
		t.Fatalf("two-initrd boot: %v s, want 6", m.BootSeconds)
	}

	// An initrd cut short is an error, never "booted".
	c := newBoot(t, tr, "52:54:00:00:00:12", "10.0.0.12", base)
	mac = c.mac.String()
	c.dhcp(0, "discover", "iPXE", false, dhcpproxy.Answered)
	c.script(1)
	c.file(httpboot.StageKernel, "vmlinuz", mac, 2, 1, 5_000_000)
	tr.HTTP(httpboot.Event{Time: c.at(3), Stage: httpboot.StageInitrd, Phase: "start", MAC: mac, IP: c.ip, Name: "initrd", Size: 9_000_000})
	tr.HTTP(httpboot.Event{Time: c.at(4), Stage: httpboot.StageInitrd, Phase: "done", MAC: mac, IP: c.ip, Name: "initrd", Size: 9_000_000, Bytes: 1_000_000, Status: 200, Err: "write: broken pipe"})
	time.Sleep(2 * settle)
	m := rowOf(t, tr, mac)
	if m.Stage != StageInitrd || !strings.Contains(m.Error, "broken pipe") || m.Transfer.Error == "" {
		t.Fatalf("cut initrd: %+v", m)
	}
	// The retry fetches the script again: a new attempt of the same boot.
	c.script(10)
	m = rowOf(t, tr, mac)
	if m.Stage != StageScript || m.Attempt != 1 || m.Boot != 1 || stagesOf(m) != "offered@0 script@1" {
		t.Fatalf("after the retry: %+v (%s)", m, stagesOf(m))
	}
}

func TestTrackerRestart(t *testing.T) {
	tr := New(Options{Settle: 100 * time.Millisecond, RestartAfter: time.Minute})
	base := time.Now().Add(-time.Hour)
	b := newBoot(t, tr, "52:54:00:00:00:20", "10.0.0.20", base)
	mac := b.mac.String()
	b.dhcp(0, "discover", "iPXE", true, dhcpproxy.Answered)
	b.script(1)
	b.file(httpboot.StageKernel, "vmlinuz", mac, 2, 1, 1000)
	b.file(httpboot.StageInitrd, "initrd", mac, 3, 1, 1000)
	waitStage(t, tr, mac, StageBooted)

	// Rebooted: a DISCOVER after "booted" starts boot 2.
	b.dhcp(100, "discover", "", false, dhcpproxy.Answered)
	m := rowOf(t, tr, mac)
	if m.Boot != 2 || m.Stage != StageOffered || !m.Start.Equal(b.at(100)) || m.Transfer != nil || stagesOf(m) != "offered@0" || m.BootSeconds != 0 {
		t.Fatalf("after reboot: %+v", m)
	}
	// Retransmitted DISCOVERs and iPXE's DISCOVER after the boot program
	// belong to the same boot.
	b.dhcp(104, "discover", "", false, dhcpproxy.Answered)
	b.tftp(105, 0.2, "bios/undionly.kpxe", 1000, tftpd.OutcomeOK, nil)
	b.dhcp(107, "discover", "iPXE", false, dhcpproxy.Answered)
	if m := rowOf(t, tr, mac); m.Boot != 2 || stagesOf(m) != "offered@0 firmware@5" {
		t.Fatalf("same boot: %+v (%s)", m, stagesOf(m))
	}
	// The PXE ROM asking again after its boot program: the machine was reset.
	b.dhcp(120, "discover", "", false, dhcpproxy.Answered)
	if m := rowOf(t, tr, mac); m.Boot != 3 || stagesOf(m) != "offered@0" {
		t.Fatalf("reset: %+v (%s)", m, stagesOf(m))
	}
	// Silence longer than RestartAfter, even from iPXE before any kernel.
	b.dhcp(121, "discover", "iPXE", false, dhcpproxy.Answered)
	if m := rowOf(t, tr, mac); m.Boot != 3 {
		t.Fatalf("iPXE DISCOVER right after: boot %d", m.Boot)
	}
	b.dhcp(500, "discover", "iPXE", false, dhcpproxy.Answered)
	if m := rowOf(t, tr, mac); m.Boot != 4 || !m.Start.Equal(b.at(500)) {
		t.Fatalf("after silence: %+v", m)
	}
}

func TestTrackerIgnoredMachines(t *testing.T) {
	tr := New(Options{})
	b := newBoot(t, tr, "52:54:00:00:00:30", "10.0.0.30", time.Now())
	mac := b.mac.String()
	b.dhcp(0, "discover", "", false, dhcpproxy.IgnoredNoTarget)
	b.dhcp(4, "discover", "", false, dhcpproxy.IgnoredNoTarget)
	m := rowOf(t, tr, mac)
	if m.Stage != StageIgnored || m.Reason != "no rule matches "+mac || !m.LastSeen.Equal(b.at(4)) || !m.Start.Equal(b.at(0)) {
		t.Fatalf("%+v", m)
	}
	tr.DHCP(dhcpproxy.Event{Time: time.Now(), MAC: mustMAC(t, "52:54:00:00:00:31"), ArchName: "ARM 32 EFI (10)", MsgType: "discover", Outcome: dhcpproxy.IgnoredNoBinary})
	if m := rowOf(t, tr, "52:54:00:00:00:31"); m.Stage != StageIgnored || m.Reason != "no boot program for its architecture" || m.Arch != "ARM 32 EFI (10)" {
		t.Fatalf("%+v", m)
	}
	s := tr.Snapshot()
	if s.Counts != (Counts{Ignored: 2}) || s.Events[0].Level != "warn" || !strings.Contains(s.Events[0].Message, "ignored") {
		t.Fatalf("%+v %+v", s.Counts, s.Events[0])
	}
	// A config reload gives it a target: the next DISCOVER is answered.
	b.dhcp(30, "discover", "", false, dhcpproxy.Answered)
	if m := rowOf(t, tr, mac); m.Stage != StageOffered || m.Reason != "" || !m.Start.Equal(b.at(30)) {
		t.Fatalf("%+v", m)
	}
}

func TestTrackerTFTPFailures(t *testing.T) {
	tr := New(Options{})
	b := newBoot(t, tr, "52:54:00:00:00:40", "10.0.0.40", time.Now())
	b.dhcp(0, "request", "", true, dhcpproxy.Answered)
	nEvents := len(tr.Snapshot().Events)
	// EDK2's size probe: no line, no error.
	b.tftp(1, 0.01, "efi-x64/ipxe.efi", 1000, tftpd.OutcomeAbortedProbe, errors.New("client aborted"))
	s := tr.Snapshot()
	if len(s.Events) != nEvents+1 || s.Machines[0].Error != "" {
		t.Fatalf("probe: events %+v, row %+v", s.Events, s.Machines[0])
	}
	tr.TFTP(tftpd.Transfer{Client: netip.AddrPortFrom(b.ip, 2000), File: "nope.efi", Size: -1, Start: b.at(2), Done: true,
		Outcome: tftpd.OutcomeNotFound, Err: errors.New("file does not exist")})
	m := rowOf(t, tr, b.mac.String())
	if !strings.Contains(m.Error, "nope.efi: not found: file does not exist") {
		t.Fatalf("%+v", m)
	}
	if e := tr.Snapshot().Events[0]; e.Level != "error" || e.Source != "tftp" || e.MAC != b.mac.String() {
		t.Fatalf("%+v", e)
	}
}

func TestTrackerBounds(t *testing.T) {
	tr := New(Options{MaxErrors: 10})
	base := time.Now().Add(-time.Hour)
	for i := range 1000 {
		mac := net.HardwareAddr{0x52, 0x54, 0, 0, byte(i >> 8), byte(i)}
		ip := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
		at := base.Add(time.Duration(i) * time.Second)
		tr.DHCP(dhcpproxy.Event{Time: at, MAC: mac, IP: ip, MsgType: "request", Port: 4011, Outcome: dhcpproxy.Answered})
		tr.TFTP(tftpd.Transfer{Client: netip.AddrPortFrom(ip, 2000), File: "f", Size: 1, Start: at})
		tr.Error("test", fmt.Sprint("error ", i))
	}
	s := tr.Snapshot()
	if len(s.Machines) != DefaultMaxMachines {
		t.Fatalf("%d machines kept, want %d", len(s.Machines), DefaultMaxMachines)
	}
	// The most recently seen are kept, newest first.
	for i, m := range s.Machines {
		n := 999 - i
		if want := (net.HardwareAddr{0x52, 0x54, 0, 0, byte(n >> 8), byte(n)}).String(); m.MAC != want || m.Stage != StageFirmware {
			t.Fatalf("row %d: %s at %s, want %s", i, m.MAC, m.Stage, want)
		}
	}
	if len(s.Events) != DefaultMaxEvents || len(s.Errors) != 10 || s.Errors[0].Message != "error 999" || s.Errors[9].Message != "error 990" {
		t.Fatalf("%d events, errors %+v", len(s.Events), s.Errors)
	}
	// Evicted rows' addresses are forgotten too.
	tr.mu.Lock()
	n := len(tr.byIP)
	tr.mu.Unlock()
	if n != DefaultMaxMachines {
		t.Fatalf("address index holds %d entries", n)
	}
}

func TestTrackerConcurrentUse(t *testing.T) {
	tr := New(Options{Settle: time.Millisecond})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				b := newBoot(t, tr, fmt.Sprintf("52:54:00:00:%02x:%02x", g, i%50), fmt.Sprintf("10.2.%d.%d", g, i%50), time.Now())
				b.dhcp(0, "discover", "iPXE", i%2 == 0, dhcpproxy.Answered)
				b.script(0.1)
				b.file(httpboot.StageInitrd, "initrd", "", 0.2, 0.1, 100)
				_ = tr.Snapshot()
			}
		})
	}
	wg.Wait()
	// 400 machines went through: the bound holds (merges of address rows
	// may leave it a little below), and the address index only points at
	// live rows that have that address.
	if n := len(tr.Snapshot().Machines); n > DefaultMaxMachines || n < DefaultMaxMachines-8 {
		t.Fatalf("%d rows", n)
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for ip, key := range tr.byIP {
		if m := tr.machines[key]; m == nil || m.ip != ip {
			t.Fatalf("address %s points at %q: %+v", ip, key, m)
		}
	}
}

// BenchmarkProgressEvent measures one HTTP progress event, the most
// frequent input (4 per second per transfer).
func BenchmarkProgressEvent(b *testing.B) {
	tr := New(Options{})
	for i := range DefaultMaxMachines {
		tr.DHCP(dhcpproxy.Event{MAC: net.HardwareAddr{2, 0, 0, 0, byte(i >> 8), byte(i)}, MsgType: "discover", Outcome: dhcpproxy.Answered})
	}
	ev := httpboot.Event{Stage: httpboot.StageInitrd, Phase: "start", MAC: "02:00:00:00:00:07", Name: "initrd", Size: 1 << 30}
	tr.HTTP(ev)
	ev.Phase = "progress"
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		ev.Bytes = int64(i)
		tr.HTTP(ev)
	}
}

// BenchmarkSnapshotJSON measures building the JSON of a full tracker (256
// machines, 200 events), done once per change however many pages watch.
func BenchmarkSnapshotJSON(b *testing.B) {
	tr := New(Options{})
	for i := range DefaultMaxMachines {
		bt := newBoot(b, tr, (net.HardwareAddr{2, 0, 0, 0, byte(i >> 8), byte(i)}).String(), fmt.Sprintf("10.9.%d.%d", i>>8, i&255), time.Now())
		bt.dhcp(0, "discover", "", false, dhcpproxy.Answered)
		bt.tftp(1, 0.1, "bios/undionly.kpxe", 70000, tftpd.OutcomeOK, nil)
		bt.script(2)
	}
	b.ReportAllocs()
	var n int
	for b.Loop() {
		tr.Error("bench", "change") // invalidate the cache
		js, _, _ := tr.current(0)
		n = len(js)
	}
	b.ReportMetric(float64(n), "bytes/snapshot")
}

// A UEFI machine with Secure Boot on fetches the unsigned snponly.efi and
// starts over: the tracker says why.
func TestUnsignedProgramRefusedDiagnostic(t *testing.T) {
	tr := New(Options{})
	tr.SetConfigSummary(ConfigSummary{BootPrograms: []BootProgram{
		{Arch: "efi-x64", Name: "efi-x64/snponly.efi"},
		{Arch: "efi-x64", Name: "efi-x64-sb/shimx64.efi", Signed: true},
	}})
	mac := mustMAC(t, "52:54:00:5b:00:01")
	ip := netip.MustParseAddr("10.0.0.50")
	t0 := time.Now()
	discover := func(sec float64, file string) {
		tr.DHCP(dhcpproxy.Event{Time: t0.Add(time.Duration(sec * float64(time.Second))), MAC: mac, Arch: firmware.EFIX64,
			Port: 67, MsgType: "discover", Outcome: dhcpproxy.Answered, BootFile: file, IP: ip})
	}
	fetch := func(sec float64, file string) {
		at := t0.Add(time.Duration(sec * float64(time.Second)))
		cl := netip.AddrPortFrom(ip, 1500)
		tr.TFTP(tftpd.Transfer{Client: cl, File: file, Size: 100, Start: at})
		tr.TFTP(tftpd.Transfer{Client: cl, File: file, Size: 100, Bytes: 100, Start: at, Done: true, Outcome: tftpd.OutcomeOK})
	}
	discover(0, "efi-x64-sb/shimx64.efi")
	fetch(1, "efi-x64-sb/shimx64.efi")
	discover(30, "efi-x64-sb/shimx64.efi") // a signed program: no diagnosis
	discover(60, "efi-x64/snponly.efi")
	fetch(61, "efi-x64/snponly.efi")
	if len(tr.Snapshot().Errors) != 0 {
		t.Fatalf("diagnosed too early: %+v", tr.Snapshot().Errors)
	}
	discover(90, "efi-x64/snponly.efi")
	errs := tr.Snapshot().Errors
	if len(errs) != 1 || !strings.Contains(errs[0].Message, "refuses unsigned programs") || !strings.Contains(errs[0].Message, "secure_boot = true") {
		t.Errorf("errors %+v", errs)
	}
}

func TestSizeText(t *testing.T) {
	for n, want := range map[int64]string{
		-1: "size unknown", 0: "0 B", 999: "999 B", 1000: "1.0 kB", 1049: "1.0 kB", 1051: "1.1 kB",
		999_949: "999.9 kB", 1_028_384: "1.0 MB", 8_247_232: "8.2 MB", 104_857_600: "104.9 MB",
	} {
		if got := sizeText(n); got != want {
			t.Errorf("sizeText(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestSentText(t *testing.T) {
	for _, c := range []struct {
		n    int64
		d    time.Duration
		want string
	}{
		{1_028_384, 2 * time.Millisecond, "sent 1.0 MB in 0.00s"},
		{8_247_232, 400 * time.Millisecond, "sent 8.2 MB in 0.40s (20.6 MB/s)"},
		{104_857_600, 12 * time.Second, "sent 104.9 MB in 12.0s (8.7 MB/s)"},
	} {
		if got := sentText(c.n, c.d); got != c.want {
			t.Errorf("sentText(%d, %v) = %q, want %q", c.n, c.d, got, c.want)
		}
	}
}

// TestSettleSharedTimer: machines waiting to settle share one timer. A
// machine that fetches file after file moves only its own deadline (the
// timer stays armed for the first one), and every machine is still called
// booted once its own wait ends, a cancelled wait never.
func TestSettleSharedTimer(t *testing.T) {
	settle := 300 * time.Millisecond
	tr := New(Options{Settle: settle})
	base := time.Now()
	a := toKernel(t, tr, "52:54:00:00:00:21", "10.0.0.21", base)
	tr.mu.Lock()
	first := tr.settleNext
	tr.mu.Unlock()
	if first.IsZero() {
		t.Fatal("a complete kernel should arm the settle timer")
	}
	for i := range 20 { // initrd after initrd, as a benchmark's client does
		a.file(httpboot.StageInitrd, "initrd", a.mac.String(), 3+float64(i), 0.5, 1_000_000)
	}
	tr.mu.Lock()
	again, due := tr.settleNext, tr.machines[a.mac.String()].settleDue
	tr.mu.Unlock()
	if !again.Equal(first) || !due.After(first) {
		t.Fatalf("later files should move the machine's deadline (%v), not the timer (%v → %v)", due, first, again)
	}

	// Another machine settles; a third one's wait is cancelled by a retry.
	b := toKernel(t, tr, "52:54:00:00:00:22", "10.0.0.22", base)
	c := toKernel(t, tr, "52:54:00:00:00:23", "10.0.0.23", base)
	c.script(4) // iPXE fetched its script again: the kernel failed

	if m := waitStage(t, tr, a.mac.String(), StageBooted); m.BootSeconds != 22.5 {
		t.Fatalf("machine a: booted after %v s, want 22.5 (end of its last initrd)", m.BootSeconds)
	}
	if m := waitStage(t, tr, b.mac.String(), StageBooted); m.BootSeconds != 3 {
		t.Fatalf("machine b: booted after %v s, want 3", m.BootSeconds)
	}
	time.Sleep(2 * settle)
	if m := rowOf(t, tr, c.mac.String()); m.Stage != StageScript {
		t.Fatalf("machine c retried: stage %q, want script", m.Stage)
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if !tr.settleNext.IsZero() {
		t.Fatalf("nothing waits, but the timer is armed for %v", tr.settleNext)
	}
}

func TestCanonicalMAC(t *testing.T) {
	for _, in := range []string{"52:54:00:ab:cd:01", "52:54:00:AB:cd:01", "52-54-00-ab-cd-01", "5254.00ab.cd01", "02:00:00:00:00:00:00:01"} {
		hw, err := net.ParseMAC(in)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := canonicalMAC(in); !ok || got != hw.String() {
			t.Errorf("canonicalMAC(%q) = %q, %v; want %q", in, got, ok, hw.String())
		}
	}
	for _, in := range []string{"52:54:00:ab:cd:0g", "52:54:00:ab:cd", "52:54:00:ab:cd:01:", "52;54:00:ab:cd:01"} {
		if got, ok := canonicalMAC(in); ok {
			t.Errorf("canonicalMAC(%q) = %q, want an error", in, got)
		}
	}
	if got, ok := canonicalMAC(""); !ok || got != "" {
		t.Errorf("canonicalMAC(\"\") = %q, %v", got, ok)
	}
}

// TestTrackerShortTransfer: httpboot reports a transfer of one chunk with a
// single done event that carries its start; the row and the events list
// read as if start and done had both come.
func TestTrackerShortTransfer(t *testing.T) {
	tr := New(Options{Settle: 100 * time.Millisecond})
	b := toKernel(t, tr, "52:54:00:00:00:31", "10.0.0.31", time.Now())
	mac := b.mac.String()
	tr.HTTP(httpboot.Event{Time: b.at(3.5), Start: b.at(3), Stage: httpboot.StageInitrd, Phase: "done", MAC: mac, IP: b.ip,
		Name: "initrd", Size: 1_000_000, Bytes: 1_000_000, Status: 200})
	m := waitStage(t, tr, mac, StageBooted)
	if m.BootSeconds != 3.5 || stagesOf(m) != "offered@0 script@1 kernel@2 initrd@3 booted@3.5" {
		t.Fatalf("booted after %v s, stages %s", m.BootSeconds, stagesOf(m))
	}
	var msgs []string
	for _, e := range tr.Snapshot().Events {
		if e.MAC == mac && strings.Contains(e.Message, "initrd") {
			msgs = append(msgs, e.Message)
		}
	}
	if len(msgs) != 1 || !strings.Contains(msgs[0], "in 0.50s") {
		t.Fatalf("initrd events %q, want one, with its 0.5 s", msgs)
	}
}
