package sidebyside

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bootserve/bootserve/e2e/netlab"
)

var (
	flagHTTPRounds = flag.Int("http-rounds", 40, "TestHTTPInterleaved: rounds; each server serves one block per round")
	flagHTTPBlock  = flag.Int("http-block", 10, "TestHTTPInterleaved: requests per block")
	flagHTTPReport = flag.String("http-report", "", "TestHTTPInterleaved: write the Markdown table to this file")
	flagHTTPFile   = flag.String("http-file", "initrd", "TestHTTPInterleaved: the file to fetch, initrd (1.0 MB) or kernel (8.2 MB)")
)

// TestHTTPInterleaved compares the servers' HTTP for one file, the 1.0 MB
// initrd by default (-http-file kernel: the 8.2 MB kernel), where a
// per-request cost shows (the side-by-side file runs
// restart the servers round by round, too coarse for a tenth of a
// millisecond). All servers run at once, bootserve in the lab's server
// namespace and pixiecore, a bare Go static file server (bench/statichttp)
// and nginx (Debian's settings, serving the same directory; left out with a
// log line when not installed) in the second one; curl in the router
// namespace fetches the file from each in turn, -http-block requests at a
// time, for -http-rounds rounds, so that load drifting on the machine
// spreads over all of them. Besides the time curl reports, it reads each
// server process's CPU time (schedstat of all its threads) before and after
// its block. A second static server runs in bootserve's namespace, as a
// control: it differs from the first only in where it runs. With
// -bootserve-exp, that binary also runs, in a second lab (it needs the same
// ports), as "bootserve-exp".
//
//	sudo BOOTSERVE_BENCH=1 go test -run TestHTTPInterleaved -v -timeout 20m ./bench/sidebyside -args -http-report /tmp/http.md
func TestHTTPInterleaved(t *testing.T) {
	requireBench(t)
	bin := t.TempDir()
	goBuild(t, "../../cmd/bootserve", filepath.Join(bin, "bootserve"))
	goBuild(t, "../pixiecore", filepath.Join(bin, "pixiecore"))
	goBuild(t, "../statichttp", filepath.Join(bin, "statichttp"))
	assets := netlab.Assets(t)
	files := filesDir(t, assets)
	lab := netlab.New(t, netlab.Options{SecondServer: true})
	ctx := context.Background()

	type target struct {
		name string
		lab  *netlab.Lab
		proc *netlab.Proc
		url  string
		wall []float64 // seconds
		cpu  []float64 // seconds per request, one per block
	}
	startBS := func(lab *netlab.Lab, exe string) *netlab.Proc {
		p := lab.Start(t, lab.ServerCmd(ctx, exe, "boot", assets.Kernel, assets.Initrd,
			"--cmdline", netlab.BaseCmdline, "--interface", lab.ServerIface()))
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if err := p.WaitLog(wctx, netlab.Text("bootserve ready")); err != nil {
			t.Fatalf("%s did not start: %v\n%s", exe, err, p.Tail(30))
		}
		return p
	}
	bs := startBS(lab, filepath.Join(bin, "bootserve"))
	s2 := lab.Server2()
	pxc := lab.Start(t, s2.Command(ctx, filepath.Join(bin, "pixiecore"), "boot", assets.Kernel, assets.Initrd, "--cmdline", netlab.BaseCmdline))
	static := lab.Start(t, s2.Command(ctx, filepath.Join(bin, "statichttp"), s2.IP.String()+":8080", files))
	// The same static server beside bootserve: the control row. Its
	// difference from the first is what the namespace alone makes.
	srvIP := lab.ServerIP().String()
	static1 := lab.Start(t, lab.ServerCmd(ctx, filepath.Join(bin, "statichttp"), srvIP+":8080", files))

	// The file: the script's initrd or kernel line, the static servers'
	// name for it, and the bytes a fetch must bring.
	var fileLine *regexp.Regexp
	var staticName, fileSrc, fileDesc string
	switch *flagHTTPFile {
	case "initrd":
		fileLine = regexp.MustCompile(`(?m)^initrd\s+(?:--name \S+\s+)?(\S+)`)
		staticName, fileSrc, fileDesc = "initrd.gz", assets.Initrd, "1.0 MB initrd"
	case "kernel":
		fileLine = regexp.MustCompile(`(?m)^kernel\s+(?:--name \S+\s+)?(\S+)`)
		staticName, fileSrc, fileDesc = "vmlinuz", assets.Kernel, "8.2 MB kernel"
	default:
		t.Fatalf("-http-file %q: want initrd or kernel", *flagHTTPFile)
	}
	fileURL := func(lab *netlab.Lab, script string, re *regexp.Regexp) string {
		t.Helper()
		client := lab.Router().HTTPClient()
		var body string
		for range 50 { // the servers may still be starting
			resp, err := client.Get(script)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					body = string(b)
					break
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		m := re.FindStringSubmatch(body)
		if m == nil {
			t.Fatalf("no %s URL in the script from %s:\n%s", *flagHTTPFile, script, body)
		}
		return m[1]
	}
	mac := "52:54:00:00:00:01"
	bsScript := func(lab *netlab.Lab) string {
		return "http://" + lab.ServerIP().String() + "/ipxe?arch=efi-x64&mac=" + mac
	}
	targets := []*target{
		{name: "static Go server", lab: lab, proc: static, url: "http://" + s2.IP.String() + ":8080/" + staticName},
	}
	if haveNginx(t) {
		ngx := startNginx(t, lab, s2, netip.AddrPortFrom(s2.IP, 8081), files)
		targets = append(targets, &target{name: "nginx", lab: lab, proc: ngx, url: "http://" + s2.IP.String() + ":8081/" + staticName})
	}
	targets = append(targets, []*target{
		{name: "pixiecore", lab: lab, proc: pxc, url: fileURL(lab, "http://"+s2.IP.String()+"/_/ipxe?arch=0&mac="+mac, fileLine)},
		{name: "bootserve", lab: lab, proc: bs, url: fileURL(lab, bsScript(lab), fileLine)},
		{name: "static Go server beside bootserve (control)", lab: lab, proc: static1, url: "http://" + srvIP + ":8080/" + staticName},
	}...)
	if *flagExp != "" {
		lab2 := netlab.New(t, netlab.Options{})
		exp := startBS(lab2, *flagExp)
		targets = append(targets, &target{name: "bootserve-exp", lab: lab2, proc: exp, url: fileURL(lab2, bsScript(lab2), fileLine)})
	}
	for _, tg := range targets {
		resp, err := tg.lab.Router().HTTPClient().Get(tg.url)
		if err != nil {
			t.Fatalf("%s: %v", tg.name, err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if st, err := os.Stat(fileSrc); err != nil || resp.StatusCode != http.StatusOK || n != st.Size() {
			t.Fatalf("%s: %s gave %d, %d bytes (want all of %s)", tg.name, tg.url, resp.StatusCode, n, fileSrc)
		}
	}

	waitQuiet(t)
	for round := range *flagHTTPRounds {
		for _, tg := range targets {
			pid := tg.proc.Cmd.Process.Pid
			c0 := procCPU(t, pid)
			for range *flagHTTPBlock {
				out, err := tg.lab.Router().Command(ctx, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", tg.url).Output()
				code, secs, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
				s, perr := strconv.ParseFloat(secs, 64)
				if err != nil || code != "200" || perr != nil {
					t.Fatalf("round %d, %s: curl %q: %v", round, tg.name, out, err)
				}
				tg.wall = append(tg.wall, s)
			}
			tg.cpu = append(tg.cpu, (procCPU(t, pid)-c0).Seconds()/float64(*flagHTTPBlock))
		}
	}

	var md strings.Builder
	fmt.Fprintf(&md, "Run %s on %s; load average at start of report: %s\n\n", time.Now().Format("2006-01-02 15:04 MST"), hostName(), loadAvg())
	fmt.Fprintf(&md, "%s over HTTP, %d requests per server (%d rounds of %d, servers taking turns), curl from the router namespace.\n\n",
		fileDesc, *flagHTTPRounds**flagHTTPBlock, *flagHTTPRounds, *flagHTTPBlock)
	md.WriteString("The 95 % interval of each ratio comes from resampling whole rounds (2000 bootstrap draws), so drift on the machine that hits every server in a round cancels out.\n\n")
	md.WriteString("| server | median ms | mean ms | × static Go server | 95 % interval | server CPU ms per request (mean of blocks) |\n|---|---|---|---|---|---|\n")
	ref := median(targets[0].wall)
	for _, tg := range targets {
		var sum float64
		for _, w := range tg.wall {
			sum += w
		}
		lo, hi := ratioInterval(tg.wall, targets[0].wall, *flagHTTPBlock, 2000)
		fmt.Fprintf(&md, "| %s | %.3f | %.3f | %.3f | %.3f–%.3f | %.3f |\n", tg.name, median(tg.wall)*1e3, sum/float64(len(tg.wall))*1e3,
			median(tg.wall)/ref, lo, hi, mean(tg.cpu)*1e3)
	}
	t.Log("\n" + md.String())
	if *flagHTTPReport != "" {
		if err := os.WriteFile(*flagHTTPReport, []byte(md.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// ratioInterval is a 95 % bootstrap interval of median(a)/median(b), where a
// and b hold blocks of block samples taken in the same rounds: each draw
// picks rounds with replacement and takes both servers' blocks of each.
func ratioInterval(a, b []float64, block, draws int) (lo, hi float64) {
	rounds := min(len(a), len(b)) / block
	if rounds == 0 {
		return 0, 0
	}
	rng := rand.New(rand.NewPCG(1, 2)) // fixed: the same data gives the same interval
	ratios := make([]float64, draws)
	ra, rb := make([]float64, 0, rounds*block), make([]float64, 0, rounds*block)
	for i := range ratios {
		ra, rb = ra[:0], rb[:0]
		for range rounds {
			r := rng.IntN(rounds)
			ra = append(ra, a[r*block:(r+1)*block]...)
			rb = append(rb, b[r*block:(r+1)*block]...)
		}
		ratios[i] = median(ra) / median(rb)
	}
	sort.Float64s(ratios)
	return ratios[draws*25/1000], ratios[draws*975/1000]
}

// procCPU is the CPU time all of a process's threads have used so far
// (the first field of /proc/PID/task/TID/schedstat, in nanoseconds).
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("no threads for process %d: %v", pid, err)
	}
	var total time.Duration
	for _, p := range tasks {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // a thread that just ended
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			t.Fatalf("%s: %q: %v", p, b, err)
		}
		total += time.Duration(ns)
	}
	return total
}

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

// TestRatioInterval checks the bootstrap interval on made-up rounds: it
// holds the true ratio, and it is narrow when the rounds agree.
func TestRatioInterval(t *testing.T) {
	var a, b []float64
	for r := range 40 {
		drift := 1 + 0.2*float64(r%5) // the machine gets slower and faster
		for i := range 10 {
			jitter := 1 + 0.01*float64((r*7+i*3)%11-5)
			b = append(b, drift*jitter)
			a = append(a, 1.05*drift*jitter)
		}
	}
	lo, hi := ratioInterval(a, b, 10, 2000)
	if lo > 1.05 || hi < 1.05 || hi-lo > 0.05 {
		t.Fatalf("interval %.4f–%.4f, want a narrow one around 1.05", lo, hi)
	}
	if lo, hi := ratioInterval(a[:5], b[:5], 10, 100); lo != 0 || hi != 0 {
		t.Fatalf("no whole round: %v–%v, want 0–0", lo, hi)
	}
}
