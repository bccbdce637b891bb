//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// shortResponseFrames is how many frames a backend answers a short
// connection with.
const shortResponseFrames = 2

// backend is one stable backend: an active peer on a fixed loopback
// port that verifies what clients send and streams its own data back.
// The chaos kills it (listener and every connection closed) and starts
// it again on the same port.
type backend struct {
	idx  int
	addr string
	run  *runEnv

	mu    sync.Mutex
	ln    net.Listener // nil while killed
	conns map[*backendConn]struct{}
	wg    sync.WaitGroup // accept loops and handlers

	kills atomic.Int64
}

// backendConn is one accepted connection. id is 0 until the client's
// frame 0 names it.
type backendConn struct {
	c  *net.TCPConn
	id atomic.Uint64
}

func newBackend(idx int, addr string, env *runEnv) *backend {
	return &backend{idx: idx, addr: addr, run: env, conns: map[*backendConn]struct{}{}}
}

// start listens and serves. Restarting on the same port may briefly
// find it busy, so it retries for a while.
func (b *backend) start() error {
	var ln net.Listener
	var err error
	for deadline := time.Now().Add(3 * time.Second); ; {
		ln, err = net.Listen("tcp", b.addr) // Go sets SO_REUSEADDR: TIME_WAIT does not block it
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("backend %s: listen on %s: %w", backendName(b.idx), b.addr, err)
	}
	b.mu.Lock()
	b.ln = ln
	b.mu.Unlock()
	b.run.world.setUp(b.idx, true)
	b.wg.Add(1)
	go b.accept(ln)
	return nil
}

func (b *backend) accept(ln net.Listener) {
	defer b.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed by kill or close
		}
		bc := &backendConn{c: c.(*net.TCPConn)}
		b.mu.Lock()
		if b.ln != ln {
			// Killed between Accept and here: this connection dies with
			// the others.
			b.mu.Unlock()
			c.Close()
			continue
		}
		b.conns[bc] = struct{}{}
		b.wg.Add(1)
		b.mu.Unlock()
		go b.serve(bc)
	}
}

// kill closes the listener and every connection, with a reset when
// reset is set (SO_LINGER 0) and a FIN otherwise. The world hears of it
// first, and the ledger records it while it happens (see
// ledger.killed), so that any failure it causes finds it recorded.
func (b *backend) kill(reset bool) {
	at := time.Now()
	b.run.world.setUp(b.idx, false)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ln == nil {
		return
	}
	b.kills.Add(1)
	b.ln.Close()
	b.ln = nil
	b.run.ledger.killed(at, func() []uint64 {
		for bc := range b.conns {
			if reset {
				bc.c.SetLinger(0)
			}
			bc.c.Close()
		}
		// Which connections were identified is read after closing them:
		// a handler that names its connection later can no longer send
		// on it, so its client never sees the backend's frame 0 and is
		// judged as cut before its hello.
		var ids []uint64
		for bc := range b.conns {
			if id := bc.id.Load(); id != 0 {
				ids = append(ids, id)
			}
		}
		return ids
	})
}

// up reports whether the backend is listening.
func (b *backend) up() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ln != nil
}

// close stops the backend for good and waits for its goroutines.
func (b *backend) close() {
	b.mu.Lock()
	if b.ln != nil {
		b.ln.Close()
		b.ln = nil
	}
	for bc := range b.conns {
		bc.c.Close()
	}
	b.mu.Unlock()
	b.run.world.setUp(b.idx, false)
	b.wg.Wait()
}

func (b *backend) serve(bc *backendConn) {
	defer b.wg.Done()
	defer func() {
		bc.c.Close()
		b.mu.Lock()
		delete(b.conns, bc)
		b.mu.Unlock()
	}()
	env := b.run
	v := newVerifier(stream{seed: env.seed, dir: up}, true)
	deadline := time.Now().Add(env.cfg.hangLimit)
	pre, err := readPreamble(bc.c, v, deadline)
	if err == nil {
		_, err = readFrames(bc.c, v, 1, deadline)
	}
	if err != nil {
		var fe *frameError
		if errors.As(err, &fe) {
			env.ledger.backendFailed(fe.stream.conn, err)
		}
		// Anything else before frame 0 is the client's to report: it
		// went away, or the kill closed this.
		return
	}
	id := v.s.conn
	bc.id.Store(id)
	env.ledger.attach(id, b.idx, time.Now())
	env.ledger.bytesUp.Add(v.bytes)
	if desc := env.entries.check(id, pre); desc != "" {
		env.ledger.misrouted(desc)
	}

	switch v.s.kind {
	case longLived, quiet:
		err = b.serveLong(bc, v)
	case short:
		err = b.serveShort(bc, v)
	}
	if err != nil && !b.ended(err) {
		env.ledger.backendFailed(id, err)
	}
}

// ended reports whether err is the connection ending the way it may:
// the client closed it, or a kill did.
func (b *backend) ended(err error) bool {
	var fe *frameError
	if errors.As(err, &fe) || errors.Is(err, errStalled) {
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err) || !b.up()
}

// serveLong streams until the client goes away.
func (b *backend) serveLong(bc *backendConn, v *verifier) error {
	env := b.run
	p := &peer{
		conn:     bc.c,
		out:      stream{seed: env.seed, conn: v.s.conn, dir: down, kind: v.s.kind},
		in:       v,
		pace:     env.cfg.pace,
		jitter:   splitmix(env.seed ^ v.s.conn<<1),
		stall:    env.cfg.hangLimit,
		verified: &env.ledger.bytesUp,
	}
	if v.s.kind == quiet {
		p.stall = 0 // its client does not talk
	}
	return p.run()
}

// serveShort answers a short connection: the client half-closes after
// its one frame; the answer follows, then the backend closes. The proxy
// must carry the whole answer after the client's half-close.
func (b *backend) serveShort(bc *backendConn, v *verifier) error {
	deadline := time.Now().Add(b.run.cfg.hangLimit)
	if v.pending() {
		return errors.New("bytes after the request frame")
	}
	if err := readEOF(bc.c, deadline); err != nil {
		return fmt.Errorf("waiting for the client's half-close: %w", err)
	}
	var buf []byte
	out := stream{seed: b.run.seed, conn: v.s.conn, dir: down, kind: short}
	for seq := range uint64(shortResponseFrames) {
		buf = appendFrame(buf, out, seq)
	}
	if err := bc.c.SetWriteDeadline(deadline); err != nil {
		return fmt.Errorf("set write deadline: %w", err)
	}
	if _, err := bc.c.Write(buf); err != nil {
		return fmt.Errorf("write the answer: %w", err)
	}
	return nil
}

// listenPorts finds n free loopback ports below the kernel's ephemeral
// range (32768 and up by default). A port from that range could be
// taken as the local port of one of the thousands of outgoing
// connections while a killed backend or the toggler leaves it free, and
// the restart would fail.
func listenPorts(n int, r *splitmix) ([]int, error) {
	const lo, hi = 20000, 32000
	var ports []int
	seen := map[int]bool{}
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000 {
			return nil, fmt.Errorf("no %d free loopback ports in %d..%d", n, lo, hi)
		}
		p := lo + int(r.next()%uint64(hi-lo))
		if seen[p] {
			continue
		}
		seen[p] = true
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		ln.Close()
		ports = append(ports, p)
	}
	return ports, nil
}
