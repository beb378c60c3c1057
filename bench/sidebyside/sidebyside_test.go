// Package sidebyside measures bootserve next to the servers it replaces, on
// the same files in the same namespaced LAN: pixiecore (built from the
// module pinned in bench/pixiecore) and dnsmasq (ProxyDHCP + TFTP) with a
// static HTTP server, and nginx as the HTTP server a demanding user would
// pair with dnsmasq (files only: the boots keep dnsmasq's Go static server).
// One run of TestSideBySide measures
//
//   - time from QEMU start to the initrd's marker line, for SeaBIOS (iPXE
//     ROM) and OVMF (EDK2 PXE) VMs, -rounds runs each, one VM at a time,
//     servers interleaved round by round so that drifting machine load
//     spreads over all of them;
//   - TFTP: the same 1 MiB file with tftp-hpa (512-byte blocks, no options)
//     and curl (--tftp-blksize 1468), and the iPXE build each server hands
//     to UEFI and BIOS PXE clients;
//   - HTTP: the same initrd, kernel and a 100 MiB file with curl (nginx
//     serves the directory dnsmasq's static server serves, from the same
//     namespace and port);
//
// all from the lab's router namespace, medians of several runs. It prints
// Markdown tables (and writes them with -report).
//
// TestTFTPWindow (window_test.go) compares RFC 7440 windows against
// dnsmasq's TFTP.
//
// The tests are benchmarks, not checks: they skip unless BOOTSERVE_BENCH=1
// (CI runs `go test ./...` with BOOTSERVE_E2E=1), then need what the
// end-to-end tests need (netlab.Require):
//
//	sudo BOOTSERVE_BENCH=1 go test -run TestSideBySide -v -timeout 60m ./bench/sidebyside -args -report /tmp/sbs.md
package sidebyside

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/bootserve/bootserve/e2e/netlab"
	"github.com/bootserve/bootserve/internal/pcapread"
)

var (
	flagRounds     = flag.Int("rounds", 3, "boots per server and firmware")
	flagFileRuns   = flag.Int("file-runs", 5, "runs per TFTP and HTTP measurement and round")
	flagFileRounds = flag.Int("file-rounds", 3, "rounds of TFTP and HTTP measurements, the servers taking turns")
	flagServers    = flag.String("servers", "bootserve,pixiecore,dnsmasq,nginx", "servers to compare (nginx: HTTP file rows only, no boots)")
	flagFirmwares  = flag.String("firmwares", "bios,uefi", "firmwares to boot")
	flagSkipBoots  = flag.Bool("skip-boots", false, "only measure TFTP and HTTP")
	flagSkipFiles  = flag.Bool("skip-files", false, "only measure boots")
	flagReport     = flag.String("report", "", "write the Markdown tables to this file")
	flagQuiet      = flag.Duration("quiet-wait", 0, "before each boot and each server's file runs, wait up to this long for the machine to be idle (< 25% CPU busy over 1 s): other jobs on a shared machine skew emulated boots")
	flagExp        = flag.String("bootserve-exp", "", "also measure this bootserve binary, as \"bootserve-exp\" (a candidate change, built elsewhere)")
)

// env is what every server is started with.
type env struct {
	t      *testing.T
	lab    *netlab.Lab
	bin    string // built binaries
	assets netlab.BootAssets
	files  string // world-readable: test1m.bin, big100.bin, and the links below
}

// running is a started server.
type running struct {
	stop      func()
	userClass string // what its iPXE build sends as user class
	// tftp maps a label to the TFTP name of a file it serves.
	tftp map[string]string
	// http maps a label to the URL of a file it serves, for servers with
	// no boot script to discover the URLs from (nil: discoverURLs).
	http map[string]string
}

type server struct {
	name string
	// boot starts the server for VM boots: the e2e kernel and initrd (nil:
	// an HTTP-only peer, in the file benchmarks alone).
	boot func(e *env) *running
	// files starts it for the file benchmarks: also test1m.bin over TFTP
	// where it can, and big100.bin as a second initrd.
	files func(e *env) *running
	// available reports whether the server can run here (nil: always);
	// one that cannot is left out with a log line.
	available func(t *testing.T) bool
}

const (
	fileTFTP1M   = "1 MiB file"
	fileUEFIIPXE = "UEFI iPXE build"
	fileBIOSIPXE = "BIOS iPXE build"
	fileInitrd   = "initrd (1.0 MB)"
	fileKernel   = "kernel (8.2 MB)"
	fileBig      = "100 MiB file"
)

