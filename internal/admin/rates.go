package admin

import (
	"context"
	"sync"
	"time"

	"github.com/michaeldbianchi/tcpproxy/internal/stats"
)

// sampleInterval is how often the server records the apps' counters for
// the rates of the status page and API.
const sampleInterval = time.Second

// rateSampler turns the apps' counters into per-second rates over the
// last stats.RateWindow: it keeps one sample of the totals per
// sampleInterval and compares the current totals with the oldest sample
// inside the window. Safe for concurrent use; the zero value is ready.
type rateSampler struct {
	mu      sync.Mutex
	samples []sample // oldest first, none older than the window
}

type sample struct {
	at   time.Time
	apps map[string]totals
}

// totals are the counters of one app that rates are taken of.
type totals struct {
	conns, toTarget, toClient int64
}

func totalsOf(a *stats.App) totals {
	return totals{conns: a.Total, toTarget: a.BytesToTarget, toClient: a.BytesToClient}
}

// add records the totals of s, taken at at, and forgets samples that
// fell out of the window.
func (r *rateSampler) add(at time.Time, s stats.Snapshot) {
	smp := sample{at: at, apps: make(map[string]totals, len(s.Apps))}
	for i := range s.Apps {
		smp.apps[s.Apps[i].Name] = totalsOf(&s.Apps[i])
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.samples = append(r.samples, smp)
	keep := 0
	for keep < len(r.samples)-1 && at.Sub(r.samples[keep+1].at) >= stats.RateWindow {
		keep++ // the next one still spans the whole window
	}
	r.samples = append(r.samples[:0], r.samples[keep:]...)
}

// fill sets the Rates of every app of s, taken at now, against the
// oldest sample within the window. An app the sample does not know yet,
// or whose counters went back (removed and added again), gets zeros.
func (r *rateSampler) fill(s *stats.Snapshot, now time.Time) {
	r.mu.Lock()
	var base *sample
	for i := range r.samples {
		if now.Sub(r.samples[i].at) <= stats.RateWindow {
			base = &r.samples[i]
			break
		}
	}
	r.mu.Unlock()
	if base == nil {
		return
	}
	secs := now.Sub(base.at).Seconds()
	if secs <= 0 {
		return
	}
	for i := range s.Apps {
		a := &s.Apps[i]
		old, ok := base.apps[a.Name]
		cur := totalsOf(a)
		if !ok || cur.conns < old.conns || cur.toTarget < old.toTarget || cur.toClient < old.toClient {
			continue
		}
		a.Rates = stats.Rates{
			Connections:   float64(cur.conns-old.conns) / secs,
			BytesToTarget: float64(cur.toTarget-old.toTarget) / secs,
			BytesToClient: float64(cur.toClient-old.toClient) / secs,
		}
	}
}

// run samples snapshot every sampleInterval until ctx is done.
func (r *rateSampler) run(ctx context.Context, snapshot func() stats.Snapshot) {
	t := time.NewTicker(sampleInterval)
	defer t.Stop()
	r.add(time.Now(), snapshot())
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			r.add(now, snapshot())
		}
	}
}
