package proxyproto

import (
	"encoding/binary"
	"net/netip"
)

const (
	v2Signature = "\r\n\r\n\x00\r\nQUIT\n"
	// v2HeaderLen is the fixed part: signature, ver_cmd, family, length.
	v2HeaderLen = 16
	// v2MaxPayload is the longest address block plus TLVs, the most the
	// 16-bit length field can say. Read never buffers that much: it peeks
	// at the fixed part and the address block, and reads the TLVs behind
	// them in pieces.
	v2MaxPayload = 0xffff

	v2Version = 0x2
)

// Address families (high nibble) and transports (low nibble) of the
// family byte, and the size of each family's address block.
const (
	famUnspec = 0x00
	famTCP4   = 0x11
	famUDP4   = 0x12
	famTCP6   = 0x21
	famUDP6   = 0x22
	famUnix   = 0x31
	famUnixDg = 0x32

	addrLenInet  = 12  // 2×4 address bytes, 2×2 port bytes
	addrLenInet6 = 36  // 2×16 address bytes, 2×2 port bytes
	addrLenUnix  = 216 // 2×108 path bytes
)

func parseV2(b []byte) (Header, int, error) {
	h, total, err := parseV2Head(b)
	if err == nil && len(b) < total {
		return Header{}, 0, errIncomplete
	}
	return h, total, err
}

// v2MaxHead is the longest head parseV2Head needs: the fixed part and
// the largest address block (UNIX).
const v2MaxHead = v2HeaderLen + addrLenUnix

// parseV2Head parses a version 2 header from its head alone, the fixed
// part and the address block, at most v2MaxHead bytes, and returns it
// with the length of the whole header; the TLVs after the addresses are
// counted in that length and not looked at. Errors are as parse's.
func parseV2Head(b []byte) (Header, int, error) {
	cmd, fam, err := v2Start(b)
	if err != nil {
		return Header{}, 0, err
	}
	addrLen, err := v2AddrLen(cmd, fam)
	if err != nil {
		return Header{}, 0, err
	}
	if len(b) < v2HeaderLen {
		return Header{}, 0, errIncomplete
	}
	n := int(binary.BigEndian.Uint16(b[14:16]))
	if n < addrLen {
		return Header{}, 0, malformed("v2: length %d too short for family %#02x (%d address bytes)", n, fam, addrLen)
	}
	if len(b) < v2HeaderLen+addrLen {
		return Header{}, 0, errIncomplete
	}
	h := Header{Version: 2, Command: cmd}
	if cmd == Proxy {
		// TLVs after the addresses are counted in n and skipped unread.
		v2Addresses(&h, fam, b[v2HeaderLen:v2HeaderLen+addrLen])
	}
	return h, v2HeaderLen + n, nil
}

// v2Start checks the signature, version and command of a version 2
// header and returns its command and address family byte, or
// errIncomplete while b is too short to tell.
func v2Start(b []byte) (Command, byte, error) {
	if len(b) < len(v2Signature) {
		if string(b) != v2Signature[:len(b)] {
			return 0, 0, malformed("v2: bad signature % x", b)
		}
		return 0, 0, errIncomplete
	}
	if string(b[:len(v2Signature)]) != v2Signature {
		return 0, 0, malformed("v2: bad signature % x", b[:len(v2Signature)])
	}
	if len(b) < 13 {
		return 0, 0, errIncomplete
	}
	verCmd := b[12]
	if v := verCmd >> 4; v != v2Version {
		return 0, 0, malformed("v2: unsupported version %d", v)
	}
	cmd := Command(verCmd & 0x0f)
	if cmd != Local && cmd != Proxy {
		return 0, 0, malformed("v2: unknown command %#x", uint8(cmd))
	}
	if len(b) < 14 {
		return 0, 0, errIncomplete
	}
	return cmd, b[13], nil
}

// v2AddrLen is the length of the address block of family fam. A LOCAL
// header's family is to be ignored, so only PROXY checks it.
func v2AddrLen(cmd Command, fam byte) (int, error) {
	if cmd != Proxy {
		return 0, nil
	}
	switch fam {
	case famUnspec:
		return 0, nil
	case famTCP4, famUDP4:
		return addrLenInet, nil
	case famTCP6, famUDP6:
		return addrLenInet6, nil
	case famUnix, famUnixDg:
		return addrLenUnix, nil
	}
	return 0, malformed("v2: unknown address family %#02x", fam)
}

// v2Addresses sets h's addresses from the address block a of a TCP
// family; other families leave them unset.
func v2Addresses(h *Header, fam byte, a []byte) {
	switch fam {
	case famTCP4:
		h.Source = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[0:4])), binary.BigEndian.Uint16(a[8:10]))
		h.Destination = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[4:8])), binary.BigEndian.Uint16(a[10:12]))
	case famTCP6:
		h.Source = unmapped(netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[0:16])), binary.BigEndian.Uint16(a[32:34])))
		h.Destination = unmapped(netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[16:32])), binary.BigEndian.Uint16(a[34:36])))
	}
}

func appendV2(b []byte, src, dst netip.AddrPort) []byte {
	b = append(b, v2Signature...)
	src, dst, ok, v4 := endpoints(src, dst)
	if !ok {
		return append(b, v2Version<<4|byte(Local), famUnspec, 0, 0)
	}
	if v4 {
		b = append(b, v2Version<<4|byte(Proxy), famTCP4, 0, addrLenInet)
		s, d := src.Addr().As4(), dst.Addr().As4()
		b = append(b, s[:]...)
		b = append(b, d[:]...)
	} else {
		// Mixed families go out as IPv6, the IPv4 side mapped (As16).
		b = append(b, v2Version<<4|byte(Proxy), famTCP6, 0, addrLenInet6)
		s, d := src.Addr().As16(), dst.Addr().As16()
		b = append(b, s[:]...)
		b = append(b, d[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return binary.BigEndian.AppendUint16(b, dst.Port())
}
