package sidebyside

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bootserve/bootserve/e2e/netlab"
)

// nginxBin is Debian's nginx (package nginx-light). The system's nginx
// service and /etc/nginx are left alone: the tests run their own.
const nginxBin = "/usr/sbin/nginx"

// haveNginx reports whether nginx is installed. Without it the nginx rows
// are left out with a log line, not failed: nginx is a peer to compare
// against, not something the benchmarks need.
func haveNginx(t *testing.T) bool {
	t.Helper()
	if _, err := os.Stat(nginxBin); err != nil {
		t.Logf("no nginx row: %v (apt-get install nginx-light)", err)
		return false
	}
	return true
}

// startNginx runs nginx in h's namespace, serving dir on addr, in the
// foreground as the test's child (stopped when t ends, or by the caller),
// with everything it writes in a new temporary directory. The http settings
// are those of Debian's stock nginx.conf that bear on serving a file
// (sendfile and tcp_nopush on), i.e. what a user who pairs dnsmasq with
// nginx gets.
//
// master_process off makes nginx one process that accepts and serves, as
// one worker under a master would: the client here sends one request at a
// time, which one worker serves whatever worker_processes says (on
// loopback, 1 MB took the same time with a master and 1 or 2 workers), and
// the process's CPU time (procCPU) is then all of nginx's.
func startNginx(t *testing.T, lab *netlab.Lab, h *netlab.Host, addr netip.AddrPort, dir string) *netlab.Proc {
	t.Helper()
	tmp := t.TempDir()
	errLog := filepath.Join(tmp, "error.log")
	conf := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
error_log %[1]q;
pid %[2]q;
events { worker_connections 1024; }
http {
	access_log %[3]q;
	sendfile on;
	tcp_nopush on;
	tcp_nodelay on;
	keepalive_timeout 65;
	types { }
	default_type application/octet-stream;
	client_body_temp_path %[4]q;
	proxy_temp_path %[5]q;
	fastcgi_temp_path %[6]q;
	uwsgi_temp_path %[7]q;
	scgi_temp_path %[8]q;
	server {
		listen %[9]s;
		root %[10]q;
	}
}
`, errLog, filepath.Join(tmp, "nginx.pid"), filepath.Join(tmp, "access.log"),
		filepath.Join(tmp, "body"), filepath.Join(tmp, "proxy"), filepath.Join(tmp, "fastcgi"),
		filepath.Join(tmp, "uwsgi"), filepath.Join(tmp, "scgi"), addr, dir)
	path := filepath.Join(tmp, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// -e: nginx opens its compiled-in error log before it reads the
	// configuration.
	p := lab.Start(t, h.Command(context.Background(), nginxBin, "-c", path, "-e", errLog))
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := h.DialContext(ctx, "tcp4", addr.String())
		cancel()
		if err == nil {
			c.Close()
			return p
		}
		select {
		case <-p.Done():
			log, _ := os.ReadFile(errLog)
			t.Fatalf("nginx (%s) exited: %s\n%s%s", path, p.ExitStatus(), p.Tail(20), log)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx (%s) does not accept on %s: %v", path, addr, err)
		}
	}
}
