package relay

import (
	"fmt"
	"io"
	"sync"
	"syscall"
	"unsafe"
)

// Chunk sizes, picked with this package's benchmarks on loopback (Linux
// 6.18, 2 shared vCPUs, so figures are medians of noisy runs).
//
// smallSize is the read+write buffer; a read that fills it marks the
// stream as bulk. BenchmarkChunkCost times moving one queued chunk:
// read+write vs SIOCINQ+splice in+splice out took 9.2 vs 12.4 us at 512 B,
// 9.7 vs 12.0 at 4 KiB, 10.7 vs 15.4 at 16 KiB, 10.0 vs 10.6 at 32 KiB,
// and at 64 KiB runs disagreed. Copying is never worse up to 32 KiB (one
// syscall fewer, no pipe), so that is the cut-over, the same size as
// io.Copy's buffer. Sustained streams are where splice pays:
// BenchmarkThroughput spends 1780 CPU-us/MiB copying in user space against
// 1095 for a Conn.
//
// maxChunk caps one splice. In BenchmarkThroughput a Conn spent 1888,
// 1375, 1202 and 1160 CPU-us/MiB with caps of 64 KiB, 256 KiB, 1 MiB and
// 4 MiB: the per-chunk SIOCINQ, pipe and deadline bookkeeping stops
// mattering at 1 MiB, which is also what Go moves per splice(2).
const (
	smallSize = 32 << 10
	maxChunk  = 1 << 20
)

// siocinq is SIOCINQ (FIONREAD) from linux/sockios.h: bytes queued for
// reading on a TCP socket, not counting a received FIN.
const siocinq = 0x541B

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
	*w = waiter{rc: rc, canBulk: canBulk}
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

func (w *waiter) ioctlInq(fd uintptr) error {
	_, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, siocinq, uintptr(unsafe.Pointer(&w.inq)))
	if e != 0 {
		return e
	}
	return nil
}

func readFD(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), p)
		if err != syscall.EINTR {
			return n, err
		}
	}
}
