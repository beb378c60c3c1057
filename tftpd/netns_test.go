package tftpd

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"testing"
)

// TestBlksizeOverEthernetMTU fetches a file with curl from a network
// namespace the test creates, across a veth pair with Ethernet's 1500-byte
// MTU. pin/tftp's default would clamp the block size to that interface's MTU
// (1472) and, when the lookup fails, to 512; bootserve honours what the
// client asks, and blocks larger than the MTU are fragmented by IP.
func TestBlksizeOverEthernetMTU(t *testing.T) { forEachEngine(t, testBlksizeOverEthernetMTU) }

func testBlksizeOverEthernetMTU(t *testing.T, engine string) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	tool(t, "ip", "iproute2")
	tool(t, "curl", "curl")
	// Random names and a random /30 in 198.18.0.0/15 (reserved for
	// benchmarking) so parallel runs do not collide.
	id := rand.Uint32() & 0xffffff
	ns, hostIf, peerIf := fmt.Sprintf("tftpd-%06x", id), fmt.Sprintf("tfh%06x", id), fmt.Sprintf("tfp%06x", id)
	subnet := fmt.Sprintf("198.%d.%d.", 18+(id>>16)%2, (id>>8)&0xff)
	hostIP, peerIP := subnet+strconv.Itoa(int(id&0x3f)*4+1), subnet+strconv.Itoa(int(id&0x3f)*4+2)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	ip("netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	ip("link", "add", hostIf, "mtu", "1500", "type", "veth", "peer", "name", peerIf, "mtu", "1500", "netns", ns)
	t.Cleanup(func() { exec.Command("ip", "link", "del", hostIf).Run() })
	ip("addr", "add", hostIP+"/30", "dev", hostIf)
	ip("link", "set", hostIf, "up")
	ip("-n", ns, "addr", "add", peerIP+"/30", "dev", peerIf)
	ip("-n", ns, "link", "set", peerIf, "up")

	file := randomBytes(t, 500_000)
	ended := make(chan Transfer, 4)
	ts := startServer(t, Config{Engine: engine, Source: Map{"f": file}, OnTransfer: func(tr Transfer) {
		if tr.Done {
			ended <- tr
		}
	}}, hostIP+":0")

	for _, blksize := range []int{1468, 8192} {
		cmd := exec.Command("ip", "netns", "exec", ns, "curl", "--silent", "--show-error", "--max-time", "20",
			"--tftp-blksize", strconv.Itoa(blksize), "--output", "-", "tftp://"+ts.addr.String()+"/f")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		got, err := cmd.Output()
		if err != nil {
			t.Fatalf("curl in %s: %v\n%s", ns, err, stderr.Bytes())
		}
		if !bytes.Equal(got, file) {
			t.Errorf("blksize %d: got %d bytes, content differs", blksize, len(got))
		}
		tr := <-ended
		if tr.Outcome != OutcomeOK || tr.BlockSize != blksize || tr.Client.Addr().String() != peerIP {
			t.Errorf("blksize %d: transfer %+v, want ok from %s with blksize %d", blksize, tr, peerIP, blksize)
		}
	}
}