func servers() []server {
	return []server{
		{name: "bootserve", boot: startBootserve(false), files: startBootserve(true)},
		{name: "pixiecore", boot: startPixiecore(false), files: startPixiecore(true)},
		{name: "dnsmasq", boot: startDnsmasq(false), files: startDnsmasq(true)},
		{name: "nginx", files: startNginxFiles, available: haveNginx},
	}
}

func startBootserve(files bool) func(e *env) *running { return startBootserveBin("", files) }

// startBootserveBin starts the binary at exe ("": the one built from this tree).
func startBootserveBin(exe string, files bool) func(e *env) *running {
	return func(e *env) *running {
		t := e.t
		if exe == "" {
			exe = filepath.Join(e.bin, "bootserve")
		}
		args := []string{"boot", e.assets.Kernel, e.assets.Initrd, "--cmdline", netlab.BaseCmdline}
		if files {
			conf := fmt.Sprintf("[tftp]\nroot = %q\n\n[default]\nkernel = %q\ninitrds = [%q, %q]\ncmdline = %q\n",
				e.files, e.assets.Kernel, e.assets.Initrd, filepath.Join(e.files, "big100.bin"), netlab.BaseCmdline)
			p := filepath.Join(e.files, "bootserve.toml")
			if err := os.WriteFile(p, []byte(conf), 0o644); err != nil {
				t.Fatal(err)
			}
			args = []string{"serve", "--config", p}
		}
		p := e.lab.Start(t, e.lab.ServerCmd(context.Background(), exe, append(args, "--interface", e.lab.ServerIface())...))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := p.WaitLog(ctx, netlab.Text("bootserve ready")); err != nil {
			t.Fatalf("bootserve did not start: %v\n%s", err, p.Tail(30))
		}
		return &running{stop: p.Stop, userClass: "iPXE", tftp: map[string]string{
			fileTFTP1M: "test1m.bin", fileUEFIIPXE: "efi-x64/snponly.efi", fileBIOSIPXE: "bios/undionly.kpxe",
		}}
	}
}

func startPixiecore(files bool) func(e *env) *running {
	return func(e *env) *running {
		t := e.t
		args := []string{"boot", e.assets.Kernel, e.assets.Initrd}
		if files {
			args = append(args, filepath.Join(e.files, "big100.bin"))
		}
		args = append(args, "--cmdline", netlab.BaseCmdline)
		p := e.lab.Start(t, e.lab.ServerCmd(context.Background(), filepath.Join(e.bin, "pixiecore"), args...))
		waitHTTP(t, e.lab, "http://"+e.lab.ServerIP().String()+"/_/booting")
		// pixiecore serves only its iPXE builds, named <MAC>/<firmware type>
		// (0 BIOS UNDI, 2 x86-64 UEFI); dashes keep tftp-hpa from reading
		// the MAC's colons as host:file.
		return &running{stop: p.Stop, userClass: "pixiecore", tftp: map[string]string{
			fileUEFIIPXE: "02-53-54-00-00-01/2", fileBIOSIPXE: "02-53-54-00-00-01/0",
		}}
	}
}

func startDnsmasq(files bool) func(e *env) *running {
	return func(e *env) *running {
		t := e.t
		if !files {
			peer := e.lab.StartDnsmasqPeer(t, netlab.PeerOptions{Assets: e.assets})
			return &running{stop: func() { peer.Dnsmasq.Stop(); _ = peer.HTTP.Close() }, userClass: "iPXE"}
		}
		base := "http://" + e.lab.ServerIP().String()
		script := "#!ipxe\nkernel " + base + "/vmlinuz initrd=initrd.gz " + netlab.BaseCmdline + "\ninitrd " + base +
			"/initrd.gz\ninitrd " + base + "/big100.bin\nboot\n"
		if err := os.WriteFile(filepath.Join(e.files, "boot.ipxe"), []byte(script), 0o644); err != nil {
			t.Fatal(err)
		}
		h := e.lab.StartStaticHTTP(t, nil, e.files)
		dm := e.lab.StartDnsmasqProxy(t, netlab.DnsmasqProxyOptions{ScriptURL: h.URL + "/boot.ipxe", TFTPRoot: e.files})
		return &running{stop: func() { dm.Stop(); _ = h.Close() }, userClass: "iPXE", tftp: map[string]string{
			fileTFTP1M: "test1m.bin", fileUEFIIPXE: "snponly.efi", fileBIOSIPXE: "undionly.kpxe",
		}}
	}
}

