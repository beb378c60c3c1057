// Package pcapread reads the UDP datagrams of classic pcap captures
// (Ethernet, IPv4), for tests that check real traffic: firmware captures used
// as golden inputs, and the captures end-to-end tests take of their own LAN.
package pcapread

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// Datagram is one UDP datagram of a capture.
type Datagram struct {
	Time     time.Time
	Src, Dst *net.UDPAddr
	Payload  []byte
}

func (d Datagram) String() string {
	return fmt.Sprintf("%v -> %v (%d bytes)", d.Src, d.Dst, len(d.Payload))
}

// ReadFile returns the UDP-over-IPv4 datagrams of a little-endian pcap file
// with Ethernet framing (what tcpdump -w writes); other frames are skipped.
func ReadFile(path string) ([]Datagram, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(b)
}

// Parse is ReadFile on bytes.
func Parse(b []byte) ([]Datagram, error) {
	if len(b) < 24 {
		return nil, errors.New("pcap: too short for a header")
	}
	var nano bool
	switch binary.LittleEndian.Uint32(b) {
	case 0xa1b2c3d4:
	case 0xa1b23c4d:
		nano = true
	default:
		return nil, errors.New("pcap: not a little-endian pcap file")
	}
	if lt := binary.LittleEndian.Uint32(b[20:]); lt != 1 {
		return nil, fmt.Errorf("pcap: link type %d, want Ethernet (1)", lt)
	}
	var out []Datagram
	for off := 24; off+16 <= len(b); {
		sec := int64(binary.LittleEndian.Uint32(b[off:]))
		frac := int64(binary.LittleEndian.Uint32(b[off+4:]))
		incl := int(binary.LittleEndian.Uint32(b[off+8:]))
		if off+16+incl > len(b) {
			break // a capture cut off mid-record (tcpdump killed)
		}
		frame := b[off+16 : off+16+incl]
		off += 16 + incl
		if len(frame) < 14+20+8 || binary.BigEndian.Uint16(frame[12:]) != 0x0800 {
			continue
		}
		ip := frame[14:]
		ihl := int(ip[0]&0x0f) * 4
		if ip[9] != 17 || ihl < 20 || len(ip) < ihl+8 {
			continue
		}
		udp := ip[ihl:]
		ulen := int(binary.BigEndian.Uint16(udp[4:]))
		if ulen < 8 || ulen > len(udp) {
			continue
		}
		ns := frac * 1000
		if nano {
			ns = frac
		}
		out = append(out, Datagram{
			Time:    time.Unix(sec, ns),
			Src:     &net.UDPAddr{IP: net.IP(append([]byte(nil), ip[12:16]...)), Port: int(binary.BigEndian.Uint16(udp[0:]))},
			Dst:     &net.UDPAddr{IP: net.IP(append([]byte(nil), ip[16:20]...)), Port: int(binary.BigEndian.Uint16(udp[2:]))},
			Payload: append([]byte(nil), udp[8:ulen]...),
		})
	}
	return out, nil
}
