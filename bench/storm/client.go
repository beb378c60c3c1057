package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/bootserve/bootserve/tftpd/tftpclient"
)

// The stages of one boot, in order.
const (
	StageOffer     = "dhcp-offer" // DISCOVER → proxy OFFER
	StageBINL      = "binl-ack"   // REQUEST to :4011 → ACK with the boot file
	StageTFTP      = "tftp"       // the boot file over TFTP
	StageIPXEOffer = "ipxe-offer" // iPXE's DISCOVER → OFFER with the script URL
	StageScript    = "script"     // HTTP GET of the script
	StageKernel    = "kernel"     // HTTP GET of the kernel
	StageInitrd    = "initrd"     // HTTP GET of every initrd
)

// Stages lists the stage names in boot order.
var Stages = []string{StageOffer, StageBINL, StageTFTP, StageIPXEOffer, StageScript, StageKernel, StageInitrd}

// StageResult is one stage of one client.
type StageResult struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
	// Retries counts packets sent again after a timeout (DHCP requests,
	// TFTP requests and ACKs). HTTP is never retried, as in iPXE.
	Retries int `json:"retries"`
	// ServerErrors counts error packets the server answered with (TFTP
	// "server busy", say); the firmware, and the generator, give up at the
	// first one.
	ServerErrors int   `json:"server_errors,omitempty"`
	Bytes        int64 `json:"bytes,omitempty"`
}

// ClientResult is one simulated machine's boot.
type ClientResult struct {
	Index int    `json:"index"`
	MAC   string `json:"mac"`
	IP    string `json:"ip"`
	// StartSeconds is when the client started, from the start of the run.
	StartSeconds float64 `json:"start_seconds"`
	// TotalSeconds is from the client's start to the end of its last stage.
	TotalSeconds float64       `json:"total_seconds"`
	Stages       []StageResult `json:"stages"`
	// Error is why the boot failed, in the stage FailedStage; empty on success.
	Error       string `json:"error,omitempty"`
	FailedStage string `json:"failed_stage,omitempty"`
	// What the boot used, for tools that need the server's URLs.
	BootFile   string   `json:"boot_file,omitempty"`
	ScriptURL  string   `json:"script_url,omitempty"`
	KernelURL  string   `json:"kernel_url,omitempty"`
	InitrdURLs []string `json:"initrd_urls,omitempty"`
}

// client is one simulated UEFI machine: OVMF's PXE, then Debian's EFI iPXE.
type client struct {
	index     int
	mac       net.HardwareAddr
	guid      []byte
	ip        net.IP // its "leased" address: one of the generator's addresses
	server    net.IP
	userClass string
	mux       *mux
	replies   chan *dhcpv4.DHCPv4
	http      *http.Client
	transport *http.Transport
	res       ClientResult
}

func newClient(index int, macPrefix [3]byte, ip, server net.IP, userClass string, m *mux) *client {
	mac := net.HardwareAddr{macPrefix[0], macPrefix[1], macPrefix[2], byte(index >> 16), byte(index >> 8), byte(index)}
	guid := make([]byte, 17) // type 0 + a random SMBIOS UUID
	_, _ = rand.Read(guid[1:])
	tr := &http.Transport{
		DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 30 * time.Second}).DialContext,
		// iPXE keeps one connection to the server and asks for no compression.
		MaxIdleConnsPerHost:   1,
		DisableCompression:    true,
		ResponseHeaderTimeout: 60 * time.Second,
		Proxy:                 nil,
	}
	return &client{
		index: index, mac: mac, guid: guid, ip: ip, server: server, userClass: userClass, mux: m,
		replies:   make(chan *dhcpv4.DHCPv4, 16),
		transport: tr,
		http:      &http.Client{Transport: tr, Timeout: 5 * time.Minute},
		res:       ClientResult{Index: index, MAC: mac.String(), IP: ip.String()},
	}
}

// boot runs every stage and records its result; it stops at the first failure.
func (c *client) boot(ctx context.Context) {
	defer c.transport.CloseIdleConnections()
	start := time.Now()
	stages := []struct {
		name string
		run  func(context.Context, *StageResult) error
	}{
		{StageOffer, c.discover},
		{StageBINL, c.binl},
		{StageTFTP, c.tftp},
		{StageIPXEOffer, c.ipxeDiscover},
		{StageScript, c.script},
		{StageKernel, c.kernel},
		{StageInitrd, c.initrds},
	}
	for _, s := range stages {
		sr := StageResult{Name: s.name}
		t := time.Now()
		err := s.run(ctx, &sr)
		sr.Seconds = time.Since(t).Seconds()
		c.res.Stages = append(c.res.Stages, sr)
		if err != nil {
			c.res.Error, c.res.FailedStage = err.Error(), s.name
			break
		}
	}
	c.res.TotalSeconds = time.Since(start).Seconds()
}

