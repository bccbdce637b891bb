package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/michaeldbianchi/tcpproxy/internal/health"
	"github.com/michaeldbianchi/tcpproxy/internal/stats"
)

// proxyServer is the running proxy: a listenRoute (a tcpproxy.Proxy) per
// listen address, the current generation of app Targets, and their
// active health checks.
//
// Why a Proxy per address: a tcpproxy.Proxy takes no routes after Start
// and its Close closes every listener it opened. With one Proxy per
// address, a reload opens a new port by starting a new Proxy, closes a
// removed port by closing only that Proxy (connections already accepted
// run on: the library's Close only closes listeners), and re-routes a
// port that stays by swapping its routing table, so that port never
// stops accepting. A port that needs routes of another kind (it starts
// or stops routing by name) gets a new Proxy on the same socket.
type proxyServer struct {
	log    *slog.Logger
	ctx    context.Context // cancelled when the server stops for good
	cancel context.CancelFunc
	conns  *connSet
	listen func(network, addr string) (net.Listener, error)

	mu       sync.Mutex // serializes apply and shutdown
	cfg      *config
	routes   map[string]*listenRoute    // by listen address
	unrouted map[string]*unroutedStats  // by listen address, since start
	apps     map[string]*failoverTarget // current generation, by app name
	checks   map[string]*checker        // active health checks, by app name
	current  atomic.Pointer[[]*failoverTarget]
	ready    atomic.Bool // every listener open, not draining
	reloads  reloadStats
}

// checker is a running set of active health checks for one app.
type checker struct {
	cfg     healthCheckConfig
	targets []*health.Target
	cancel  context.CancelFunc
	wait    func()
}

// reloadStats counts config loads after the first.
type reloadStats struct {
	success, failure atomic.Int64
	lastSuccess      atomic.Int64 // unix nanos
}

// newProxyServer returns a server with nothing listening; apply starts
// it. listen opens listeners (net.Listen, or an inherited socket after
// an upgrade).
func newProxyServer(log *slog.Logger, listen func(network, addr string) (net.Listener, error)) *proxyServer {
	ctx, cancel := context.WithCancel(context.Background())
	s := &proxyServer{
		log:      log,
		ctx:      ctx,
		cancel:   cancel,
		conns:    newConnSet(),
		listen:   listen,
		routes:   map[string]*listenRoute{},
		unrouted: map[string]*unroutedStats{},
		apps:     map[string]*failoverTarget{},
		checks:   map[string]*checker{},
	}
	empty := []*failoverTarget{}
	s.current.Store(&empty)
	return s
}

// startProxyServer builds a server for cfg and opens its listeners.
func startProxyServer(cfg *config, log *slog.Logger, listen func(network, addr string) (net.Listener, error)) (*proxyServer, error) {
	s := newProxyServer(log, listen)
	if _, err := s.apply(cfg); err != nil {
		s.cancel()
		return nil, err
	}
	s.ready.Store(true)
	return s, nil
}

// reloadSummary says what a reload changed.
type reloadSummary struct {
	added, removed, changed []string // app names
	opened, closed          []string // listen addresses
}

func (r reloadSummary) logAttrs() []any {
	list := func(s []string) string { return "[" + strings.Join(s, " ") + "]" }
	return []any{"apps_added", list(r.added), "apps_removed", list(r.removed), "apps_changed", list(r.changed),
		"ports_opened", list(r.opened), "ports_closed", list(r.closed)}
}

func (r *reloadSummary) sort() {
	for _, l := range [][]string{r.added, r.removed, r.changed, r.opened, r.closed} {
		sort.Strings(l)
	}
}

