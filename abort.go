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