// fromServer accepts replies of type mt from the server under test (a LAN
// router may answer the same DISCOVER with an address offer).
func (c *client) fromServer(mt dhcpv4.MessageType, xid dhcpv4.TransactionID) func(*dhcpv4.DHCPv4) bool {
	return func(p *dhcpv4.DHCPv4) bool {
		if p.TransactionID != xid || p.MessageType() != mt {
			return false
		}
		sid := p.ServerIdentifier()
		return (sid != nil && sid.Equal(c.server)) || p.ServerIPAddr.Equal(c.server)
	}
}

func (c *client) broadcastExchange(ctx context.Context, req *dhcpv4.DHCPv4, timeouts []time.Duration) (*dhcpv4.DHCPv4, int, error) {
	c.mux.register(req.TransactionID, c.replies)
	defer c.mux.unregister(req.TransactionID)
	return exchange(ctx, func() error { return c.mux.broadcast(req) }, c.replies, timeouts,
		c.fromServer(dhcpv4.MessageTypeOffer, req.TransactionID))
}

// unicastExchange sends req to the server's port 4011 from a socket of the
// client's own address; the answer comes back to that socket (bootserve,
// pixiecore) or, for some servers, to port 68 of the address (the mux).
func (c *client) unicastExchange(ctx context.Context, req *dhcpv4.DHCPv4, timeouts []time.Duration) (*dhcpv4.DHCPv4, int, error) {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: c.ip})
	if err != nil {
		return nil, 0, fmt.Errorf("bind %s: %w", c.ip, err)
	}
	defer conn.Close()
	c.mux.register(req.TransactionID, c.replies)
	defer c.mux.unregister(req.TransactionID)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if p, err := dhcpv4.FromBytes(buf[:n]); err == nil {
				select {
				case c.replies <- p:
				default:
				}
			}
		}
	}()
	dst := &net.UDPAddr{IP: c.server, Port: 4011}
	data := req.ToBytes()
	return exchange(ctx, func() error { _, err := conn.WriteToUDP(data, dst); return err }, c.replies, timeouts,
		c.fromServer(dhcpv4.MessageTypeAck, req.TransactionID))
}

func (c *client) discover(ctx context.Context, sr *StageResult) error {
	req, err := edk2Packet(dhcpv4.MessageTypeDiscover, c.mac, c.guid, nil)
	if err != nil {
		return err
	}
	_, sr.Retries, err = c.broadcastExchange(ctx, req, edk2DiscoverTimeouts)
	return err
}

// binl is what EDK2 does with a proxy offer that lacks option 43: ask the
// server on port 4011 for the boot file, from its new address.
func (c *client) binl(ctx context.Context, sr *StageResult) error {
	req, err := edk2Packet(dhcpv4.MessageTypeRequest, c.mac, c.guid, c.ip)
	if err != nil {
		return err
	}
	ack, retries, err := c.unicastExchange(ctx, req, edk2BootRequestTimeouts)
	sr.Retries = retries
	if err != nil {
		return err
	}
	c.res.BootFile = bootFile(ack)
	if c.res.BootFile == "" {
		return errors.New("ACK without a boot file")
	}
	return nil
}

// EDK2's MTFTP as its PXE driver uses it (PxeBcTftpGetFileSize, then
// PxeBcTftpReadFile): every packet waits 4 s for an answer and is sent at
// most 6 times; blksize 1468 and windowsize 4 are asked for; the first
// request only learns the size (tsize) and is aborted at the OACK.
var edk2TFTP = tftpclient.Options{BlockSize: 1468, WindowSize: 4, Timeout: 4 * time.Second, Retries: 5}

// tftp reads the boot file as EDK2 does: a size probe, then the read. Like
// the firmware it gives up at the first ERROR from the server (a "server
// busy" ends a real machine's boot attempt) and after 6 unanswered tries of
// one packet; Retries counts the packets it had to send again.
func (c *client) tftp(ctx context.Context, sr *StageResult) error {
	server := netip.AddrPortFrom(addrOf(c.server), 69)
	get := func(what string, o tftpclient.Options) (tftpclient.Result, error) {
		// From the client's own address, a new port per request, as EDK2.
		conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: c.ip})
		if err != nil {
			return tftpclient.Result{}, fmt.Errorf("tftp %s (%s): bind %s: %w", c.res.BootFile, what, c.ip, err)
		}
		defer conn.Close()
		o.Conn = conn
		res, err := tftpclient.Get(ctx, server, c.res.BootFile, io.Discard, o)
		sr.Retries += res.Reacks + res.Rerequests
		if err != nil {
			var se *tftpclient.ServerError
			if errors.As(err, &se) {
				sr.ServerErrors++
			}
			return res, fmt.Errorf("tftp %s (%s): %w", c.res.BootFile, what, err)
		}
		return res, nil
	}
	probeOpts := edk2TFTP
	probeOpts.SizeOnly = true
	probe, err := get("size probe", probeOpts)
	if err != nil {
		return err
	}
	read, err := get("read", edk2TFTP)
	sr.Bytes = read.Bytes
	if err != nil {
		return err
	}
	if read.Bytes != probe.TSize {
		return fmt.Errorf("tftp %s: got %d bytes, the size probe said %d", c.res.BootFile, read.Bytes, probe.TSize)
	}
	return nil
}

