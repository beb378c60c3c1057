package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bootserve/bootserve/e2e/netlab"
)

var (
	flagN      = flag.Int("n", 500, "simulated machines")
	flagAddrs  = flag.Int("addrs", 200, "client source addresses added to the LAN namespace (clients share them round robin)")
	flagRamp   = flag.Duration("ramp", time.Second, "spread the clients' starts over this long")
	flagServer = flag.String("server", "bootserve", "server under test: bootserve, pixiecore or dnsmasq (dnsmasq ProxyDHCP+TFTP and a static HTTP server)")
	flagReport = flag.String("report", "", "append the result as a Markdown section to this file")
	flagBin    = flag.String("bootserve-bin", "", "run this bootserve binary instead of building ../../cmd/bootserve (to try a candidate change)")
	flagMaxTr  = flag.Int("tftp-max-transfers", 0, "run bootserve from a config file with this tftp.max_transfers (0: `bootserve boot` with its defaults)")
)

// TestStorm runs the load generator against a boot server in a throwaway
// namespaced LAN (no router: the clients take no leases) and reports the
// generator's figures with the server's CPU time, peak RSS, its own
// counters and the kernel's UDP drop counters on both sides.
//
// It is a benchmark, not a check CI runs: it skips unless BOOTSERVE_BENCH=1.
//
//	sudo BOOTSERVE_BENCH=1 go test -run TestStorm -v -timeout 20m ./bench/storm -args -n 500
func TestStorm(t *testing.T) {
	if os.Getenv("BOOTSERVE_BENCH") != "1" {
		t.Skip("set BOOTSERVE_BENCH=1 to run the boot storm (root; builds a namespaced LAN and floods it)")
	}
	// The lab needs what the end-to-end tests need; netlab.Require checks it
	// only when BOOTSERVE_E2E=1.
	t.Setenv("BOOTSERVE_E2E", "1")
	netlab.Require(t)
	bin := t.TempDir()
	gen := filepath.Join(bin, "storm")
	goBuild(t, ".", gen, ".")
	assets := netlab.Assets(t)
	lab := netlab.New(t, netlab.Options{NoRouter: true})

	// The clients' addresses live on the bridge of the LAN namespace, which
	// otherwise only hosts taps: .2 upwards, clear of the server (.1).
	n := min(*flagAddrs, 250)
	var batch strings.Builder
	for i := range n {
		a := lab.Subnet().Addr().As4()
		a[3] = byte(2 + i)
		fmt.Fprintf(&batch, "addr add %s/24 dev br0\n", netip.AddrFrom4(a))
	}
	ipRun(t, batch.String(), "-n", lab.LAN().Netns, "-batch", "-")

	srv := startServer(t, lab, *flagServer, bin, assets)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	loadavg, _ := os.ReadFile("/proc/loadavg") // the machine's load before the run, for the report
	before := snapshot(t, lab, srv.pids)
	busy0, total0 := machineCPU()
	sampler := startSampler(srv.pids)
	report := filepath.Join(lab.Dir(), "storm.json")
	p := lab.Start(t, lab.LAN().Command(ctx, gen, "-n", strconv.Itoa(*flagN), "-server", lab.ServerIP().String(),
		"-iface", "br0", "-ramp", flagRamp.String(), "-user-class", srv.userClass, "-json", report))
	select {
	case <-p.Done():
	case <-ctx.Done():
		t.Fatalf("storm did not finish: %v", ctx.Err())
	}
	peakCPU := sampler.stop()
	busy1, total1 := machineCPU()
	after := snapshot(t, lab, srv.pids)
	t.Logf("generator output:\n%s", p.Output())

	data, err := os.ReadFile(report)
	if err != nil {
		t.Fatalf("storm wrote no report (%s): %v\n%s", p.ExitStatus(), err, p.Tail(30))
	}
	var rep Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	checkBytes(t, &rep, assets)

	var b strings.Builder
	fmt.Fprintf(&b, "### %s, N = %d (ramp %s, %d client addresses), %s\n\n", srv.name, rep.Clients, *flagRamp, rep.Addresses,
		time.Now().Format("2006-01-02 15:04"))
	fmt.Fprintf(&b, "Every client completed: %v (%d failed). Total wall time %.2f s. Load average before the run: %s.\n\n",
		rep.Failed == 0, rep.Failed, rep.WallSeconds, strings.Join(strings.Fields(string(loadavg))[:min(3, len(strings.Fields(string(loadavg))))], " "))
	b.WriteString("| stage | completed | p50 s | p90 s | p99 s | max s | retries (clients) | server errors (clients) |\n|---|---|---|---|---|---|---|---|\n")
	for _, s := range rep.Stats() {
		fmt.Fprintf(&b, "| %s | %d | %.3f | %.3f | %.3f | %.3f | %d (%d) | %d (%d) |\n",
			s.Name, s.Count, s.P50, s.P90, s.P99, s.Max, s.Retries, s.ClientsRetrying, s.ServerErrors, s.ClientsErr)
	}
	cpu := after.cpu - before.cpu
	fmt.Fprintf(&b, "\nServer: CPU %.2f s (%.0f%% of one core over the wall time; busiest 1 s: %.0f%%), peak RSS %.1f MiB (%.1f MiB before the storm).\n",
		cpu, 100*cpu/rep.WallSeconds, peakCPU, float64(after.hwm)/1024, float64(before.rss)/1024)
	if len(srv.pids) > 1 {
		for i, pid := range srv.pids {
			c := after.perCPU[i] - before.perCPU[i]
			fmt.Fprintf(&b, "- %s: CPU %.2f s, peak RSS %.1f MiB\n", srv.parts[i], c, float64(procStatus(pid)["VmHWM"])/1024)
		}
	}
	fmt.Fprintf(&b, "Generator: CPU %.1f s user + %.1f s system. Machine: %d CPUs %.0f%% busy during the run (everything: server, generator, kernel, other processes).\n",
		rep.CPUUserSec, rep.CPUSystemSec, runtime.NumCPU(), 100*(busy1-busy0)/(total1-total0))
	fmt.Fprintf(&b, "Kernel UDP counters (delta): server ns %s; client ns %s.\n", diffSNMP(before.srvUDP, after.srvUDP), diffSNMP(before.lanUDP, after.lanUDP))
	if srv.metrics != nil {
		if m := srv.metrics(); m != "" {
			fmt.Fprintf(&b, "\nbootserve's counters after the storm:\n\n```\n%s```\n", m)
		}
	}
	t.Log("\n" + b.String())
	if *flagReport != "" {
		f, err := os.OpenFile(*flagReport, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(f, "%s\n", b.String())
		f.Close()
	}
	if rep.Failed > 0 {
		t.Errorf("%d of %d clients did not complete", rep.Failed, rep.Clients)
	}
}

// checkBytes makes sure every completed boot got whole files.
func checkBytes(t *testing.T, rep *Report, assets netlab.BootAssets) {
	t.Helper()
	want := map[string]int64{StageKernel: fileSize(t, assets.Kernel), StageInitrd: fileSize(t, assets.Initrd)}
	tftpSizes := map[int64]int{}
	for _, c := range rep.Results {
		for _, s := range c.Stages {
			if c.FailedStage == s.Name {
				continue
			}
			if w, ok := want[s.Name]; ok && s.Bytes != w {
				t.Errorf("client %d: %s: %d bytes, want %d", c.Index, s.Name, s.Bytes, w)
			}
			if s.Name == StageTFTP {
				tftpSizes[s.Bytes]++
			}
		}
	}
	if len(tftpSizes) > 1 {
		t.Errorf("clients got boot files of different sizes: %v", tftpSizes)
	}
}

func fileSize(t *testing.T, p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// server is the boot server under test.
type server struct {
	name      string
	pids      []int    // processes whose CPU and memory count as the server's
	parts     []string // what each of pids is, when there are several
	userClass string
	metrics   func() string
}

func startServer(t *testing.T, lab *netlab.Lab, name, bin string, assets netlab.BootAssets) server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	switch name {
	case "bootserve":
		exe := *flagBin
		if exe == "" {
			exe = filepath.Join(bin, "bootserve")
			goBuild(t, ".", exe, "../../cmd/bootserve")
		} else {
			name = "bootserve (" + filepath.Base(exe) + ")"
		}
		args := []string{"boot", assets.Kernel, assets.Initrd, "--cmdline", netlab.BaseCmdline}
		if *flagMaxTr > 0 {
			name = fmt.Sprintf("%s, tftp.max_transfers = %d", name, *flagMaxTr)
			args = []string{"serve", "--config", bootserveConfig(t, assets, *flagMaxTr)}
		}
		p := lab.Start(t, lab.ServerCmd(context.Background(), exe, append(args, "--interface", lab.ServerIface())...))
		if err := p.WaitLog(ctx, netlab.Text("bootserve ready")); err != nil {
			t.Fatalf("bootserve did not start: %v\n%s", err, p.Tail(30))
		}
		metrics := func() string { return bootserveMetrics(lab) }
		return server{name: name, pids: []int{p.Cmd.Process.Pid}, userClass: "iPXE", metrics: metrics}
	case "pixiecore":
		exe := filepath.Join(bin, "pixiecore")
		goBuild(t, "../pixiecore", exe, ".")
		p := lab.Start(t, lab.ServerCmd(context.Background(), exe, "boot", assets.Kernel, assets.Initrd,
			"--cmdline", netlab.BaseCmdline))
		// pixiecore logs nothing when ready; wait until its HTTP port answers.
		waitHTTP(t, ctx, lab, "http://"+lab.ServerIP().String()+"/_/booting")
		return server{name: "pixiecore", pids: []int{p.Cmd.Process.Pid}, userClass: "pixiecore"}
	case "dnsmasq":
		peer := lab.StartDnsmasqPeer(t, netlab.PeerOptions{Assets: assets})
		// The static HTTP server runs in this test process.
		return server{name: "dnsmasq + static HTTP", pids: []int{peer.Dnsmasq.Cmd.Process.Pid, os.Getpid()},
			parts: []string{"dnsmasq (ProxyDHCP + TFTP)", "static HTTP (net/http in the test process)"}, userClass: "iPXE"}
	}
	t.Fatalf("unknown -server %q: bootserve, pixiecore or dnsmasq", name)
	return server{}
}

// bootserveConfig writes a config equivalent to `bootserve boot` with a
// different TFTP transfer limit, readable by the user bootserve drops to.
func bootserveConfig(t *testing.T, assets netlab.BootAssets, maxTransfers int) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "storm-config-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf("[tftp]\nmax_transfers = %d\n\n[default]\nkernel = %q\ninitrds = [%q]\ncmdline = %q\n",
		maxTransfers, assets.Kernel, assets.Initrd, netlab.BaseCmdline)
	p := filepath.Join(dir, "bootserve.toml")
	if err := os.WriteFile(p, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func waitHTTP(t *testing.T, ctx context.Context, lab *netlab.Lab, url string) {
	t.Helper()
	c := lab.Server().HTTPClient()
	for {
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s never answered: %v", url, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// bootserveMetrics returns bootserve's DHCP, TFTP and HTTP counters.
func bootserveMetrics(lab *netlab.Lab) string {
	resp, err := lab.Server().HTTPClient().Get("http://" + lab.ServerIP().String() + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "bootserve_dhcp_packets_total") || strings.HasPrefix(l, "bootserve_tftp_transfers_total") ||
			strings.HasPrefix(l, "bootserve_http_requests_total") {
			if strings.HasSuffix(l, " 0") {
				continue
			}
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// goBuild builds pkg (relative to dir) into out.
func goBuild(t *testing.T, dir, out, pkg string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

func ipRun(t *testing.T, stdin string, args ...string) {
	t.Helper()
	ip := "ip"
	for _, p := range []string{"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"} {
		if _, err := os.Stat(p); err == nil {
			ip = p
			break
		}
	}
	cmd := exec.Command(ip, args...)
	cmd.Stdin = strings.NewReader(stdin)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, b)
	}
}

// usage is a moment's view of the server processes and the kernel counters.
type usage struct {
	cpu            float64 // seconds of CPU of the server processes
	perCPU         []float64
	rss, hwm       int64 // KiB, summed over the processes
	srvUDP, lanUDP map[string]int64
}

func snapshot(t *testing.T, lab *netlab.Lab, pids []int) usage {
	t.Helper()
	u := usage{cpu: cpuSeconds(pids)}
	for _, pid := range pids {
		u.perCPU = append(u.perCPU, cpuSeconds([]int{pid}))
		st := procStatus(pid)
		u.rss += st["VmRSS"]
		u.hwm += st["VmHWM"]
	}
	u.srvUDP = udpCounters(t, lab.Server())
	u.lanUDP = udpCounters(t, lab.LAN())
	return u
}

// cpuSeconds sums utime+stime of pids (clock ticks of 1/100 s, Linux's USER_HZ).
func cpuSeconds(pids []int) float64 {
	var ticks int64
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(data)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += ut + st
	}
	return float64(ticks) / 100
}

func procStatus(pid int) map[string]int64 {
	out := map[string]int64{}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return out
	}
	for _, l := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 2 && f[1] == "kB" {
			out[k], _ = strconv.ParseInt(f[0], 10, 64)
		}
	}
	return out
}

// udpCounters reads the Udp line of /proc/net/snmp inside h's namespace.
func udpCounters(t *testing.T, h *netlab.Host) map[string]int64 {
	t.Helper()
	var data []byte
	err := h.Do(func() error {
		// /proc/net follows the reading thread's network namespace.
		var err error
		data, err = os.ReadFile("/proc/thread-self/net/snmp")
		return err
	})
	if err != nil {
		t.Fatalf("read snmp counters in %s: %v", h.Netns, err)
	}
	var names []string
	out := map[string]int64{}
	for _, l := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(l, "Udp: ") {
			continue
		}
		f := strings.Fields(l)[1:]
		if names == nil {
			names = f
			continue
		}
		for i, v := range f {
			if i < len(names) {
				out[names[i]], _ = strconv.ParseInt(v, 10, 64)
			}
		}
	}
	return out
}