// apply makes cfg the running config: new ports open, removed ports
// close (their connections run on), ports that stay are re-routed, and
// targets that stay keep their health state. If a new port cannot be
// opened, nothing changes and the error says why.
func (s *proxyServer) apply(cfg *config) (reloadSummary, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	apps, gen, sum, err := s.buildGeneration(cfg)
	if err != nil {
		return reloadSummary{}, err
	}
	tables := buildTables(gen)
	opened, err := s.openRoutes(tables)
	if err != nil {
		return reloadSummary{}, err
	}
	s.commitRoutes(tables, opened, &sum)
	for _, ft := range gen {
		ft.commit()
	}
	s.apps = apps
	s.current.Store(&gen)
	s.cfg = cfg
	s.restartChecks()
	sum.sort()
	return sum, nil
}

// buildGeneration builds the app Targets of cfg, carrying counters and
// target health over from the running generation.
func (s *proxyServer) buildGeneration(cfg *config) (map[string]*failoverTarget, []*failoverTarget, reloadSummary, error) {
	var sum reloadSummary
	apps := make(map[string]*failoverTarget, len(cfg.Apps))
	gen := make([]*failoverTarget, 0, len(cfg.Apps))
	for _, app := range cfg.Apps {
		prev := s.apps[app.Name]
		ft, err := newFailoverTarget(s.ctx, app, s.log, s.conns, prev)
		if err != nil {
			return nil, nil, sum, err
		}
		apps[app.Name] = ft
		gen = append(gen, ft)
		switch {
		case prev == nil:
			sum.added = append(sum.added, app.Name)
		case !reflect.DeepEqual(prev.app, app):
			sum.changed = append(sum.changed, app.Name)
		}
	}
	for name := range s.apps {
		if apps[name] == nil {
			sum.removed = append(sum.removed, name)
		}
	}
	return apps, gen, sum, nil
}

// openRoutes starts a route for every address of tables that has none,
// and for every address whose table needs routes of another shape (on
// the running route's socket, handed over). If one fails, the routes it
// started are closed and nothing has changed.
func (s *proxyServer) openRoutes(tables map[string]*routeTable) (map[string]*listenRoute, error) {
	opened := map[string]*listenRoute{}
	for addr, t := range tables {
		old := s.routes[addr]
		if old != nil && old.shape == t.shape() {
			continue
		}
		r, err := s.startRoute(addr, t, old)
		if err != nil && old == nil && errors.Is(err, syscall.EADDRINUSE) && s.releaseConflicting(addr, tables) {
			// The socket is held by a listener this config removes
			// (":80" becoming "127.0.0.1:80"): free it, then take it.
			r, err = s.startRoute(addr, t, nil)
		}
		if err != nil {
			for _, r := range opened {
				r.close()
			}
			return nil, err
		}
		opened[addr] = r
	}
	return opened, nil
}

// startRoute starts a route for addr: on a new socket, or on old's.
func (s *proxyServer) startRoute(addr string, t *routeTable, old *listenRoute) (*listenRoute, error) {
	log := s.log.With("listen", addr)
	listen := func() (net.Listener, error) {
		if old != nil {
			ln, err := dupListener(old.ln)
			if err != nil {
				return nil, fmt.Errorf("app %q: %s: %w", t.owner, addr, err)
			}
			return newRetryListener(ln, log), nil
		}
		ln, err := s.listen(listenNetwork(addr), addr)
		if err != nil {
			return nil, fmt.Errorf("app %q: listen on %s: %w", t.owner, addr, unwrapOpError(err))
		}
		return newRetryListener(ln, log), nil
	}
	st := s.unrouted[addr]
	if st == nil {
		st = &unroutedStats{}
		s.unrouted[addr] = st
	}
	return startRoute(addr, t, st, s.log, listen)
}

// commitRoutes makes tables current: routes that stay get their new
// table, new ones are published (closing the route they replace), and
// the routes of removed addresses close.
func (s *proxyServer) commitRoutes(tables map[string]*routeTable, opened map[string]*listenRoute, sum *reloadSummary) {
	for addr, r := range s.routes {
		if tables[addr] == nil {
			r.close()
			delete(s.routes, addr)
			sum.closed = append(sum.closed, addr)
		} else if opened[addr] == nil {
			r.table.Store(tables[addr])
		}
	}
	for addr, r := range opened {
		if old := s.routes[addr]; old != nil {
			old.close() // its socket stays open in r
		} else {
			sum.opened = append(sum.opened, addr)
		}
		s.routes[addr] = r
	}
}

