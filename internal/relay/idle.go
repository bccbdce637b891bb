package relay

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Idle is the shared clock and fate of one relayed pair: the client conn
// and the target conn are both wrapped with the same *Idle.
//
// It bounds the pair's quiet phases. With an idle timeout, the pair is
// closed when neither direction moved bytes for that long; a peer that
// acknowledged bytes of a write still in progress (a slow reader) counts
// as movement, checked when a deadline fires (see sendProgress). With a
// half-close timeout, once one direction has finished cleanly (its source
// sent FIN) the other is closed when it moves no bytes for that long, so a
// peer that vanished after a half-close cannot pin the relay. And when one
// direction fails (a reset, a write error), the other is stopped at once:
// with the library's relay it would otherwise wait for a peer that may
// never speak again.
//
// A nil *Idle means none of this: no deadlines are ever set.
type Idle struct {
	timeout   time.Duration // idle timeout; 0 is none
	halfClose time.Duration // half-close timeout; 0 is none
	res       time.Duration // resolution of last; see touch
	start     time.Time     // origin of last, read through the monotonic clock
	last      atomic.Int64  // time of the latest activity, as nanoseconds since start

	timedOut   atomic.Bool // closed for idleness
	halfClosed atomic.Bool // one direction finished cleanly
	stopped    atomic.Bool // shut down: idle, half-close timeout or a failed direction

	mu      sync.Mutex
	members []member  // the pair, woken by expire
	pair    [2]member // members' backing array: a pair needs no allocation
}

// member is one conn of the pair and what Idle knows of it.
type member struct {
	conn  *net.TCPConn
	sent  sendMark // what its peer had acknowledged at the last check
	reset bool     // closed with RST: it had data in flight at a stop
}

// sendMark is what sendProgress saw of one conn at its last check.
type sendMark struct {
	acked   uint64
	checked bool
}

// newIdle returns the clock for one pair that is closed after timeout
// without traffic in either direction. It returns nil, meaning no idle
// timeout, if timeout <= 0.
func newIdle(timeout time.Duration) *Idle { return NewTimeouts(timeout, 0) }

// NewTimeouts returns the clock for one pair with an idle timeout and a
// half-close timeout, each off when <= 0. It returns nil when both are.
func NewTimeouts(idle, halfClose time.Duration) *Idle {
	idle, halfClose = max(idle, 0), max(halfClose, 0)
	if idle == 0 && halfClose == 0 {
		return nil
	}
	res := idle
	if res == 0 || halfClose != 0 && halfClose < res {
		res = halfClose
	}
	i := &Idle{timeout: idle, halfClose: halfClose, res: res / 64, start: time.Now()}
	i.members = i.pair[:0]
	return i
}

// TimedOut reports whether the pair was shut down for idleness. It is
// false for a nil *Idle.
func (i *Idle) TimedOut() bool { return i != nil && i.timedOut.Load() }

// limit is the quiet time the pair may have now: the idle timeout, or
// the half-close timeout once a direction has finished, whichever is
// shorter; 0 is unbounded.
func (i *Idle) limit() time.Duration {
	if i.halfClosed.Load() && i.halfClose > 0 && (i.timeout == 0 || i.halfClose < i.timeout) {
		return i.halfClose
	}
	return i.timeout
}

// finish records that one direction ended. A clean end (EOF) starts the
// half-close phase: the other direction's wait is woken so that it picks
// up the half-close timeout. A failure stops the pair.
func (i *Idle) finish(err error) {
	if i == nil {
		return
	}
	if err != nil {
		i.stop(false)
		return
	}
	if i.halfClose == 0 || i.halfClosed.Swap(true) {
		return
	}
	i.last.Store(int64(time.Since(i.start))) // the half-close phase starts now
	i.mu.Lock()
	defer i.mu.Unlock()
	for _, m := range i.members {
		m.conn.SetReadDeadline(aLongTimeAgo) // re-armed by the waiter with the new limit
	}
}

func (i *Idle) register(c *net.TCPConn) {
	if i == nil {
		return
	}
	i.mu.Lock()
	i.members = append(i.members, member{conn: c})
	i.mu.Unlock()
}

// sendProgress reports whether a peer of the pair took bytes since the
// last check: a slow reader draining a long write moves the pair
// forward although the write has not returned, so it is activity. The
// first check has no earlier figure: it counts a send queue that holds
// data. A peer that stopped reading (zero window) acknowledges nothing,
// so a stuck write is still idle.
func (i *Idle) sendProgress() bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	moved := false
	for k := range i.members {
		acked, queued, ok := sendState(i.members[k].conn)
		if !ok {
			continue
		}
		m := &i.members[k].sent
		if m.checked && acked != m.acked || !m.checked && queued > 0 {
			moved = true
		}
		*m = sendMark{acked: acked, checked: true}
	}
	return moved
}

