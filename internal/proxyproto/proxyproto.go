// Package proxyproto reads and writes PROXY protocol headers, versions 1
// (text) and 2 (binary), as specified by HAProxy in
// https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt.
//
// A proxy that forwards a TCP connection loses the client's address: the
// target sees the proxy as its peer. The PROXY header, sent before any
// payload, carries the original source and destination so the target can
// use them instead.
//
// IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are treated as IPv4 in both
// directions. A dual-stack listener reports IPv4 clients in mapped form,
// and a peer may encode an IPv4 client either way; unmapping makes the
// address compare equal to plain IPv4 prefixes in allow/deny lists and
// hash to the same balancer key however it arrived.
//
// Nothing here is Linux-only: Read peeks with recv(2)'s MSG_PEEK, which
// every Unix system has.
package proxyproto

import (
	"errors"
	"fmt"
	"net/netip"
)

// maxHeaderLen is the longest header parse accepts in either version.
const maxHeaderLen = v2HeaderLen + v2MaxPayload

// errIncomplete is returned by parse when its input is a valid prefix of
// a header and more bytes are needed to finish it.
var errIncomplete = errors.New("proxyproto: incomplete header")

// errMalformed is wrapped by every error that reports a header which is
// not valid PROXY protocol, as opposed to a timeout or a closed
// connection.
var errMalformed = errors.New("proxyproto: malformed header")

// Command is what a header asks the receiver to do with its addresses.
type Command uint8

// The values are the version 2 command codes.
const (
	// Local means the connection was made by the proxy itself (a health
	// check, say) rather than on behalf of a client: the receiver uses
	// the connection's real endpoints. A version 1 "UNKNOWN" header is
	// reported as Local because it carries no addresses either.
	Local Command = 0x0
	// Proxy means the connection is relayed for a client whose addresses
	// are in the header, when its family is one the package decodes.
	Proxy Command = 0x1
)

// Header is a parsed PROXY protocol header.
type Header struct {
	// Version is 1 or 2.
	Version int
	// Command is Local or Proxy.
	Command Command
	// Source is the original client's address and Destination the
	// address it connected to. Both are valid only for a Proxy header of
	// the TCP over IPv4 or IPv6 family. They are zero for Local headers
	// and for the version 2 families this TCP-only package does not
	// decode (UNSPEC, UNIX, UDP), which HAProxy also accepts without
	// addresses; the receiver then uses the connection's own endpoints.
	Source, Destination netip.AddrPort
}

// parse parses a header at the start of b and returns it with its length
// in bytes; bytes after the header do not affect the result. If b is a
// valid prefix of a header that needs more bytes, parse returns
// errIncomplete; if b cannot start a valid header, it returns an error
// wrapping errMalformed that names the fault. The length is 0 whenever
// the error is non-nil.
//
// parse rejects a malformed prefix as soon as it sees it, so a reader
// waiting for more bytes gives up on garbage at once instead of at its
// deadline.
func parse(b []byte) (Header, int, error) {
	if len(b) == 0 {
		return Header{}, 0, errIncomplete
	}
	// The two signatures differ in their first byte.
	switch b[0] {
	case v1Prefix[0]:
		return parseV1(b)
	case v2Signature[0]:
		return parseV2(b)
	}
	return Header{}, 0, malformed("no PROXY protocol signature (first byte %#02x)", b[0])
}

// parseHead is parse for a reader that consumes the header itself: it
// needs only the head of a version 2 header (at most v2MaxHead bytes,
// the TLVs after the addresses excluded) and returns the length of the
// whole header, which may be longer than b. A version 1 header is
// parsed whole, as by parse.
func parseHead(b []byte) (Header, int, error) {
	if len(b) > 0 && b[0] == v2Signature[0] {
		return parseV2Head(b)
	}
	return parse(b)
}

// Append appends to b the header for version (1 or 2) describing a
// connection from src to dst, the proxy's address that the client
// connected to, and returns the extended slice.
//
// If src or dst is invalid, Append writes a header without addresses:
// "PROXY UNKNOWN\r\n" for version 1 and a LOCAL command for version 2.
// IPv6 zones are dropped. When both addresses are IPv4 (or IPv4-mapped)
// the header uses the IPv4 family; otherwise both are written as IPv6,
// IPv4 ones in mapped form, since neither version can mix families.
//
// Append panics if version is neither 1 nor 2: the version comes from
// configuration, which should be validated before any connection.
func Append(b []byte, version int, src, dst netip.AddrPort) []byte {
	switch version {
	case 1:
		return appendV1(b, src, dst)
	case 2:
		return appendV2(b, src, dst)
	}
	panic(fmt.Sprintf("proxyproto: Append: unsupported version %d", version))
}

// malformed returns an error wrapping errMalformed.
func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errMalformed}, args...)...)
}

// endpoints normalises src and dst for encoding and reports whether both
// are usable and IPv4, so the caller can pick the family.
func endpoints(src, dst netip.AddrPort) (s, d netip.AddrPort, ok, v4 bool) {
	if !src.IsValid() || !dst.IsValid() {
		return netip.AddrPort{}, netip.AddrPort{}, false, false
	}
	s = netip.AddrPortFrom(src.Addr().Unmap().WithZone(""), src.Port())
	d = netip.AddrPortFrom(dst.Addr().Unmap().WithZone(""), dst.Port())
	return s, d, true, s.Addr().Is4() && d.Addr().Is4()
}

// unmapped returns a with its address unmapped; see the package comment.
func unmapped(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
