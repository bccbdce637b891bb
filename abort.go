package main

import "log/slog"

// On SIGTERM/SIGINT a client whose dial is still in flight is not made
// to wait for it: a black-holed target would hold the exit for the whole
// dial_timeout, up to shutdown_timeout. The dials are aborted once the
// listeners are closed, their clients closed and counted; connections
// already relayed drain as before. An upgrade does not abort them: the
// old process finishes serving the clients it accepted.

// resultDialAborted is the access log's result for a client closed
// because shutdown aborted its dial.
const resultDialAborted = "dial aborted: shutting down"

// abortDials aborts every dial in flight, and any dial started from now
// on, and stops the health checks, by cancelling the server's context.
// Relayed connections run on. Call it once the listeners are closed.
func (s *proxyServer) abortDials() {
	s.cancel()
}

// dialAborted counts and logs (rate-limited) a client closed because
// shutdown aborted its dial, and returns the access log's result. The
// target is not blamed: the dial did not fail, it was given up.
func (s *session) dialAborted() string {
	ft := s.ft
	n := ft.conns.aborted.Add(1)
	ft.stats.logs.aborted.log(ft.log, slog.LevelWarn, "dial aborted by shutdown, closing the client",
		"client", s.info.client.String(), "aborted_total", n)
	return resultDialAborted
}

// drainTally counts what became of the connections open when the
// listeners closed, and of those admitted after (accepted just before):
// each was cut at the end of the drain, closed because its dial was
// aborted, or else drained.
type drainTally struct {
	set          *connSet
	open         int   // open when the tally started
	added        int64 // set.added then
	abortedStart int64 // set.aborted then
}

// startTally starts counting the drain, once the listeners are closed.
func (s *connSet) startTally() drainTally {
	s.mu.Lock()
	defer s.mu.Unlock()
	return drainTally{set: s, open: len(s.entries), added: s.added, abortedStart: s.aborted.Load()}
}

// drained returns how many connections finished on their own and how
// many were closed for an aborted dial, given the number cut.
func (t drainTally) drained(cut int) (drained int, aborted int64) {
	t.set.mu.Lock()
	late := t.set.added - t.added
	t.set.mu.Unlock()
	aborted = t.set.aborted.Load() - t.abortedStart
	return max(t.open+int(late)-cut-int(aborted), 0), aborted
}
