package health

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"
)

// status values. Who marked a target down matters: a target downed by
// active checks gets no passive trial connections, so only the checks that
// downed it can bring it back (HAProxy's behaviour).
const (
	statusUp          uint32 = iota
	statusDownPassive        // downed by failed dials; trials allowed after FailTimeout
	statusDownActive         // downed by failed health checks; only checks bring it up
)

// Target is the health of one target of one app. It is safe for concurrent
// use; its methods never block.
type Target struct {
	addr string
	log  *slog.Logger

	// Policy, stored field by field so SetPolicy needs no lock.
	maxFails    atomic.Int64
	failTimeout atomic.Int64 // nanoseconds

	// status changes only by CAS, and only the goroutine that wins the CAS
	// logs, so every transition is logged exactly once.
	status atomic.Uint32
	fails  atomic.Int64 // consecutive failed dials
	// retryAt is when a passively downed target may get a trial (unix ns).
	retryAt atomic.Int64
	// trialUntil is zero when no trial is in flight, else the unix ns at
	// which the trial is considered abandoned.
	trialUntil atomic.Int64

	// Consecutive probe results. Written by the checker goroutine, but also
	// reset from the passive path, hence atomics.
	probeOKs   atomic.Int64
	probeFails atomic.Int64

	lastErr atomic.Pointer[failure]
	// downAt is when the target was last marked down (unix ns), written
	// by the goroutine that won the transition; 0 until the first one.
	downAt atomic.Int64
}

// failure is the last error seen for a target, for a status page.
type failure struct {
	err error
	at  int64 // unix ns
}

// NewTarget returns the health of target addr, initially up. log should
// carry the app's attributes; NewTarget adds target=addr. A nil log
// discards.
func NewTarget(addr string, p Policy, log *slog.Logger) *Target {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Target{addr: addr, log: log.With(slog.String("target", addr))}
	t.SetPolicy(p)
	return t
}

// Addr returns the target's address as given to NewTarget.
func (t *Target) Addr() string { return t.addr }

// SetPolicy changes the passive policy, e.g. on a config reload. The
// current state is kept: a target that is down stays down until the retry
// time computed under the old policy; the new values apply from the next
// failure.
func (t *Target) SetPolicy(p Policy) {
	p = p.withDefaults()
	t.maxFails.Store(int64(p.MaxFails))
	t.failTimeout.Store(int64(p.FailTimeout))
}

// Up reports whether t is currently marked up.
func (t *Target) Up() bool { return t.status.Load() == statusUp }

// Usable reports whether a new connection may be sent to t now, without
// side effects: t is up, or it was downed passively, its fail timeout has
// passed and no trial connection is in flight. A target downed by active
// checks is never usable until the checks bring it back.
func (t *Target) Usable(now time.Time) bool {
	switch t.status.Load() {
	case statusUp:
		return true
	case statusDownPassive:
		_, ok := t.trialOpen(now.UnixNano())
		return ok
	default:
		return false
	}
}

// trialOpen reports whether a passively downed target may be given its
// trial at n (unix nanos): its fail timeout has passed and no trial is in
// flight. It returns the trial deadline it read, for Acquire's CAS.
func (t *Target) trialOpen(n int64) (until int64, ok bool) {
	if n < t.retryAt.Load() {
		return 0, false
	}
	until = t.trialUntil.Load()
	return until, until == 0 || n >= until
}

// Acquire is called right before dialing t and reports whether the dial may
// go ahead. An up target always may. A passively downed target may only as
// its single trial connection: once its fail timeout has passed, exactly one
// caller wins the trial; the others get false until the trial is reported
// through Success or Failure, or until it is abandoned FailTimeout after it
// was granted (so a caller that never reports cannot wedge the target).
//
// force is for when every target of the app is down and the caller tries
// them all anyway; it always returns true and takes no trial slot.
func (t *Target) Acquire(now time.Time, force bool) bool {
	if force {
		return true
	}
	switch t.status.Load() {
	case statusUp:
		return true
	case statusDownPassive:
		n := now.UnixNano()
		until, ok := t.trialOpen(n)
		return ok && t.trialUntil.CompareAndSwap(until, n+t.failTimeout.Load())
	default:
		return false
	}
}

// Success reports that a dial allowed by Acquire succeeded. It resets the
// consecutive-failure count and brings a passively downed target up (a
// trial or a forced dial proved it reachable). It does not bring up a
// target downed by active checks: those own its state.
func (t *Target) Success() {
	// Load before Store: on the hot path fails is already zero and a
	// read keeps the cache line shared between cores.
	if t.fails.Load() != 0 {
		t.fails.Store(0)
	}
	if t.status.Load() != statusDownPassive {
		return
	}
	if t.status.CompareAndSwap(statusDownPassive, statusUp) {
		t.trialUntil.Store(0)
		t.logUp("connection succeeded")
	}
}