func diffSNMP(a, b map[string]int64) string {
	var parts []string
	for _, k := range []string{"InDatagrams", "OutDatagrams", "RcvbufErrors", "SndbufErrors", "InErrors", "NoPorts"} {
		parts = append(parts, fmt.Sprintf("%s %d", k, b[k]-a[k]))
	}
	return strings.Join(parts, ", ")
}

// machineCPU returns the machine's busy and total CPU time so far (/proc/stat, jiffies).
func machineCPU() (busy, total float64) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 1
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	for i, v := range f[1:] {
		x, _ := strconv.ParseFloat(v, 64)
		total += x
		if i != 3 && i != 4 { // idle, iowait
			busy += x
		}
	}
	return busy, total
}

// sampler measures the server's busiest second of CPU during the run.
type sampler struct {
	pids []int
	done chan struct{}
	wg   sync.WaitGroup
	peak float64
}

func startSampler(pids []int) *sampler {
	s := &sampler{pids: pids, done: make(chan struct{})}
	s.wg.Go(func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		var window []float64 // CPU seconds at each tick of the last second
		for {
			select {
			case <-s.done:
				return
			case <-tick.C:
			}
			window = append(window, cpuSeconds(s.pids))
			if len(window) > 5 {
				window = window[1:]
			}
			// Runs shorter than a second still get a figure, scaled.
			if k := len(window); k > 1 {
				s.peak = max(s.peak, 100*(window[k-1]-window[0])/(0.25*float64(k-1)))
			}
		}
	})
	return s
}

func (s *sampler) stop() float64 {
	close(s.done)
	s.wg.Wait()
	return s.peak
}
