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

	"github.com/inetaf/tcpproxy"

	"github.com/michaeldbianchi/tcpproxy/internal/health"
	"github.com/michaeldbianchi/tcpproxy/internal/stats"
)

// proxyServer is the running proxy. Every listen address of every app
// gets its own tcpproxy.Proxy with a single AddRoute, whose Target is a
// portRoute pointing at the app's current failoverTarget.
//
// Why a proxy per listener: a tcpproxy.Proxy takes no routes after Start
// and its Close closes every listener it opened. With one Proxy per
// address, a reload opens a new port by starting a new Proxy, closes a
// removed port by closing only that Proxy (connections already accepted
// run on: the library's Close only closes listeners), and re-points a
// port that stays, or moves to another app, by swapping the portRoute's
// target atomically, so that port never stops accepting.
type proxyServer struct {
	log    *slog.Logger
	ctx    context.Context // cancelled when the server stops for good
	cancel context.CancelFunc
	conns  *connSet
	listen func(network, addr string) (net.Listener, error)

	mu      sync.Mutex // serializes apply and shutdown
	cfg     *config
	routes  map[string]*portRoute      // by listen address
	apps    map[string]*failoverTarget // current generation, by app name
	checks  map[string]*checker        // active health checks, by app name
	current atomic.Pointer[[]*failoverTarget]
	ready   atomic.Bool // every listener open, not draining
	reloads reloadStats
}

// portRoute is the tcpproxy.Target of one listen address. It hands each
// connection to the app that owns the address in the current config.
type portRoute struct {
	addr   string
	proxy  *tcpproxy.Proxy
	ln     net.Listener // set by the proxy's ListenFunc
	target atomic.Pointer[failoverTarget]
}

// HandleConn implements tcpproxy.Target.
func (r *portRoute) HandleConn(c net.Conn) { r.target.Load().HandleConn(c) }

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
		log:    log,
		ctx:    ctx,
		cancel: cancel,
		conns:  newConnSet(),
		listen: listen,
		routes: map[string]*portRoute{},
		apps:   map[string]*failoverTarget{},
		checks: map[string]*checker{},
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

// apply makes cfg the running config: new ports open, removed ports
// close (their connections run on), ports that stay are re-pointed, and
// targets that stay keep their health state. If a new port cannot be
// opened, nothing changes and the error says why.
func (s *proxyServer) apply(cfg *config) (reloadSummary, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var sum reloadSummary

	// Build the new generation of app targets, carrying state over.
	apps := make(map[string]*failoverTarget, len(cfg.Apps))
	gen := make([]*failoverTarget, 0, len(cfg.Apps))
	owner := map[string]*failoverTarget{}
	for _, app := range cfg.Apps {
		prev := s.apps[app.Name]
		ft, err := newFailoverTarget(s.ctx, app, s.log, s.conns, prev)
		if err != nil {
			return sum, err
		}
		apps[app.Name] = ft
		gen = append(gen, ft)
		for _, addr := range app.listenAddrs() {
			owner[addr] = ft
		}
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

	// Open new ports first, so that a failure leaves the old config
	// whole.
	var opened []*portRoute
	for addr, ft := range owner {
		if s.routes[addr] != nil {
			continue
		}
		r, err := s.openRoute(addr, ft)
		if err != nil && errors.Is(err, syscall.EADDRINUSE) && s.releaseConflicting(addr, owner) {
			// The socket is held by a listener this config removes
			// (":80" becoming "127.0.0.1:80"): free it, then take it.
			r, err = s.openRoute(addr, ft)
		}
		if err != nil {
			for _, r := range opened {
				r.proxy.Close()
			}
			return reloadSummary{}, err
		}
		opened = append(opened, r)
	}

	// Commit: re-point ports that stay, publish new ones, close removed.
	for addr, r := range s.routes {
		if ft := owner[addr]; ft != nil {
			r.target.Store(ft)
			continue
		}
		r.proxy.Close()
		delete(s.routes, addr)
		sum.closed = append(sum.closed, addr)
	}
	for _, r := range opened {
		s.routes[r.addr] = r
		sum.opened = append(sum.opened, r.addr)
	}
	s.apps = apps
	s.current.Store(&gen)
	s.cfg = cfg
	s.restartChecks()
	for _, l := range [][]string{sum.added, sum.removed, sum.changed, sum.opened, sum.closed} {
		sort.Strings(l)
	}
	return sum, nil
}

// openRoute starts a tcpproxy.Proxy listening on addr for ft.
func (s *proxyServer) openRoute(addr string, ft *failoverTarget) (*portRoute, error) {
	r := &portRoute{addr: addr, proxy: &tcpproxy.Proxy{}}
	r.target.Store(ft)
	r.proxy.ListenFunc = func(network, laddr string) (net.Listener, error) {
		ln, err := s.listen(network, laddr)
		if err != nil {
			return nil, fmt.Errorf("app %q: listen on %s: %w", ft.app.Name, laddr, unwrapOpError(err))
		}
		r.ln = newRetryListener(ln, s.log.With("listen", laddr))
		return r.ln, nil
	}
	r.proxy.AddRoute(addr, r)
	if err := r.proxy.Start(); err != nil {
		return nil, err
	}
	return r, nil
}

// releaseConflicting closes a listener that the new config drops and
// that holds the socket addr needs. It reports whether it closed one.
func (s *proxyServer) releaseConflicting(addr string, keep map[string]*failoverTarget) bool {
	host, port, _ := net.SplitHostPort(addr)
	released := false
	for old, r := range s.routes {
		oh, op, _ := net.SplitHostPort(old)
		if keep[old] == nil && op == port && listenConflict(host, oh) {
			r.proxy.Close()
			delete(s.routes, old)
			released = true
		}
	}
	return released
}

// restartChecks starts, keeps or stops each app's active health checks
// to match the current config. Checks of an app whose health_check did
// not change keep running.
func (s *proxyServer) restartChecks() {
	for name, c := range s.checks {
		ft := s.apps[name]
		if ft != nil && ft.app.HealthCheck != nil && *ft.app.HealthCheck == c.cfg && slices.Equal(c.targets, ft.healthTargets()) {
			continue
		}
		c.cancel()
		c.wait()
		delete(s.checks, name)
	}
	for name, ft := range s.apps {
		hc := ft.app.HealthCheck
		if hc == nil || s.checks[name] != nil {
			continue
		}
		ctx, cancel := context.WithCancel(s.ctx)
		check := health.Check{Interval: hc.Interval, Timeout: hc.Timeout, Rise: hc.Rise, Fall: hc.Fall}
		targets := ft.healthTargets()
		s.checks[name] = &checker{
			cfg:     *hc,
			targets: targets,
			cancel:  cancel,
			wait:    health.RunChecks(ctx, check, targets, nil),
		}
	}
}

// snapshot returns the state of every app for metrics and status.
func (s *proxyServer) snapshot() stats.Snapshot {
	gen := *s.current.Load()
	snap := stats.Snapshot{Apps: make([]stats.App, len(gen))}
	for i, ft := range gen {
		snap.Apps[i] = ft.snapshot()
	}
	snap.Reloads = stats.Reloads{Success: s.reloads.success.Load(), Failure: s.reloads.failure.Load()}
	if t := s.reloads.lastSuccess.Load(); t != 0 {
		snap.Reloads.LastSuccess = time.Unix(0, t)
	}
	return snap
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
		r.proxy.Close()
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
		log.Info("app", "name", a.Name, "ports", a.Ports, "targets", targets, "listen", a.listenAddrs(),
			"balance", a.Balance, "dial_timeout", a.DialTimeout.String())
	}
}
