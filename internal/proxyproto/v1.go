package proxyproto

import (
	"bytes"
	"net/netip"
	"strconv"
)

const (
	v1Prefix = "PROXY "
	// v1MaxLen is the spec's longest header, CRLF included.
	v1MaxLen = 107
)

// v1Fields names the space-separated fields after the family, for errors.
var v1Fields = [...]string{"source address", "destination address", "source port", "destination port"}

func parseV1(b []byte) (Header, int, error) {
	if len(b) < len(v1Prefix) {
		if string(b) != v1Prefix[:len(b)] {
			return Header{}, 0, malformed("v1: bad signature %q", b)
		}
		return Header{}, 0, errIncomplete
	}
	if string(b[:len(v1Prefix)]) != v1Prefix {
		return Header{}, 0, malformed("v1: bad signature %q", b[:len(v1Prefix)])
	}
	line := b[:min(len(b), v1MaxLen)]
	end := bytes.Index(line, []byte("\r\n"))
	if end >= 0 {
		h, err := parseV1Line(line[len(v1Prefix):end])
		if err != nil {
			return Header{}, 0, err
		}
		return h, end + 2, nil
	}
	if len(line) == v1MaxLen {
		return Header{}, 0, malformed("v1: no CRLF within %d bytes", v1MaxLen)
	}
	if err := checkV1Prefix(line[len(v1Prefix):]); err != nil {
		return Header{}, 0, err
	}
	return Header{}, 0, errIncomplete
}

// parseV1Line parses the text between "PROXY " and CRLF.
func parseV1Line(s []byte) (Header, error) {
	fam, rest, _ := bytes.Cut(s, []byte(" "))
	var v6 bool
	switch string(fam) {
	case "UNKNOWN":
		// The spec has the receiver ignore whatever follows UNKNOWN.
		return Header{Version: 1, Command: Local}, nil
	case "TCP4":
	case "TCP6":
		v6 = true
	default:
		return Header{}, malformed("v1: unknown protocol family %q", fam)
	}
	var f [len(v1Fields)][]byte
	for i := range f {
		var found bool
		f[i], rest, found = bytes.Cut(rest, []byte(" "))
		if len(f[i]) == 0 {
			return Header{}, malformed("v1: missing %s", v1Fields[i])
		}
		if found != (i < len(f)-1) {
			if found {
				return Header{}, malformed("v1: unexpected text after destination port")
			}
			return Header{}, malformed("v1: missing %s", v1Fields[i+1])
		}
	}
	src, ok := parseV1Addr(f[0], v6)
	if !ok {
		return Header{}, malformed("v1: bad %s %s %q", fam, v1Fields[0], f[0])
	}
	dst, ok := parseV1Addr(f[1], v6)
	if !ok {
		return Header{}, malformed("v1: bad %s %s %q", fam, v1Fields[1], f[1])
	}
	sport, ok := parsePort(f[2])
	if !ok {
		return Header{}, malformed("v1: bad %s %q", v1Fields[2], f[2])
	}
	dport, ok := parsePort(f[3])
	if !ok {
		return Header{}, malformed("v1: bad %s %q", v1Fields[3], f[3])
	}
	return Header{
		Version:     1,
		Command:     Proxy,
		Source:      unmapped(netip.AddrPortFrom(src, sport)),
		Destination: unmapped(netip.AddrPortFrom(dst, dport)),
	}, nil
}

func parseV1Addr(s []byte, v6 bool) (netip.Addr, bool) {
	if v6 {
		return parseIPv6(s)
	}
	return parseIPv4(s)
}

// checkV1Prefix reports whether s, the text after "PROXY " with no CRLF
// in it yet, can still grow into a valid header. Fields already followed
// by a space are checked in full, the last one only for characters and
// length.
func checkV1Prefix(s []byte) error {
	if n := len(s); n > 0 && s[n-1] == '\r' {
		// Only "\n" can follow, so the line is complete but for it.
		_, err := parseV1Line(s[:n-1])
		return err
	}
	fam, rest, found := bytes.Cut(s, []byte(" "))
	if !found {
		for _, f := range [...]string{"TCP4", "TCP6", "UNKNOWN"} {
			if len(fam) <= len(f) && string(fam) == f[:len(fam)] {
				return nil
			}
		}
		return malformed("v1: unknown protocol family %q", fam)
	}
	var v6 bool
	switch string(fam) {
	case "UNKNOWN":
		return nil
	case "TCP4":
	case "TCP6":
		v6 = true
	default:
		return malformed("v1: unknown protocol family %q", fam)
	}
	for i := range len(v1Fields) {
		f, tail, found := bytes.Cut(rest, []byte(" "))
		rest = tail
		switch {
		case !found && i < 2:
			if !addrPrefixOK(f, v6) {
				return malformed("v1: bad %s %s %q", fam, v1Fields[i], f)
			}
			return nil
		case !found:
			if !portPrefixOK(f) {
				return malformed("v1: bad %s %q", v1Fields[i], f)
			}
			return nil
		case len(f) == 0:
			return malformed("v1: missing %s", v1Fields[i])
		case i < 2:
			if _, ok := parseV1Addr(f, v6); !ok {
				return malformed("v1: bad %s %s %q", fam, v1Fields[i], f)
			}
		case i == len(v1Fields)-1:
			return malformed("v1: unexpected text after destination port")
		default:
			if _, ok := parsePort(f); !ok {
				return malformed("v1: bad %s %q", v1Fields[i], f)
			}
		}
	}
	return nil // unreachable: the last field either ends the text or errs
}

func appendV1(b []byte, src, dst netip.AddrPort) []byte {
	src, dst, ok, v4 := endpoints(src, dst)
	if !ok {
		return append(b, "PROXY UNKNOWN\r\n"...)
	}
	if v4 {
		b = append(b, "PROXY TCP4 "...)
	} else {
		b = append(b, "PROXY TCP6 "...)
		// Mixed families: write the IPv4 side in mapped form, which a
		// TCP6 header allows, rather than lose both addresses to UNKNOWN.
		src = netip.AddrPortFrom(netip.AddrFrom16(src.Addr().As16()), src.Port())
		dst = netip.AddrPortFrom(netip.AddrFrom16(dst.Addr().As16()), dst.Port())
	}
	b = src.Addr().AppendTo(b)
	b = append(b, ' ')
	b = dst.Addr().AppendTo(b)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(src.Port()), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(dst.Port()), 10)
	return append(b, "\r\n"...)
}
