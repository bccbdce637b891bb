package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
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
	env    serverEnv

	mu       sync.Mutex // serializes apply and shutdown
	cfg      *config
	routes   map[string]*listenRoute    // by listen address
	retiring map[string]*listenRoute    // removed routes that may still be open, by address
	unrouted map[string]*unroutedStats  // by listen address, since start
	apps     map[string]*failoverTarget // current generation, by app name
	past     map[string]*failoverTarget // apps a reload removed, their last generation, by name
	checks   map[string]*checker        // active health checks, by app name
	current  atomic.Pointer[[]*failoverTarget]
	ready    atomic.Bool // every listener open, not draining
}

// checker is a running set of active health checks for one app.
type checker struct {
	cfg     healthCheckConfig
	targets []*health.Target
	cancel  context.CancelFunc
	wait    func()
}

// serverEnv is what a proxyServer takes from the process around it,
// fixed at construction (as tableflip's env): production passes the real
// ones (prodEnv), a test may pass its own.
type serverEnv struct {
	// listen opens a listener: net.Listen, or an inherited socket after
	// an upgrade (listenFunc).
	listen func(network, addr string) (net.Listener, error)
	// dialer returns the dialer of app's targets.
	dialer func(app *appConfig) contextDialer
}

// contextDialer dials a target; *net.Dialer is one.
type contextDialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// prodEnv is the environment of the running proxy: listen as given, and
// each app's targetDialer.
func prodEnv(listen func(network, addr string) (net.Listener, error)) serverEnv {
	return serverEnv{listen: listen, dialer: appDialer}
}

// appDialer dials app's targets with its dial_timeout and keepalive
// (targetDialer).
func appDialer(app *appConfig) contextDialer {
	d := targetDialer(app)
	return &d
}

// newProxyServer returns a server with nothing listening; apply starts
// it.
func newProxyServer(log *slog.Logger, env serverEnv) *proxyServer {
	ctx, cancel := context.WithCancel(context.Background())
	s := &proxyServer{
		log:      log,
		ctx:      ctx,
		cancel:   cancel,
		conns:    newConnSet(),
		env:      env,
		routes:   map[string]*listenRoute{},
		retiring: map[string]*listenRoute{},
		unrouted: map[string]*unroutedStats{},
		apps:     map[string]*failoverTarget{},
		past:     map[string]*failoverTarget{},
		checks:   map[string]*checker{},
	}
	empty := []*failoverTarget{}
	s.current.Store(&empty)
	return s
}

// startProxyServer builds a server for cfg and opens its listeners.
func startProxyServer(cfg *config, log *slog.Logger, env serverEnv) (*proxyServer, error) {
	s := newProxyServer(log, env)
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
	markKeepAliveAtAccept(gen, tables)
	s.reviveRetiring(tables)
	want := s.withAliases(tables)
	opened, err := s.openRoutes(want)
	if err != nil {
		return reloadSummary{}, err
	}
	s.commitRoutes(want, tables, opened, &sum)
	for _, ft := range gen {
		ft.commit()
		delete(s.past, ft.app.Name)
	}
	for _, name := range sum.removed {
		s.past[name] = s.apps[name]
	}
	s.apps = apps
	s.current.Store(&gen)
	s.cfg = cfg
	s.restartChecks()
	sum.sort()
	return sum, nil
}

// removesApps reports whether applying cfg would remove a running app.
func (s *proxyServer) removesApps(cfg *config) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	keep := make(map[string]bool, len(cfg.Apps))
	for _, a := range cfg.Apps {
		keep[a.Name] = true
	}
	for name := range s.apps {
		if !keep[name] {
			return true
		}
	}
	return false
}

