//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// maxDetails bounds how many failures are described one by one; the
// counts cover the rest. Starved ones get only a few of the places, so
// that they do not crowd out the failures that count.
const (
	maxDetails        = 30
	maxStarvedDetails = 5
)

// ledger classifies how every client connection ended and counts it.
//
// A client connection that did not end as intended is one of:
//
//   - cut with its backend (class a): its backend was killed while it
//     was open. Legitimate, counted apart, and it must have been closed
//     within promptCut of the kill. A connection that fails before its
//     backend's first frame, while a kill happened, is counted here too
//     ("before hello"): the backend may have been killed before it read
//     the connection's first frame, so it cannot say the connection was
//     its own.
//   - a proxy failure (class b): anything else while at least one
//     target of the current target set was healthy. Must be zero.
//   - no healthy target (class c): the chaos rules make this impossible,
//     so one means the soak itself is wrong.
//   - starved (class e): a connection that failed to set up, hung, or
//     noticed its backend's kill late while the soak's own process was
//     stalled (see watchdog). The soak's backends and clients did not
//     run then, so such a failure is not laid at the proxy's door; it is
//     counted and printed, not failed on.
//
// Corrupted, lost, reordered or misrouted bytes are counted apart and
// must be zero too.
type ledger struct {
	start     time.Time
	world     *world
	dog       *watchdog
	promptCut time.Duration
	hangLimit time.Duration
	log       io.Writer // failures are printed as they happen

	bytesUp, bytesDown atomic.Int64 // verified, client→backend and backend→client
	longEstablished    atomic.Int64
	shortOK            atomic.Int64
	nextID             atomic.Uint64

	mu             sync.Mutex
	conns          map[uint64]*connRecord // client connections not yet finished
	kills          []time.Time
	c              classCounts
	proxyCauses    map[string]int64 // class b by cause
	lateCauses     map[string]int64 // late cuts by how they were noticed
	cutCauses      map[string]int64 // class a by how the client noticed
	maxCutLatency  time.Duration
	details        []string
	starvedDetails int
}

// classCounts are the ledger's counters.
type classCounts struct {
	CutLong        int64 `json:"cut_long"`
	CutShort       int64 `json:"cut_short"`
	CutBeforeHello int64 `json:"cut_before_hello"`
	SlowCuts       int64 `json:"slow_cuts"`
	ProxyFailures  int64 `json:"proxy_failures"`
	NoHealthy      int64 `json:"no_healthy_target"`
	Corruption     int64 `json:"corruption"`
	Misrouted      int64 `json:"misrouted"`
	Starved        int64 `json:"starved"`
}

// connRecord is what the ledger knows of one client connection.
type connRecord struct {
	kind           connKind
	dialStart      time.Time
	backend        int       // stable backend that read its frame 0, or -1
	cutAt          time.Time // its backend was killed with it open
	backendFailure string    // the backend side already reported it
	counted        bool      // ... and counted it
}

func newLedger(start time.Time, w *world, dog *watchdog, cfg *config) *ledger {
	return &ledger{
		start:       start,
		world:       w,
		dog:         dog,
		promptCut:   cfg.promptCut,
		hangLimit:   cfg.hangLimit,
		log:         cfg.out,
		conns:       map[uint64]*connRecord{},
		proxyCauses: map[string]int64{},
		lateCauses:  map[string]int64{},
		cutCauses:   map[string]int64{},
	}
}

// open registers a client connection about to be dialed and returns its
// id.
func (l *ledger) open(kind connKind, at time.Time) uint64 {
	id := l.nextID.Add(1)
	l.mu.Lock()
	l.conns[id] = &connRecord{kind: kind, dialStart: at, backend: -1}
	l.mu.Unlock()
	return id
}

