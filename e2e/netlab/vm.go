package netlab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Firmware selects what the VM boots with.
type Firmware int

const (
	// BIOS is SeaBIOS with an e1000 NIC whose option ROM is iPXE (ipxe-qemu), booting the network first.
	BIOS Firmware = iota
	// UEFI is OVMF with a virtio NIC without option ROM, so that EDK2's own PXE stack boots.
	UEFI
	// UEFISecureBoot is OVMF with Microsoft's keys enrolled and Secure Boot on (q35 with SMM).
	UEFISecureBoot
)

func (f Firmware) String() string {
	switch f {
	case BIOS:
		return "bios"
	case UEFI:
		return "uefi"
	case UEFISecureBoot:
		return "uefi-secureboot"
	}
	return "firmware(" + strconv.Itoa(int(f)) + ")"
}

// DefaultMarker is what the initrd built by Assets prints, followed by the kernel command line.
const DefaultMarker = "NETBOOT-OK"

// Pattern matches serial or log lines: a plain substring (Text) or a regular expression (Regexp).
type Pattern struct {
	text string
	re   *regexp.Regexp
}

// Text matches lines that contain s.
func Text(s string) Pattern { return Pattern{text: s} }

// Regexp matches lines that match expr; it panics if expr does not compile (test code).
func Regexp(expr string) Pattern { return Pattern{re: regexp.MustCompile(expr)} }

// IsZero reports whether p is the zero Pattern.
func (p Pattern) IsZero() bool { return p.re == nil && p.text == "" }

// Match reports whether line matches p.
func (p Pattern) Match(line string) bool {
	if p.re != nil {
		return p.re.MatchString(line)
	}
	return strings.Contains(line, p.text)
}

func (p Pattern) String() string {
	if p.re != nil {
		return "/" + p.re.String() + "/"
	}
	return strconv.Quote(p.text)
}

// VM describes one QEMU run. Only Firmware is usually set; the rest has defaults.
type VM struct {
	// Name labels the VM's files and logs; default vm1, vm2, ...
	Name     string
	Firmware Firmware
	// MAC of the NIC; default 52:54:00:NN:00:KK with NN from the lab subnet, KK a counter.
	MAC string
	// UUID is passed as -uuid (the SMBIOS UUID, which PXE clients send as option 97).
	UUID string
	// NIC replaces the -device of the NIC, e.g. "e1000e" or "virtio-net-pci,romfile=";
	// ",netdev=n0" and ",mac=<MAC>" are appended when missing.
	NIC string
	// Marker is the serial line that means success; QEMU is stopped as soon as it is seen.
	// Default: Text(DefaultMarker).
	Marker Pattern
	// RunToEnd keeps QEMU running after the marker, until it powers off, Stop, timeout or ctx.
	RunToEnd bool
	// Timeout from QEMU start; default 180 s. (OVMF without a PXE answer gives up after ~60 s.)
	Timeout time.Duration
	// MemoryMB is -m; default 512.
	MemoryMB int
	// Tap to attach to; default a new tap made by Lab.NewTap (deleted after the run).
	Tap string
	// NoPcap turns off the capture of the LAN (tcpdump on the bridge) during the run.
	NoPcap bool
	// OnLine is called for every serial line as it arrives, from the reading goroutine; keep it short.
	OnLine func(Line)
	// ExtraArgs are appended to QEMU's command line.
	ExtraArgs []string
}

// Line is one line of serial output.
type Line struct {
	// At is the time since QEMU started.
	At   time.Duration
	Text string
}

func (l Line) String() string { return fmt.Sprintf("[%8.3f] %s", l.At.Seconds(), l.Text) }

// StopReason says why a VM run ended.
type StopReason string

// Why a run ended.
const (
	StopMarker   StopReason = "marker"   // the marker was seen and QEMU stopped
	StopExited   StopReason = "exited"   // QEMU exited by itself (guest power-off, panic with -no-reboot, error)
	StopTimeout  StopReason = "timeout"  // VM.Timeout elapsed
	StopCanceled StopReason = "canceled" // the context ended
	StopStopped  StopReason = "stopped"  // Machine.Stop or Lab.Close
)