// releaseConflicting closes a listener that the new config drops and
// that holds the socket addr needs. It reports whether it closed one.
func (s *proxyServer) releaseConflicting(addr string, keep map[string]*routeTable) bool {
	host, port, _ := net.SplitHostPort(addr)
	released := false
	for old, r := range s.routes {
		oh, op, _ := net.SplitHostPort(old)
		if keep[old] == nil && op == port && listenConflict(host, oh) {
			r.close()
			delete(s.routes, old)
			released = true
		}
	}
	return released
}

// restartChecks starts, keeps or stops each app's active health checks
// to match the current config. Checks of an app whose health_check did
// not change keep running. A target whose checks stopped for good goes
// back to passive health; one still checked by a restarted checker keeps
// what the checks found (a target they marked down gets no trial).
func (s *proxyServer) restartChecks() {
	var stopped []*health.Target
	for name, c := range s.checks {
		ft := s.apps[name]
		if ft != nil && ft.app.HealthCheck != nil && *ft.app.HealthCheck == c.cfg && slices.Equal(c.targets, ft.healthTargets()) {
			continue
		}
		c.cancel()
		c.wait()
		stopped = append(stopped, c.targets...)
		delete(s.checks, name)
	}
	for name, ft := range s.apps {
		if hc := ft.app.HealthCheck; hc != nil && s.checks[name] == nil {
			s.checks[name] = s.startChecks(ft, hc)
		}
	}
	checked := map[*health.Target]bool{}
	for _, c := range s.checks {
		for _, t := range c.targets {
			checked[t] = true
		}
	}
	now := time.Now()
	for _, t := range stopped {
		if !checked[t] {
			t.ReleaseActive(now)
		}
	}
}

// startChecks starts the active health checks of ft's targets.
func (s *proxyServer) startChecks(ft *failoverTarget, hc *healthCheckConfig) *checker {
	ctx, cancel := context.WithCancel(s.ctx)
	check := health.Check{Interval: hc.Interval, Timeout: hc.Timeout, Rise: hc.Rise, Fall: hc.Fall}
	targets := ft.healthTargets()
	return &checker{
		cfg:     *hc,
		targets: targets,
		cancel:  cancel,
		wait:    health.RunChecks(ctx, check, targets, nil),
	}
}

// snapshot returns the state of every app for metrics and status.
func (s *proxyServer) snapshot() stats.Snapshot {
	gen := *s.current.Load()
	snap := stats.Snapshot{Apps: make([]stats.App, len(gen))}
	for i, ft := range gen {
		snap.Apps[i] = ft.snapshot()
	}
	snap.Listeners = s.listenerStats()
	snap.Reloads = stats.Reloads{Success: s.reloads.success.Load(), Failure: s.reloads.failure.Load()}
	if t := s.reloads.lastSuccess.Load(); t != 0 {
		snap.Reloads.LastSuccess = time.Unix(0, t)
	}
	return snap
}

// listenerStats returns every listen address's unrouted counts, by
// address, including addresses a reload removed (counts are since
// start).
func (s *proxyServer) listenerStats() []stats.Listener {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]stats.Listener, 0, len(s.unrouted))
	for addr, u := range s.unrouted {
		out = append(out, stats.Listener{Listen: addr, UnroutedNoMatch: u.noMatch.Load(), UnroutedPrereadTimeout: u.prereadTimeout.Load()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Listen < out[j].Listen })
	return out
}

