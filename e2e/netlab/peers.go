package netlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// BaseCmdline starts the kernel command line of IPXEScript: serial console, quiet, and panic=-1
// so that a kernel panic ends the QEMU run at once (with -no-reboot).
const BaseCmdline = "console=ttyS0 quiet panic=-1"

// IPXEScript returns an iPXE script that boots kernelURL with initrdURL. cmdline is appended to
// BaseCmdline and may use iPXE settings, e.g. "bootserve.marker=${net0/mac:hexhyp}".
// initrd=<name> is always on the command line: Debian's EFI iPXE needs it.
func IPXEScript(kernelURL, initrdURL, cmdline string) string {
	name := initrdURL[strings.LastIndexByte(initrdURL, '/')+1:]
	return "#!ipxe\n" +
		"echo netlab: iPXE script platform=${platform} mac=${net0/mac} ip=${net0/ip}\n" +
		"kernel " + kernelURL + " initrd=" + name + " " + strings.TrimSpace(BaseCmdline+" "+cmdline) + "\n" +
		"initrd " + initrdURL + "\n" +
		"boot\n"
}

// StaticHTTP is a plain HTTP file server whose listening socket is in a lab namespace (it runs in
// the test process; see Host.Do).
type StaticHTTP struct {
	// URL is the server's base URL without a trailing slash, e.g. "http://10.99.7.1".
	URL string
	// Dir is the directory served.
	Dir string

	srv      *http.Server
	mu       sync.Mutex
	requests []string
}

// StartStaticHTTP serves dir on port 80 of h (nil: the server namespace) until t ends.
// Symbolic links in dir are followed.
func (l *Lab) StartStaticHTTP(t testing.TB, h *Host, dir string) *StaticHTTP {
	t.Helper()
	if h == nil {
		h = l.server
	}
	addr := net.JoinHostPort(h.IP.String(), "80")
	ln, err := h.Listen("tcp4", addr)
	if err != nil {
		t.Fatalf("netlab: static HTTP server: listen on %s in %s: %v", addr, h.Netns, err)
	}
	s := &StaticHTTP{URL: "http://" + addr, Dir: dir}
	s.URL = strings.TrimSuffix(s.URL, ":80")
	files := http.FileServer(http.Dir(dir))
	s.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.mu.Lock()
			s.requests = append(s.requests, r.Method+" "+r.URL.Path)
			s.mu.Unlock()
			files.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { _ = s.srv.Serve(ln) }()
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Requests lists the requests served so far ("GET /vmlinuz").
func (s *StaticHTTP) Requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.requests...)
}

// Close stops the server.
func (s *StaticHTTP) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		return s.srv.Close()
	}
	return nil
}

// DnsmasqProxyOptions configures StartDnsmasqProxy.
type DnsmasqProxyOptions struct {
	// ScriptURL is the boot file for iPXE clients (user class "iPXE" or option 175): an http://
	// URL to an iPXE script. Required.
	ScriptURL string
	// TFTPRoot is served over TFTP; default: a new directory with BIOSBootFile and EFIBootFile
	// copied from /usr/lib/ipxe (package ipxe).
	TFTPRoot string
	// BIOSBootFile is the boot file for BIOS PXE clients; default "undionly.kpxe".
	BIOSBootFile string
	// EFIBootFile is the boot file for x86-64 UEFI PXE clients; default "snponly.efi".
	EFIBootFile string
	// Extra lines (dnsmasq.conf syntax) appended to the configuration.
	Extra []string
	// Host to run in; default the server namespace.
	Host *Host
}