// startNginxFiles serves the files directory with nginx where dnsmasq's
// static server does (the server namespace, port 80).
func startNginxFiles(e *env) *running {
	p := startNginx(e.t, e.lab, e.lab.Server(), netip.AddrPortFrom(e.lab.ServerIP(), 80), e.files)
	base := "http://" + e.lab.ServerIP().String()
	return &running{stop: p.Stop, http: map[string]string{
		fileInitrd: base + "/initrd.gz", fileKernel: base + "/vmlinuz", fileBig: base + "/big100.bin",
	}}
}

func waitHTTP(t *testing.T, lab *netlab.Lab, url string) {
	t.Helper()
	c := lab.Server().HTTPClient()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered: %v", url, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// requireBench skips benchmarks unless asked for, then checks the machine
// can run them.
func requireBench(t *testing.T) {
	t.Helper()
	if os.Getenv("BOOTSERVE_BENCH") != "1" {
		t.Skip("benchmark: set BOOTSERVE_BENCH=1 to run it (root; boots VMs in a namespaced LAN)")
	}
	// The lab needs what the end-to-end tests need; netlab.Require checks it
	// only when BOOTSERVE_E2E=1.
	t.Setenv("BOOTSERVE_E2E", "1")
	netlab.Require(t)
}

func TestSideBySide(t *testing.T) {
	requireBench(t)
	e := &env{t: t, bin: t.TempDir(), assets: netlab.Assets(t)}
	goBuild(t, "../../cmd/bootserve", filepath.Join(e.bin, "bootserve"))
	goBuild(t, "../pixiecore", filepath.Join(e.bin, "pixiecore"))
	goBuild(t, "../storm", filepath.Join(e.bin, "storm"))
	e.files = filesDir(t, e.assets)
	e.lab = netlab.New(t, netlab.Options{})
	// One address on the bridge for the script discovery (bench/storm -n 1).
	a := e.lab.Subnet().Addr().As4()
	a[3] = 3
	ipRun(t, "-n", e.lab.LAN().Netns, "addr", "add", netip.AddrFrom4(a).String()+"/24", "dev", "br0")

	var all []server
	for _, s := range servers() {
		if slices.Contains(strings.Split(*flagServers, ","), s.name) && (s.available == nil || s.available(t)) {
			all = append(all, s)
		}
	}
	if *flagExp != "" {
		all = append(all, server{name: "bootserve-exp", boot: startBootserveBin(*flagExp, false), files: startBootserveBin(*flagExp, true)})
	}
	var fws []netlab.Firmware
	for _, f := range strings.Split(*flagFirmwares, ",") {
		switch f {
		case "bios":
			fws = append(fws, netlab.BIOS)
		case "uefi":
			fws = append(fws, netlab.UEFI)
		default:
			t.Fatalf("unknown firmware %q", f)
		}
	}
	var md strings.Builder
	fmt.Fprintf(&md, "Run %s on %s (%d CPUs, QEMU TCG, no KVM); load average at start: %s\n\n",
		time.Now().Format("2006-01-02 15:04 MST"), hostName(), runtime.NumCPU(), loadAvg())
	if !*flagSkipBoots {
		var boots []server
		for _, s := range all {
			if s.boot != nil {
				boots = append(boots, s)
			}
		}
		bootTimes(t, e, boots, fws, &md)
	}
	if !*flagSkipFiles {
		fileTimes(t, e, all, &md)
	}
	fmt.Fprintf(&md, "Load average at end: %s\n", loadAvg())
	t.Log("\n" + md.String())
	if *flagReport != "" {
		if err := os.WriteFile(*flagReport, []byte(md.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// bootRun is one VM boot.
type bootRun struct {
	seconds  float64
	busy     float64 // machine CPU busy % during the run (QEMU alone is ~100/CPUs %)
	serial   string
	pcap     string
	timeline map[string]float64
}

func bootTimes(t *testing.T, e *env, all []server, fws []netlab.Firmware, md *strings.Builder) {
	res := map[string]map[netlab.Firmware][]bootRun{}
	for round := 1; round <= *flagRounds; round++ {
		for _, s := range all {
			r := s.boot(e)
			for _, fw := range fws {
				ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
				name := fmt.Sprintf("%s-%s-%d", s.name, fw, round)
				waitQuiet(t)
				b0, t0 := machineCPU()
				vr, err := e.lab.Boot(ctx, netlab.VM{Name: name, Firmware: fw})
				b1, t1 := machineCPU()
				cancel()
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if !vr.MarkerSeen {
					r.stop()
					t.Fatalf("%s: %s; serial log %s:\n%s", name, vr.Summary(), vr.SerialLog, vr.Tail(30))
				}
				t.Logf("%s: marker after %.2f s", name, vr.Seconds())
				if res[s.name] == nil {
					res[s.name] = map[netlab.Firmware][]bootRun{}
				}
				res[s.name][fw] = append(res[s.name][fw], bootRun{seconds: vr.Seconds(), busy: 100 * (b1 - b0) / (t1 - t0), serial: vr.SerialLog, pcap: vr.Pcap,
					timeline: timeline(vr, e.lab.ServerIP())})
			}
			r.stop()
		}
	}

	md.WriteString("### Time from QEMU start to the marker (s)\n\n")
	fmt.Fprintf(md, "Median of %d runs (min–max). Ratio = bootserve's median / the peer's median. ", *flagRounds)
	md.WriteString("\"To files\" is the same up to the moment the last initrd byte arrived, i.e. without the Linux boot that follows " +
		"(identical kernel and initrd for every server, and the noisiest phase under emulation).\n\n")
	fmt.Fprintf(md, "Machine busy: median share of all %d CPUs in use during the runs (QEMU alone takes ~%d%%).\n\n", runtime.NumCPU(), 100/runtime.NumCPU())
	md.WriteString("| firmware | server | to marker: median | min–max | bootserve / server | to files: median | bootserve / server | machine busy |\n|---|---|---|---|---|---|---|---|\n")
	for _, fw := range fws {
		ref, refFiles := median(secondsOf(res["bootserve"][fw])), median(filesOf(res["bootserve"][fw]))
		for _, s := range all {
			xs, fs := secondsOf(res[s.name][fw]), filesOf(res[s.name][fw])
			ratio, ratioFiles := "—", "—"
			if s.name != "bootserve" && ref > 0 {
				ratio = fmt.Sprintf("%.2f", ref/median(xs))
				if len(fs) > 0 && refFiles > 0 {
					ratioFiles = fmt.Sprintf("%.2f", refFiles/median(fs))
				}
			}
			fmt.Fprintf(md, "| %s | %s | %.2f | %.2f–%.2f | %s | %.2f | %s | %.0f%% |\n", fw, s.name, median(xs), slices.Min(xs), slices.Max(xs), ratio,
				median(fs), ratioFiles, median(busyOf(res[s.name][fw])))
		}
	}
	fmt.Fprintf(md, "\n### Where the time goes (median over the runs, seconds)\n\n%s\n\n", phaseLegend)
	for _, fw := range fws {
		fmt.Fprintf(md, "%s:\n\n| phase | %s |\n|---|%s\n", fw, strings.Join(names(all), " | "), strings.Repeat("---|", len(all)))
		for _, ph := range phaseNames {
			row := "| " + ph + " |"
			for _, s := range all {
				var xs []float64
				for _, br := range res[s.name][fw] {
					if v, ok := br.timeline[ph]; ok {
						xs = append(xs, v)
					}
				}
				if len(xs) == 0 {
					row += " — |"
				} else {
					row += fmt.Sprintf(" %.3f |", median(xs))
				}
			}
			md.WriteString(row + "\n")
		}
		md.WriteString("\n")
	}
	md.WriteString("Serial logs and captures of the runs:\n\n")
	for _, s := range all {
		for _, fw := range fws {
			for _, br := range res[s.name][fw] {
				fmt.Fprintf(md, "- %s %s %.2f s (machine %.0f%% busy): %s, %s\n", s.name, fw, br.seconds, br.busy, br.serial, br.pcap)
			}
		}
	}
	md.WriteString("\n")
}

// Phases of a boot. The serial ones come from the VM's console (times from
// QEMU start), the capture ones from the LAN capture (times between packets).
const (
	phIPXEStart   = "serial: QEMU start → last iPXE starts"
	phBanner      = "serial: iPXE banner (\"Press Ctrl-B\" wait)"
	phToScript    = "serial: last iPXE starts → script fetched (incl. banner)"
	phHTTP        = "serial: script → kernel and initrd fetched"
	phLinux       = "serial: initrd fetched → marker"
	phProxyRTT    = "pcap: first DISCOVER → proxy reply"
	phFwDHCP      = "pcap: first DISCOVER → REQUEST to the router"
	phBINL        = "pcap: REQUEST to :4011 → ACK"
	phBINLWait    = "pcap: :4011 ACK → first TFTP request"
	phTFTP        = "pcap: TFTP transfers (sum)"
	phTFTPToIPXE  = "pcap: last TFTP packet → next DISCOVER"
	phScriptReply = "pcap: first DISCOVER → script URL in a reply"
)

var phaseNames = []string{phIPXEStart, phBanner, phToScript, phHTTP, phLinux,
	phProxyRTT, phFwDHCP, phBINL, phBINLWait, phTFTP, phTFTPToIPXE, phScriptReply}

const phaseLegend = "Serial phases are from the VM console's timestamps; \"last iPXE\" is the one that fetches the script " +
	"(the ROM for bootserve and dnsmasq on BIOS, the chainloaded build otherwise). Capture phases are from the LAN capture " +
	"of the run. \"—\": the phase does not occur on that path."

var (
	reIPXEInit   = regexp.MustCompile(`iPXE initialising devices`)
	reFeatures   = regexp.MustCompile(`^Features: `)
	reBanner     = regexp.MustCompile(`Press Ctrl-B for the iPXE command line`)
	reScriptOK   = regexp.MustCompile(`^http://\S*(/ipxe|/_/ipxe|boot\.ipxe)\.\.\. ok`)
	reFetchOK    = regexp.MustCompile(`\.\.\. ok\s*$`) // long URLs wrap: match the line's end
	reMarkerLine = regexp.MustCompile(netlab.DefaultMarker)
)

// timeline measures a run's phases from its serial log and capture.
func timeline(r *netlab.Result, server netip.Addr) map[string]float64 {
	out := map[string]float64{}
	var ipxeStart, features, banner, script, lastFetch, marker float64 = -1, -1, -1, -1, -1, -1
	for _, l := range r.Lines {
		at := l.At.Seconds()
		switch {
		case marker >= 0:
		case reIPXEInit.MatchString(l.Text) && script < 0:
			ipxeStart, features, banner = at, -1, -1
		case reFeatures.MatchString(l.Text) && script < 0:
			features = at
		case reBanner.MatchString(l.Text) && script < 0:
			banner = at
		case reScriptOK.MatchString(l.Text) && script < 0:
			script = at
		case reFetchOK.MatchString(l.Text) && script >= 0:
			lastFetch = at
		case reMarkerLine.MatchString(l.Text):
			marker = at
		}
	}
	if ipxeStart >= 0 && script >= 0 {
		out[phIPXEStart] = ipxeStart
	}
	if features >= 0 && banner >= 0 {
		out[phBanner] = banner - features
	}
	if ipxeStart >= 0 && script >= 0 {
		out[phToScript] = script - ipxeStart
	}
	if script >= 0 && lastFetch >= 0 {
		out[phHTTP] = lastFetch - script
	}
	if lastFetch >= 0 && marker >= 0 {
		out[phLinux] = marker - lastFetch
	}
	if r.Pcap != "" {
		maps.Copy(out, capturePhases(r.Pcap, r.MAC, server))
	}
	return out
}

// capturePhases reads the UDP side of a boot from its capture: DHCP, the
// port 4011 round and TFTP (HTTP is timed from the console instead).
func capturePhases(path, mac string, server netip.Addr) map[string]float64 {
	out := map[string]float64{}
	dgs, err := pcapread.ReadFile(path)
	if err != nil {
		return out
	}
	srv := net.IP(server.AsSlice())
	var firstDiscover, binlReq, binlAck, scriptAt time.Time
	var tftpSum float64
	var tftpEnd time.Time
	tftpPort, tftpStart := 0, time.Time{}
	var vmIP net.IP
	endTransfer := func() {
		if tftpPort != 0 {
			tftpSum += tftpEnd.Sub(tftpStart).Seconds()
			tftpPort = 0
		}
	}
	for _, d := range dgs {
		fromServer := d.Src.IP.Equal(srv)
		switch {
		case d.Dst.Port == 67 || (d.Dst.Port == 4011 && !fromServer):
			p, err := dhcpv4.FromBytes(d.Payload)
			if err != nil || p.ClientHWAddr.String() != mac {
				continue
			}
			switch p.MessageType() {
			case dhcpv4.MessageTypeDiscover:
				if firstDiscover.IsZero() {
					firstDiscover = d.Time
				}
				if !tftpEnd.IsZero() {
					endTransfer()
					if _, ok := out[phTFTPToIPXE]; !ok {
						out[phTFTPToIPXE] = d.Time.Sub(tftpEnd).Seconds()
					}
				}
			case dhcpv4.MessageTypeRequest:
				if d.Dst.Port == 4011 {
					if binlReq.IsZero() {
						binlReq, vmIP = d.Time, d.Src.IP
					}
				} else if _, ok := out[phFwDHCP]; !ok && !firstDiscover.IsZero() {
					out[phFwDHCP] = d.Time.Sub(firstDiscover).Seconds()
				}
			}
		case fromServer && (d.Src.Port == 67 || d.Src.Port == 4011):
			p, err := dhcpv4.FromBytes(d.Payload)
			if err != nil || p.ClientHWAddr.String() != mac {
				continue
			}
			if _, ok := out[phProxyRTT]; !ok && !firstDiscover.IsZero() {
				out[phProxyRTT] = d.Time.Sub(firstDiscover).Seconds()
			}
			if d.Src.Port == 4011 && binlAck.IsZero() && !binlReq.IsZero() {
				binlAck = d.Time
				out[phBINL] = binlAck.Sub(binlReq).Seconds()
			}
			file := p.BootFileName
			if f := p.BootFileNameOption(); f != "" {
				file = f
			}
			if strings.HasPrefix(file, "http://") && scriptAt.IsZero() && !firstDiscover.IsZero() {
				scriptAt = d.Time
				out[phScriptReply] = scriptAt.Sub(firstDiscover).Seconds()
			}
		case d.Dst.Port == 69 && d.Dst.IP.Equal(srv):
			if vmIP == nil {
				vmIP = d.Src.IP
			}
			if !binlAck.IsZero() {
				if _, ok := out[phBINLWait]; !ok {
					out[phBINLWait] = d.Time.Sub(binlAck).Seconds()
				}
			}
			endTransfer()
			tftpPort, tftpStart, tftpEnd = d.Src.Port, d.Time, d.Time
		case tftpPort != 0 && ((d.Src.Port == tftpPort && d.Src.IP.Equal(vmIP)) || (d.Dst.Port == tftpPort && d.Dst.IP.Equal(vmIP))):
			tftpEnd = d.Time
		}
	}
	endTransfer()
	if tftpSum > 0 {
		out[phTFTP] = tftpSum
	}
	return out
}

// fileRow names one TFTP or HTTP measurement.
type fileRow struct{ server, file, client string }

func fileTimes(t *testing.T, e *env, all []server, md *strings.Builder) {
	results := map[fileRow][]measure{}
	var rows []fileRow
	add := func(r fileRow, m measure) {
		if _, ok := results[r]; !ok {
			rows = append(rows, r)
		}
		results[r] = append(results[r], m)
	}
	// Servers take turns round by round (each one restarted), so that load
	// drifting on a shared machine spreads over all of them.
	for round := 0; round < *flagFileRounds; round++ {
		for _, s := range all {
			fileRound(t, e, s, add)
		}
	}
	fmt.Fprintf(md, "### TFTP and HTTP from the router namespace\n\nMedian of %d runs (%d rounds with the servers taking turns, %d runs each after one warm-up); "+
		"MB/s = 10^6 bytes per second of the median run. ", *flagFileRounds**flagFileRuns, *flagFileRounds, *flagFileRuns)
	md.WriteString("pixiecore serves only its own iPXE builds over TFTP (its UEFI build is its ipxe.efi, ~1 MB; bootserve and dnsmasq serve Debian's snponly.efi, 174 KB): the iPXE rows compare throughput, not time. ")
	md.WriteString("\"× fastest\": the median's time per byte over the fastest server's, same file and client (1.00: the fastest).\n\n")
	md.WriteString("| file | client | server | bytes | median ms | MB/s | × fastest | min–max ms |\n|---|---|---|---|---|---|---|---|\n")
	sort.SliceStable(rows, func(i, j int) bool {
		if rows[i].file != rows[j].file {
			return fileOrder(rows[i].file) < fileOrder(rows[j].file)
		}
		return rows[i].client < rows[j].client
	})
	secondsOfRow := func(r fileRow) []float64 {
		xs := make([]float64, len(results[r]))
		for i, m := range results[r] {
			xs[i] = m.seconds
		}
		return xs
	}
	// The fastest median time per byte of each file and client.
	type fileClient struct{ file, client string }
	fastest := map[fileClient]float64{}
	for _, r := range rows {
		k, perByte := fileClient{r.file, r.client}, median(secondsOfRow(r))/float64(results[r][0].bytes)
		if f, ok := fastest[k]; !ok || perByte < f {
			fastest[k] = perByte
		}
	}
	for _, r := range rows {
		ms, xs := results[r], secondsOfRow(r)
		med := median(xs)
		// Milliseconds with two decimals: the 1 MB HTTP rows differ by tenths.
		fmt.Fprintf(md, "| %s | %s | %s | %d | %.2f | %.1f | %.2f | %.2f–%.2f |\n", r.file, r.client, r.server, ms[0].bytes, med*1e3,
			float64(ms[0].bytes)/med/1e6, med/float64(ms[0].bytes)/fastest[fileClient{r.file, r.client}], slices.Min(xs)*1e3, slices.Max(xs)*1e3)
	}
	md.WriteString("\n")
}

// fileRound starts s and measures each of its files -file-runs times after
// one warm-up.
func fileRound(t *testing.T, e *env, s server, add func(fileRow, measure)) {
	rtr := e.lab.Router()
	srvIP := e.lab.ServerIP().String()
	waitQuiet(t)
	r := s.files(e)
	defer r.stop()
	urls := r.http
	if urls == nil {
		urls = discoverURLs(t, e, r)
	}
	for _, label := range []string{fileTFTP1M, fileUEFIIPXE, fileBIOSIPXE} {
		name, ok := r.tftp[label]
		if !ok {
			continue
		}
		for i := 0; i <= *flagFileRuns; i++ {
			hpa := tftpHPA(t, rtr, srvIP, name)
			cu := curl(t, rtr, "tftp://"+srvIP+"/"+name, "--tftp-blksize", "1468")
			if i == 0 {
				continue // warm-up
			}
			add(fileRow{s.name, label, "tftp-hpa (512 B blocks)"}, hpa)
			add(fileRow{s.name, label, "curl --tftp-blksize 1468"}, cu)
		}
	}
	for _, label := range []string{fileInitrd, fileKernel, fileBig} {
		u := urls[label]
		if u == "" {
			t.Errorf("%s: no URL for %s", s.name, label)
			continue
		}
		for i := 0; i <= *flagFileRuns; i++ {
			m := curl(t, rtr, u)
			if i > 0 {
				add(fileRow{s.name, label, "curl (HTTP)"}, m)
			}
		}
	}
}

func fileOrder(f string) int {
	return slices.Index([]string{fileTFTP1M, fileUEFIIPXE, fileBIOSIPXE, fileInitrd, fileKernel, fileBig}, f)
}

// discoverURLs boots one simulated client (bench/storm -n 1) against the
// server and takes the kernel and initrd URLs from its script.
func discoverURLs(t *testing.T, e *env, r *running) map[string]string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "storm.json")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := e.lab.LAN().Command(ctx, filepath.Join(e.bin, "storm"), "-n", "1", "-server", e.lab.ServerIP().String(),
		"-iface", "br0", "-user-class", r.userClass, "-json", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("script discovery: %v\n%s", err, b)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Results []struct {
			KernelURL  string   `json:"kernel_url"`
			InitrdURLs []string `json:"initrd_urls"`
		} `json:"results"`
	}
	if err := json.Unmarshal(data, &rep); err != nil || len(rep.Results) != 1 || len(rep.Results[0].InitrdURLs) != 2 {
		t.Fatalf("script discovery: want a kernel and two initrds: %v\n%s", err, data)
	}
	c := rep.Results[0]
	return map[string]string{fileKernel: c.KernelURL, fileInitrd: c.InitrdURLs[0], fileBig: c.InitrdURLs[1]}
}

type measure struct {
	seconds float64
	bytes   int64
}

// curl fetches u from h's namespace and returns curl's own time_total.
func curl(t *testing.T, h *netlab.Host, u string, extra ...string) measure {
	t.Helper()
	args := append([]string{"-sS", "--fail", "-o", "/dev/null", "-w", "%{time_total} %{size_download}"}, extra...)
	b, err := h.Command(context.Background(), "curl", append(args, u)...).CombinedOutput()
	if err != nil {
		t.Fatalf("curl %s: %v\n%s", u, err, b)
	}
	var m measure
	if _, err := fmt.Sscan(string(b), &m.seconds, &m.bytes); err != nil {
		t.Fatalf("curl %s: %q: %v", u, b, err)
	}
	return m
}

// tftpHPA fetches name with tftp-hpa (no options: 512-byte blocks), timed by
// bash inside the namespace so the `ip netns exec` start is not counted.
func tftpHPA(t *testing.T, h *netlab.Host, server, name string) measure {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "tftp.out")
	script := `TIMEFORMAT=%R; time tftp -m binary "$1" -c get "$2" "$3"`
	b, err := h.Command(context.Background(), "bash", "-c", script, "tftp-time", server, name, dst).CombinedOutput()
	if err != nil {
		t.Fatalf("tftp-hpa %s: %v\n%s", name, err, b)
	}
	lines := strings.Fields(string(b))
	if len(lines) == 0 {
		t.Fatalf("tftp-hpa %s: no time in %q", name, b)
	}
	secs, err := strconv.ParseFloat(lines[len(lines)-1], 64)
	if err != nil {
		t.Fatalf("tftp-hpa %s: %q: %v", name, b, err)
	}
	st, err := os.Stat(dst)
	if err != nil || st.Size() == 0 {
		t.Fatalf("tftp-hpa %s: nothing received (%v): %s", name, err, b)
	}
	return measure{seconds: secs, bytes: st.Size()}
}

// filesDir makes a world-readable directory (bootserve serves as nobody)
// with the benchmark files and the boot files dnsmasq serves.
func filesDir(t *testing.T, a netlab.BootAssets) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sidebyside-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, size := range map[string]int64{"test1m.bin": 1 << 20, "big100.bin": 100 << 20} {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(f, rand.Reader, size); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	for name, src := range map[string]string{"vmlinuz": a.Kernel, "initrd.gz": a.Initrd,
		"undionly.kpxe": "/usr/lib/ipxe/undionly.kpxe", "snponly.efi": "/usr/lib/ipxe/snponly.efi"} {
		if err := os.Symlink(src, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func goBuild(t *testing.T, pkgDir, out string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Dir = pkgDir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkgDir, err, b)
	}
}

func ipRun(t *testing.T, args ...string) {
	t.Helper()
	ip := "ip"
	for _, p := range []string{"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"} {
		if _, err := os.Stat(p); err == nil {
			ip = p
			break
		}
	}
	if b, err := exec.Command(ip, args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, b)
	}
}

func busyOf(rs []bootRun) []float64 {
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = r.busy
	}
	return xs
}

func secondsOf(rs []bootRun) []float64 {
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = r.seconds
	}
	return xs
}

