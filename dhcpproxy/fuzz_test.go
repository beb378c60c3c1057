package dhcpproxy

import (
	"net"
	"path/filepath"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/bootserve/bootserve/internal/pcapread"
)

// FuzzDecide feeds arbitrary bytes through everything a packet meets:
// decoding, classification, the decision and the reply. Nothing may panic,
// and every reply must keep the ProxyDHCP promises.
func FuzzDecide(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.pcap")
	for _, p := range files {
		dgs, err := pcapread.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		for _, d := range dgs {
			f.Add(d.Payload, d.Dst.Port == PortPXE)
		}
	}
	env := Env{ServerIP: serverAddr(), URLs: testURLs{}}
	f.Fuzz(func(t *testing.T, b []byte, onPXEPort bool) {
		if env.Firmware == nil {
			env.Firmware = testFirmware(t, true)
		}
		req, err := dhcpv4.FromBytes(b)
		if err != nil {
			return
		}
		port := PortDHCP
		if onPXEPort {
			port = PortPXE
		}
		c, outcome := Parse(req, port, serverIP)
		if c == nil {
			if outcome == "" {
				t.Fatal("ignored without a reason")
			}
			return
		}
		offer, outcome := Decide(c, env)
		if outcome != Answered {
			return
		}
		r, err := BuildReply(req, c, offer, serverIP)
		if err != nil {
			t.Fatal(err)
		}
		back, err := dhcpv4.FromBytes(r.ToBytes())
		if err != nil {
			t.Fatalf("our reply does not decode: %v", err)
		}
		if !back.YourIPAddr.Equal(net.IPv4zero) {
			t.Fatalf("reply hands out %v", back.YourIPAddr)
		}
		for _, o := range []dhcpv4.OptionCode{dhcpv4.OptionIPAddressLeaseTime, dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter} {
			if back.Options.Has(o) {
				t.Fatalf("reply carries lease option %v", o)
			}
		}
		if back.BootFileName == "" && back.BootFileNameOption() == "" {
			t.Fatal("answered without a boot file")
		}
	})
}