// attach records that stable backend b read frame 0 of connection id,
// and checks that the proxy was allowed to send it there.
func (l *ledger) attach(id uint64, b int, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	rec := l.conns[id]
	if rec == nil {
		return // the client already gave up on it
	}
	rec.backend = b
	if !l.world.allowed(b, rec.dialStart, at) {
		l.c.Misrouted++
		l.detailLocked(at, "misrouted: %v conn %d dialed at %s reached backend %s, not in any target set in force", rec.kind, id, l.offset(rec.dialStart), backendName(b))
	}
}

// killed records that a stable backend was killed at at: kill closes
// its connections and returns the ids of those that were identified.
// kill runs under the ledger's lock, so no client whose connection it
// closes can be judged before its connection is marked as cut.
func (l *ledger) killed(at time.Time, kill func() []uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.kills = append(l.kills, at)
	for _, id := range kill() {
		if rec := l.conns[id]; rec != nil {
			rec.cutAt = at
		}
	}
}

// backendFailed records a failure the backend side of connection id saw
// first. counted says it was already counted (corruption), so the
// client's view of the same connection is not counted again.
func (l *ledger) backendFailed(id uint64, err error) {
	at := time.Now()
	var fe *frameError
	counted := errors.As(err, &fe)
	l.mu.Lock()
	defer l.mu.Unlock()
	if counted {
		l.c.Corruption++
		l.detailLocked(at, "corruption seen by the backend: %v", err)
	}
	if rec := l.conns[id]; rec != nil {
		rec.backendFailure = err.Error()
		rec.counted = counted
	} else if !counted {
		l.countProxyFailureLocked(at, "backend side: "+causeOf(err), fmt.Sprintf("conn %d: backend side: %v", id, err))
	}
}

// outcome is how a client connection ended.
type outcome struct {
	stopped     bool // closed by the soak at the end of the run
	ok          bool // a short exchange completed and verified
	established bool // the backend's frame 0 arrived
	phase       string
	err         error
	at          time.Time // when the client noticed
}

// finish classifies how client connection id ended.
func (l *ledger) finish(id uint64, o outcome) {
	l.mu.Lock()
	defer l.mu.Unlock()
	rec := l.conns[id]
	delete(l.conns, id)
	if rec == nil || o.stopped || o.ok {
		return
	}
	var fe *frameError
	if errors.As(o.err, &fe) {
		l.c.Corruption++
		l.detailLocked(o.at, "corruption seen by the client: %v", o.err)
		return
	}
	if !rec.cutAt.IsZero() {
		if rec.kind != short {
			l.c.CutLong++
		} else {
			l.c.CutShort++
		}
		l.cutLatencyLocked(id, rec, o, rec.cutAt)
		return
	}
	if rec.backendFailure != "" {
		if !rec.counted {
			l.countProxyFailureLocked(o.at, "backend side: "+rec.backendFailure, fmt.Sprintf("%v conn %d: backend side: %s; client: %s: %v", rec.kind, id, rec.backendFailure, o.phase, o.err))
		}
		return
	}
	if !o.established {
		if k, ok := l.killBetweenLocked(rec.dialStart, o.at); ok {
			l.c.CutBeforeHello++
			l.cutLatencyLocked(id, rec, o, k)
			return
		}
	}
	desc := fmt.Sprintf("%v conn %d (dialed %s, backend %s): %s: %v", rec.kind, id, l.offset(rec.dialStart), backendName(rec.backend), o.phase, o.err)
	if !o.established || isTimeout(o.err) || errors.Is(o.err, errStalled) {
		// Timing failures: set-up, or silence. Look back as far as the
		// longest wait that could have caused it.
		from := rec.dialStart
		if f := o.at.Add(-2 * l.hangLimit); f.After(from) {
			from = f
		}
		need := setupStall
		if isTimeout(o.err) || errors.Is(o.err, errStalled) {
			need = l.hangLimit / 2
		}
		if l.starvedLocked(from, o.at, need, desc) {
			return
		}
	}
	if healthy := l.world.healthyTargets(); healthy > 0 {
		l.countProxyFailureLocked(o.at, o.phase+": "+causeOf(o.err), fmt.Sprintf("%s, with %d healthy targets", desc, healthy))
		return
	}
	l.c.NoHealthy++
	l.detailLocked(o.at, "no healthy target: %s", desc)
}

