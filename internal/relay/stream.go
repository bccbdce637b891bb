package relay

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// streamSize is the buffer Stream.WriteTo reads bulk data into: the
// largest plaintext a TLS record carries (2^14 bytes), so one Read of a
// *tls.Conn returns a whole record. streamSmall is the buffer it waits
// with, on its own stack: a read that fills it marks the stream as bulk
// and the next read takes a streamSize buffer from the pool; a read of
// less than streamSmall (small messages again) gives it back. (Not any
// read short of streamSize: the rest of a record read in part is one,
// and bulk data would then alternate between a 1 KiB and a 15 KiB
// write.) So a stream idle after small messages holds streamSmall bytes,
// not streamSize: 15 KiB less per idle terminated connection; one idle
// right after bulk data may still hold the big one.
const (
	streamSize  = 16 << 10
	streamSmall = 1 << 10
)

var streamBufs = sync.Pool{New: func() any {
	b := make([]byte, streamSize)
	return &b
}}

var _ io.WriterTo = (*Stream)(nil)

// Stream is one side of a relayed pair whose bytes pass through a layer
// that must see them, such as a *tls.Conn: they cannot be spliced, so
// WriteTo reads plaintext through the layer into a buffer and writes it
// to its destination. What a Conn does besides splicing, a Stream does
// too: it counts the bytes, keeps its pair's Idle clock (idle and
// half-close timeouts, a failed direction stopping the other), and
// half-closes.
//
// Reads and writes go to the layer; deadlines that the Idle sets, and
// keepalive, go to raw, the socket under the layer. A Stream used as
// the destination of a Conn is written to through its Write: Stream has
// no ReadFrom, so the Conn's WriteTo does not try to splice into it.
//
// WriteTo must not be called concurrently with itself or with Read.
type Stream struct {
	net.Conn // the layer: reads and writes plaintext

	raw      *net.TCPConn
	idle     *Idle
	read     atomic.Int64
	eof      atomic.Bool // WriteTo read EOF: see CloseRead
	panicked any
}

// NewStream wraps layer, which reads and writes through raw. Pairs share
// an Idle as with New; a nil idle means no timeouts.
func NewStream(layer net.Conn, raw *net.TCPConn, idle *Idle) *Stream {
	idle.register(raw)
	return &Stream{Conn: layer, raw: raw, idle: idle}
}

// BytesRead reports how many bytes WriteTo has read through the layer
// and written to its destination: plaintext, not what crossed the wire.
func (s *Stream) BytesRead() int64 { return s.read.Load() }

// Panicked returns what a WriteTo that has returned panicked with, or
// nil.
func (s *Stream) Panicked() any { return s.panicked }

// WriteTo copies plaintext from the layer to w until EOF or an error,
// like io.Copy, and returns a nil error on EOF. Timeouts and panics are
// handled as by Conn.WriteTo.
func (s *Stream) WriteTo(w io.Writer) (n int64, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.panicked = r
			s.raw.Close()
			if wc, ok := w.(io.Closer); ok {
				wc.Close()
			}
			err = fmt.Errorf("relay: panic: %v", r)
		}
		s.idle.finish(err)
	}()
	return s.writeTo(w)
}

func (s *Stream) writeTo(w io.Writer) (int64, error) {
	var small [streamSmall]byte
	var big *[]byte // taken while the stream is bulk
	defer func() {
		if big != nil {
			streamBufs.Put(big)
		}
	}()
	dl := newDeadline(s.raw, s.idle)
	var total int64
	for {
		if err := dl.arm(); err != nil {
			return total, waitError(s.idle, err)
		}
		buf := small[:]
		if big != nil {
			buf = *big
		}
		n, err := s.Conn.Read(buf)
		m, werr := s.forward(w, buf[:n])
		total += m
		if werr != nil {
			return total, werr
		}
		switch {
		case n == len(buf) && big == nil:
			big = streamBufs.Get().(*[]byte)
		case n < streamSmall && big != nil:
			streamBufs.Put(big) // small messages again: back before the next wait
			big = nil
		}
		switch {
		case errors.Is(err, io.EOF):
			s.eof.Store(true)
			return total, nil
		case err != nil && !dl.active(err):
			return total, waitError(s.idle, err)
		}
	}
}

// forward writes p to w and counts what went.
func (s *Stream) forward(w io.Writer, p []byte) (int64, error) {
	if len(p) == 0 {
		return 0, nil
	}
	m, err := w.Write(p)
	s.read.Add(int64(m))
	s.idle.touch()
	if err == nil && m < len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return int64(m), fmt.Errorf("relay: write: %w", err)
	}
	return int64(m), nil
}

// CloseWrite ends the layer's sending side (for TLS, a close_notify
// alert) and then the socket's (FIN), as the library's relay does when
// the other direction ends. After the pair was stopped (idle, or the
// other direction failed) the layer is not told, since the stream was
// cut rather than complete; the socket sends FIN, or nothing when it
// must end with RST (see Conn.CloseWrite).
func (s *Stream) CloseWrite() error {
	if s.idle.resetAfterStop(s.raw) {
		return nil
	}
	var err error
	if cw, ok := s.Conn.(interface{ CloseWrite() error }); ok && !s.idle.isStopped() {
		err = cw.CloseWrite()
	}
	return errors.Join(err, s.raw.CloseWrite())
}

// CloseRead stops reading on the socket, unless WriteTo read EOF: then,
// as for Conn.CloseRead, there is nothing left to stop.
func (s *Stream) CloseRead() error {
	if s.eof.Load() {
		return nil
	}
	return s.raw.CloseRead()
}

// Close closes the layer (for TLS, a close_notify first) and the socket;
// after a stop only the socket, so the peer does not take a cut stream
// for a complete one.
func (s *Stream) Close() error {
	if s.idle.isStopped() {
		return s.raw.Close()
	}
	return s.Conn.Close()
}

// isStopped reports whether the pair was stopped: idle, a half-close
// timeout or a failed direction. False for a nil *Idle.
func (i *Idle) isStopped() bool { return i != nil && i.stopped.Load() }
