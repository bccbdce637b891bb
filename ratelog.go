package main

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// logWindow is how often a rate-limited kind of log line may be
// written: once per window in full, plus once with the count of the
// lines left out.
const logWindow = time.Second

// logLimiter rate-limits one kind of log line (one message, of one app
// or one listen address), so that a flood of clients does not become a
// flood of log lines. The first line of a window (a second) is written
// with every detail; the others in that window are only counted, and
// when the window ends one line with the same level and message and
// suppressed=N says how many were left out. The zero value is ready to
// use.
type logLimiter struct {
	mu         sync.Mutex
	windowEnd  time.Time // until then, lines are counted, not written
	suppressed int64     // lines counted in the current window
	flushing   bool      // a flush is scheduled for windowEnd
}

// log writes msg with args at level through l, or counts it if a line
// of this kind was written less than logWindow ago.
func (lim *logLimiter) log(l *slog.Logger, level slog.Level, msg string, args ...any) {
	now := time.Now()
	lim.mu.Lock()
	if now.Before(lim.windowEnd) {
		lim.suppressed++
		if !lim.flushing {
			lim.flushing = true
			time.AfterFunc(lim.windowEnd.Sub(now), func() { lim.flush(l, level, msg) })
		}
		lim.mu.Unlock()
		return
	}
	lim.windowEnd = now.Add(logWindow)
	lim.mu.Unlock()
	l.Log(context.Background(), level, msg, args...)
}

// flush writes the count of the lines left out in the window that ended.
func (lim *logLimiter) flush(l *slog.Logger, level slog.Level, msg string) {
	lim.mu.Lock()
	n := lim.suppressed
	lim.suppressed, lim.flushing = 0, false
	lim.mu.Unlock()
	l.Log(context.Background(), level, msg, "suppressed", n)
}

// appLogs are the rate limiters of an app's per-connection error and
// warning lines, one per kind. They outlive reloads, like the app's
// counters.
type appLogs struct {
	allFailed   logLimiter // "all targets failed"
	badHeader   logLimiter // "bad PROXY protocol header"
	targetWrite logLimiter // "write PROXY protocol header"
	limit       logLimiter // "max_connections reached, closing new clients"
	untrusted   logLimiter // "untrusted PROXY protocol sender, closing it"
	aborted     logLimiter // "dial aborted by shutdown, closing the client"
}
