//go:build linux

package main

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// The wire format of every byte the soak sends through the proxy.
//
// A frame is
//
//	conn id (8) | seq (8) | direction (1) | kind (1) | payload length (2) | payload | CRC-32C (4)
//
// and is a pure function of (run seed, conn id, direction, kind, seq):
// the payload length and bytes come from a PRNG seeded by those. So the
// receiver regenerates what it should have got and compares, which
// catches a flipped bit, a lost, duplicated or reordered chunk, and bytes
// of one connection delivered on another, and tells them apart.
const (
	headerLen  = 20
	trailerLen = 4
	maxPayload = 1024
	maxFrame   = headerLen + maxPayload + trailerLen
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// direction is which way a stream flows.
type direction uint8

const (
	up   direction = 1 // client to backend
	down direction = 2 // backend to client
)

func (d direction) String() string {
	switch d {
	case up:
		return "client→backend"
	case down:
		return "backend→client"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// connKind is what a connection is for; it picks frame sizes and what
// the backend does after the first frame.
type connKind uint8

const (
	longLived connKind = 1
	short     connKind = 2
	// quiet is a long-lived connection whose client sends only frame 0
	// and then just listens: when its backend dies, nothing the client
	// writes can make the proxy notice, so only the proxy watching the
	// backend side closes it in time.
	quiet connKind = 3
)

func (k connKind) String() string {
	switch k {
	case longLived:
		return "long"
	case short:
		return "short"
	case quiet:
		return "quiet"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// stream names one direction of one connection.
type stream struct {
	seed uint64
	conn uint64
	dir  direction
	kind connKind
}

// prng returns the generator of frame seq of s.
func (s stream) prng(seq uint64) splitmix {
	x := splitmix(s.seed)
	x = splitmix(x.next() ^ s.conn)
	x = splitmix(x.next() ^ uint64(s.dir)<<8 ^ uint64(s.kind))
	return splitmix(x.next() ^ seq)
}

// payloadLen draws the payload length of a frame: small chunks on
// long-lived streams, so 2000 of them stay cheap, larger ones on short
// connections.
func (s stream) payloadLen(r *splitmix) int {
	lo, hi := 16, 240
	if s.kind == short {
		lo, hi = 32, 512
		if s.dir == down {
			lo, hi = 64, maxPayload
		}
	}
	return lo + int(r.next()%uint64(hi-lo+1))
}

// appendFrame appends frame seq of s to dst.
func appendFrame(dst []byte, s stream, seq uint64) []byte {
	r := s.prng(seq)
	n := s.payloadLen(&r)
	start := len(dst)
	dst = binary.BigEndian.AppendUint64(dst, s.conn)
	dst = binary.BigEndian.AppendUint64(dst, seq)
	dst = append(dst, byte(s.dir), byte(s.kind))
	dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	for i := 0; i < n; i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], r.next())
		dst = append(dst, w[:min(8, n-i)]...)
	}
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// payloadMatches reports whether p is the payload r generates.
func payloadMatches(p []byte, r *splitmix) bool {
	for len(p) >= 8 {
		if binary.LittleEndian.Uint64(p) != r.next() {
			return false
		}
		p = p[8:]
	}
	if len(p) > 0 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], r.next())
		for i := range p {
			if p[i] != w[i] {
				return false
			}
		}
	}
	return true
}

// splitmix is the SplitMix64 generator: tiny, fast, and good enough to
// make every frame's bytes unpredictable from any other frame's.
type splitmix uint64

func (s *splitmix) next() uint64 {
	*s += 0x9e3779b97f4a7c15
	z := uint64(*s)
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// frameError is bad data on a stream: corruption, loss, reordering or
// cross-talk. Any one is a proxy failure.
type frameError struct {
	stream stream
	seq    uint64 // the seq that was expected
	what   string
}

func (e *frameError) Error() string {
	return fmt.Sprintf("conn %d %v (%v): frame %d: %s", e.stream.conn, e.stream.dir, e.stream.kind, e.seq, e.what)
}

// verifier checks a byte stream frame by frame as it arrives. It holds
// at most one partial frame, in a buffer the caller reads into directly.
type verifier struct {
	s     stream // with learn, conn and kind are taken from frame 0
	learn bool
	next  uint64 // seq of the next frame
	bytes int64  // bytes of whole verified frames
	buf   [2 * maxFrame]byte
	n     int // bytes buffered in buf
}

// newVerifier checks stream s. A backend does not know which connection
// it was given until frame 0 arrives, so it passes learn and a stream
// with only seed and dir set.
func newVerifier(s stream, learn bool) *verifier {
	return &verifier{s: s, learn: learn}
}

// space is where the next read goes.
func (v *verifier) space() []byte { return v.buf[v.n:] }

// pending reports whether part of a frame is buffered.
func (v *verifier) pending() bool { return v.n > 0 }

// frames is how many frames were verified.
func (v *verifier) frames() uint64 { return v.next }

// consume verifies the n bytes just read into space and returns the size
// of the whole frames among them, or the first problem.
func (v *verifier) consume(n int) (int, error) {
	v.n += n
	off, total := 0, 0
	for {
		size, err := v.check(v.buf[off:v.n])
		if err != nil {
			return total, err
		}
		if size == 0 {
			break
		}
		off += size
		total += size
		v.next++
	}
	v.n = copy(v.buf[:], v.buf[off:v.n])
	v.bytes += int64(total)
	return total, nil
}

// check verifies the frame at the start of b and returns its size, or 0
// if b holds only part of it.
func (v *verifier) check(b []byte) (int, error) {
	if len(b) < headerLen {
		return 0, nil
	}
	bad := func(format string, args ...any) (int, error) {
		return 0, &frameError{stream: v.s, seq: v.next, what: fmt.Sprintf(format, args...)}
	}
	n := int(binary.BigEndian.Uint16(b[18:20]))
	if n > maxPayload {
		return bad("length field %d > %d (corrupt header)", n, maxPayload)
	}
	size := headerLen + n + trailerLen
	if len(b) < size {
		return 0, nil
	}
	if got, want := binary.BigEndian.Uint32(b[size-trailerLen:size]), crc32.Checksum(b[:size-trailerLen], castagnoli); got != want {
		return bad("CRC-32C %08x, computed %08x: corrupted bytes", got, want)
	}
	conn, seq := binary.BigEndian.Uint64(b[0:8]), binary.BigEndian.Uint64(b[8:16])
	dir, kind := direction(b[16]), connKind(b[17])
	if v.learn && v.next == 0 {
		if conn == 0 || kind < longLived || kind > quiet {
			return bad("frame 0 names conn %d kind %v", conn, kind)
		}
		v.s.conn, v.s.kind = conn, kind
	}
	switch {
	case conn != v.s.conn || dir != v.s.dir || kind != v.s.kind:
		return bad("intact frame of another stream (conn %d %v %v seq %d): cross-talk", conn, dir, kind, seq)
	case seq != v.next:
		return bad("intact frame with seq %d: lost, duplicated or reordered", seq)
	}
	r := v.s.prng(seq)
	if want := v.s.payloadLen(&r); n != want {
		return bad("payload length %d, want %d", n, want)
	}
	if !payloadMatches(b[headerLen:headerLen+n], &r) {
		return bad("payload differs from the generated one")
	}
	return size, nil
}
