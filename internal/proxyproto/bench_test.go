package proxyproto

import (
	"testing"
)

func BenchmarkParse(b *testing.B) {
	for _, bc := range []struct{ name, in string }{
		{"v1-tcp4", "PROXY TCP4 192.168.100.200 10.0.0.1 54321 443\r\n"},
		{"v1-tcp6", "PROXY TCP6 2001:db8:85a3::8a2e:370:7334 2001:db8::1 54321 443\r\n"},
		{"v2-tcp4", string(Append(nil, 2, ap("192.168.100.200:54321"), ap("10.0.0.1:443")))},
		{"v2-tcp6", string(Append(nil, 2, ap("[2001:db8:85a3::8a2e:370:7334]:54321"), ap("[2001:db8::1]:443")))},
	} {
		in := []byte(bc.in)
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(in)))
			for b.Loop() {
				if _, _, err := parse(in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkAppend(b *testing.B) {
	src, dst := ap("[2001:db8:85a3::8a2e:370:7334]:54321"), ap("[2001:db8::1]:443")
	for _, version := range []int{1, 2} {
		b.Run(map[int]string{1: "v1-tcp6", 2: "v2-tcp6"}[version], func(b *testing.B) {
			b.ReportAllocs()
			var buf [128]byte
			for b.Loop() {
				Append(buf[:0], version, src, dst)
			}
		})
	}
}
