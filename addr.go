package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// notAnIP explains why a numeric-looking host is refused.
const notAnIP = "not an IP address as written (IPv4 is four decimal numbers without leading zeros, as in 127.0.0.1) nor a host name"

// parseListenHost checks the listen value s as written and returns the
// host to bind: "" (every interface, both IPv4 and IPv6), an IP address
// in canonical form (IPv4-mapped IPv6 as IPv4, IPv6 with its zone if it
// has one, brackets dropped), or a host name, resolved when the port
// opens.
func parseListenHost(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	inner, bracketed, err := unbracket(s)
	if err != nil {
		return "", err
	}
	if a, err := netip.ParseAddr(inner); err == nil {
		if bracketed && !a.Is6() {
			return "", errors.New("brackets are for IPv6 addresses only")
		}
		if err := checkZone(a.Zone()); err != nil {
			return "", err
		}
		return a.Unmap().String(), nil
	} else if strings.Contains(inner, "%") && strings.Contains(inner, ":") {
		return "", fmt.Errorf("not an IPv6 address with a zone: %v", unwrapParseError(err))
	}
	if bracketed || strings.ContainsAny(inner, ":[] \t") {
		return "", errors.New("not a host or IP address (ports go in ports:)")
	}
	return inner, checkHostName(inner)
}

// unbracket strips the brackets of "[::1]", and refuses a bracket
// without its pair.
func unbracket(s string) (inner string, bracketed bool, err error) {
	open, closed := strings.HasPrefix(s, "["), strings.HasSuffix(s, "]")
	switch {
	case open && closed && len(s) >= 2:
		return s[1 : len(s)-1], true, nil
	case open || closed || strings.ContainsAny(s, "[]"):
		return "", false, errors.New("unbalanced brackets")
	}
	return s, false, nil
}

// checkZone accepts an IPv6 zone that could name an interface: an index,
// or a name as Linux allows it (1 to 15 bytes, no '/', ':' or space).
// Whether the interface exists is for the machine that listens to say.
func checkZone(zone string) error {
	if zone == "" {
		return nil
	}
	if len(zone) > 15 || strings.ContainsAny(zone, "/: \t\n%") || zone == "." || zone == ".." {
		return fmt.Errorf("zone %q is not an interface name or index", zone)
	}
	return nil
}

// checkHostName refuses a host that is not an IP address but looks like
// one (127.1, 0177.0.0.1, 2130706433, 0x7f.1): some resolvers read it
// as an IP address (inet_aton), others as a name, and no real host name
// ends in a number.
func checkHostName(host string) error {
	labels := strings.Split(strings.TrimSuffix(host, "."), ".")
	last := strings.ToLower(labels[len(labels)-1])
	hex := strings.HasPrefix(last, "0x") && strings.Trim(last[2:], "0123456789abcdef") == ""
	if last != "" && (strings.Trim(last, "0123456789") == "" || hex) {
		return errors.New(notAnIP)
	}
	return nil
}

// unwrapParseError drops the `ParseAddr("…"): ` prefix of a netip
// error, which repeats the value the message already quotes.
func unwrapParseError(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, "): "); i >= 0 {
		return msg[i+3:]
	}
	return msg
}

// checkPort accepts a port written as a plain decimal number in
// 1..65535: no sign, no leading zeros, no service name, so that one port
// is written one way only.
func checkPort(port string) error {
	if port == "" || strings.Trim(port, "0123456789") != "" || port[0] == '0' && port != "0" {
		return fmt.Errorf("port %q is not a plain decimal number", port)
	}
	if len(port) > 5 || port == "0" || port > "65535" && len(port) == 5 {
		return fmt.Errorf("port %q outside 1..65535", port)
	}
	return nil
}

// targetKey is a target address in a form in which two ways of writing
// the same target compare equal: the IP address canonical (IPv4-mapped
// IPv6 as IPv4), a host name in lower case without a trailing dot.
// addr must have passed checkHostPort.
func targetKey(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	if a, err := netip.ParseAddr(host); err == nil {
		host = a.Unmap().String()
	} else {
		host = strings.ToLower(strings.TrimSuffix(host, "."))
	}
	return net.JoinHostPort(host, port)
}

// listenNetwork is the network to listen on addr with: "tcp4" for an
// IPv4 address, "tcp6" for an IPv6 one (Go then sets IPV6_V6ONLY, so
// "::" is IPv6 only), and "tcp" for an unset host (every interface, IPv4
// and IPv6 on one dual-stack socket) or a host name. With "tcp", Go
// would bind 0.0.0.0 dual-stack too, unlike HAProxy, nginx and a plain
// socket, and unlike what an operator who wrote 0.0.0.0 expects.
func listenNetwork(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return "tcp"
	}
	a, err := netip.ParseAddr(host)
	switch {
	case err != nil:
		return "tcp"
	case a.Unmap().Is4():
		return "tcp4"
	}
	return "tcp6"
}

// listenConflict reports whether listening on hosts a and b (as
// parseListenHost returns them) on one port clashes, as the kernel sees
// it with the networks listenNetwork picks. An unset host (dual-stack)
// clashes with everything; 0.0.0.0 with every IPv4 address and "::"
// with every IPv6 one; an IPv4 and an IPv6 socket never clash (so
// 0.0.0.0:P and [::]:P coexist); two addresses of one family clash when
// they are the same (zones apart, but on link-local addresses, where two
// zones are two interfaces). A host name is resolved only when the port opens,
// so it is taken to clash with both wildcards and with itself, nothing
// else. The library keys routes by the address string, so ":80" and
// "0.0.0.0:80" would otherwise become two listeners fighting for a port.
func listenConflict(a, b string) bool {
	if a == "" || b == "" {
		return true
	}
	ia, errA := netip.ParseAddr(a)
	ib, errB := netip.ParseAddr(b)
	switch {
	case errA != nil && errB != nil:
		return strings.EqualFold(strings.TrimSuffix(a, "."), strings.TrimSuffix(b, "."))
	case errA != nil:
		return ib.IsUnspecified()
	case errB != nil:
		return ia.IsUnspecified()
	}
	ia, ib = ia.Unmap(), ib.Unmap()
	switch {
	case ia.Is4() != ib.Is4():
		return false
	case ia.IsUnspecified() || ib.IsUnspecified():
		return true
	case ia.WithZone("") != ib.WithZone(""):
		return false
	}
	// The same address. The kernel heeds a zone on a link-local address
	// only, binding the socket to that interface.
	return !ia.IsLinkLocalUnicast() || ia.Zone() == "" || ib.Zone() == "" || ia.Zone() == ib.Zone()
}

// peerAddr is a client's address as logs and the access log show it:
// an IPv4 client on a dual-stack socket (its address IPv4-mapped,
// [::ffff:127.0.0.1]:53684) is shown as the IPv4 address it is
// (127.0.0.1:53684), as allow/deny and hash already see it.
func peerAddr(a net.Addr) netip.AddrPort {
	ap := addrPort(a)
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
