package proxyproto

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"
)

// peekInitial fits any version 1 header and version 2 headers with a
// couple of hundred bytes of TLVs; longer ones grow the buffer once.
const peekInitial = 256

// Read reads exactly one header from c, waiting at most until deadline
// (the zero time means no limit, which lets a silent client hold the
// connection forever). It sets c's read deadline and clears it before
// returning, so the caller's relay starts without one.
//
// Read consumes the header's bytes and nothing after them, so c can be
// handed on as is, for instance to a splice-based relay that bypasses any
// Go buffer. It does so by peeking at the socket's receive queue
// (recv with MSG_PEEK) until a whole header is queued, then reading just
// that many bytes. It must not run concurrently with other reads of c.
//
// The error wraps ErrMalformed for an invalid header,
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
	p := peeker{buf: make([]byte, peekInitial)}
	if err := rc.Read(p.onReadable); err != nil {
		return Header{}, fmt.Errorf("proxyproto: waiting for header: %w", err)
	}
	if p.err != nil {
		return Header{}, p.err
	}
	// The whole header is queued, so this returns at once, and a
	// length-limited read cannot take any of the payload behind it.
	if _, err := io.ReadFull(c, p.buf[:p.n]); err != nil {
		return Header{}, fmt.Errorf("proxyproto: consuming header: %w", err)
	}
	return p.h, nil
}

// peeker is the readiness callback of Read: it peeks at what the socket
// has queued until Parse accepts or rejects it.
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
		h, hn, err := Parse(p.buf[:n])
		switch {
		case err == nil:
			p.h, p.n = h, hn
			return true
		case !errors.Is(err, ErrIncomplete):
			p.err = err
			return true
		case n < len(p.buf):
			return false // wait for the rest
		case len(p.buf) < maxHeaderLen:
			// A long version 2 header: peek again with room for the
			// longest one Parse accepts.
			p.buf = make([]byte, maxHeaderLen)
		default:
			// Parse rejects anything longer, so this is a bug, but a
			// connection must not hang on it.
			p.err = fmt.Errorf("proxyproto: header incomplete after %d bytes", n)
			return true
		}
	}
}
