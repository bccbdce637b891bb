package admin

import (
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"github.com/michaeldbianchi/tcpproxy/internal/stats"
)

func snapOf(apps ...stats.App) stats.Snapshot { return stats.Snapshot{Apps: apps} }

func TestRateSampler(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	var r rateSampler
	web := func(conns, toTarget, toClient int64) stats.App {
		return stats.App{Name: "web", Total: conns, BytesToTarget: toTarget, BytesToClient: toClient}
	}
	rates := func(now time.Time, apps ...stats.App) []stats.Rates {
		s := snapOf(apps...)
		r.fill(&s, now)
		out := make([]stats.Rates, len(s.Apps))
		for i, a := range s.Apps {
			out[i] = a.Rates
		}
		return out
	}
	if got := rates(t0, web(5, 0, 0)); got[0] != (stats.Rates{}) {
		t.Fatalf("no sample yet: %+v, want zeros", got)
	}
	// One sample a second for 30 s: 10 connections and 1 KiB each way a second.
	for i := int64(0); i <= 30; i++ {
		r.add(t0.Add(time.Duration(i)*time.Second), snapOf(web(10*i, 1024*i, 2048*i)))
	}
	now := t0.Add(30 * time.Second)
	got := rates(now, web(300, 30*1024, 60*1024), stats.App{Name: "new", Total: 7})
	if want := (stats.Rates{Connections: 10, BytesToTarget: 1024, BytesToClient: 2048}); got[0] != want {
		t.Errorf("steady rates %+v, want %+v", got[0], want)
	}
	if got[1] != (stats.Rates{}) {
		t.Errorf("an app the samples do not know yet: %+v, want zeros", got[1])
	}
	// A burst in the last second shows as a tenth of itself over 10 s.
	if got := rates(now, web(400, 30*1024, 60*1024)); got[0].Connections != 20 {
		t.Errorf("burst: %v conn/s, want 20", got[0].Connections)
	}
	// Counters that went back (app removed and added again) give zeros.
	if got := rates(now, web(1, 0, 0)); got[0] != (stats.Rates{}) {
		t.Errorf("counter reset: %+v, want zeros", got[0])
	}
	if n := len(r.samples); n > 12 {
		t.Errorf("%d samples kept, want about 11 for a 10 s window", n)
	}
}

// TestStatusRates: the served /status carries rates from the server's
// own sampling once a connection has been counted.
func TestStatusRates(t *testing.T) {
	var total atomic.Int64
	snap := func() stats.Snapshot { return snapOf(stats.App{Name: "web", Total: total.Load()}) }
	_, base := serve(t, Options{Snapshot: snap})
	deadline := time.Now().Add(10 * time.Second)
	for {
		total.Add(1)
		var got stats.Snapshot
		r := get(t, base+"/status")
		if err := json.Unmarshal([]byte(r.body), &got); err != nil {
			t.Fatal(err)
		}
		if got.Apps[0].Rates.Connections > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection rate after 10 s: %s", r.body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
