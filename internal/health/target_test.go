package health

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var (
	t0         = time.Unix(1_700_000_000, 0)
	errRefused = errors.New("connect: connection refused")
)

const ft = 10 * time.Second

// concurrently runs f in n goroutines released together, and waits.
func concurrently(n int, f func()) {
	var start, done sync.WaitGroup
	start.Add(1)
	for range n {
		done.Go(func() {
			start.Wait()
			f()
		})
	}
	start.Done()
	done.Wait()
}

func TestMaxFailsOneLifecycle(t *testing.T) {
	log, logs := newRecorder()
	tg := NewTarget("10.0.0.1:80", Policy{MaxFails: 1, FailTimeout: ft}, log)

	if !tg.Up() || !tg.Usable(t0) || !tg.Acquire(t0, false) {
		t.Fatal("new target must be up, usable and acquirable")
	}

	tg.Failure(t0, errRefused)
	if tg.Up() {
		t.Fatal("one failure with max_fails=1 must mark down")
	}
	for _, d := range []time.Duration{0, time.Second, ft - time.Nanosecond} {
		if tg.Usable(t0.Add(d)) || tg.Acquire(t0.Add(d), false) {
			t.Fatalf("usable %v after going down, before fail_timeout", d)
		}
	}

	// Timeout passed: exactly one of many concurrent callers gets the trial.
	t1 := t0.Add(ft)
	if !tg.Usable(t1) {
		t.Fatal("not usable once fail_timeout passed")
	}
	var granted atomic.Int32
	concurrently(64, func() {
		if tg.Acquire(t1, false) {
			granted.Add(1)
		}
	})
	if got := granted.Load(); got != 1 {
		t.Fatalf("%d concurrent Acquire calls got the trial, want exactly 1", got)
	}
	if tg.Usable(t1) {
		t.Fatal("usable while the trial is in flight")
	}

	// The trial fails: the timeout restarts from the failure.
	t2 := t1.Add(time.Second)
	tg.Failure(t2, errRefused)
	if tg.Up() {
		t.Fatal("failed trial must keep the target down")
	}
	if tg.Usable(t2.Add(ft-time.Nanosecond)) || tg.Acquire(t2.Add(ft-time.Nanosecond), false) {
		t.Fatal("usable before the restarted fail_timeout passed")
	}

	// Next trial succeeds.
	t3 := t2.Add(ft)
	if !tg.Acquire(t3, false) {
		t.Fatal("no trial after the restarted fail_timeout")
	}
	tg.Success()
	if !tg.Up() || !tg.Usable(t3) || !tg.Acquire(t3, false) {
		t.Fatal("successful trial must mark the target up")
	}

	logs.wantLines(t, "target down", "target up")
}

func TestMaxFailsThree(t *testing.T) {
	const f, s = false, true // outcomes: failure, success
	tests := []struct {
		name     string
		outcomes []bool
		wantUp   bool
	}{
		{"two failures", []bool{f, f}, true},
		{"two failures then success", []bool{f, f, s}, true},
		{"success resets the count", []bool{f, f, s, f, f}, true},
		{"three consecutive", []bool{f, f, f}, false},
		{"three consecutive after a success", []bool{f, s, f, f, f}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tg := NewTarget("10.0.0.1:80", Policy{MaxFails: 3, FailTimeout: ft}, nil)
			for _, ok := range tt.outcomes {
				if ok {
					tg.Success()
				} else {
					tg.Failure(t0, errRefused)
				}
			}
			if got := tg.Up(); got != tt.wantUp {
				t.Fatalf("Up() = %v, want %v", got, tt.wantUp)
			}
		})
	}
}

func TestForceAlwaysGrants(t *testing.T) {
	check := Check{Rise: 2, Fall: 1}
	tests := []struct {
		name  string
		setup func(*Target)
	}{
		{"up", func(*Target) {}},
		{"down before fail_timeout", func(tg *Target) { tg.Failure(t0, errRefused) }},
		{"trial in flight", func(tg *Target) {
			tg.Failure(t0.Add(-ft), errRefused)
			if !tg.Acquire(t0, false) {
				t.Fatal("setup: trial not granted")
			}
		}},
		{"down by active checks", func(tg *Target) { tg.probeResult(t0, check, errRefused) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tg := NewTarget("10.0.0.1:80", Policy{MaxFails: 1, FailTimeout: ft}, nil)
			tt.setup(tg)
			for range 3 {
				if !tg.Acquire(t0, true) {
					t.Fatal("Acquire(force=true) = false")
				}
			}
		})
	}
}

