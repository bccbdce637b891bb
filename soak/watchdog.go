//go:build linux

package main

import (
	"sync"
	"time"
)

// watchdog measures how late a timer fires in the soak's own process.
// When the soak is starved of CPU (by other load on the machine, or by
// its own burst of work after a kill), its backends accept and answer
// late and its clients read late; and on a 2-core machine, what starves
// the soak starves the proxy too. The ledger asks the watchdog before
// blaming the proxy for a failure that is about timing.
type watchdog struct {
	every time.Duration

	mu    sync.Mutex
	spans []stallSpan // ticks at least minStall late, in time order
	worst time.Duration
	total time.Duration
}

// minStall is the lateness from which a tick is recorded: below it is
// ordinary scheduling jitter.
const minStall = 20 * time.Millisecond

// stallSpan is a time the soak could not run: a tick due at from fired
// at to.
type stallSpan struct {
	from, to time.Time
}

func newWatchdog(every time.Duration) *watchdog {
	return &watchdog{every: every}
}

// run ticks until stop closes.
func (w *watchdog) run(stop <-chan struct{}) {
	t := time.NewTimer(w.every)
	defer t.Stop()
	due := time.Now().Add(w.every)
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			// Not the time received: the runtime sends the time the
			// timer was due, however late it fired.
			now := time.Now()
			if late := now.Sub(due); late >= minStall {
				w.mu.Lock()
				w.worst = max(w.worst, late)
				w.total += late
				w.spans = append(w.spans, stallSpan{from: due, to: now})
				w.mu.Unlock()
			}
			due = now.Add(w.every)
			t.Reset(w.every)
		}
	}
}

// stalledWithin returns how long the soak was stalled within [from, to].
func (w *watchdog) stalledWithin(from, to time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	var sum time.Duration
	for i := len(w.spans) - 1; i >= 0; i-- {
		s := w.spans[i]
		if !s.to.After(from) {
			break
		}
		lo, hi := s.from, s.to
		if lo.Before(from) {
			lo = from
		}
		if hi.After(to) {
			hi = to
		}
		if hi.After(lo) {
			sum += hi.Sub(lo)
		}
	}
	return sum
}

// report returns the worst lateness and the total time stalled.
func (w *watchdog) report() (worst, total time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.worst, w.total
}