// Result is the outcome of one VM run.
type Result struct {
	Name     string
	Firmware Firmware
	MAC      string
	Tap      string
	// MarkerSeen reports whether the marker appeared; MarkerAt is then the time from QEMU start
	// to the marker line and MarkerLine the line.
	MarkerSeen bool
	MarkerAt   time.Duration
	MarkerLine string
	Reason     StopReason
	// ExitCode is QEMU's exit status, -1 when it was ended by a signal (stopped by the lab).
	ExitCode int
	// Elapsed is QEMU's run time.
	Elapsed time.Duration
	// SerialLog has every serial line with its time from QEMU start ("[  12.345] text").
	SerialLog string
	// Pcap is the capture of the LAN bridge during the run ("" with VM.NoPcap).
	Pcap string
	// QEMULog has QEMU's own stderr.
	QEMULog string
	Lines   []Line
}

// Seconds is MarkerAt in seconds (0 if the marker was not seen).
func (r *Result) Seconds() float64 { return r.MarkerAt.Seconds() }

// Find returns the first serial line matching p.
func (r *Result) Find(p Pattern) (Line, bool) {
	for _, l := range r.Lines {
		if p.Match(l.Text) {
			return l, true
		}
	}
	return Line{}, false
}

// Tail returns the last n serial lines.
func (r *Result) Tail(n int) string {
	lines := r.Lines
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// Summary is a one-line description of the run.
func (r *Result) Summary() string {
	m := "marker not seen"
	if r.MarkerSeen {
		m = fmt.Sprintf("marker after %.3f s", r.MarkerAt.Seconds())
	}
	return fmt.Sprintf("%s, ended by %s after %.1f s (qemu exit %d)", m, r.Reason, r.Elapsed.Seconds(), r.ExitCode)
}

// Machine is a running VM (see StartVM).
type Machine struct {
	lab    *Lab
	vm     VM
	res    Result
	start  time.Time
	cancel context.CancelFunc

	mu        sync.Mutex
	lines     []Line
	changed   chan struct{} // closed and replaced on every new line
	cursor    int           // Expect searches from here
	readDone  bool
	marker    chan struct{} // closed when the marker is seen
	markerHit bool

	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

// Boot runs a VM until its marker appears (then stops it), it exits, VM.Timeout or ctx ends, and
// returns the result. An error means the VM could not be started; a boot that never reaches the
// marker is a Result with MarkerSeen false.
func (l *Lab) Boot(ctx context.Context, vm VM) (*Result, error) {
	m, err := l.StartVM(ctx, vm)
	if err != nil {
		return nil, err
	}
	return m.Wait(), nil
}

// MustBoot is Boot for tests: it fails the test if the VM cannot start or the marker is not seen
// (printing the end of the serial log), and logs the time to the marker.
func (l *Lab) MustBoot(t testing.TB, ctx context.Context, vm VM) *Result {
	t.Helper()
	r, err := l.Boot(ctx, vm)
	if err != nil {
		t.Fatalf("netlab: %v", err)
	}
	if !r.MarkerSeen {
		t.Fatalf("netlab: VM %s (%s): %s; serial log %s, capture %s; last lines:\n%s",
			r.Name, r.Firmware, r.Summary(), r.SerialLog, r.Pcap, r.Tail(30))
	}
	t.Logf("netlab: VM %s (%s): %s", r.Name, r.Firmware, r.Summary())
	return r
}

// StartVM starts QEMU and returns at once; use Expect to follow the boot and Wait or Stop to end
// it. At most NETLAB_MAX_VMS (default: the number of CPUs) VMs run at a time on the machine,
// across all test processes: StartVM waits for a free slot (bounded by ctx).
func (l *Lab) StartVM(ctx context.Context, vm VM) (_ *Machine, err error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, errors.New("lab is closed")
	}
	l.nextVM++
	seq := l.nextVM
	if vm.Name == "" {
		vm.Name = fmt.Sprintf("vm%d", seq)
	}
	fileBase := "vm-" + safeName(vm.Name)
	if l.names[fileBase] {
		fileBase = fmt.Sprintf("%s-%d", fileBase, seq)
	}
	l.names[fileBase] = true
	l.mu.Unlock()
	if vm.MAC == "" {
		vm.MAC = fmt.Sprintf("52:54:00:%02x:00:%02x", l.subnet.Addr().As4()[2], seq)
	}
	if vm.Marker.IsZero() {
		vm.Marker = Text(DefaultMarker)
	}
	if vm.Timeout == 0 {
		vm.Timeout = 180 * time.Second
	}
	if vm.MemoryMB == 0 {
		vm.MemoryMB = 512
	}
	base := filepath.Join(l.dir, fileBase)
	m := &Machine{
		lab: l, vm: vm,
		changed: make(chan struct{}), marker: make(chan struct{}),
		stop: make(chan struct{}), done: make(chan struct{}),
		res: Result{Name: vm.Name, Firmware: vm.Firmware, MAC: vm.MAC,
			SerialLog: base + ".serial", QEMULog: base + ".qemu.log"},
	}

	// Resources taken so far are released on error.
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()

	fwArgs, err := firmwareArgs(vm, base)
	if err != nil {
		return nil, err
	}
	tap := vm.Tap
	if tap == "" {
		if tap, err = l.NewTap(); err != nil {
			return nil, err
		}
		undo = append(undo, func() { l.deleteTap(tap) })
	}
	m.res.Tap = tap

	slot, err := acquireVMSlot(ctx)
	if err != nil {
		return nil, fmt.Errorf("VM %s: waiting for a QEMU slot: %w", vm.Name, err)
	}
	undo = append(undo, func() { slot.Close() })

	var tcpdump *Proc
	if !vm.NoPcap {
		m.res.Pcap = base + ".pcap"
		cmd := l.lan.Command(context.Background(), l.tools.tcpdump, "-i", "br0", "-s", "0", "-U", "-n", "-w", m.res.Pcap)
		if tcpdump, err = l.startProc("tcpdump-"+vm.Name, cmd, true); err != nil {
			return nil, err
		}
		undo = append(undo, tcpdump.Stop)
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = tcpdump.WaitLog(wctx, Text("listening on"))
		cancel()
		if err != nil {
			return nil, fmt.Errorf("VM %s: tcpdump did not start: %w\n%s", vm.Name, err, tcpdump.Tail(10))
		}
	}

	nic := vm.NIC
	if nic == "" {
		if vm.Firmware == BIOS {
			nic = "e1000"
		} else {
			// romfile= (empty): no iPXE EFI ROM, so EDK2's own VirtioNetDxe/SNP/PXE stack boots;
			// bootindex=0 makes its PXEv4 entry the first boot option.
			nic = "virtio-net-pci,romfile=,bootindex=0"
		}
	}
	if !strings.Contains(nic, "netdev=") {
		nic += ",netdev=n0"
	}
	if !strings.Contains(nic, "mac=") {
		nic += ",mac=" + vm.MAC
	}
	args := []string{
		"-name", safeName(vm.Name), // commas would split the option
		"-accel", "tcg", "-m", strconv.Itoa(vm.MemoryMB), "-smp", "1",
		"-nographic", "-monitor", "none", "-serial", "stdio", "-no-reboot",
	}
	args = append(args, fwArgs...)
	args = append(args,
		"-netdev", "tap,id=n0,ifname="+tap+",script=no,downscript=no",
		"-device", nic)
	if vm.UUID != "" {
		args = append(args, "-uuid", vm.UUID)
	}
	args = append(args, vm.ExtraArgs...)

	serialFile, err := os.Create(m.res.SerialLog)
	if err != nil {
		return nil, fmt.Errorf("create serial log: %w", err)
	}
	undo = append(undo, func() { serialFile.Close() })
	qemuLog, err := os.Create(m.res.QEMULog)
	if err != nil {
		return nil, fmt.Errorf("create qemu log: %w", err)
	}
	undo = append(undo, func() { qemuLog.Close() })
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("serial pipe: %w", err)
	}
	undo = append(undo, func() { pr.Close() })

	runCtx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	cmd := l.lan.Command(runCtx, l.tools.qemu, args...)
	cmd.Stdout = pw
	cmd.Stderr = qemuLog
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	fmt.Fprintf(qemuLog, "# %s\n", strings.Join(cmd.Args, " "))
	m.start = time.Now()
	if err := cmd.Start(); err != nil {
		pw.Close()
		cancel()
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	pw.Close()
	l.log.Info("netlab: VM started", "name", vm.Name, "firmware", vm.Firmware, "mac", vm.MAC, "tap", tap)

	l.mu.Lock()
	l.machines = append(l.machines, m)
	l.mu.Unlock()

	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	readDone := make(chan struct{})
	go func() {
		m.read(pr, serialFile)
		close(readDone)
	}()
	go m.supervise(ctx, exited, readDone, func() {
		pr.Close()
		serialFile.Close()
		qemuLog.Close()
		if tcpdump != nil {
			tcpdump.Stop()
		}
		slot.Close()
		if vm.Tap == "" {
			l.deleteTap(tap)
		}
	})
	return m, nil
}

// supervise ends the run when the marker, exit, timeout, ctx or Stop says so, then releases
// everything and publishes the result.
func (m *Machine) supervise(ctx context.Context, exited <-chan error, readDone <-chan struct{}, release func()) {
	defer close(m.done)
	timer := time.NewTimer(m.vm.Timeout)
	defer timer.Stop()
	markerCh := m.marker
	if m.vm.RunToEnd {
		markerCh = nil
	}
	var waitErr error
	exitedNow := false
	select {
	case <-markerCh:
		m.res.Reason = StopMarker
	case waitErr = <-exited:
		m.res.Reason, exitedNow = StopExited, true
	case <-timer.C:
		m.res.Reason = StopTimeout
	case <-ctx.Done():
		m.res.Reason = StopCanceled
	case <-m.stop:
		m.res.Reason = StopStopped
	}
	if !exitedNow {
		m.cancel() // SIGTERM via Command's Cancel, SIGKILL after WaitDelay
		waitErr = <-exited
	}
	m.res.Elapsed = time.Since(m.start)
	<-readDone
	m.res.ExitCode = -1
	var ee interface{ ExitCode() int }
	if waitErr == nil {
		m.res.ExitCode = 0
	} else if errors.As(waitErr, &ee) {
		m.res.ExitCode = ee.ExitCode()
	}
	m.cancel()
	release()
	m.mu.Lock()
	m.res.Lines = append([]Line(nil), m.lines...)
	m.mu.Unlock()
	m.lab.log.Info("netlab: VM done", "name", m.vm.Name, "firmware", m.vm.Firmware, "result", m.res.Summary())
}

// ansiEscape matches the terminal control sequences firmware writes to the serial console.
var ansiEscape = regexp.MustCompile(`\x1b\[[0-9;?=]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\x1bc`)

// read timestamps serial output line by line (split on \r and \n, escapes stripped, blank lines
// dropped), writes it to the serial log and feeds Expect, OnLine and the marker.
func (m *Machine) read(r io.Reader, log io.Writer) {
	br := bufio.NewReaderSize(r, 64<<10)
	var cur []byte
	emit := func() {
		text := strings.TrimRight(ansiEscape.ReplaceAllString(string(cur), ""), " \t")
		cur = cur[:0]
		if strings.TrimSpace(text) == "" {
			return
		}
		line := Line{At: time.Since(m.start), Text: text}
		fmt.Fprintln(log, line.String())
		hit := false
		m.mu.Lock()
		m.lines = append(m.lines, line)
		close(m.changed)
		m.changed = make(chan struct{})
		if !m.markerHit && m.vm.Marker.Match(text) {
			m.markerHit, hit = true, true
			m.res.MarkerSeen, m.res.MarkerAt, m.res.MarkerLine = true, line.At, text
		}
		m.mu.Unlock()
		if hit {
			fmt.Fprintf(log, "MARKER-AT %.3f\n", line.At.Seconds())
			close(m.marker)
		}
		if m.vm.OnLine != nil {
			m.vm.OnLine(line)
		}
	}
	for {
		b, err := br.ReadByte()
		if err != nil {
			break
		}
		if b == '\n' || b == '\r' {
			emit()
			continue
		}
		cur = append(cur, b)
	}
	emit()
	m.mu.Lock()
	m.readDone = true
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
}

// Name is the VM's name.
func (m *Machine) Name() string { return m.vm.Name }

// MAC is the VM's NIC address.
func (m *Machine) MAC() string { return m.vm.MAC }

// Done is closed when the run is over and Wait/Stop return at once.
func (m *Machine) Done() <-chan struct{} { return m.done }

// Lines returns the serial lines so far.
func (m *Machine) Lines() []Line {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Line(nil), m.lines...)
}