// buildGeneration builds the app Targets of cfg, carrying counters and
// target health over from the running generation.
func (s *proxyServer) buildGeneration(cfg *config) (map[string]*failoverTarget, []*failoverTarget, reloadSummary, error) {
	var sum reloadSummary
	apps := make(map[string]*failoverTarget, len(cfg.Apps))
	gen := make([]*failoverTarget, 0, len(cfg.Apps))
	for _, app := range cfg.Apps {
		prev := s.apps[app.Name]
		if prev == nil {
			prev = s.past[app.Name] // removed earlier: its counts go on
		}
		ft, err := newFailoverTarget(s.ctx, app, s.log, s.conns, s.env.dialer(app), prev)
		if err != nil {
			return nil, nil, sum, err
		}
		apps[app.Name] = ft
		gen = append(gen, ft)
		switch {
		case s.apps[app.Name] == nil:
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
// and for every one whose table needs routes of another shape (on the
// running route's socket, handed over). An address that resolves to the socket of
// a route the config drops ("localhost:80" becoming "127.0.0.1:80") takes
// that socket over too. One that clashes with such a socket (":80"
// becoming "127.0.0.1:80", or back) binds beside it with SO_REUSEPORT, so
// nothing is released before the reload is known to succeed. If one
// fails, the routes it started are closed and nothing has changed.
func (s *proxyServer) openRoutes(want map[string]*routeTable) (map[string]*listenRoute, error) {
	opened := map[string]*listenRoute{}
	for addr, t := range want {
		old := s.routes[addr]
		if old != nil && old.shape == t.shape() {
			continue
		}
		if old == nil {
			old = s.sameSocket(addr, want)
		}
		r, err := s.startRoute(addr, t, old, false)
		if err == nil {
			r.from = old
		}
		if err != nil && old == nil && errors.Is(err, syscall.EADDRINUSE) && s.shareConflicting(addr) {
			r, err = s.startRoute(addr, t, nil, true)
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

// sameSocket returns a route, running or retiring (then revived), not
// wanted any more, whose socket is bound to the address addr resolves
// to, or nil. Its socket is taken over, never bound beside: two sockets
// on one address with SO_REUSEPORT share its new connections, and the
// one that closes resets those it holds.
func (s *proxyServer) sameSocket(addr string, want map[string]*routeTable) *listenRoute {
	ta, err := net.ResolveTCPAddr(listenNetwork(addr), addr)
	if err != nil || ta.IP == nil || ta.IP.IsUnspecified() {
		return nil
	}
	bound := func(r *listenRoute) bool {
		la, ok := r.ln.Addr().(*net.TCPAddr)
		return ok && la.Port == ta.Port && la.IP.Equal(ta.IP)
	}
	for old, r := range s.routes {
		if want[old] == nil && bound(r) {
			return r
		}
	}
	for old, r := range s.retiring {
		if bound(r) && r.revive() {
			delete(s.retiring, old)
			r.retire() // its socket lives on in the route that takes it over
			return r
		}
	}
	return nil
}

// reviveRetiring takes back the retiring routes of wanted addresses that
// are still open, as if they had never been removed; it forgets those
// that closed.
func (s *proxyServer) reviveRetiring(tables map[string]*routeTable) {
	for addr, r := range s.retiring {
		if tables[addr] != nil && s.routes[addr] == nil && r.revive() {
			s.routes[addr] = r
			delete(s.retiring, addr)
		} else if r.isClosed() {
			delete(s.retiring, addr)
		}
	}
}

// withAliases returns tables plus, for each running route that tables
// drop but whose socket a new wildcard address on the same port covers
// ("127.0.0.1:80" when ":80" is wanted), that wildcard's table: the
// covered socket stays open and routes like the wildcard. The kernel
// prefers it to the wildcard for its own address, so it would never
// drain, and closing it would reset the connections in its queue.
func (s *proxyServer) withAliases(tables map[string]*routeTable) map[string]*routeTable {
	want := maps.Clone(tables)
	for addr, r := range s.routes {
		if tables[addr] != nil {
			continue
		}
		bound := addr // "localhost:80" is covered as the 127.0.0.1 it is bound to
		if la := r.ln.Addr(); la != nil {
			bound = la.String()
		}
		for w, t := range tables {
			if coversAddr(w, bound) {
				want[addr] = t
				break
			}
		}
	}
	return want
}

// coversAddr reports whether a socket on wildcard address w would get
// every connection that a socket on address a gets: the same port, and
// w's host unset (every address) or the unspecified address of a's
// family.
func coversAddr(w, a string) bool {
	wh, wp, _ := net.SplitHostPort(w)
	ah, ap, _ := net.SplitHostPort(a)
	ip, err := netip.ParseAddr(ah)
	if wp != ap || err != nil || ip.IsUnspecified() {
		return false
	}
	if wh == "" {
		return true
	}
	wip, err := netip.ParseAddr(wh)
	return err == nil && wip.IsUnspecified() && wip.Is4() == ip.Unmap().Is4()
}

// shareConflicting sets SO_REUSEPORT on the running sockets that hold
// addr's port in a way the kernel refuses to bind beside, so that addr
// can bind with it too. It reports whether it found any.
func (s *proxyServer) shareConflicting(addr string) bool {
	host, port, _ := net.SplitHostPort(addr)
	shared := false
	for old, r := range s.routes {
		oh, op, _ := net.SplitHostPort(old)
		if op == port && old != addr && listenConflict(host, oh) && enableReusePort(r.ln) == nil {
			shared = true
		}
	}
	return shared
}

// startRoute starts a route for addr: on a new socket (with SO_REUSEPORT
// if beside is set), or on old's.
func (s *proxyServer) startRoute(addr string, t *routeTable, old *listenRoute, beside bool) (*listenRoute, error) {
	log := s.log.With("listen", addr)
	listen := func() (net.Listener, error) {
		if old != nil {
			ln, err := dupListener(old.ln)
			if err != nil {
				return nil, fmt.Errorf("app %q: %s: %w", t.owner, addr, err)
			}
			return newRetryListener(ln, log), nil
		}
		ln, err := s.listenOn(addr, beside)
		if err != nil {
			return nil, fmt.Errorf("app %q: listen on %s: %w", t.owner, addr, unwrapOpError(err))
		}
		return newRetryListener(ln, log), nil
	}
	st := s.unrouted[addr]
	if st == nil {
		st = &unroutedStats{} // listed once the route is committed
	}
	return startRoute(addr, t, st, s.conns, s.log, listen)
}

// listenOn opens a listening socket for addr, with SO_REUSEPORT if
// beside is set.
func (s *proxyServer) listenOn(addr string, beside bool) (net.Listener, error) {
	if !beside {
		return s.env.listen(listenNetwork(addr), addr)
	}
	lc := net.ListenConfig{KeepAlive: -1, Control: setReusePort}
	return lc.Listen(context.Background(), listenNetwork(addr), addr)
}

// commitRoutes makes want current: routes that stay get their new
// table, new ones are published (closing the route whose socket they
// took over), and the routes of addresses no longer wanted retire. An
// alias (wanted, but not in tables) is not reported opened or closed.
func (s *proxyServer) commitRoutes(want, tables map[string]*routeTable, opened map[string]*listenRoute, sum *reloadSummary) {
	for addr, r := range s.routes {
		switch {
		case opened[addr] != nil:
		case want[addr] != nil:
			applyKeepAlive(r.ln, want[addr], r.log)
			r.table.Store(want[addr])
		default:
			r.retire()
			s.retiring[addr] = r
			delete(s.routes, addr)
			sum.closed = append(sum.closed, addr)
		}
	}
	for addr, r := range opened {
		if old := s.routes[addr]; old != nil {
			old.close() // its socket stays open in r
		} else if tables[addr] != nil {
			sum.opened = append(sum.opened, addr)
		}
		if r.from != nil && r.from != s.routes[addr] {
			r.from.closeNow() // retiring (here or in sameSocket); see listenRoute.from
		}
		r.from = nil
		s.routes[addr] = r
		s.unrouted[addr] = r.unrouted
	}
	for addr, r := range s.routes {
		r.alias = tables[addr] == nil
	}
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

// snapshot returns the state of every app and listener for metrics and
// status; the reload counts are the daemon's (daemon.snapshot).
func (s *proxyServer) snapshot() stats.Snapshot {
	gen := *s.current.Load()
	snap := stats.Snapshot{Apps: make([]stats.App, len(gen))}
	for i, ft := range gen {
		snap.Apps[i] = ft.snapshot()
	}
	snap.Apps = append(snap.Apps, s.removedDraining()...)
	snap.Listeners = s.listenerStats()
	return snap
}

// removedDraining returns the apps a reload removed that still have open
// connections, marked removed: shutdown waits for them, so status and
// metrics show them.
func (s *proxyServer) removedDraining() []stats.App {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []stats.App
	for _, ft := range s.past {
		if ft.stats.active.Load() > 0 {
			a := ft.snapshot()
			a.Removed = true
			out = append(out, a)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
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
		if rl, ok := r.ln.(*retryListener); ok && !r.alias {
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
	for addr, r := range s.retiring {
		r.closeNow()
		delete(s.retiring, addr)
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
