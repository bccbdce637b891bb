package proxyproto

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// FuzzParse checks parse on arbitrary input: no panic, a length within
// the input, the result fixed by the header's bytes alone, every proper
// prefix of a header incomplete, malformed input staying malformed as
// more bytes arrive (so Read can give up early), and parsed addresses
// surviving Append and parse again.
func FuzzParse(f *testing.F) {
	for _, tc := range validCases() {
		f.Add([]byte(tc.in))
	}
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Add([]byte("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"))
	f.Add([]byte(v2Signature + "\x21\x11\x00\x0b"))

	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := parse(b)
		if err != nil {
			if n != 0 || h != (Header{}) {
				t.Fatalf("parse(%q) = %+v, %d with error %v; want zero values", b, h, n, err)
			}
			if errors.Is(err, errIncomplete) {
				if len(b) >= maxHeaderLen {
					t.Fatalf("parse(%q): incomplete after %d bytes", b, len(b))
				}
				return
			}
			if !errors.Is(err, errMalformed) {
				t.Fatalf("parse(%q): error %v wraps neither sentinel", b, err)
			}
			for _, more := range []string{"\r\n", "\n", " ", "0", "\x00"} {
				if _, _, err2 := parse(append(b[:len(b):len(b)], more...)); err2 == nil || errors.Is(err2, errIncomplete) {
					t.Fatalf("parse(%q) = %v but parse(%q) = %v", b, err, string(b)+more, err2)
				}
			}
			return
		}

		if n <= 0 || n > len(b) || n > maxHeaderLen {
			t.Fatalf("parse(%q) length %d out of range", b, n)
		}
		if h2, n2, err2 := parse(b[:n]); h2 != h || n2 != n || err2 != nil {
			t.Fatalf("parse(header only) = %+v, %d, %v; parse(%q) = %+v, %d", h2, n2, err2, b, h, n)
		}
		for k := range n {
			if _, _, err := parse(b[:k]); !errors.Is(err, errIncomplete) {
				t.Fatalf("parse(%q) = %v for a prefix of header %q", b[:k], err, b[:n])
			}
		}
		checkHeader(t, b[:n], h)
	})
}

func checkHeader(t *testing.T, b []byte, h Header) {
	t.Helper()
	if h.Version != 1 && h.Version != 2 {
		t.Fatalf("parse(%q): version %d", b, h.Version)
	}
	if h.Source.IsValid() != h.Destination.IsValid() {
		t.Fatalf("parse(%q) = %+v: only one address valid", b, h)
	}
	if !h.Source.IsValid() {
		return
	}
	if h.Command != Proxy {
		t.Fatalf("parse(%q) = %+v: addresses on a Local header", b, h)
	}
	for _, a := range []netip.Addr{h.Source.Addr(), h.Destination.Addr()} {
		if a.Is4In6() || a.Zone() != "" {
			t.Fatalf("parse(%q) = %+v: address not normalised", b, h)
		}
	}
	enc := Append(nil, h.Version, h.Source, h.Destination)
	h2, n2, err := parse(enc)
	if err != nil || n2 != len(enc) || h2 != h {
		t.Fatalf("parse(%q) = %+v, but parse(Append(...) = %q) = %+v, %d, %v", b, h, enc, h2, n2, err)
	}
}

// FuzzParseIP checks the allocation-free address parsers against
// netip.ParseAddr, which they replace.
func FuzzParseIP(f *testing.F) {
	for _, s := range []string{
		"1.2.3.4", "0.0.0.0", "255.255.255.255", "1.2.3.04", "1.2.3", "1..2.3",
		"::", "::1", "1::", "2001:db8::1", "::ffff:1.2.3.4", "1:2:3:4:5:6:7:8",
		"1:2:3:4:5:6:7::", "1:2:3:4:5:6::7:8", "1:2:3:4:5:6:1.2.3.4", "fe80::1%eth0",
		"12345::", ":1::", "1:::2", "::1.2.3.4", "1:2:3:4:5:6:7:1.2.3.4",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, err := netip.ParseAddr(s)
		ok4, ok6 := err == nil && want.Is4(), err == nil && want.Is6() && want.Zone() == ""
		if strings.ContainsRune(s, '%') {
			ok6 = false
		}
		if got, ok := parseIPv4([]byte(s)); ok != ok4 || (ok && got != want) {
			t.Errorf("parseIPv4(%q) = %v, %v; netip says %v, %v", s, got, ok, want, err)
		}
		if got, ok := parseIPv6([]byte(s)); ok != ok6 || (ok && got != want) {
			t.Errorf("parseIPv6(%q) = %v, %v; netip says %v, %v", s, got, ok, want, err)
		}
		// A parseable address must pass the early prefix check at any
		// length, or Read would reject a slow client's valid header.
		for k := 0; k <= len(s); k++ {
			if ok4 && !addrPrefixOK([]byte(s[:k]), false) || ok6 && !addrPrefixOK([]byte(s[:k]), true) {
				t.Errorf("addrPrefixOK(%q) = false for a prefix of valid %q", s[:k], s)
			}
		}
	})
}