// Expect waits for the next serial line matching p, searching from just after the previous
// Expect's match (or the start), so successive calls check an order of events. It fails when
// QEMU's output ends first or ctx ends.
func (m *Machine) Expect(ctx context.Context, p Pattern) (Line, error) {
	m.mu.Lock()
	i := m.cursor
	m.mu.Unlock()
	for {
		m.mu.Lock()
		for ; i < len(m.lines); i++ {
			if p.Match(m.lines[i].Text) {
				m.cursor = i + 1
				l := m.lines[i]
				m.mu.Unlock()
				return l, nil
			}
		}
		ch, finished := m.changed, m.readDone
		m.mu.Unlock()
		if finished {
			return Line{}, fmt.Errorf("VM %s: serial output ended without %s", m.vm.Name, p)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return Line{}, fmt.Errorf("VM %s: waiting for %s: %w", m.vm.Name, p, ctx.Err())
		}
	}
}

// Wait waits until the run ends (marker unless RunToEnd, exit, timeout, ctx) and returns the result.
func (m *Machine) Wait() *Result {
	<-m.done
	return &m.res
}

// Stop ends the run now (if still running) and returns the result. Idempotent.
func (m *Machine) Stop() *Result {
	m.stopOnce.Do(func() { close(m.stop) })
	return m.Wait()
}