func (l *ledger) cutLatencyLocked(id uint64, rec *connRecord, o outcome, killedAt time.Time) {
	l.cutCauses[causeOf(o.err)]++
	lat := o.at.Sub(killedAt)
	l.maxCutLatency = max(l.maxCutLatency, lat)
	if lat <= l.promptCut {
		return
	}
	desc := fmt.Sprintf("late cut: %v conn %d on backend %s noticed its backend's kill after %v (limit %v): %s: %v",
		rec.kind, id, backendName(rec.backend), lat.Round(time.Millisecond), l.promptCut, o.phase, o.err)
	if l.starvedLocked(killedAt, o.at, lat-l.promptCut, desc) {
		return
	}
	l.c.SlowCuts++
	l.lateCauses[causeOf(o.err)]++
	l.detailLocked(o.at, "%s", desc)
}

// setupStall is how long the soak must have stalled during a failed
// connection set-up to excuse it: half the proxy's 500 ms dial timeout.
const setupStall = 250 * time.Millisecond

// starvedLocked counts a failure in class e if the soak was stalled for
// need or longer between from and to: without that stall, it would not
// have failed.
func (l *ledger) starvedLocked(from, to time.Time, need time.Duration, desc string) bool {
	if l.dog == nil {
		return false
	}
	stall := l.dog.stalledWithin(from, to)
	if stall < need {
		return false
	}
	l.c.Starved++
	if l.starvedDetails < maxStarvedDetails {
		l.starvedDetails++
		l.detailLocked(to, "starved (the soak itself stalled %v): %s", stall.Round(time.Millisecond), desc)
	}
	return true
}

// killBetweenLocked returns a kill in [from, to].
func (l *ledger) killBetweenLocked(from, to time.Time) (time.Time, bool) {
	i := sort.Search(len(l.kills), func(i int) bool { return !l.kills[i].Before(from) })
	if i < len(l.kills) && !l.kills[i].After(to) {
		return l.kills[i], true
	}
	return time.Time{}, false
}

func (l *ledger) countProxyFailureLocked(at time.Time, cause, desc string) {
	l.c.ProxyFailures++
	l.proxyCauses[cause]++
	l.detailLocked(at, "PROXY FAILURE: %s", desc)
}

func (l *ledger) detailLocked(at time.Time, format string, args ...any) {
	if len(l.details) >= maxDetails {
		return
	}
	line := fmt.Sprintf("t=%s ", l.offset(at)) + fmt.Sprintf(format, args...)
	l.details = append(l.details, line)
	fmt.Fprintln(l.log, "soak:", line)
}

func (l *ledger) offset(t time.Time) string {
	return t.Sub(l.start).Round(time.Millisecond).String()
}

// ledgerReport is the ledger's final counts.
type ledgerReport struct {
	counts        classCounts
	proxyCauses   map[string]int64
	lateCauses    map[string]int64
	cutCauses     map[string]int64
	maxCutLatency time.Duration
	details       []string
}

// report returns the counts so far.
func (l *ledger) report() ledgerReport {
	l.mu.Lock()
	defer l.mu.Unlock()
	return ledgerReport{
		counts:        l.c,
		proxyCauses:   maps.Clone(l.proxyCauses),
		lateCauses:    maps.Clone(l.lateCauses),
		cutCauses:     maps.Clone(l.cutCauses),
		maxCutLatency: l.maxCutLatency,
		details:       slices.Clone(l.details),
	}
}

func backendName(i int) string {
	if i < 0 {
		return "unknown"
	}
	return fmt.Sprintf("B%d", i+1)
}
