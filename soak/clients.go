//go:build linux

package main

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// longConns keeps a fixed number of long-lived connections streaming
// through the proxy, each in its own slot that reconnects after its
// connection ends, until stop.
type longConns struct {
	run *runEnv
	n   int

	stopping atomic.Bool
	mu       sync.Mutex
	open     map[*net.TCPConn]struct{}
	wg       sync.WaitGroup

	established atomic.Int64 // connections past the hello now
	peak        atomic.Int64
	sessions    atomic.Int64 // connections dialed
	retired     atomic.Int64 // connections closed cleanly at the end of their lifetime
}

func newLongConns(env *runEnv, n int) *longConns {
	return &longConns{run: env, n: n, open: map[*net.TCPConn]struct{}{}}
}

// start opens the slots, spread over ramp so the proxy does not get
// every SYN in the same millisecond.
func (lc *longConns) start(ramp time.Duration) {
	for i := range lc.n {
		lc.wg.Add(1)
		delay := ramp * time.Duration(i) / time.Duration(max(lc.n, 1))
		go lc.slot(i, delay)
	}
}

// stop closes every connection and waits for the slots to end.
func (lc *longConns) stop() {
	lc.stopping.Store(true)
	lc.mu.Lock()
	for c := range lc.open {
		c.Close()
	}
	lc.mu.Unlock()
	lc.wg.Wait()
}

// sleep waits d, or less if the soak stops; it reports whether to go on.
func (lc *longConns) sleep(d time.Duration) bool {
	select {
	case <-lc.run.stop:
		return false
	case <-time.After(d):
		return !lc.stopping.Load()
	}
}

func (lc *longConns) slot(i int, delay time.Duration) {
	defer lc.wg.Done()
	if !lc.sleep(delay) {
		return
	}
	r := splitmix(lc.run.seed ^ uint64(i)<<32)
	for n := 0; !lc.stopping.Load(); n++ {
		addr, entry := lc.run.entries.pick(i + n)
		pause := 10 * time.Millisecond
		if !lc.session(i, addr, entry, &r) {
			// Back off at random, like real clients, so the hundreds cut
			// by one kill do not all come back in the same instant.
			pause = between(&r, lc.run.cfg.reconnect)
		}
		if !lc.sleep(pause) {
			return
		}
	}
}

// quiet reports whether a slot's connections are quiet ones: one in
// four.
func (lc *longConns) quiet(slot int) bool { return slot%4 == 3 }

// between draws a duration uniformly from [d[0], d[1]].
func between(r *splitmix, d [2]time.Duration) time.Duration {
	return d[0] + time.Duration(r.next()%uint64(d[1]-d[0]+1))
}

// session dials one connection and streams until it ends, then tells
// the ledger how it ended. It reports whether the connection lived out
// its lifetime.
func (lc *longConns) session(slot int, addr string, entry entryKind, r *splitmix) bool {
	env := lc.run
	lc.sessions.Add(1)
	start := time.Now()
	kind := longLived
	if lc.quiet(slot) {
		kind = quiet
	}
	id := env.ledger.open(kind, start)
	c, err := net.DialTimeout("tcp", addr, env.cfg.hangLimit)
	if err != nil {
		env.ledger.finish(id, outcome{stopped: lc.stopping.Load(), phase: "dial", err: err, at: time.Now()})
		return false
	}
	tc := c.(*net.TCPConn)
	defer tc.Close()
	if !lc.track(tc) {
		env.ledger.finish(id, outcome{stopped: true})
		return false
	}
	defer lc.untrack(tc)
	defer env.entries.forget(id)
	if err := env.entries.start(tc, entry, id, start.Add(env.cfg.hangLimit)); err != nil {
		env.ledger.finish(id, outcome{stopped: lc.stopping.Load(), phase: "preamble", err: err, at: time.Now()})
		return false
	}

	established := false
	p := &peer{
		conn:     tc,
		out:      stream{seed: env.seed, conn: id, dir: up, kind: kind},
		in:       newVerifier(stream{seed: env.seed, conn: id, dir: down, kind: kind}, false),
		quiet:    kind == quiet,
		pace:     env.cfg.pace,
		jitter:   splitmix(r.next()),
		stall:    env.cfg.hangLimit,
		since:    start, // the dial and the hello share one hang limit
		verified: &env.ledger.bytesDown,
		retireAt: start.Add(between(r, env.cfg.lifetime)),
		onFirst: func() {
			established = true
			env.ledger.longEstablished.Add(1)
			storeMax(&lc.peak, lc.established.Add(1))
		},
	}
	err = p.run()
	if established {
		lc.established.Add(-1)
	}
	phase := "stream"
	if !established {
		phase = "hello"
	}
	if err == nil {
		lc.retired.Add(1)
	}
	env.ledger.finish(id, outcome{stopped: lc.stopping.Load(), ok: err == nil, established: established, phase: phase, err: err, at: time.Now()})
	return err == nil
}

