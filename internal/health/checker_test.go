package health

import (
	"context"
	"errors"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitDone fails the test if wait does not return within timeout.
func waitDone(t *testing.T, timeout time.Duration, wait func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
		t.Fatalf("checker goroutines still running %v after cancel", timeout)
	}
}

// waitGoroutines fails the test unless the goroutine count drops back to
// base: the checker must leave nothing behind.
func waitGoroutines(t *testing.T, base int) {
	t.Helper()
	waitFor(t, 2*time.Second, "goroutines to return to baseline", func() bool {
		return runtime.NumGoroutine() <= base
	})
}

// backend is a loopback TCP server that accepts and closes connections.
type backend struct {
	ln   net.Listener
	done sync.WaitGroup
}

// startBackend listens on addr, retrying briefly so a restart on a port
// just released by the previous listener works.
func startBackend(t *testing.T, addr string) *backend {
	t.Helper()
	var ln net.Listener
	waitFor(t, 2*time.Second, "listen on "+addr, func() bool {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err == nil
	})
	b := &backend{ln: ln}
	b.done.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	})
	t.Cleanup(b.stop)
	return b
}

// stop closes the listener and waits for its accept loop; idempotent.
func (b *backend) stop() {
	b.ln.Close()
	b.done.Wait()
}

func TestActiveChecksFollowListener(t *testing.T) {
	base := runtime.NumGoroutine()
	const interval = 50 * time.Millisecond
	check := Check{Interval: interval, Timeout: time.Second, Rise: 2, Fall: 3}

	srv := startBackend(t, "127.0.0.1:0")
	addr := srv.ln.Addr().String()
	log, logs := newRecorder()
	tg := NewTarget(addr, Policy{MaxFails: 1, FailTimeout: time.Second}, log)

	var oks, fails atomic.Int64
	dial := func(ctx context.Context, addr string) error {
		err := dialTCP(ctx, addr)
		if err != nil {
			fails.Add(1)
		} else {
			oks.Add(1)
		}
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wait := RunChecks(ctx, check, []*Target{tg}, dial)

	waitFor(t, 2*time.Second, "two successful probes", func() bool { return oks.Load() >= 2 })
	if !tg.Up() {
		t.Fatal("target down while its listener is up")
	}

	srv.stop()
	stopped := time.Now()
	waitFor(t, 2*time.Second, "target down", func() bool { return !tg.Up() })
	elapsed := time.Since(stopped)
	if n := fails.Load(); n < int64(check.Fall) {
		t.Fatalf("marked down after %d failed probes, want >= %d", n, check.Fall)
	}
	// The first failed probe can come right after the stop; the other
	// fall-1 are each at least one jittered interval later.
	if minimum := time.Duration(check.Fall-1) * interval * (100 - jitterPercent) / 100; elapsed < minimum {
		t.Fatalf("marked down after %v, faster than %d probes allow (%v)", elapsed, check.Fall, minimum)
	}
	if at, err := tg.LastError(); err == nil || at.IsZero() {
		t.Fatalf("LastError() = %v, %v after failed probes", at, err)
	}
	if later := time.Now().Add(time.Hour); tg.Usable(later) || tg.Acquire(later, false) {
		t.Fatal("target downed by checks was offered a trial")
	}

	oksBefore := oks.Load()
	restarted := startBackend(t, addr)
	waitFor(t, 2*time.Second, "target up", tg.Up)
	if n := oks.Load() - oksBefore; n < int64(check.Rise) {
		t.Fatalf("marked up after %d successful probes, want >= %d", n, check.Rise)
	}
	// The state flips before the winner logs, so the line may lag a little.
	waitFor(t, 2*time.Second, "the up line", func() bool { return len(logs.snapshot()) >= 2 })
	logs.wantLines(t, "target down", "target up")

	cancel()
	waitDone(t, 2*time.Second, wait)
	restarted.stop()
	waitGoroutines(t, base)
}

func TestRunChecksStopsAllGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	targets := make([]*Target, 50)
	for i := range targets {
		targets[i] = NewTarget("127.0.0.1:1", Policy{MaxFails: 1}, nil)
	}
	var inFlight atomic.Int64
	// Probes hang until cancelled: cancel must interrupt them, and a probe
	// cut short by shutdown must not count as a failure.
	hang := func(ctx context.Context, _ string) error {
		inFlight.Add(1)
		<-ctx.Done()
		return ctx.Err()
	}
	ctx, cancel := context.WithCancel(context.Background())
	wait := RunChecks(ctx, Check{Interval: 10 * time.Millisecond, Timeout: time.Hour, Fall: 1}, targets, hang)
	waitFor(t, 2*time.Second, "all probes in flight", func() bool { return inFlight.Load() == int64(len(targets)) })

	cancel()
	waitDone(t, 2*time.Second, wait)
	waitGoroutines(t, base)
	for i, tg := range targets {
		if _, err := tg.LastError(); !tg.Up() || err != nil {
			t.Fatalf("target %d: up=%v, last error %v: shutdown counted as a failed probe", i, tg.Up(), err)
		}
	}
}