// Failure reports that a dial allowed by Acquire failed with err. MaxFails
// consecutive failures mark t down for FailTimeout. On a target that is
// already down, any failure (normally the trial's) restarts the fail
// timeout and releases the trial slot. With MaxFails zero (passive
// health off) it does nothing.
func (t *Target) Failure(now time.Time, err error) {
	if t.maxFails.Load() <= 0 {
		return // passive health off
	}
	n := now.UnixNano()
	t.lastErr.Store(&failure{err: err, at: n})
	count := t.fails.Add(1)

	if t.status.Load() != statusUp {
		t.retryAt.Store(n + t.failTimeout.Load())
		t.trialUntil.Store(0)
		return
	}
	maxFails := t.maxFails.Load()
	if count < maxFails {
		return
	}
	// Publish the retry time before the status, so a reader that sees
	// "down" also sees when it ends.
	t.retryAt.Store(n + t.failTimeout.Load())
	t.trialUntil.Store(0)
	if !t.status.CompareAndSwap(statusUp, statusDownPassive) {
		return
	}
	t.downAt.Store(n)
	// Probes must prove the target healthy again from scratch, not ride on
	// successes counted before the failures.
	t.probeOKs.Store(0)
	if maxFails == 1 {
		t.logDown(errString(err))
	} else {
		t.logDown(fmt.Sprintf("%d consecutive failed dials, last: %s", count, errString(err)))
	}
}

// probeResult records the outcome of one active check (err == nil is a
// success) under the rise/fall counts of c. It is called by the goroutines
// of RunChecks and is exported for tests.
//
// c.Fall consecutive failures mark t down and, unlike a passive down, keep
// it from getting trial connections; c.Rise consecutive successes bring it
// up however it was downed.
func (t *Target) probeResult(now time.Time, c Check, err error) {
	c = c.withDefaults()
	if err != nil {
		t.lastErr.Store(&failure{err: err, at: now.UnixNano()})
		t.probeOKs.Store(0)
		count := t.probeFails.Add(1)
		if count < int64(c.Fall) {
			return
		}
		if t.status.CompareAndSwap(statusUp, statusDownActive) {
			t.downAt.Store(now.UnixNano())
			t.logDown(fmt.Sprintf("%d consecutive failed health checks, last: %s", count, errString(err)))
			return
		}
		// Already down from failed dials; the checks now confirm it, so stop
		// trials. It was logged as down already.
		t.status.CompareAndSwap(statusDownPassive, statusDownActive)
		return
	}

	t.probeFails.Store(0)
	count := t.probeOKs.Add(1)
	if count < int64(c.Rise) {
		return
	}
	st := t.status.Load()
	if st == statusUp {
		return
	}
	t.fails.Store(0)
	if t.status.CompareAndSwap(st, statusUp) {
		t.trialUntil.Store(0)
		t.logUp(fmt.Sprintf("%d consecutive successful health checks", count))
	}
}

// ReleaseActive hands a target downed by active checks back to the
// passive logic, with a trial allowed at once. The owner of the checks
// calls it when no checker will probe t any more (its app dropped
// health_check, or t left the app), so that disabling checks cannot leave
// a target down forever; a checker restarted with t still in it keeps t's
// state, and stopping RunChecks alone releases nothing.
func (t *Target) ReleaseActive(now time.Time) {
	if t.status.Load() != statusDownActive {
		return
	}
	t.retryAt.Store(now.UnixNano())
	t.trialUntil.Store(0)
	t.status.CompareAndSwap(statusDownActive, statusDownPassive)
}

// Down says who marked t down, "passive" (failed dials) or "active"
// (failed health checks), and since when; by is "" while t is up. since
// is zero if the transition is still being recorded.
func (t *Target) Down() (by string, since time.Time) {
	switch t.status.Load() {
	case statusDownPassive:
		by = "passive"
	case statusDownActive:
		by = "active"
	default:
		return "", time.Time{}
	}
	if at := t.downAt.Load(); at != 0 {
		since = time.Unix(0, at)
	}
	return by, since
}

// LastError returns the most recent dial or health-check error seen for t
// and when it happened; err is nil if there was none. It is kept after the
// target comes back up.
func (t *Target) LastError() (at time.Time, err error) {
	f := t.lastErr.Load()
	if f == nil {
		return time.Time{}, nil
	}
	return time.Unix(0, f.at), f.err
}

func (t *Target) logDown(cause string) {
	t.log.LogAttrs(context.Background(), slog.LevelWarn, "target down", slog.String("cause", cause))
}

func (t *Target) logUp(cause string) {
	t.log.LogAttrs(context.Background(), slog.LevelInfo, "target up", slog.String("cause", cause))
}

func errString(err error) string {
	if err == nil {
		return "unknown error"
	}
	return err.Error()
}