func TestAbandonedTrialExpires(t *testing.T) {
	tg := NewTarget("10.0.0.1:80", Policy{MaxFails: 1, FailTimeout: ft}, nil)
	tg.Failure(t0, errRefused)
	t1 := t0.Add(ft)
	if !tg.Acquire(t1, false) {
		t.Fatal("trial not granted")
	}
	// The caller never reports. The slot is held for FailTimeout, then freed.
	if tg.Acquire(t1.Add(ft-time.Nanosecond), false) {
		t.Fatal("second trial granted while the first is in flight")
	}
	if !tg.Usable(t1.Add(ft)) || !tg.Acquire(t1.Add(ft), false) {
		t.Fatal("abandoned trial still blocks the target after FailTimeout")
	}
}

func TestStateChangesLogOnce(t *testing.T) {
	log, logs := newRecorder()
	log = log.With("app", "web")
	tg := NewTarget("10.0.0.1:80", Policy{MaxFails: 1, FailTimeout: ft}, log)

	concurrently(100, func() { tg.Failure(t0, errRefused) })
	if tg.Up() {
		t.Fatal("still up after 100 failures")
	}
	concurrently(100, func() { tg.Success() })
	if !tg.Up() {
		t.Fatal("still down after 100 successes")
	}

	logs.wantLines(t, "target down", "target up")
	lines := logs.snapshot()
	want := []struct {
		level slog.Level
		cause string
	}{
		{slog.LevelWarn, errRefused.Error()},
		{slog.LevelInfo, "connection succeeded"},
	}
	for i, w := range want {
		l := lines[i]
		if l.level != w.level || l.attrs["cause"] != w.cause ||
			l.attrs["target"] != "10.0.0.1:80" || l.attrs["app"] != "web" {
			t.Errorf("line %d = %+v, want level %v cause %q target and app attrs", i, l, w.level, w.cause)
		}
	}
}

func TestMaxFailsCauseCountsFailures(t *testing.T) {
	log, logs := newRecorder()
	tg := NewTarget("10.0.0.1:80", Policy{MaxFails: 3}, log)
	for range 3 {
		tg.Failure(t0, errRefused)
	}
	logs.wantLines(t, "target down")
	want := "3 consecutive failed dials, last: " + errRefused.Error()
	if got := logs.snapshot()[0].attrs["cause"]; got != want {
		t.Fatalf("cause = %q, want %q", got, want)
	}
}

func TestProbeResult(t *testing.T) {
	check := Check{Rise: 2, Fall: 3}
	probe := func(tg *Target, ok bool, n int) {
		for range n {
			var err error
			if !ok {
				err = errRefused
			}
			tg.probeResult(t0, check, err)
		}
	}

	t.Run("fall failures mark down, rise successes mark up", func(t *testing.T) {
		log, logs := newRecorder()
		tg := NewTarget("10.0.0.1:80", Policy{MaxFails: 1}, log)
		probe(tg, false, 2)
		if !tg.Up() {
			t.Fatal("down after fall-1 failed probes")
		}
		probe(tg, false, 1)
		if tg.Up() {
			t.Fatal("up after fall failed probes")
		}
		probe(tg, true, 1)
		if tg.Up() {
			t.Fatal("up after rise-1 successful probes")
		}
		probe(tg, true, 1)
		if !tg.Up() {
			t.Fatal("down after rise successful probes")
		}
		logs.wantLines(t, "target down", "target up")
		lines := logs.snapshot()
		if got, want := lines[0].attrs["cause"], "3 consecutive failed health checks, last: "+errRefused.Error(); got != want {
			t.Errorf("down cause = %q, want %q", got, want)
		}
		if got, want := lines[1].attrs["cause"], "2 consecutive successful health checks"; got != want {
			t.Errorf("up cause = %q, want %q", got, want)
		}
	})

	t.Run("interrupted streaks do not count", func(t *testing.T) {
		tg := NewTarget("10.0.0.1:80", Policy{MaxFails: 1}, nil)
		probe(tg, false, 2)
		probe(tg, true, 1)
		probe(tg, false, 2)
		if !tg.Up() {
			t.Fatal("non-consecutive failures marked down")
		}
	})

	t.Run("down by checks gets no trials and ignores passive success", func(t *testing.T) {
		tg := NewTarget("10.0.0.1:80", Policy{MaxFails: 1, FailTimeout: ft}, nil)
		probe(tg, false, 3)
		later := t0.Add(100 * ft)
		if tg.Usable(later) || tg.Acquire(later, false) {
			t.Fatal("target downed by checks was offered a trial")
		}
		tg.Success() // e.g. a forced dial
		if tg.Up() {
			t.Fatal("passive success revived a target downed by checks")
		}
		probe(tg, true, 2)
		if !tg.Up() {
			t.Fatal("rise successful probes did not revive it")
		}
	})

	t.Run("down passively comes back by rise probes", func(t *testing.T) {
		log, logs := newRecorder()
		tg := NewTarget("10.0.0.1:80", Policy{MaxFails: 1, FailTimeout: ft}, log)
		probe(tg, true, 5) // a long streak before the failure must not count
		tg.Failure(t0, errRefused)
		probe(tg, true, 1)
		if tg.Up() {
			t.Fatal("one probe revived a passively downed target")
		}
		probe(tg, true, 1)
		if !tg.Up() {
			t.Fatal("rise probes did not revive a passively downed target")
		}
		logs.wantLines(t, "target down", "target up")
	})

	t.Run("checks confirming a passive down stop trials without logging", func(t *testing.T) {
		log, logs := newRecorder()
		tg := NewTarget("10.0.0.1:80", Policy{MaxFails: 1, FailTimeout: ft}, log)
		tg.Failure(t0, errRefused)
		probe(tg, false, 3)
		if tg.Usable(t0.Add(ft)) || tg.Acquire(t0.Add(ft), false) {
			t.Fatal("trial offered after the checks confirmed the target down")
		}
		logs.wantLines(t, "target down")
	})

	t.Run("released when checks stop", func(t *testing.T) {
		tg := NewTarget("10.0.0.1:80", Policy{MaxFails: 1, FailTimeout: ft}, nil)
		probe(tg, false, 3)
		tg.ReleaseActive(t0)
		if !tg.Acquire(t0, false) {
			t.Fatal("no trial after the checker released the target")
		}
		if tg.Acquire(t0, false) {
			t.Fatal("more than one trial after release")
		}
	})
}

