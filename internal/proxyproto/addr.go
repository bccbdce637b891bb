package proxyproto

import "net/netip"

// The text parsers below exist because netip.ParseAddr takes a string,
// and converting the header's bytes to a string allocates on every
// connection. They accept exactly what netip.ParseAddr accepts, minus
// IPv6 zones, which a PROXY header has no use for (FuzzParseIP checks the
// equivalence).

// Longest textual forms: "255.255.255.255" and
// "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".
const (
	maxIPv4Text = 15
	maxIPv6Text = 45
	maxPortText = 5
)

// parseIPv4 parses dotted-quad s, rejecting octets with leading zeros.
func parseIPv4(s []byte) (netip.Addr, bool) {
	var ip [4]byte
	if !parseIPv4Fields(s, &ip) {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4(ip), true
}

func parseIPv4Fields(s []byte, ip *[4]byte) bool {
	pos, val, digits := 0, 0, 0
	for i, c := range s {
		switch {
		case c >= '0' && c <= '9':
			if digits == 1 && val == 0 {
				return false // leading zero
			}
			val = val*10 + int(c-'0')
			digits++
			if val > 255 {
				return false
			}
		case c == '.':
			if digits == 0 || i == len(s)-1 || pos == 3 {
				return false
			}
			ip[pos] = byte(val)
			pos, val, digits = pos+1, 0, 0
		default:
			return false
		}
	}
	if pos != 3 || digits == 0 {
		return false
	}
	ip[3] = byte(val)
	return true
}

// parseIPv6 parses s as an IPv6 address without zone, including the
// forms with "::" and a trailing dotted quad. It mirrors the algorithm of
// netip.ParseAddr.
func parseIPv6(s []byte) (netip.Addr, bool) {
	var ip [16]byte
	ellipsis := -1 // index in ip where "::" was seen
	if len(s) >= 2 && s[0] == ':' && s[1] == ':' {
		ellipsis = 0
		s = s[2:]
		if len(s) == 0 {
			return netip.IPv6Unspecified(), true
		}
	}
	i := 0
	for i < 16 {
		acc, off := hexGroup(s)
		if off <= 0 {
			return netip.Addr{}, false
		}
		if off < len(s) && s[off] == '.' {
			if !dottedTail(s, &ip, i, ellipsis) {
				return netip.Addr{}, false
			}
			i, s = i+4, nil
			break
		}
		ip[i], ip[i+1] = byte(acc>>8), byte(acc)
		i += 2
		var ok bool
		if s, ok = separator(s[off:], i, &ellipsis); !ok {
			return netip.Addr{}, false
		}
		if len(s) == 0 {
			break
		}
	}
	if len(s) != 0 || !expandEllipsis(&ip, i, ellipsis) {
		return netip.Addr{}, false
	}
	return netip.AddrFrom16(ip), true
}

// hexGroup reads the hex digits s starts with: their value, and how many
// there were; 0 for none, -1 for more than 4.
func hexGroup(s []byte) (acc, off int) {
	for ; off < len(s); off++ {
		v, ok := hexDigit(s[off])
		if !ok {
			break
		}
		if off > 3 {
			return 0, -1 // more than 4 digits in a group
		}
		acc = acc<<4 | v
	}
	return acc, off
}

// dottedTail parses the dotted quad s ends with into ip[i:i+4]: it may
// only stand for the last two groups.
func dottedTail(s []byte, ip *[16]byte, i, ellipsis int) bool {
	if (ellipsis < 0 && i != 12) || i+4 > 16 {
		return false
	}
	var v4 [4]byte
	if !parseIPv4Fields(s, &v4) {
		return false
	}
	copy(ip[i:], v4[:])
	return true
}

// separator consumes what follows a group: nothing, ":" before the next
// group, or "::" (the one ellipsis, recorded at i). It returns the rest.
func separator(s []byte, i int, ellipsis *int) ([]byte, bool) {
	if len(s) == 0 {
		return s, true
	}
	if s[0] != ':' || len(s) == 1 {
		return nil, false
	}
	s = s[1:]
	if s[0] == ':' {
		if *ellipsis >= 0 {
			return nil, false // a second "::"
		}
		*ellipsis = i
		s = s[1:]
	}
	return s, true
}

// expandEllipsis moves the groups after "::" to the end of ip, zeros
// between, given i bytes parsed. "::" must stand for at least one group,
// and only "::" may leave groups out.
func expandEllipsis(ip *[16]byte, i, ellipsis int) bool {
	if i == 16 {
		return ellipsis < 0
	}
	if ellipsis < 0 {
		return false
	}
	n := 16 - i
	copy(ip[ellipsis+n:], ip[ellipsis:i])
	clear(ip[ellipsis : ellipsis+n])
	return true
}

func hexDigit(c byte) (int, bool) {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0'), true
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10, true
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10, true
	}
	return 0, false
}

// parsePort parses a decimal port in 0..65535 without sign or leading
// zeros, so that every port has exactly one spelling.
func parsePort(s []byte) (uint16, bool) {
	if !portPrefixOK(s) || len(s) == 0 {
		return 0, false
	}
	v := 0
	for _, c := range s {
		v = v*10 + int(c-'0')
	}
	return uint16(v), true
}

// portPrefixOK reports whether more digits could still make s a valid
// port. Extra digits only raise the value, so a prefix above 65535 is
// already hopeless.
func portPrefixOK(s []byte) bool {
	if len(s) > maxPortText || (len(s) > 1 && s[0] == '0') {
		return false
	}
	v := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
		v = v*10 + int(c-'0')
	}
	return v <= 65535
}

// addrPrefixOK reports whether s could be the start of an address of the
// family: a cheap character and length check, enough to reject garbage
// early without reimplementing the parsers for partial input.
func addrPrefixOK(s []byte, v6 bool) bool {
	limit := maxIPv4Text
	if v6 {
		limit = maxIPv6Text
	}
	if len(s) > limit {
		return false
	}
	for _, c := range s {
		if _, hex := hexDigit(c); c == '.' || (c >= '0' && c <= '9') || (v6 && (hex || c == ':')) {
			continue
		}
		return false
	}
	return true
}
