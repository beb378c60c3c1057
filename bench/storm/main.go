// Command storm is a boot-storm load generator for a ProxyDHCP + TFTP + HTTP
// network boot server such as bootserve: N simulated UEFI machines start
// within a short window, as after a power cut, and each does the whole
// exchange that OVMF's PXE and then Debian's EFI iPXE do:
//
//  1. DISCOVER (PXEClient:Arch:00007, options 93, 94, 97) broadcast to port 67 → the proxy OFFER
//  2. REQUEST to the server's port 4011 from the client's address → ACK with the boot file
//  3. TFTP size probe (tsize, aborted after the OACK), then the read of that file (blksize 1468, windowsize 4)
//  4. iPXE's DISCOVER (user class "iPXE", option 175) → OFFER with the script URL
//  5. HTTP GET of the script; 6. of its kernel; 7. of its initrds, each read to the end
//
// It times every stage of every client, retransmits as the firmware does
// (DHCP after 4, 8, 16, 32 s; port 4011 after 1, 2, 3, 4 s; iPXE after 1, 2,
// 4, 8, 10 s; TFTP packets after 4 s, 6 tries) and counts the retries. Like
// the firmware it gives up on a TFTP ERROR and never repeats an HTTP request,
// so a client that completes is one a real machine would have booted. It
// does not take leases: the replies it needs are the boot server's alone.
//
// It must run as root inside the network namespace of the LAN it loads
// (replies to port 68 are broadcasts, and every client binds one of the
// addresses of -iface, round robin). bench/storm's TestStorm builds a
// throwaway namespaced LAN with netlab, starts bootserve there and runs this:
//
//	sudo BOOTSERVE_BENCH=1 go test -run TestStorm -v -timeout 20m ./bench/storm -args -n 500
//
// Never point it at a real network's interface: it floods it.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Report is what a run writes with -json.
type Report struct {
	Clients      int     `json:"clients"`
	RampSeconds  float64 `json:"ramp_seconds"`
	WallSeconds  float64 `json:"wall_seconds"`
	Failed       int     `json:"failed"`
	Addresses    int     `json:"addresses"`
	MuxReceived  int64   `json:"mux_received"`
	MuxStray     int64   `json:"mux_stray"`
	CPUUserSec   float64 `json:"generator_cpu_user_seconds"`
	CPUSystemSec float64 `json:"generator_cpu_system_seconds"`
	// Results has one entry per client, in index order.
	Results []ClientResult `json:"results"`
}

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(log, os.Args[1:], os.Stdout); err != nil {
		log.Error("storm failed", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("storm", flag.ContinueOnError)
	n := fs.Int("n", 500, "number of simulated machines")
	server := fs.String("server", "", "the boot server's IPv4 address (required)")
	iface := fs.String("iface", "", "the LAN interface to broadcast on (required); its IPv4 addresses become the clients' addresses")
	ramp := fs.Duration("ramp", time.Second, "spread the clients' starts evenly over this long (0: all at once)")
	userClass := fs.String("user-class", "iPXE", `user class the simulated iPXE sends ("pixiecore" for pixiecore's own iPXE build)`)
	macPrefix := fs.String("mac-prefix", "02:53:54", "first three bytes of the clients' MAC addresses (the rest is the client index)")
	deadline := fs.Duration("deadline", 10*time.Minute, "give up on clients still running after this long")
	jsonPath := fs.String("json", "", "write the full report (every client's stages) to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	srv := net.ParseIP(*server).To4()
	if srv == nil || *iface == "" || *n < 1 {
		return fmt.Errorf("need -server IPv4, -iface NAME and -n >= 1")
	}
	var prefix [3]byte
	hw, err := net.ParseMAC(*macPrefix + ":00:00:00")
	if err != nil || len(hw) != 6 {
		return fmt.Errorf("bad -mac-prefix %q: want three bytes like 02:53:54", *macPrefix)
	}
	copy(prefix[:], hw[:3])
	addrs, err := ifaceAddrs(*iface, srv)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *deadline)
	defer cancel()

	m, err := listenMux(ctx, *iface, 16<<20)
	if err != nil {
		return err
	}
	defer m.conn.Close()
	go m.readLoop()

	clients := make([]*client, *n)
	for i := range clients {
		clients[i] = newClient(i, prefix, addrs[i%len(addrs)], srv, *userClass, m)
	}
	log.Info("storm starting", "clients", *n, "server", srv, "iface", *iface, "addresses", len(addrs), "ramp", *ramp)
	t0 := time.Now()
	var wg sync.WaitGroup
	for i, c := range clients {
		at := time.Duration(0)
		if *n > 1 {
			at = *ramp * time.Duration(i) / time.Duration(*n-1)
		}
		wg.Go(func() {
			select {
			case <-time.After(time.Until(t0.Add(at))):
			case <-ctx.Done():
			}
			c.res.StartSeconds = time.Since(t0).Seconds()
			c.boot(ctx)
			if c.res.Error != "" {
				log.Warn("client failed", "index", i, "mac", c.res.MAC, "stage", c.res.FailedStage, "err", c.res.Error)
			}
		})
	}
	wg.Wait()
	rep := Report{Clients: *n, RampSeconds: ramp.Seconds(), WallSeconds: time.Since(t0).Seconds(), Addresses: len(addrs),
		MuxReceived: m.received.Load(), MuxStray: m.stray.Load()}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		rep.CPUUserSec = time.Duration(ru.Utime.Nano()).Seconds()
		rep.CPUSystemSec = time.Duration(ru.Stime.Nano()).Seconds()
	}
	for _, c := range clients {
		rep.Results = append(rep.Results, c.res)
		if c.res.Error != "" {
			rep.Failed++
		}
	}
	if *jsonPath != "" {
		data, err := json.MarshalIndent(rep, "", " ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*jsonPath, data, 0o644); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	}
	fmt.Fprint(out, rep.Summary())
	if rep.Failed > 0 {
		return fmt.Errorf("%d of %d clients failed", rep.Failed, rep.Clients)
	}
	return nil
}

// ifaceAddrs lists the IPv4 addresses of iface in the server's subnet.
func ifaceAddrs(name string, server net.IP) ([]net.IP, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w (run storm inside the LAN's network namespace)", name, err)
	}
	as, err := ifi.Addrs()
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", name, err)
	}
	var out []net.IP
	for _, a := range as {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && ipn.Contains(server) && !ipn.IP.Equal(server) {
			out = append(out, ipn.IP.To4())
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s has no IPv4 address in the subnet of %s: add some (ip addr add 10.99.N.x/24 dev %s)", name, server, name)
	}
	return out, nil
}

// StageStats summarises one stage over the clients that completed it.
type StageStats struct {
	Name                     string
	Count                    int
	P50, P90, P99, Max, Mean float64 // seconds
	Retries, ClientsRetrying int
	ServerErrors, ClientsErr int // error packets from the server, clients that got one
	Bytes                    int64
}

// Stats computes per-stage statistics, plus "total" for completed boots.
func (r *Report) Stats() []StageStats {
	var out []StageStats
	for _, name := range append(append([]string(nil), Stages...), "total") {
		st := StageStats{Name: name}
		var xs []float64
		for _, c := range r.Results {
			if name == "total" {
				if c.Error == "" {
					xs = append(xs, c.TotalSeconds)
				}
				continue
			}
			for _, s := range c.Stages {
				if s.Name != name {
					continue
				}
				if c.FailedStage != name {
					xs = append(xs, s.Seconds)
				}
				st.Retries += s.Retries
				if s.Retries > 0 {
					st.ClientsRetrying++
				}
				st.Bytes += s.Bytes
				st.ServerErrors += s.ServerErrors
				if s.ServerErrors > 0 {
					st.ClientsErr++
				}
			}
		}
		st.Count = len(xs)
		if len(xs) > 0 {
			sort.Float64s(xs)
			var sum float64
			for _, x := range xs {
				sum += x
			}
			st.P50, st.P90, st.P99 = percentile(xs, 50), percentile(xs, 90), percentile(xs, 99)
			st.Max, st.Mean = xs[len(xs)-1], sum/float64(len(xs))
		}
		out = append(out, st)
	}
	return out
}

// percentile is the nearest-rank percentile of sorted xs.
func percentile(xs []float64, p float64) float64 {
	rank := int(p/100*float64(len(xs))+0.999999) - 1
	rank = max(0, min(rank, len(xs)-1))
	return xs[rank]
}

// Summary is the human-readable result.
func (r *Report) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "storm: %d clients (ramp %.1fs, %d source addresses): %d failed, wall time %.2f s\n",
		r.Clients, r.RampSeconds, r.Addresses, r.Failed, r.WallSeconds)
	fmt.Fprintf(&b, "%-11s %6s %8s %8s %8s %8s %8s %8s %8s %9s\n", "stage", "done", "p50 s", "p90 s", "p99 s", "max s", "mean s", "retries", "errors", "MB")
	for _, s := range r.Stats() {
		fmt.Fprintf(&b, "%-11s %6d %8.3f %8.3f %8.3f %8.3f %8.3f %8d %8d %9.1f\n",
			s.Name, s.Count, s.P50, s.P90, s.P99, s.Max, s.Mean, s.Retries, s.ServerErrors, float64(s.Bytes)/1e6)
	}
	fmt.Fprintf(&b, "generator: cpu %.1f s user + %.1f s system; port-68 datagrams %d (%d stray)\n",
		r.CPUUserSec, r.CPUSystemSec, r.MuxReceived, r.MuxStray)
	shown := 0
	for _, c := range r.Results {
		if c.Error != "" && shown < 10 {
			fmt.Fprintf(&b, "failed: client %d %s (%s) in %s: %s\n", c.Index, c.MAC, c.IP, c.FailedStage, c.Error)
			shown++
		}
	}
	return b.String()
}