// machineCPU returns the machine's busy and total CPU time so far (/proc/stat, jiffies).
func machineCPU() (busy, total float64) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 1
	}
	line, _, _ := strings.Cut(string(data), "\n")
	for i, v := range strings.Fields(line)[1:] {
		x, _ := strconv.ParseFloat(v, 64)
		total += x
		if i != 3 && i != 4 { // idle, iowait
			busy += x
		}
	}
	return busy, total
}

// waitQuiet waits (up to -quiet-wait) until the machine was less than 25%
// busy over the last second.
func waitQuiet(t *testing.T) {
	if *flagQuiet <= 0 {
		return
	}
	deadline := time.Now().Add(*flagQuiet)
	for {
		b0, t0 := machineCPU()
		time.Sleep(time.Second)
		b1, t1 := machineCPU()
		busy := 100 * (b1 - b0) / (t1 - t0)
		if busy < 25 {
			return
		}
		if time.Now().After(deadline) {
			t.Logf("machine still %.0f%% busy after waiting %s for it to be idle; going on", busy, *flagQuiet)
			return
		}
	}
}

// filesOf is each run's time to the end of its last file download.
func filesOf(rs []bootRun) []float64 {
	var xs []float64
	for _, r := range rs {
		if linux, ok := r.timeline[phLinux]; ok {
			xs = append(xs, r.seconds-linux)
		}
	}
	return xs
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func names(all []server) []string {
	var out []string
	for _, s := range all {
		out = append(out, s.name)
	}
	return out
}

func hostName() string {
	h, _ := os.Hostname()
	return h
}

func loadAvg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
