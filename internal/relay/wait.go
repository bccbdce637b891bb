package relay

import (
	"fmt"
	"io"
	"sync"
	"syscall"
)

// Chunk sizes, picked with this package's benchmarks on loopback; the
// figures and their commands are in BENCHMARKS.md ("Relay chunk sizes").
//
// smallSize is the read+write buffer; a read that fills it marks the
// stream as bulk. BenchmarkChunkCost times moving one queued chunk by
// read+write and by SIOCINQ+splice in+splice out: copying was never
// slower up to 32 KiB (one syscall fewer, no pipe), so that is the
// cut-over, the same size as io.Copy's buffer. Sustained streams are
// where splice pays (BenchmarkThroughput).
//
// maxChunk caps one splice: past 1 MiB the per-chunk SIOCINQ, pipe and
// deadline bookkeeping stopped mattering in BenchmarkThroughput, and
// 1 MiB is also what Go moves per splice(2).
const (
	smallSize = 32 << 10
	maxChunk  = 1 << 20
)

// smallBufs holds the read+write buffers. A buffer is only taken once data
// is known to be ready, so idle connections hold none.
var smallBufs = sync.Pool{New: func() any {
	b := make([]byte, smallSize)
	return &b
}}

// waiter waits for a socket to become readable without holding a pipe or
// a buffer, and reports what to do next: splice queued bytes, write a
// small read, or stop at EOF or an error.
//
// Go's netpoller is edge-triggered, so a readiness callback may only ask to
// wait after a real non-blocking operation said EAGAIN; returning false at
// EOF would wait forever. ready therefore always ends in either SIOCINQ
// reporting bulk data or a read.
type waiter struct {
	rc      syscall.RawConn
	ready   func(fd uintptr) bool // w.onReadable, bound once per WriteTo
	canBulk bool                  // the destination can splice
	bulk    bool                  // the last read filled a small buffer

	// Outcome of the last wait: either queued > 0 bytes to splice, or a
	// read of n bytes into buf (n == 0 and err == nil means EOF).
	queued int
	buf    *[]byte
	n      int
	err    error

	lr  io.LimitedReader // reused splice source, R set by the caller
	inq int32            // SIOCINQ result, kept here so it does not escape per call
}

// init readies w to wait on rc.
func (w *waiter) init(rc syscall.RawConn, canBulk bool) {
	*w = waiter{rc: rc, canBulk: canBulk && spliceQueued}
	w.ready = w.onReadable
}

// wait blocks until data, EOF or an error is ready, keeping the read
// deadline in step with the pair's idle clock.
func (w *waiter) wait(dl *deadline) error {
	w.queued, w.n, w.err = 0, 0, nil
	if err := dl.arm(); err != nil {
		return err
	}
	for {
		err := w.rc.Read(w.ready)
		if err != nil && dl.active(err) {
			continue
		}
		return err
	}
}

func (w *waiter) onReadable(fd uintptr) bool {
	if w.bulk {
		if err := w.ioctlInq(fd); err != nil {
			w.err = fmt.Errorf("SIOCINQ: %w", err)
			return true
		}
		if int(w.inq) >= smallSize {
			w.queued = int(w.inq)
			return true
		}
		// Too little for a splice to pay off, or nothing at all: fall
		// through to a read, which also tells EOF from EAGAIN.
	}

	buf := smallBufs.Get().(*[]byte)
	n, err := readFD(fd, *buf)
	if err == syscall.EAGAIN {
		smallBufs.Put(buf)
		return false
	}
	if n > 0 {
		w.buf, w.n = buf, n
	} else {
		smallBufs.Put(buf)
	}
	if err != nil {
		w.err = fmt.Errorf("read: %w", err)
	}
	w.bulk = w.canBulk && n == smallSize
	return true
}

// flush writes the bytes of the last read to dst and returns the buffer to
// the pool. A read error is reported after the bytes before it are written.
func (w *waiter) flush(dst io.Writer) (int64, error) {
	var n int
	if w.buf != nil {
		var err error
		n, err = dst.Write((*w.buf)[:w.n])
		smallBufs.Put(w.buf) // io.Writer must not retain p
		w.buf = nil
		if err == nil && n < w.n {
			err = io.ErrShortWrite
		}
		if err != nil {
			return int64(n), fmt.Errorf("relay: write: %w", err)
		}
	}
	if w.err != nil {
		return int64(n), fmt.Errorf("relay: %w", w.err)
	}
	return int64(n), nil
}

func readFD(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), p)
		if err != syscall.EINTR {
			return n, err
		}
	}
}