func TestSetPolicyKeepsState(t *testing.T) {
	tg := NewTarget("10.0.0.1:80", Policy{MaxFails: 1, FailTimeout: ft}, nil)
	tg.Failure(t0, errRefused)
	tg.SetPolicy(Policy{MaxFails: 5, FailTimeout: time.Second})
	if tg.Up() {
		t.Fatal("SetPolicy changed the state")
	}
	if tg.Usable(t0.Add(time.Second)) {
		t.Fatal("SetPolicy shortened the current down period")
	}
	if !tg.Acquire(t0.Add(ft), false) {
		t.Fatal("no trial after the original fail_timeout")
	}
	tg.Success()
	for range 4 {
		tg.Failure(t0, errRefused)
	}
	if !tg.Up() {
		t.Fatal("new MaxFails=5 not applied")
	}
	tg.Failure(t0, errRefused)
	if tg.Up() {
		t.Fatal("5 failures did not mark down under the new policy")
	}
	if tg.Usable(t0.Add(time.Second-time.Nanosecond)) || !tg.Usable(t0.Add(time.Second)) {
		t.Fatal("new FailTimeout not applied")
	}
}

func TestPolicyDefaults(t *testing.T) {
	off := NewTarget("10.0.0.1:80", Policy{}, nil)
	off.Failure(t0, errRefused)
	if !off.Up() {
		t.Fatal("a zero MaxFails (passive health off) marked the target down")
	}
	if _, err := off.LastError(); err != nil {
		t.Fatalf("a zero MaxFails recorded a failure: %v", err)
	}
	tg := NewTarget("10.0.0.1:80", Policy{MaxFails: DefaultMaxFails}, nil)
	tg.Failure(t0, errRefused)
	if tg.Up() {
		t.Fatalf("MaxFails %d did not mark down", DefaultMaxFails)
	}
	if tg.Usable(t0.Add(DefaultFailTimeout-time.Nanosecond)) || !tg.Usable(t0.Add(DefaultFailTimeout)) {
		t.Fatalf("default FailTimeout is not %v", DefaultFailTimeout)
	}
}

func TestLastError(t *testing.T) {
	tg := NewTarget("10.0.0.1:80", Policy{MaxFails: 3}, nil)
	if at, err := tg.LastError(); err != nil || !at.IsZero() {
		t.Fatalf("LastError() = %v, %v before any failure", at, err)
	}
	tg.Failure(t0, errRefused)
	tg.Success()
	at, err := tg.LastError()
	if !errors.Is(err, errRefused) || !at.Equal(t0) {
		t.Fatalf("LastError() = %v, %v; want %v, %v", at, err, t0, errRefused)
	}
}
