package proxyproto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// v2 builds a version 2 header from its parts; body is the address block
// and any TLVs, and length overrides len(body) when non-negative.
func v2(verCmd, fam byte, length int, body ...[]byte) []byte {
	var payload []byte
	for _, p := range body {
		payload = append(payload, p...)
	}
	if length < 0 {
		length = len(payload)
	}
	b := append([]byte(v2Signature), verCmd, fam)
	b = binary.BigEndian.AppendUint16(b, uint16(length))
	return append(b, payload...)
}

func inet4(src, dst string, sport, dport uint16) []byte {
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	b := append(s[:], d[:]...)
	b = binary.BigEndian.AppendUint16(b, sport)
	return binary.BigEndian.AppendUint16(b, dport)
}

func inet6(src, dst string, sport, dport uint16) []byte {
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	b := append(s[:], d[:]...)
	b = binary.BigEndian.AppendUint16(b, sport)
	return binary.BigEndian.AppendUint16(b, dport)
}

func tlv(typ byte, value string) []byte {
	b := binary.BigEndian.AppendUint16([]byte{typ}, uint16(len(value)))
	return append(b, value...)
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

type validCase struct {
	name string
	in   string
	want Header
}

func validCases() []validCase {
	return []validCase{
		{"v1 TCP4", "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n",
			Header{1, Proxy, ap("1.2.3.4:1111"), ap("5.6.7.8:2222")}},
		{"v1 TCP4 extreme ports", "PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n",
			Header{1, Proxy, ap("255.255.255.255:65535"), ap("0.0.0.0:0")}},
		{"v1 TCP6", "PROXY TCP6 2001:db8::1 2001:db8::2 1111 2222\r\n",
			Header{1, Proxy, ap("[2001:db8::1]:1111"), ap("[2001:db8::2]:2222")}},
		{"v1 TCP6 uncompressed upper case", "PROXY TCP6 2001:0DB8:0:0:0:0:0:1 ::1 1 2\r\n",
			Header{1, Proxy, ap("[2001:db8::1]:1"), ap("[::1]:2")}},
		{"v1 TCP6 v4-mapped is unmapped", "PROXY TCP6 ::ffff:1.2.3.4 2001:db8::2 1111 2222\r\n",
			Header{1, Proxy, ap("1.2.3.4:1111"), ap("[2001:db8::2]:2222")}},
		{"v1 TCP6 longest", "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
			Header{1, Proxy, ap("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"), ap("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535")}},
		{"v1 UNKNOWN", "PROXY UNKNOWN\r\n", Header{Version: 1, Command: Local}},
		{"v1 UNKNOWN with ignored addresses", "PROXY UNKNOWN ffff:f::1 ffff::2 65535 65535\r\n",
			Header{Version: 1, Command: Local}},
		{"v2 PROXY TCP4", string(v2(0x21, famTCP4, -1, inet4("1.2.3.4", "5.6.7.8", 1111, 2222))),
			Header{2, Proxy, ap("1.2.3.4:1111"), ap("5.6.7.8:2222")}},
		{"v2 PROXY TCP4 with TLVs", string(v2(0x21, famTCP4, -1, inet4("1.2.3.4", "5.6.7.8", 1111, 2222), tlv(0x02, "example.com"), tlv(0x04, ""))),
			Header{2, Proxy, ap("1.2.3.4:1111"), ap("5.6.7.8:2222")}},
		{"v2 PROXY TCP6", string(v2(0x21, famTCP6, -1, inet6("2001:db8::1", "2001:db8::2", 1111, 2222))),
			Header{2, Proxy, ap("[2001:db8::1]:1111"), ap("[2001:db8::2]:2222")}},
		{"v2 PROXY TCP6 with TLVs", string(v2(0x21, famTCP6, -1, inet6("2001:db8::1", "::ffff:5.6.7.8", 1111, 2222), tlv(0xEA, strings.Repeat("x", 300)))),
			Header{2, Proxy, ap("[2001:db8::1]:1111"), ap("5.6.7.8:2222")}},
		{"v2 PROXY longest", string(v2(0x21, famTCP4, -1, inet4("1.2.3.4", "5.6.7.8", 1, 2), make([]byte, v2MaxPayload-addrLenInet))),
			Header{2, Proxy, ap("1.2.3.4:1"), ap("5.6.7.8:2")}},
		{"v2 LOCAL", string(v2(0x20, famUnspec, -1)), Header{Version: 2, Command: Local}},
		{"v2 LOCAL ignores family and addresses", string(v2(0x20, 0xff, -1, inet4("1.2.3.4", "5.6.7.8", 1, 2))),
			Header{Version: 2, Command: Local}},
		{"v2 PROXY UNSPEC", string(v2(0x21, famUnspec, -1, tlv(1, "h2"))), Header{Version: 2, Command: Proxy}},
		{"v2 PROXY UDP4 has no addresses", string(v2(0x21, famUDP4, -1, inet4("1.2.3.4", "5.6.7.8", 1, 2))),
			Header{Version: 2, Command: Proxy}},
		{"v2 PROXY UNIX", string(v2(0x21, famUnix, -1, make([]byte, addrLenUnix))), Header{Version: 2, Command: Proxy}},
	}
}

func TestParseValid(t *testing.T) {
	for _, tc := range validCases() {
		t.Run(tc.name, func(t *testing.T) {
			// Bytes after the header belong to the payload and must not
			// change the result.
			for _, tail := range []string{"", "GET / HTTP/1.1\r\n", "\x00\xff", "PROXY TCP4"} {
				h, n, err := parse([]byte(tc.in + tail))
				if err != nil {
					t.Fatalf("parse(%q) error: %v", tc.in+tail, err)
				}
				if n != len(tc.in) {
					t.Errorf("parse(%q) length = %d, want %d", tc.in+tail, n, len(tc.in))
				}
				if h != tc.want {
					t.Errorf("parse(%q) = %+v, want %+v", tc.in+tail, h, tc.want)
				}
			}
		})
	}
}

func TestParseEveryPrefixIncomplete(t *testing.T) {
	for _, tc := range validCases() {
		t.Run(tc.name, func(t *testing.T) {
			for k := range len(tc.in) {
				if _, n, err := parse([]byte(tc.in[:k])); !errors.Is(err, errIncomplete) || n != 0 {
					t.Fatalf("parse(%q) = %d, %v; want 0, errIncomplete", tc.in[:k], n, err)
				}
			}
		})
	}
}

func TestParseMalformed(t *testing.T) {
	tcp4 := inet4("1.2.3.4", "5.6.7.8", 1111, 2222)
	tests := []struct {
		name string
		in   string
	}{
		{"not a header", "GET / HTTP/1.1\r\n"},
		{"lower-case signature", "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"},
		{"partial bad signature", "PROX\x00"},
		{"bad family after PROXY", "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"},
		{"bad family prefix", "PROXY TX"},
		{"UDP4 family", "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"},
		{"UNKNOWN run-on", "PROXY UNKNOWNX\r\n"},
		{"double space", "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"},
		{"double space prefix", "PROXY TCP4 1.2.3.4  "},
		{"missing CRLF within 107 bytes", "PROXY UNKNOWN " + strings.Repeat("x", 93)},
		{"CRLF at byte 108", "PROXY UNKNOWN " + strings.Repeat("x", 92) + "\r\n"},
		{"LF only", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"},
		{"CR not followed by LF", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX"},
		{"CR in mid field", "PROXY TCP4 1.2.3.4\r"},
		{"bad IPv4", "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n"},
		{"IPv4 leading zero", "PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n"},
		{"IPv4 too few octets", "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n"},
		{"bad IPv4 prefix", "PROXY TCP4 1.2.3.x"},
		{"IPv4 prefix too long", "PROXY TCP4 111.222.111.2220"},
		{"bad IPv6", "PROXY TCP6 2001:db8:::1 ::2 1 2\r\n"},
		{"IPv6 with zone", "PROXY TCP6 fe80::1%eth0 ::2 1 2\r\n"},
		{"IPv6 in TCP4", "PROXY TCP4 ::1 5.6.7.8 1 2\r\n"},
		{"IPv6 in TCP4 prefix", "PROXY TCP4 ::"},
		{"IPv4 in TCP6", "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n"},
		{"IPv4 dst in TCP6", "PROXY TCP6 ::1 5.6.7.8 1 2\r\n"},
		{"port 65536", "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"},
		{"port 65536 prefix", "PROXY TCP4 1.2.3.4 5.6.7.8 65536"},
		{"port leading zero", "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n"},
		{"port leading zero prefix", "PROXY TCP4 1.2.3.4 5.6.7.8 1 00"},
		{"port sign", "PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n"},
		{"port not a number", "PROXY TCP4 1.2.3.4 5.6.7.8 http 2\r\n"},
		{"empty port", "PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n"},
		{"missing port", "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"},
		{"missing addresses", "PROXY TCP4\r\n"},
		{"trailing field", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"},
		{"trailing space", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"},
		{"trailing space prefix", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 "},

		{"v2 bad signature", "\r\n\r\n\x00\r\nQUIT\r"},
		{"v2 bad signature prefix", "\r\n\r\x00"},
		{"v2 version 1", string(v2(0x11, famTCP4, -1, tcp4))},
		{"v2 version 3", string(v2(0x31, famTCP4, -1, tcp4))},
		{"v2 unknown command", string(v2(0x22, famTCP4, -1, tcp4))},
		{"v2 bad command prefix", v2Signature + "\x2f"},
		{"v2 unknown family", string(v2(0x21, 0x13, -1, tcp4))},
		{"v2 unknown family UNSPEC/STREAM", string(v2(0x21, 0x01, -1, tcp4))},
		{"v2 bad family prefix", v2Signature + "\x21\x41"},
		{"v2 length short for TCP4", string(v2(0x21, famTCP4, addrLenInet-1, tcp4))},
		{"v2 length short for TCP6", string(v2(0x21, famTCP6, addrLenInet, tcp4))},
		{"v2 length short for UNIX", string(v2(0x21, famUnix, addrLenUnix-1, make([]byte, addrLenUnix)))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, n, err := parse([]byte(tc.in))
			if err == nil || errors.Is(err, errIncomplete) {
				t.Fatalf("parse(%q) = %+v, %d, %v; want a malformed error", tc.in, h, n, err)
			}
			if !errors.Is(err, errMalformed) {
				t.Errorf("parse(%q) error %v does not wrap errMalformed", tc.in, err)
			}
			if n != 0 || h != (Header{}) {
				t.Errorf("parse(%q) = %+v, %d with error; want zero values", tc.in, h, n)
			}
			t.Log(err)
		})
	}
}

// TestParseV2UpToProtocolLimit parses version 2 headers whose payload
// is anywhere up to the 65,535 bytes the length field allows.
func TestParseV2UpToProtocolLimit(t *testing.T) {
	for _, size := range []int{4096, 4097, 65535} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			in := v2(0x21, famTCP6, -1, inet6("2001:db8::1", "2001:db8::2", 1, 2), make([]byte, size-addrLenInet6))
			h, n, err := parse(append(in, "tail"...))
			if err != nil || n != v2HeaderLen+size {
				t.Fatalf("parse = %+v, %d, %v; want a %d-byte header", h, n, err, v2HeaderLen+size)
			}
			if want := (Header{2, Proxy, ap("[2001:db8::1]:1"), ap("[2001:db8::2]:2")}); h != want {
				t.Errorf("parse = %+v, want %+v", h, want)
			}
		})
	}
}
