package health

import (
	"testing"
	"time"
)

// TestDown: who marked a target down and since when, through passive
// failures, confirming checks, and recovery.
func TestDown(t *testing.T) {
	tg := NewTarget("10.0.0.1:80", Policy{MaxFails: 2, FailTimeout: ft}, nil)
	c := Check{Rise: 1, Fall: 2}
	steps := []struct {
		name      string
		do        func()
		wantBy    string
		wantSince time.Time
	}{
		{"new", func() {}, "", time.Time{}},
		{"one failure of two", func() { tg.Failure(t0, errRefused) }, "", time.Time{}},
		{"second failure", func() { tg.Failure(t0.Add(time.Second), errRefused) }, "passive", t0.Add(time.Second)},
		{"failed trial keeps since", func() { tg.Failure(t0.Add(20*time.Second), errRefused) }, "passive", t0.Add(time.Second)},
		{"checks confirm: active, same since", func() {
			tg.probeResult(t0.Add(30*time.Second), c, errRefused)
			tg.probeResult(t0.Add(31*time.Second), c, errRefused)
		}, "active", t0.Add(time.Second)},
		{"check succeeds", func() { tg.probeResult(t0.Add(40*time.Second), c, nil) }, "", time.Time{}},
		{"checks down again", func() {
			tg.probeResult(t0.Add(50*time.Second), c, errRefused)
			tg.probeResult(t0.Add(51*time.Second), c, errRefused)
		}, "active", t0.Add(51 * time.Second)},
	}
	for _, st := range steps {
		st.do()
		by, since := tg.Down()
		if by != st.wantBy || !since.Equal(st.wantSince) {
			t.Fatalf("%s: Down() = %q, %v; want %q, %v", st.name, by, since, st.wantBy, st.wantSince)
		}
	}
}
