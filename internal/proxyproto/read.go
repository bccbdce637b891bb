package proxyproto

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"
)

// peekLen is how much of the receive queue Read peeks at: enough for
// any version 1 header and for the head of any version 2 header (its
// fixed part and address block); the TLVs of a version 2 header, up to
// 65,535 bytes, are read in pieces of at most discardLen bytes.
const (
	peekLen    = 256
	discardLen = 4096
)

// The peek buffer must hold the longest head either version needs.
var _ [peekLen - max(v1MaxLen, v2MaxHead)]struct{}

// Read reads exactly one header from c, waiting at most until deadline
// (the zero time means no limit, which lets a silent client hold the
// connection forever). It sets c's read deadline and clears it before
// returning, so the caller's relay starts without one.
//
// Read consumes the header's bytes and nothing after them, so c can be
// handed on as is, for instance to a splice-based relay that bypasses any
// Go buffer. It does so by peeking at the socket's receive queue
// (recv with MSG_PEEK) until the header's head is queued (a whole version
// 1 header, or a version 2 header up to its TLVs), then reading just as
// many bytes as the header has, the TLVs in pieces, so that memory stays
// bounded whatever length the header declares. It must not run
// concurrently with other reads of c.
//
// The error wraps errMalformed for an invalid header,
// os.ErrDeadlineExceeded when the deadline passes first, and
// io.ErrUnexpectedEOF when the client closes before sending a header. A
// client that sends part of a header and then closes is reported at the
// deadline: peeking cannot tell a half-closed socket from a slow one
// while bytes are still queued.
func Read(c *net.TCPConn, deadline time.Time) (h Header, err error) {
	if err := c.SetReadDeadline(deadline); err != nil {
		return Header{}, fmt.Errorf("proxyproto: set read deadline: %w", err)
	}
	defer func() {
		// A deadline left behind would cut the relayed connection short.
		if cerr := c.SetReadDeadline(time.Time{}); cerr != nil && err == nil {
			h, err = Header{}, fmt.Errorf("proxyproto: clear read deadline: %w", cerr)
		}
	}()
	rc, err := c.SyscallConn()
	if err != nil {
		return Header{}, fmt.Errorf("proxyproto: %w", err)
	}
	p := peeker{buf: make([]byte, peekLen)}
	if err := rc.Read(p.onReadable); err != nil {
		return Header{}, fmt.Errorf("proxyproto: waiting for header: %w", err)
	}
	if p.err != nil {
		return Header{}, p.err
	}
	if err := consume(c, p.buf, p.n); err != nil {
		return Header{}, fmt.Errorf("proxyproto: consuming header: %w", err)
	}
	return p.h, nil
}

// consume reads and drops the n bytes of the header from c, through buf
// and, for a header longer than buf, a discardLen buffer. Every read is
// limited to what is left of the header, so none of the payload behind
// it is taken. The head is queued already; TLVs still on their way are
// waited for until c's read deadline.
func consume(c *net.TCPConn, buf []byte, n int) error {
	if n > len(buf) {
		buf = make([]byte, discardLen)
	}
	for n > 0 {
		k, err := io.ReadFull(c, buf[:min(n, len(buf))])
		n -= k
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// peeker is the readiness callback of Read: it peeks at what the socket
// has queued until parseHead accepts or rejects it.
type peeker struct {
	buf []byte
	// Outcome: a header of n bytes, or err.
	h   Header
	n   int
	err error
}

// onReadable returns true once it has an outcome and false to wait for
// more bytes. Waiting after a peek that found bytes is safe with Go's
// edge-triggered netpoller because every arrival of new data raises a
// fresh edge; at worst an edge already pending causes one extra peek.
func (p *peeker) onReadable(fd uintptr) bool {
	for {
		n, _, err := syscall.Recvfrom(int(fd), p.buf, syscall.MSG_PEEK)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return false
		case err != nil:
			p.err = fmt.Errorf("proxyproto: peek: %w", err)
			return true
		case n == 0:
			p.err = fmt.Errorf("proxyproto: connection closed before PROXY header: %w", io.ErrUnexpectedEOF)
			return true
		}
		h, hn, err := parseHead(p.buf[:n])
		switch {
		case err == nil:
			p.h, p.n = h, hn
			return true
		case !errors.Is(err, errIncomplete):
			p.err = err
			return true
		case n < len(p.buf):
			return false // wait for the rest
		default:
			// Every head fits in peekLen bytes, so this is a bug, but a
			// connection must not hang on it.
			p.err = fmt.Errorf("proxyproto: header incomplete after %d bytes", n)
			return true
		}
	}
}
