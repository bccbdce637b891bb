// Package admin serves the operators' HTTP endpoints: Prometheus metrics,
// the status API and page, and liveness and readiness probes.
//
// Every view reads the same stats.Snapshot, taken per request, so the page,
// the API and the metrics agree with each other.
package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/michaeldbianchi/tcpproxy/internal/metrics"
	"github.com/michaeldbianchi/tcpproxy/internal/stats"
)

// Timeouts of the admin HTTP server. The endpoints answer from memory in
// microseconds, so these only bound slow or stuck clients; the write
// timeout leaves room for a scrape of a large proxy over a slow link.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 64 << 10
)

// Options configures a Server.
type Options struct {
	// Snapshot returns the proxy's current state. It is called once per
	// request, concurrently, and must not be nil.
	Snapshot func() stats.Snapshot
	// Ready reports whether every listener is open and the proxy is not
	// draining; /readyz answers 503 while it is false. Nil means always
	// ready, for a caller that has no such notion.
	Ready func() bool
	// Log receives request-serving errors. Nil discards them.
	Log *slog.Logger
	// Build labels tcpproxy_build_info on /metrics. The zero value
	// exports the series with empty labels.
	Build metrics.Build
	// Token returns the bearer token that requests other than GET and
	// HEAD need, read per request so that a reload can change it. Nil or
	// "" (the default) refuses them all with 403.
	Token func() string
	// SetDrain drains (true) or readies (false) the target address of
	// app, returning an error wrapping ErrNotFound if there is no such
	// app or target. Nil (the default) leaves the drain endpoints out.
	SetDrain func(app, address string, drain bool) error
}

// Server is the admin HTTP server.
type Server struct {
	handler  http.Handler
	srv      *http.Server
	snapshot func() stats.Snapshot // Options.Snapshot
	rates    *rateSampler
	ctx      context.Context // done at Shutdown: stops the sampler
	stop     context.CancelFunc
}

// New builds a Server and its routes:
//
//	GET /metrics   metrics.NewRegistry(o.Snapshot, o.Build), in the Prometheus
//	               text format, or OpenMetrics when the client's Accept asks for it
//	GET /status    the Snapshot as JSON, with rates over the last 10 s
//	GET /          the same as an HTML page that refreshes itself
//	GET /healthz   200 "ok" while the server serves
//	GET /readyz    200 "ready" or 503 "not ready", following o.Ready
//	POST /apps/{app}/targets/{address}/drain   o.SetDrain(app, address, true)
//	POST /apps/{app}/targets/{address}/ready   o.SetDrain(app, address, false)
//
// Requests other than GET and HEAD need "Authorization: Bearer
// <o.Token()>"; with no token they answer 403.
//
// It panics if o.Snapshot is nil: that is a wiring bug, better caught at
// startup than as a 500 on the first request.
func New(o Options) *Server {
	if o.Snapshot == nil {
		panic("admin: New with a nil Options.Snapshot")
	}
	if o.Ready == nil {
		o.Ready = func() bool { return true }
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Token == nil {
		o.Token = func() string { return "" }
	}
	log := o.Log.With("component", "admin")
	s := &Server{snapshot: o.Snapshot, rates: &rateSampler{}}
	s.ctx, s.stop = context.WithCancel(context.Background())
	s.handler = requireToken(o.Token, s.routes(o, log))
	s.srv = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return s
}

// routes builds the mux New documents.
func (s *Server) routes(o Options, log *slog.Logger) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(metrics.NewRegistry(o.Snapshot, o.Build), promhttp.HandlerOpts{
		ErrorLog: scrapeErrorLog{log: log},
		// Prometheus asks for OpenMetrics first; a plain client (curl)
		// still gets the classic text format.
		EnableOpenMetrics: true,
		// One bad series (or a process collector that cannot read /proc
		// in some sandbox) should not blank the whole scrape and with it
		// every dashboard; the error is logged instead.
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.Handle("GET /status", statusHandler{snapshot: s.withRates, log: log})
	mux.Handle("GET /{$}", newPageHandler(s.withRates, log))
	mux.Handle("GET /healthz", probeHandler{check: func() bool { return true }, pass: "ok", fail: "not ok"})
	mux.Handle("GET /readyz", probeHandler{check: o.Ready, pass: "ready", fail: "not ready"})
	if o.SetDrain != nil {
		mux.Handle("POST /apps/{app}/targets/{address}/drain", drainHandler{set: o.SetDrain, drain: true, log: log})
		mux.Handle("POST /apps/{app}/targets/{address}/ready", drainHandler{set: o.SetDrain, drain: false, log: log})
	}
	return mux
}

// withRates is the Snapshot with each app's rates over the last
// stats.RateWindow filled in.
func (s *Server) withRates() stats.Snapshot {
	snap := s.snapshot()
	s.rates.fill(&snap, time.Now())
	return snap
}

// Handler returns the Server's routes, for mounting elsewhere or testing.
func (s *Server) Handler() http.Handler { return s.handler }

// Serve serves on ln until Shutdown, then returns nil; any other failure
// is returned. Serve takes ownership of ln and closes it on return.
func (s *Server) Serve(ln net.Listener) error {
	go s.rates.run(s.ctx, s.snapshot)
	err := s.srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("admin: serve on %s: %w", ln.Addr(), err)
}

// Shutdown stops accepting connections and waits, until ctx is done, for
// requests in flight to finish. Serve returns once Shutdown is called;
// a Server that was shut down cannot serve again.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stop()
	if err := s.srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("admin: shutdown: %w", err)
	}
	return nil
}

// scrapeErrorLog adapts the slog.Logger to promhttp's logger interface.
type scrapeErrorLog struct {
	log *slog.Logger
}

// Println implements promhttp.Logger.
func (l scrapeErrorLog) Println(v ...any) {
	l.log.Error("metrics scrape", "error", fmt.Sprint(v...))
}