func (lc *longConns) track(c *net.TCPConn) bool {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if lc.stopping.Load() {
		return false
	}
	lc.open[c] = struct{}{}
	return true
}

func (lc *longConns) untrack(c *net.TCPConn) {
	lc.mu.Lock()
	delete(lc.open, c)
	lc.mu.Unlock()
}

// churn makes short connections at a steady rate: dial, send one frame,
// half-close, read and verify the answer, close.
type churn struct {
	run         *runEnv
	rate        int // per second
	maxInFlight int64

	wg       sync.WaitGroup
	inFlight atomic.Int64
	made     atomic.Int64 // dialed
	skipped  atomic.Int64 // not started: maxInFlight reached
}

// loop starts connections on a 20 ms tick, as many as keep the count at
// rate × elapsed time, until the soak stops; then it waits for those in
// flight.
func (ch *churn) loop() {
	defer ch.wg.Wait()
	if ch.rate <= 0 {
		return
	}
	start := time.Now()
	var started int64
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ch.run.stop:
			return
		case now := <-t.C:
			due := int64(now.Sub(start).Seconds() * float64(ch.rate))
			for ; started < due; started++ {
				if ch.inFlight.Load() >= ch.maxInFlight {
					ch.skipped.Add(1)
					continue
				}
				ch.inFlight.Add(1)
				ch.wg.Add(1)
				addr, entry := ch.run.entries.pick(int(started))
				go ch.one(addr, entry)
			}
		}
	}
}

func (ch *churn) one(addr string, entry entryKind) {
	defer ch.wg.Done()
	defer ch.inFlight.Add(-1)
	env := ch.run
	ch.made.Add(1)
	start := time.Now()
	deadline := start.Add(env.cfg.hangLimit)
	id := env.ledger.open(short, start)
	phase, err := "dial", error(nil)
	established := false
	defer func() {
		env.ledger.finish(id, outcome{ok: err == nil, established: established, phase: phase, err: err, at: time.Now()})
	}()
	var c net.Conn
	if c, err = net.DialTimeout("tcp", addr, env.cfg.hangLimit); err != nil {
		return
	}
	defer c.Close()
	tc := c.(*net.TCPConn)
	defer env.entries.forget(id)
	phase = "preamble"
	if err = env.entries.start(tc, entry, id, deadline); err != nil {
		return
	}
	phase = "request"
	req := appendFrame(nil, stream{seed: env.seed, conn: id, dir: up, kind: short}, 0)
	if err = tc.SetWriteDeadline(deadline); err != nil {
		return
	}
	if _, err = tc.Write(req); err != nil {
		return
	}
	if err = tc.CloseWrite(); err != nil {
		return
	}
	phase = "response"
	v := newVerifier(stream{seed: env.seed, conn: id, dir: down, kind: short}, false)
	n, err := readFrames(tc, v, shortResponseFrames, deadline)
	env.ledger.bytesDown.Add(n)
	established = v.frames() > 0
	if err != nil {
		return
	}
	phase = "close"
	if err = readEOF(tc, deadline); err != nil {
		err = fmt.Errorf("after the answer: %w", err)
		return
	}
	env.ledger.shortOK.Add(1)
}

// storeMax raises m to v if v is larger.
func storeMax(m *atomic.Int64, v int64) {
	for {
		old := m.Load()
		if v <= old || m.CompareAndSwap(old, v) {
			return
		}
	}
}