// TestStoppedChecksReleaseTarget: stopping RunChecks keeps what the
// checks found (a restarted checker takes over from there); the owner's
// ReleaseActive hands the target back to passive health.
func TestStoppedChecksReleaseTarget(t *testing.T) {
	tg := NewTarget("127.0.0.1:1", Policy{MaxFails: 1, FailTimeout: time.Hour}, nil)
	refuse := func(context.Context, string) error { return errRefused }
	ctx, cancel := context.WithCancel(context.Background())
	wait := RunChecks(ctx, Check{Interval: 5 * time.Millisecond, Fall: 2}, []*Target{tg}, refuse)
	waitFor(t, 2*time.Second, "target down", func() bool { return !tg.Up() })
	if tg.Acquire(time.Now(), false) {
		t.Fatal("trial granted while checks hold the target down")
	}

	cancel()
	waitDone(t, 2*time.Second, wait)
	if tg.Up() {
		t.Fatal("stopping checks marked the target up")
	}
	if tg.Acquire(time.Now(), false) {
		t.Fatal("a trial as soon as the checks stopped: a restart would lose what they found")
	}
	tg.ReleaseActive(time.Now())
	if !tg.Acquire(time.Now(), false) {
		t.Fatal("no trial once released: the target is wedged")
	}
	if _, err := tg.LastError(); !errors.Is(err, errRefused) {
		t.Fatalf("LastError() = %v, want it to wrap %v", err, errRefused)
	}
}

func TestDefaultDialAgainstClosedPort(t *testing.T) {
	srv := startBackend(t, "127.0.0.1:0")
	addr := srv.ln.Addr().String()
	srv.stop()
	tg := NewTarget(addr, Policy{MaxFails: 1}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	wait := RunChecks(ctx, Check{Interval: 5 * time.Millisecond, Timeout: time.Second, Fall: 2}, []*Target{tg}, nil)
	defer waitDone(t, 2*time.Second, wait)
	defer cancel()
	waitFor(t, 2*time.Second, "target down", func() bool { return !tg.Up() })
}

func TestJitterBounds(t *testing.T) {
	const d = time.Second
	lo, hi := d*(100-jitterPercent)/100, d*(100+jitterPercent)/100
	seen := map[time.Duration]bool{}
	for range 1000 {
		j := jitter(d)
		if j < lo || j > hi {
			t.Fatalf("jitter(%v) = %v, outside [%v, %v]", d, j, lo, hi)
		}
		seen[j] = true
	}
	if len(seen) < 100 {
		t.Fatalf("jitter produced only %d distinct values in 1000 draws", len(seen))
	}
	if got := jitter(time.Nanosecond); got != time.Nanosecond {
		t.Fatalf("jitter(1ns) = %v, want 1ns unchanged", got)
	}
}