func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip.To4())
	return a
}

// ipxeDiscover is the chainloaded iPXE asking again; it must now get its
// script URL. A server that answers iPXE only on port 4011 (dnsmasq's PXE
// menu) is asked there too, as iPXE does.
func (c *client) ipxeDiscover(ctx context.Context, sr *StageResult) error {
	req, err := ipxePacket(dhcpv4.MessageTypeDiscover, c.mac, c.guid, c.userClass, nil)
	if err != nil {
		return err
	}
	offer, retries, err := c.broadcastExchange(ctx, req, ipxeDiscoverTimeouts)
	sr.Retries = retries
	if err != nil {
		return err
	}
	file := bootFile(offer)
	if !strings.HasPrefix(file, "http://") {
		req, err := ipxePacket(dhcpv4.MessageTypeRequest, c.mac, c.guid, c.userClass, c.ip)
		if err != nil {
			return err
		}
		ack, retries, err := c.unicastExchange(ctx, req, edk2BootRequestTimeouts)
		sr.Retries += retries
		if err != nil {
			return fmt.Errorf("offer for iPXE names %q, not a script URL, and port 4011: %w", file, err)
		}
		file = bootFile(ack)
	}
	if !strings.HasPrefix(file, "http://") {
		return fmt.Errorf("iPXE was offered %q, not an http:// script URL", file)
	}
	c.res.ScriptURL = file
	return nil
}

func (c *client) script(ctx context.Context, sr *StageResult) error {
	var body []byte
	n, retries, err := c.get(ctx, c.res.ScriptURL, func(r io.Reader) (int64, error) {
		b, err := io.ReadAll(io.LimitReader(r, 1<<20))
		body = b
		return int64(len(b)), err
	})
	sr.Bytes, sr.Retries = n, retries
	if err != nil {
		return err
	}
	base, err := url.Parse(c.res.ScriptURL)
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || (f[0] != "kernel" && f[0] != "initrd") {
			continue
		}
		// The first argument that is not an option ("kernel --name kernel URL").
		var arg string
		for i := 1; i < len(f); i++ {
			switch a := f[i]; {
			case a == "--name" || a == "-n" || a == "--timeout" || a == "-t":
				i++ // the option's value
			case !strings.HasPrefix(a, "-"):
				arg = a
			}
			if arg != "" {
				break
			}
		}
		u, err := base.Parse(arg)
		if err != nil {
			return fmt.Errorf("script line %q: %w", sc.Text(), err)
		}
		if f[0] == "kernel" {
			c.res.KernelURL = u.String()
		} else {
			c.res.InitrdURLs = append(c.res.InitrdURLs, u.String())
		}
	}
	if c.res.KernelURL == "" {
		return fmt.Errorf("script names no kernel:\n%s", body)
	}
	return nil
}

func (c *client) kernel(ctx context.Context, sr *StageResult) error {
	var err error
	sr.Bytes, sr.Retries, err = c.get(ctx, c.res.KernelURL, discard)
	return err
}

func (c *client) initrds(ctx context.Context, sr *StageResult) error {
	for _, u := range c.res.InitrdURLs {
		n, retries, err := c.get(ctx, u, discard)
		sr.Bytes += n
		sr.Retries += retries
		if err != nil {
			return err
		}
	}
	return nil
}

// get fetches u and hands the body to read. Like iPXE's kernel and initrd
// commands it does not try again: a failed download fails the boot. The
// retry count it returns is always 0; it is kept for the table's shape.
func (c *client) get(ctx context.Context, u string, read func(io.Reader) (int64, error)) (int64, int, error) {
	n, err := c.getOnce(ctx, u, read)
	return n, 0, err
}

func (c *client) getOnce(ctx context.Context, u string, read func(io.Reader) (int64, error)) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("User-Agent", "iPXE/1.21.1+ (storm)")
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return 0, fmt.Errorf("GET %s: %s: %s", u, resp.Status, strings.TrimSpace(string(b)))
	}
	n, err := read(resp.Body)
	if err != nil {
		return n, fmt.Errorf("GET %s after %d bytes: %w", u, n, err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return n, fmt.Errorf("GET %s: got %d bytes, Content-Length %s", u, n, strconv.FormatInt(resp.ContentLength, 10))
	}
	return n, nil
}

// discard reads r to the end with a large buffer (io.Discard's own ReadFrom
// uses 8 KiB reads, which would make the generator the bottleneck).
func discard(r io.Reader) (int64, error) {
	var cw countWriter
	buf := make([]byte, 256<<10)
	return io.CopyBuffer(&cw, r, buf)
}

// countWriter counts bytes and keeps none. It has no ReadFrom, so io.CopyBuffer uses the buffer given.
type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }
