//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// errStalled is a connection on which nothing arrived for the stall
// limit although the other end sends at least once a second: a hang.
var errStalled = errors.New("stalled: no data for the stall limit")

// frameBufs are send buffers, pooled so that thousands of mostly idle
// peers do not each hold one.
var frameBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, maxFrame)
	return &b
}}

// pacing is how often a long-lived stream sends: a uniform random gap in
// [min, max], so the connections do not send in lockstep.
type pacing struct {
	min, max time.Duration
}

func (p pacing) gap(r *splitmix) time.Duration {
	span := uint64(p.max-p.min) + 1
	return p.min + time.Duration(r.next()%span)
}

// peer runs one end of a long-lived connection: it sends its own stream
// at a jittered pace and verifies the other end's, both on one
// goroutine. The read deadline doubles as the send timer, so an idle
// connection costs one blocked read and one runtime timer, not a second
// goroutine.
type peer struct {
	conn     *net.TCPConn
	out      stream
	in       *verifier
	pace     pacing
	jitter   splitmix
	stall    time.Duration // limit on silence from the other end; 0 for none
	since    time.Time     // start of the first silence, if before run: the client's dial
	quiet    bool          // send frame 0 only
	verified *atomic.Int64 // where verified incoming bytes are added
	onFirst  func()        // called once, when frame 0 of in arrives
	// retireAt, if set, is when the client ends the connection cleanly:
	// it half-closes, stops sending, and reads until the other end,
	// having seen the half-close, closes too.
	retireAt time.Time
}

// writeLimit bounds one write of a frame: a few hundred bytes that only
// block if the proxy stopped reading altogether.
const writeLimit = 5 * time.Second

// never is a send time that does not come.
var never = time.Now().Add(100 * 365 * 24 * time.Hour)

// run sends and verifies until the connection fails or is closed, and
// says why it ended: nil for a clean retirement, a *frameError for bad
// data, errStalled, or the socket's error (io.EOF included).
func (p *peer) run() error {
	seq := uint64(0)
	now := time.Now()
	nextSend := now // frame 0 goes at once: it is the hello
	lastRecv := now
	if !p.since.IsZero() {
		lastRecv = p.since
	}
	retiring := false
	for {
		if !retiring && !p.retireAt.IsZero() && !now.Before(p.retireAt) {
			if err := p.conn.CloseWrite(); err != nil {
				return fmt.Errorf("half-close to retire: %w", err)
			}
			retiring, nextSend = true, never
		}
		if !now.Before(nextSend) {
			if err := p.send(seq, now); err != nil {
				return fmt.Errorf("send frame %d: %w", seq, err)
			}
			seq++
			nextSend = now.Add(p.pace.gap(&p.jitter))
			if p.quiet {
				nextSend = never
			}
		}
		stallAt := never
		if p.stall > 0 {
			stallAt = lastRecv.Add(p.stall)
		}
		wake := earliest(nextSend, stallAt)
		if !retiring && !p.retireAt.IsZero() {
			wake = earliest(wake, p.retireAt)
		}
		if err := p.conn.SetReadDeadline(wake); err != nil {
			return fmt.Errorf("set read deadline: %w", err)
		}
		n, err := p.conn.Read(p.in.space())
		now = time.Now()
		frames, verr := p.take(n)
		if verr != nil {
			return verr
		}
		if frames {
			lastRecv = now
		}
		if done, err := p.readEnd(err, now, stallAt, retiring); done {
			return err
		}
	}
}

// take verifies the n bytes just read and reports whether they completed
// a frame.
func (p *peer) take(n int) (bool, error) {
	if n == 0 {
		return false, nil
	}
	before := p.in.frames()
	size, err := p.in.consume(n)
	p.verified.Add(int64(size))
	if err != nil {
		return false, err
	}
	if size > 0 && before == 0 && p.onFirst != nil {
		p.onFirst()
	}
	return size > 0, nil
}

// readEnd judges a read's error: done (with nil at the end of a retiring
// stream, or why the stream broke or stalled), or not done, to go on.
func (p *peer) readEnd(err error, now, stallAt time.Time, retiring bool) (bool, error) {
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, os.ErrDeadlineExceeded):
		if !now.Before(stallAt) {
			return true, errStalled
		}
		return false, nil
	case errors.Is(err, io.EOF) && p.in.pending():
		return true, fmt.Errorf("EOF inside a frame: %w", io.ErrUnexpectedEOF)
	case errors.Is(err, io.EOF) && retiring:
		return true, nil
	default:
		return true, err
	}
}

func (p *peer) send(seq uint64, now time.Time) error {
	bp := frameBufs.Get().(*[]byte)
	defer frameBufs.Put(bp)
	*bp = appendFrame((*bp)[:0], p.out, seq)
	if err := p.conn.SetWriteDeadline(now.Add(writeLimit)); err != nil {
		return fmt.Errorf("set write deadline: %w", err)
	}
	_, err := p.conn.Write(*bp)
	return err
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// readFrames reads from c into v until v has verified want frames in
// all, or the deadline passes. It returns the bytes verified.
func readFrames(c net.Conn, v *verifier, want uint64, deadline time.Time) (int64, error) {
	if err := c.SetReadDeadline(deadline); err != nil {
		return 0, fmt.Errorf("set read deadline: %w", err)
	}
	var total int64
	for v.frames() < want {
		n, err := c.Read(v.space())
		if n > 0 {
			size, verr := v.consume(n)
			total += int64(size)
			if verr != nil {
				return total, verr
			}
		}
		if err != nil && v.frames() < want {
			return total, err
		}
	}
	return total, nil
}

// readEOF reads from c until EOF, which must come before the deadline
// and after no further bytes.
func readEOF(c net.Conn, deadline time.Time) error {
	if err := c.SetReadDeadline(deadline); err != nil {
		return fmt.Errorf("set read deadline: %w", err)
	}
	var b [64]byte
	n, err := io.ReadAtLeast(c, b[:], 1)
	if n > 0 {
		return fmt.Errorf("%d unexpected bytes after the last frame", n)
	}
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// causeOf names the kind of a connection error for the failure table.
func causeOf(err error) string {
	var fe *frameError
	switch {
	case err == nil:
		return "none"
	case errors.As(err, &fe):
		return "bad data"
	case errors.Is(err, errStalled):
		return "hang (stalled)"
	case isTimeout(err):
		return "hang (timeout)"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "EOF mid-frame"
	case errors.Is(err, io.EOF):
		return "EOF"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe"
	}
	return "other"
}

// isTimeout reports whether err is a deadline or dial timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// isReset reports whether err is the peer resetting the connection.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
