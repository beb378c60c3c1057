package dhcpproxy

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"testing"
)

// capturedPacket is one UDP datagram from a test capture.
type capturedPacket struct {
	Src, Dst *net.UDPAddr
	Payload  []byte
}

// readPcap reads the UDP-over-IPv4-over-Ethernet datagrams of a classic
// little-endian pcap file: the format of the captures in testdata.
func readPcap(t *testing.T, path string) []capturedPacket {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 24 || binary.LittleEndian.Uint32(b) != 0xa1b2c3d4 {
		t.Fatalf("%s: not a little-endian microsecond pcap", path)
	}
	if lt := binary.LittleEndian.Uint32(b[20:]); lt != 1 {
		t.Fatalf("%s: link type %d, want Ethernet", path, lt)
	}
	var out []capturedPacket
	for off := 24; off+16 <= len(b); {
		incl := int(binary.LittleEndian.Uint32(b[off+8:]))
		frame := b[off+16 : off+16+incl]
		off += 16 + incl
		if len(frame) < 14+20+8 || binary.BigEndian.Uint16(frame[12:]) != 0x0800 {
			continue
		}
		ip := frame[14:]
		ihl := int(ip[0]&0x0f) * 4
		if ip[9] != 17 || len(ip) < ihl+8 {
			continue
		}
		udp := ip[ihl:]
		ulen := int(binary.BigEndian.Uint16(udp[4:]))
		if ulen < 8 || ulen > len(udp) {
			t.Fatalf("%s: truncated UDP datagram", path)
		}
		out = append(out, capturedPacket{
			Src:     &net.UDPAddr{IP: net.IP(append([]byte(nil), ip[12:16]...)), Port: int(binary.BigEndian.Uint16(udp[0:]))},
			Dst:     &net.UDPAddr{IP: net.IP(append([]byte(nil), ip[16:20]...)), Port: int(binary.BigEndian.Uint16(udp[2:]))},
			Payload: append([]byte(nil), udp[8:ulen]...),
		})
	}
	return out
}

func (p capturedPacket) String() string {
	return fmt.Sprintf("%v -> %v (%d bytes)", p.Src, p.Dst, len(p.Payload))
}
