//go:build linux

package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Slow readers: app soak-bulk has idle_timeout (slowIdleTimeout) and one
// target, a bulk backend that writes a whole response at once. Its
// clients read it slowly through a small receive buffer, never pausing
// near the idle timeout: the proxy's writes to them progress all the
// time, so the proxy must relay every byte and end with a clean EOF,
// never an idle close mid-stream.

// slowIdleTimeout is soak-bulk's idle_timeout.
const slowIdleTimeout = 2 * time.Second

// slowPlan is how the slow readers read.
type slowPlan struct {
	readers int           // concurrent slow readers; 0 for none
	size    int           // bytes each response carries
	chunk   int           // bytes a reader takes at a time
	pause   time.Duration // between two reads: chunk/pause is the rate
	rcvbuf  int           // the reader's SO_RCVBUF, set before connect
}

// bulkBackend answers each connection's 8-byte seed with the response
// the seed stands for, written as fast as the proxy takes it, then
// closes.
type bulkBackend struct {
	ln   net.Listener
	size int
	wg   sync.WaitGroup
}

func startBulkBackend(addr string, size int) (*bulkBackend, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("bulk backend: %w", err)
	}
	b := &bulkBackend{ln: ln, size: size}
	b.wg.Add(1)
	go b.serve()
	return b, nil
}

func (b *bulkBackend) addr() string { return b.ln.Addr().String() }

func (b *bulkBackend) serve() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			defer c.Close()
			b.answer(c)
		}()
	}
}

// answer writes the response in 256 KiB writes; each blocks until the
// proxy has taken it.
func (b *bulkBackend) answer(c net.Conn) {
	var seed [8]byte
	if _, err := io.ReadFull(c, seed[:]); err != nil {
		return
	}
	gen := newByteStream(binary.BigEndian.Uint64(seed[:]))
	buf := make([]byte, 256<<10)
	for left := b.size; left > 0; {
		n := min(left, len(buf))
		gen.fill(buf[:n])
		if _, err := c.Write(buf[:n]); err != nil {
			return
		}
		left -= n
	}
}

// close stops accepting and waits for the answers in flight, which end
// once their clients are gone.
func (b *bulkBackend) close() {
	b.ln.Close()
	b.wg.Wait()
}

// byteStream is the response for one seed, as a stream of bytes.
type byteStream struct {
	r    splitmix
	word [8]byte
	used int // bytes of word already given out
}

func newByteStream(seed uint64) *byteStream { return &byteStream{r: splitmix(seed), used: 8} }

func (s *byteStream) fill(p []byte) {
	for i := range p {
		if s.used == 8 {
			binary.LittleEndian.PutUint64(s.word[:], s.r.next())
			s.used = 0
		}
		p[i] = s.word[s.used]
		s.used++
	}
}

// slowReaders runs plan.readers clients in a loop until the run stops.
type slowReaders struct {
	run  *runEnv
	addr string // the proxy's soak-bulk port
	plan slowPlan
	seed splitmix
	mu   sync.Mutex

	made, ok, starved, bytes atomic.Int64
	fails                    []string // under mu
}

func (s *slowReaders) loop() {
	var wg sync.WaitGroup
	for range s.plan.readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !s.stopping() {
				s.session()
			}
		}()
	}
	wg.Wait()
}

func (s *slowReaders) stopping() bool {
	select {
	case <-s.run.stop:
		return true
	default:
		return false
	}
}

func (s *slowReaders) nextSeed() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seed.next()
}

// session reads one whole response slowly and judges how it ended. A
// session the soak's own stop interrupts is not counted.
func (s *slowReaders) session() {
	seed := s.nextSeed()
	start := time.Now()
	got, err := s.read(seed)
	s.bytes.Add(int64(got))
	if errors.Is(err, errStopped) {
		return
	}
	s.made.Add(1)
	switch {
	case err == nil && got == s.plan.size:
		s.ok.Add(1)
	default:
		if err == nil {
			err = fmt.Errorf("clean EOF after %d of %d bytes: truncated", got, s.plan.size)
		}
		// A soak stalled for most of the idle timeout paused its own
		// reads: the proxy was right to close.
		if s.run.ledger.dog.stalledWithin(start, time.Now()) > slowIdleTimeout/2 {
			s.starved.Add(1)
			return
		}
		s.mu.Lock()
		s.fails = append(s.fails, fmt.Sprintf("slow reader (seed %#x, after %v): %v", seed, time.Since(start).Round(time.Millisecond), err))
		s.mu.Unlock()
	}
}

// errStopped ends a session when the run stops.
var errStopped = errors.New("the soak is stopping")

// read dials soak-bulk with a small receive buffer, sends the seed and
// reads the response at the plan's pace, checking every byte. It returns
// the bytes that were right and why it stopped (nil at a clean EOF).
func (s *slowReaders) read(seed uint64) (int, error) {
	d := net.Dialer{Timeout: s.run.cfg.hangLimit, Control: rcvbuf(s.plan.rcvbuf)}
	c, err := d.Dial("tcp", s.addr)
	if err != nil {
		return 0, fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	if _, err := c.Write(binary.BigEndian.AppendUint64(nil, seed)); err != nil {
		return 0, fmt.Errorf("send the seed: %w", err)
	}
	want := newByteStream(seed)
	buf, exp := make([]byte, s.plan.chunk), make([]byte, s.plan.chunk)
	for got := 0; ; time.Sleep(s.plan.pause) {
		if s.stopping() {
			return got, errStopped
		}
		c.SetReadDeadline(time.Now().Add(s.run.cfg.hangLimit))
		n, err := c.Read(buf)
		want.fill(exp[:n])
		if !bytes.Equal(buf[:n], exp[:n]) {
			return got, fmt.Errorf("corrupted data at byte %d", got)
		}
		got += n
		if err == io.EOF {
			return got, nil
		}
		if err != nil {
			return got, fmt.Errorf("read after %d of %d bytes: %w", got, s.plan.size, err)
		}
	}
}

// rcvbuf sets SO_RCVBUF before connect, so the window the peer sees is
// small from the first segment.
func rcvbuf(size int) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, size)
		})
		return errors.Join(err, serr)
	}
}

func (s *slowReaders) failures() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.fails...)
}