// firmwareArgs returns the machine and firmware arguments; UEFI variable stores are private
// copies next to the VM's logs (fresh NVRAM: no boot entries from earlier runs).
func firmwareArgs(vm VM, base string) ([]string, error) {
	switch vm.Firmware {
	case BIOS:
		// SeaBIOS is QEMU's default; -boot n tries the NIC's option ROM (iPXE) first.
		return []string{"-machine", "q35", "-boot", "n"}, nil
	case UEFI, UEFISecureBoot:
		code, vars, err := ovmfFiles(vm.Firmware)
		if err != nil {
			return nil, err
		}
		data, err := os.ReadFile(vars)
		if err != nil {
			return nil, fmt.Errorf("read OVMF variables: %w", err)
		}
		copyPath := base + ".VARS.fd"
		if err := os.WriteFile(copyPath, data, 0o644); err != nil {
			return nil, fmt.Errorf("copy OVMF variables: %w", err)
		}
		args := []string{"-machine", "q35"}
		if vm.Firmware == UEFISecureBoot {
			// The Secure Boot build keeps its variables in SMM-protected flash: without SMM
			// (or with the flash not marked secure) it hangs silently.
			args = []string{"-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on"}
		}
		return append(args,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+code,
			"-drive", "if=pflash,format=raw,unit=1,file="+copyPath), nil
	}
	return nil, fmt.Errorf("unknown firmware %d", vm.Firmware)
}

