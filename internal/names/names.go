// Package names validates the server names an app is routed by (TLS SNI,
// HTTP Host) and looks connections' names up in a routing table.
//
// A name is an exact DNS name ("db.example.com") or a wildcard of one
// leftmost label ("*.example.com", which matches "a.example.com" but
// neither "example.com" nor "a.b.example.com"). Matching ignores case
// and a trailing dot, and an exact name wins over a wildcard whatever
// the order they were added in, as with nginx's server_name.
package names

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Length limits of a DNS name (RFC 1035 section 2.3.4).
const (
	maxNameLen  = 253
	maxLabelLen = 63
)

// Parse validates a configured name and returns it normalized: lower
// case, without a trailing dot. IP literals, empty labels, labels over
// 63 characters, names over 253 and any '*' other than a whole leftmost
// label are errors.
func Parse(s string) (string, error) {
	n := strings.ToLower(strings.TrimSuffix(s, "."))
	switch {
	case n == "":
		return "", errors.New("empty name")
	case len(n) > maxNameLen:
		return "", fmt.Errorf("longer than %d characters", maxNameLen)
	case isIP(n):
		return "", errors.New("an IP address, not a name (clients send names in SNI and Host)")
	}
	labels := strings.Split(n, ".")
	for i, l := range labels {
		switch {
		case l == "":
			return "", errors.New("empty label")
		case len(l) > maxLabelLen:
			return "", fmt.Errorf("label %q longer than %d characters", l, maxLabelLen)
		case l == "*" && i == 0 && len(labels) > 1:
			// A wildcard of the leftmost label.
		case strings.Contains(l, "*"):
			return "", errors.New(`'*' only stands as the whole leftmost label, as in "*.example.com"`)
		}
	}
	return n, nil
}

func isIP(s string) bool {
	_, err := netip.ParseAddr(strings.Trim(s, "[]"))
	return err == nil
}

// Table maps names to values. The zero value is empty; Add fills it
// before it is shared, after which Lookup may be called concurrently.
type Table[V any] struct {
	exact map[string]V
	wild  map[string]V // by the suffix after "*."
}

// Add maps a name returned by Parse to v. It reports false, and changes
// nothing, if the name is already in the table.
func (t *Table[V]) Add(name string, v V) bool {
	m, key := &t.exact, name
	if suffix, ok := strings.CutPrefix(name, "*."); ok {
		m, key = &t.wild, suffix
	}
	if *m == nil {
		*m = map[string]V{}
	}
	if _, dup := (*m)[key]; dup {
		return false
	}
	(*m)[key] = v
	return true
}

// Len returns the number of names in the table.
func (t *Table[V]) Len() int { return len(t.exact) + len(t.wild) }

// Lookup returns the value of the name that host matches: an exact name
// first, else a wildcard. host is a name as a client sent it (any case,
// perhaps with a trailing dot); IP literals match nothing.
func (t *Table[V]) Lookup(host string) (V, bool) {
	var zero V
	h := strings.ToLower(strings.TrimSuffix(host, ".")) // no allocation when already lower case
	if v, ok := t.exact[h]; ok {
		return v, true
	}
	i := strings.IndexByte(h, '.')
	if i <= 0 || len(t.wild) == 0 {
		return zero, false
	}
	v, ok := t.wild[h[i+1:]]
	return v, ok
}

// HTTPHost returns the host part of an HTTP Host header value: without
// its port, and without the brackets of an IPv6 literal.
func HTTPHost(hostport string) string {
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		return host
	}
	return strings.Trim(hostport, "[]")
}