// StartDnsmasqProxy runs dnsmasq the way many netboot setups use it next to an existing DHCP
// server: ProxyDHCP (no addresses) + TFTP. PXE firmware gets iPXE over TFTP, iPXE gets
// ScriptURL. It is the reference peer that bootserve is compared with.
func (l *Lab) StartDnsmasqProxy(t testing.TB, o DnsmasqProxyOptions) *Proc {
	t.Helper()
	if o.ScriptURL == "" {
		t.Fatal("netlab: DnsmasqProxyOptions.ScriptURL is required")
	}
	h := o.Host
	if h == nil {
		h = l.server
	}
	if o.BIOSBootFile == "" {
		o.BIOSBootFile = filepath.Base(ipxeBIOS)
	}
	if o.EFIBootFile == "" {
		o.EFIBootFile = filepath.Base(ipxeEFI)
	}
	if o.TFTPRoot == "" {
		o.TFTPRoot = filepath.Join(l.dir, "dnsmasq-tftp")
		if err := os.MkdirAll(o.TFTPRoot, 0o755); err != nil {
			t.Fatalf("netlab: %v", err)
		}
		for src, name := range map[string]string{ipxeBIOS: o.BIOSBootFile, ipxeEFI: o.EFIBootFile} {
			if err := copyFile(src, filepath.Join(o.TFTPRoot, name)); err != nil {
				t.Fatalf("netlab: %v (apt-get install ipxe)", err)
			}
		}
	}
	conf := []string{
		"port=0",
		"interface=" + h.Iface,
		"bind-interfaces",
		"user=root",
		"pid-file=" + filepath.Join(l.dir, "dnsmasq-proxy.pid"),
		"dhcp-leasefile=" + filepath.Join(l.dir, "dnsmasq-proxy.leases"),
		"log-dhcp",
		"dhcp-range=" + l.subnet.Addr().String() + ",proxy," + net.IP(net.CIDRMask(l.subnet.Bits(), 32)).String(),
		"enable-tftp",
		"tftp-root=" + o.TFTPRoot,
		// iPXE sends the raw user class "iPXE" and its option 175; either one marks it.
		"dhcp-userclass=set:ipxe,iPXE",
		"dhcp-match=set:ipxe,175",
		// A single service per client type and no prompt: the client boots it without a menu.
		// Names with a dot are used as given (no ".0" layer suffix).
		`pxe-service=tag:!ipxe,x86PC,"netlab BIOS",` + o.BIOSBootFile,
		`pxe-service=tag:!ipxe,X86-64_EFI,"netlab UEFI",` + o.EFIBootFile,
		`pxe-service=tag:ipxe,x86PC,"netlab iPXE",` + o.ScriptURL,
		`pxe-service=tag:ipxe,X86-64_EFI,"netlab iPXE",` + o.ScriptURL,
	}
	conf = append(conf, o.Extra...)
	path := filepath.Join(l.dir, "dnsmasq-proxy.conf")
	if err := os.WriteFile(path, []byte(strings.Join(conf, "\n")+"\n"), 0o644); err != nil {
		t.Fatalf("netlab: %v", err)
	}
	p := l.Start(t, h.Command(context.Background(), l.tools.dnsmasq, "--keep-in-foreground", "--log-facility=-", "--conf-file="+path))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.WaitLog(ctx, Text("TFTP root is")); err != nil {
		t.Fatalf("netlab: dnsmasq proxy did not come up: %v\n%s", err, p.Tail(20))
	}
	return p
}

// PeerOptions configures StartDnsmasqPeer.
type PeerOptions struct {
	// Assets are served over HTTP as /vmlinuz and /initrd.gz.
	Assets BootAssets
	// Cmdline is appended to the kernel command line (see IPXEScript).
	Cmdline string
	// Host to run in; default the server namespace.
	Host *Host
}

// Peer is dnsmasq (ProxyDHCP + TFTP) plus a static HTTP server with a boot script, kernel and
// initrd: the classic setup bootserve replaces.
type Peer struct {
	Dnsmasq   *Proc
	HTTP      *StaticHTTP
	ScriptURL string
}

// StartDnsmasqPeer starts StartStaticHTTP serving /boot.ipxe, /vmlinuz and /initrd.gz and
// StartDnsmasqProxy pointing iPXE at /boot.ipxe.
func (l *Lab) StartDnsmasqPeer(t testing.TB, o PeerOptions) *Peer {
	t.Helper()
	h := o.Host
	if h == nil {
		h = l.server
	}
	if o.Assets.Kernel == "" || o.Assets.Initrd == "" {
		t.Fatal("netlab: PeerOptions.Assets is required (netlab.Assets(t))")
	}
	dir := filepath.Join(l.dir, "peer-http-"+h.Role)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("netlab: %v", err)
	}
	for name, target := range map[string]string{"vmlinuz": o.Assets.Kernel, "initrd.gz": o.Assets.Initrd} {
		link := filepath.Join(dir, name)
		if err := os.Symlink(target, link); err != nil && !errors.Is(err, os.ErrExist) {
			t.Fatalf("netlab: %v", err)
		}
	}
	base := "http://" + h.IP.String()
	script := IPXEScript(base+"/vmlinuz", base+"/initrd.gz", o.Cmdline)
	if err := os.WriteFile(filepath.Join(dir, "boot.ipxe"), []byte(script), 0o644); err != nil {
		t.Fatalf("netlab: %v", err)
	}
	httpSrv := l.StartStaticHTTP(t, h, dir)
	url := httpSrv.URL + "/boot.ipxe"
	dm := l.StartDnsmasqProxy(t, DnsmasqProxyOptions{ScriptURL: url, Host: h})
	return &Peer{Dnsmasq: dm, HTTP: httpSrv, ScriptURL: url}
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return nil
}