// ovmfFiles returns the OVMF code and variable-store templates for fw.
func ovmfFiles(fw Firmware) (code, vars string, err error) {
	const dir = "/usr/share/OVMF/"
	var pairs [][2]string
	switch fw {
	case UEFI:
		pairs = [][2]string{{"OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"}, {"OVMF_CODE.fd", "OVMF_VARS.fd"}}
	case UEFISecureBoot:
		pairs = [][2]string{{"OVMF_CODE_4M.ms.fd", "OVMF_VARS_4M.ms.fd"}}
	default:
		return "", "", fmt.Errorf("%s is not a UEFI firmware", fw)
	}
	for _, p := range pairs {
		c, v := dir+p[0], dir+p[1]
		if fileExists(c) && fileExists(v) {
			return c, v, nil
		}
	}
	return "", "", fmt.Errorf("%s firmware missing (%s%s + %s): apt-get install ovmf", fw, dir, pairs[0][0], pairs[0][1])
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// acquireVMSlot takes one of NETLAB_MAX_VMS machine-wide slots (flock'd files, released when the
// returned file is closed or the process dies), so parallel test binaries do not overload the
// CPUs with software-emulated VMs and skew each other's timings.
func acquireVMSlot(ctx context.Context) (*os.File, error) {
	n := runtime.NumCPU()
	if s, err := strconv.Atoi(os.Getenv("NETLAB_MAX_VMS")); err == nil && s > 0 {
		n = s
	}
	if err := os.MkdirAll(metaRoot, 0o755); err != nil {
		return nil, err
	}
	for {
		for i := range n {
			f, err := os.OpenFile(filepath.Join(metaRoot, fmt.Sprintf("vm-slot-%d.lock", i)), os.O_CREATE|os.O_RDWR, 0o644)
			if err != nil {
				return nil, err
			}
			if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
				return f, nil
			}
			f.Close()
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
