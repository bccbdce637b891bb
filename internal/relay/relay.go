// Package relay moves bytes between two TCP connections for a layer-4
// proxy without pinning kernel pipes to idle connections. It does so
// from inside inetaf/tcpproxy's relay: DialProxy copies with io.Copy,
// which asks its source for io.WriterTo, so a Conn given to DialProxy as
// both source and destination decides how bytes move.
//
// io.Copy between two *net.TCPConn splices, but Go's splice takes a pipe
// pair from its pool for the whole call and keeps it while blocked waiting
// for data, so every idle relayed connection costs two pipes (four file
// descriptors) on top of its two sockets. A relay.Conn waits for data
// without a pipe or a buffer, then moves exactly what the kernel has
// queued: small messages by read+write, bulk data by splice. The same loop
// counts bytes and drives an optional idle timeout.
//
// Linux-only: bulk data by splice(2) of what SIOCINQ says is queued
// (wait_linux.go), and a stalled writer's progress read from TCP_INFO and
// SIOCOUTQ (progress_linux.go). On other Unix systems every chunk is a
// read and a write of at most 32 KiB, and a write in progress does not
// count as activity for the idle clock.
package relay

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
)

// io.Copy, in the library's relay, finds WriteTo only through io.WriterTo.
var _ io.WriterTo = (*Conn)(nil)

// Conn is a *net.TCPConn whose WriteTo relays to w without holding a
// splice pipe while the connection is idle.
//
// io.Copy(dst, src) asks src for io.WriterTo first, so a Conn used as the
// source of inetaf/tcpproxy's io.Copy decides how bytes move. CloseWrite
// is its own (no FIN after a stop that cut the stream, see CloseWrite),
// and so is CloseRead (no system call once the read side is finished);
// everything else (ReadFrom, deadlines) is promoted from the embedded
// *net.TCPConn, which keeps the library's half-close handling and lets a
// Conn be the splice destination of another Conn.
//
// WriteTo must not be called concurrently with itself or with Read.
type Conn struct {
	*net.TCPConn

	idle     *Idle
	read     atomic.Int64 // bytes WriteTo has moved from this socket to w
	eof      atomic.Bool  // WriteTo read EOF: the read side is finished
	panicked any          // what WriteTo recovered from; see Panicked
	wt       waiter       // WriteTo's, here to save it an allocation
}

// New wraps c. Connections relayed as one pair should share idle; a nil
// idle means no idle timeout, and then New and WriteTo never touch c's
// deadlines.
func New(c *net.TCPConn, idle *Idle) *Conn {
	idle.register(c)
	return &Conn{TCPConn: c, idle: idle}
}

// BytesRead reports how many bytes WriteTo has read from this connection
// and written to its destination. It is safe to call concurrently with
// WriteTo, e.g. from a metrics scrape.
func (c *Conn) BytesRead() int64 { return c.read.Load() }

// WriteTo copies from c to w until EOF or an error, like io.Copy, and
// returns a nil error on EOF.
//
// Between chunks it waits for readability holding neither a pipe nor a
// buffer. Small chunks are read and written through a pooled buffer; once
// a read fills that buffer the stream is treated as bulk and each chunk is
// spliced when w is an io.ReaderFrom (such as *net.TCPConn or *Conn),
// asking for exactly the bytes the kernel has queued so the splice never
// blocks on the read side while holding its pipe.
//
// If c has an Idle and the pair moved no bytes for its timeout, WriteTo
// returns an error wrapping os.ErrDeadlineExceeded and Idle.TimedOut
// reports true.
//
// A panic inside WriteTo (the library's copy goroutines recover none) is
// recovered: both conns are closed, so the other direction ends too, and
// Panicked reports it.
func (c *Conn) WriteTo(w io.Writer) (n int64, err error) {
	defer func() {
		if r := recover(); r != nil {
			c.panicked = r
			c.Close()
			if wc, ok := w.(io.Closer); ok {
				wc.Close()
			}
			err = fmt.Errorf("relay: panic: %v", r)
		}
		c.idle.finish(err)
	}()
	return c.writeTo(w)
}

// CloseWrite half-closes c (the peer reads EOF), as the library's relay
// does when the other direction ends, with two exceptions.
//
// After the pair was stopped with bytes still in flight to c's peer, no
// FIN is sent, and the close that follows resets the connection (see
// Idle), so a cut stream never looks complete.
//
// Once WriteTo has read EOF from c, the other direction was already
// done: both are now, so the relay closes c next (DialProxy.HandleConn
// closes both conns once both copies return), and that close sends the
// FIN, since c's receive queue is empty after EOF. CloseWrite then
// returns nil without the shutdown(2), one system call per connection.
func (c *Conn) CloseWrite() error {
	if c.idle.resetAfterStop(c.TCPConn) || c.eof.Load() {
		return nil
	}
	return c.TCPConn.CloseWrite()
}

// CloseRead shuts down reading on c, as the library's relay does when
// the copy from c ends. After WriteTo read EOF there is nothing left to
// shut: the peer's FIN is in, reads return EOF anyway, and on Linux
// shutdown(SHUT_RD) sends nothing, so CloseRead returns nil without the
// system call (one per connection, and a second that fails with ENOTCONN
// when both directions are done). After an error it shuts down as
// before.
func (c *Conn) CloseRead() error {
	if c.eof.Load() {
		return nil
	}
	return c.TCPConn.CloseRead()
}

// Panicked returns what a WriteTo that has returned panicked with, or
// nil. The caller must know that WriteTo returned (DialProxy.HandleConn
// returns after both of its copies).
func (c *Conn) Panicked() any { return c.panicked }

func (c *Conn) writeTo(w io.Writer) (int64, error) {
	rc, err := c.TCPConn.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("relay: %w", err)
	}
	rf, canSplice := w.(io.ReaderFrom)
	wt := &c.wt
	wt.init(rc, canSplice)
	wt.lr.R = c.TCPConn
	dl := newDeadline(c.TCPConn, c.idle)

	var total int64
	for {
		if err := wt.wait(&dl); err != nil {
			return total, c.waitError(err)
		}

		var n int64
		if wt.queued > 0 {
			wt.lr.N = int64(min(wt.queued, maxChunk))
			n, err = rf.ReadFrom(&wt.lr)
			if err != nil && dl.active(err) {
				// Our own read deadline fired inside a long splice while
				// the pair was still busy; the unread bytes are still queued.
				err = nil
			}
			if err != nil {
				err = fmt.Errorf("relay: splice: %w", err)
			}
		} else {
			if wt.n == 0 && wt.err == nil {
				c.eof.Store(true)
				return total, nil // EOF
			}
			n, err = wt.flush(w)
		}
		if n > 0 {
			total += n
			c.read.Add(n)
			c.idle.touch()
		}
		if err != nil {
			return total, err
		}
	}
}

// waitError turns an error from waiting for data into WriteTo's error.
func (c *Conn) waitError(err error) error { return waitError(c.idle, err) }

// waitError turns an error from waiting for data on a conn of idle's
// pair into a WriteTo error that says why.
func waitError(idle *Idle, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) && idle.TimedOut() {
		return fmt.Errorf("relay: idle for %v: %w", idle.timeout, err)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) && idle.isStopped() {
		return fmt.Errorf("relay: stopped: %w", err)
	}
	return fmt.Errorf("relay: wait: %w", err)
}
