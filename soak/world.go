//go:build linux

package main

import (
	"slices"
	"sync"
	"time"
)

// world is the soak's own record of what the chaos did: which stable
// backends are up now and which target set the proxy was told to use
// when. The ledger judges every failure against it.
type world struct {
	mu   sync.Mutex
	up   []bool       // by stable backend index
	sets []*targetSet // every set given to the proxy, oldest first
}

// targetSet is one target set written to the proxy's config.
type targetSet struct {
	members   []int     // stable backend indexes; the toggler is always in too
	sentAt    time.Time // config written and SIGHUP sent (start time for the first)
	appliedAt time.Time // the proxy's reload counter moved; zero until then
}

func newWorld(backends int, first []int, at time.Time) *world {
	w := &world{up: make([]bool, backends)}
	w.sets = []*targetSet{{members: first, sentAt: at, appliedAt: at}}
	return w
}

// setUp records that stable backend i went up or down.
func (w *world) setUp(i int, up bool) {
	w.mu.Lock()
	w.up[i] = up
	w.mu.Unlock()
}

// sending records a set about to be signalled to the proxy.
func (w *world) sending(members []int, at time.Time) *targetSet {
	s := &targetSet{members: members, sentAt: at}
	w.mu.Lock()
	w.sets = append(w.sets, s)
	w.mu.Unlock()
	return s
}

// applied records that the proxy confirmed set s.
func (w *world) applied(s *targetSet, at time.Time) {
	w.mu.Lock()
	s.appliedAt = at
	w.mu.Unlock()
}

// current returns the sets that may be the proxy's now: the latest
// confirmed one and any signalled since. While a reload is in flight,
// either may serve a connection.
func (w *world) current() [][]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out [][]int
	for i := len(w.sets) - 1; i >= 0; i-- {
		out = append(out, w.sets[i].members)
		if !w.sets[i].appliedAt.IsZero() {
			break
		}
	}
	return out
}

// healthyTargets is the number of up stable backends in the current
// target set, the smaller count if a reload is in flight. The toggler
// never serves, so it never counts.
func (w *world) healthyTargets() int {
	sets := w.current()
	w.mu.Lock()
	defer w.mu.Unlock()
	least := -1
	for _, s := range sets {
		n := 0
		for _, i := range s {
			if w.up[i] {
				n++
			}
		}
		if least < 0 || n < least {
			least = n
		}
	}
	return least
}

// allowed reports whether a connection whose client dialed at from and
// whose backend took it at to may have been sent to backend i: i is in
// the set confirmed before from or in any set signalled before to. A
// connection to any other backend was misrouted by the proxy.
func (w *world) allowed(i int, from, to time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for j := len(w.sets) - 1; j >= 0; j-- {
		s := w.sets[j]
		if s.sentAt.After(to) {
			continue
		}
		if slices.Contains(s.members, i) {
			return true
		}
		if !s.appliedAt.IsZero() && s.appliedAt.Before(from) {
			return false // older sets were replaced before the dial
		}
	}
	return false
}