// resetAfterStop reports whether c was closed mid-stream by a stop and
// must end with RST rather than a FIN that looks like a complete stream.
func (i *Idle) resetAfterStop(c *net.TCPConn) bool {
	if i == nil || !i.stopped.Load() {
		return false
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	for _, m := range i.members {
		if m.conn == c {
			return m.reset
		}
	}
	return false
}

// touch records activity. Both directions call it for every chunk, so it
// only stores when the clock moved by more than res: a load of a shared
// cache line is cheap, a store from two cores makes it bounce.
func (i *Idle) touch() {
	if i == nil {
		return
	}
	now := int64(time.Since(i.start))
	if now-i.last.Load() >= int64(i.res) {
		i.last.Store(now)
	}
}

// remaining is how long the pair may still stay quiet before its limit,
// allowing for last lagging real activity by up to res.
func (i *Idle) remaining(limit time.Duration) time.Duration {
	quiet := time.Since(i.start) - time.Duration(i.last.Load())
	return limit + i.res - quiet
}

// expire stops the pair because it stayed quiet past its limit.
func (i *Idle) expire() { i.stop(!i.halfClosed.Load() || i.limit() == i.timeout) }

// stop marks the pair stopped (idle says whether for idleness) and wakes
// every blocked read and write on it, including the other direction's,
// so the relay stops at once instead of when the other direction's own
// deadline fires. A conn whose peer has not taken everything sent to it
// (SIOCOUTQ > 0) gets SO_LINGER 0 and no FIN (see Conn.CloseWrite): its
// close resets the connection, so a cut stream never looks complete.
func (i *Idle) stop(idle bool) {
	if i.stopped.Swap(true) {
		return
	}
	if idle {
		i.timedOut.Store(true)
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	for k := range i.members {
		c := i.members[k].conn
		if _, queued, ok := sendState(c); ok && queued > 0 {
			// Data the peer has not taken: a FIN would make the cut look
			// like the end of the stream. Close with RST instead.
			i.members[k].reset = true
			c.SetLinger(0)
		}
		c.SetDeadline(aLongTimeAgo) // fails only if already closed
	}
}

// aLongTimeAgo is a deadline that has always passed.
var aLongTimeAgo = time.Unix(1, 0)

// deadline keeps one conn's read deadline in step with its pair's Idle
// clock. It belongs to one WriteTo call.
type deadline struct {
	conn *net.TCPConn
	idle *Idle
	at   time.Time // the read deadline currently set on conn
}

func newDeadline(c *net.TCPConn, idle *Idle) deadline {
	return deadline{conn: c, idle: idle}
}

// arm makes sure the read deadline is at least 7/8 of the timeout away
// before a wait. Refreshing only when stale by 1/8 saves a deadline update
// (a runtime timer update) per chunk for this check, mostly time.Now. A
// deadline that fires early is harmless, see active.
func (d *deadline) arm() error {
	if d.idle == nil {
		return nil
	}
	for {
		if d.idle.stopped.Load() {
			// The pair was stopped; do not revive the conn.
			return os.ErrDeadlineExceeded
		}
		t := d.idle.limit()
		if t == 0 {
			return nil // only a half-close timeout, and both directions still run
		}
		now := time.Now()
		if left := d.at.Sub(now); left > t-t/8 && left <= t {
			return nil // fresh enough, and not beyond a limit that shrank
		}
		d.at = now.Add(t)
		if err := d.conn.SetReadDeadline(d.at); err != nil {
			return fmt.Errorf("set read deadline: %w", err)
		}
		if !d.changed(t) {
			return nil
		}
	}
}

// changed reports whether the pair was stopped or its limit changed since
// limit t was read. Stopping and the half-close phase wake the waiters by
// setting a past deadline; a deadline set from a stale limit right after
// that would undo the wake-up, so the caller recomputes.
func (d *deadline) changed(t time.Duration) bool {
	return d.idle.stopped.Load() || d.idle.limit() != t
}

// active reports whether err is our read deadline firing while the pair
// is still busy, in which case it pushes the deadline out and the caller
// keeps going. If the pair really was idle it expires the pair.
func (d *deadline) active(err error) bool {
	if d.idle == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	for {
		if d.idle.stopped.Load() {
			return false
		}
		limit := d.idle.limit()
		if limit == 0 {
			return false // a deadline we did not set
		}
		left := d.idle.remaining(limit)
		if left <= 0 && d.idle.sendProgress() {
			d.idle.touch()
			left = d.idle.remaining(limit)
		}
		if left <= 0 {
			d.idle.expire()
			return false
		}
		d.at = time.Now().Add(left)
		if d.conn.SetReadDeadline(d.at) != nil {
			return false
		}
		if !d.changed(limit) {
			return true
		}
	}
}