// listeners returns the open listening sockets by address, for a
// binary upgrade to hand over.
func (s *proxyServer) listeners() map[string]*net.TCPListener {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]*net.TCPListener, len(s.routes))
	for addr, r := range s.routes {
		if rl, ok := r.ln.(*retryListener); ok {
			out[addr] = rl.TCPListener
		}
	}
	return out
}

// active returns the number of open client connections, all apps.
func (s *proxyServer) active() int { return s.conns.len() }

// stopAccepting closes every listener. Open connections run on.
func (s *proxyServer) stopAccepting() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ready.Store(false)
	for addr, r := range s.routes {
		r.close()
		delete(s.routes, addr)
	}
}

// shutdown stops accepting at once, lets open connections finish until
// ctx is done, then closes what is left. It returns how many
// connections finished on their own and how many were cut.
func (s *proxyServer) shutdown(ctx context.Context) (drained, cut int) {
	s.stopAccepting()
	open := s.active()
	select {
	case <-s.conns.drained():
	case <-ctx.Done():
	}
	s.cancel() // abort dials still in flight and stop health checks
	cut = s.conns.closeAll()
	s.mu.Lock()
	for name, c := range s.checks {
		c.wait()
		delete(s.checks, name)
	}
	s.mu.Unlock()
	drained = open - cut
	if drained < 0 {
		drained = 0 // connections accepted while the listeners closed
	}
	return drained, cut
}

// logConfig logs the loaded config, one line per app, the way the seed
// program did, and the addresses that will be listened on.
func logConfig(log *slog.Logger, cfg *config) {
	log.Info("config loaded", "path", cfg.Path, "apps", len(cfg.Apps), "shutdown_timeout", cfg.ShutdownTimeout.String())
	for _, a := range cfg.Apps {
		targets := make([]string, len(a.Targets))
		for i, t := range a.Targets {
			targets[i] = t.Address
		}
		attrs := []any{"name", a.Name, "ports", a.Ports, "targets", targets, "listen", a.listenAddrs(),
			"balance", a.Balance, "dial_timeout", a.DialTimeout.String()}
		if a.named() {
			attrs = append(attrs, "sni", a.SNI, "http_host", a.HTTPHost)
		}
		log.Info("app", attrs...)
	}
	cfg.logWarnings(log)
}

// connSet tracks the open connections so that shutdown can wait for
// them and, when the grace period ends, close what is left.
type connSet struct {
	mu      sync.Mutex
	entries map[*connEntry]struct{}
	empty   chan struct{} // closed when the set becomes empty while draining
	aborted atomic.Int64  // clients closed because shutdown aborted their dial (abort.go)
	added   int64         // connections ever added, under mu (abort.go)
}

// connEntry is one client connection and, once dialed, its target.
type connEntry struct {
	client, target net.Conn
}

func newConnSet() *connSet {
	return &connSet{entries: make(map[*connEntry]struct{})}
}

func (s *connSet) add(client net.Conn) *connEntry {
	e := &connEntry{client: client}
	s.mu.Lock()
	s.entries[e] = struct{}{}
	s.added++
	s.mu.Unlock()
	return e
}

func (s *connSet) setTarget(e *connEntry, target net.Conn) {
	s.mu.Lock()
	e.target = target
	s.mu.Unlock()
}

func (s *connSet) remove(e *connEntry) {
	s.mu.Lock()
	delete(s.entries, e)
	if len(s.entries) == 0 && s.empty != nil {
		close(s.empty)
		s.empty = nil
	}
	s.mu.Unlock()
}

// len returns the number of open connections.
func (s *connSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries)
}

// drained returns a channel closed once no connection is open.
func (s *connSet) drained() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.entries) == 0 {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	if s.empty == nil {
		s.empty = make(chan struct{})
	}
	return s.empty
}

// closeAll closes every open connection, both sides, and returns how
// many there were.
func (s *connSet) closeAll() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for e := range s.entries {
		e.client.Close()
		if e.target != nil {
			e.target.Close()
		}
	}
	return len(s.entries)
}
