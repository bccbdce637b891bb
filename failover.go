package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-multierror"
	"github.com/inetaf/tcpproxy"

	"github.com/michaeldbianchi/tcpproxy/internal/balance"
	"github.com/michaeldbianchi/tcpproxy/internal/health"
	"github.com/michaeldbianchi/tcpproxy/internal/relay"
)

// keepAlivePeriod is the TCP keepalive period set on both sockets of a
// relayed connection, the same as tcpproxy.DialProxy's default. We set it
// ourselves because the library only does so on conns it can unwrap to
// *net.TCPConn, and ours are *relay.Conn.
const keepAlivePeriod = time.Minute

// failoverTarget is the tcpproxy.Target of one app. For each connection
// it asks the app's balancer for an order of targets, dials them one by
// one until one answers, and hands both connections to the library's
// relay (tcpproxy.DialProxy). When every target fails it closes the
// client and logs every target's error.
type failoverTarget struct {
	app     *appConfig
	ctx     context.Context // cancelled when the proxy stops for good: aborts dials
	log     *slog.Logger
	dialer  net.Dialer
	targets []*targetState
	pool    *balance.Pool
	conns   *connSet

	active  atomic.Int64 // connections being dialed or relayed
	stats   appStats
	limitAt atomic.Int64 // unix nanos of the last "max_connections reached" log line
}

// targetState is the live state of one target of one app.
type targetState struct {
	cfg    targetConfig
	health *health.Target
	active atomic.Int64
}

// appStats are an app's counters since start.
type appStats struct {
	accepted       atomic.Int64
	rejectedLimit  atomic.Int64
	rejectedDenied atomic.Int64
	failed         atomic.Int64
}

// newFailoverTarget builds the Target of app. ctx bounds every dial.
func newFailoverTarget(ctx context.Context, app *appConfig, log *slog.Logger, conns *connSet) (*failoverTarget, error) {
	peers := make([]balance.Peer, len(app.Targets))
	for i, t := range app.Targets {
		peers[i] = balance.Peer{Name: t.Address, Weight: t.Weight, Backup: t.Backup}
	}
	pool, err := balance.New(app.Balance, peers)
	if err != nil {
		return nil, fmt.Errorf("app %q: %w", app.Name, err)
	}
	ft := &failoverTarget{
		app:   app,
		ctx:   ctx,
		log:   log.With("app", app.Name),
		pool:  pool,
		conns: conns,
		// Keepalive is set once by relay.SetKeepAlive, not also by the
		// dialer's default.
		dialer: net.Dialer{Timeout: app.DialTimeout, KeepAlive: -1},
	}
	policy := health.Policy{MaxFails: app.MaxFails, FailTimeout: app.FailTimeout}
	for _, t := range app.Targets {
		ft.targets = append(ft.targets, &targetState{
			cfg:    t,
			health: health.NewTarget(t.Address, policy, ft.log),
		})
	}
	return ft, nil
}

// healthTargets returns the health of each target, in config order.
func (ft *failoverTarget) healthTargets() []*health.Target {
	hs := make([]*health.Target, len(ft.targets))
	for i, ts := range ft.targets {
		hs[i] = ts.health
	}
	return hs
}

// Usable implements balance.State.
func (ft *failoverTarget) Usable(i int) bool { return ft.targets[i].health.Usable(time.Now()) }

// Active implements balance.State.
func (ft *failoverTarget) Active(i int) int64 { return ft.targets[i].active.Load() }

// HandleConn implements tcpproxy.Target.
func (ft *failoverTarget) HandleConn(c net.Conn) {
	ft.stats.accepted.Add(1)
	client, ok := tcpproxy.UnderlyingConn(c).(*net.TCPConn)
	if !ok {
		// AddRoute never peeks, so the library hands us the accepted
		// *net.TCPConn; anything else is a programming error.
		ft.log.Error("unexpected connection type", "type", fmt.Sprintf("%T", c))
		c.Close()
		return
	}
	clientIP := remoteIP(client)
	if !ft.allowed(clientIP) {
		ft.stats.rejectedDenied.Add(1)
		ft.log.Debug("client denied", "client", client.RemoteAddr().String())
		client.Close()
		return
	}
	if n := ft.active.Add(1); ft.app.MaxConnections > 0 && n > int64(ft.app.MaxConnections) {
		ft.active.Add(-1)
		ft.stats.rejectedLimit.Add(1)
		ft.logLimit()
		client.Close()
		return
	}
	defer ft.active.Add(-1)

	entry := ft.conns.add(client)
	defer ft.conns.remove(entry)

	target, ts, err := ft.dial(clientIP)
	if err != nil {
		ft.stats.failed.Add(1)
		ft.log.Error("all targets failed", "client", client.RemoteAddr().String(), "err", err)
		client.Close()
		return
	}
	ft.conns.setTarget(entry, target)
	ts.active.Add(1)
	defer ts.active.Add(-1)
	ft.relay(client, target)
}

// dial tries the app's targets in the balancer's order until one
// answers. It returns every target's error when none does.
func (ft *failoverTarget) dial(clientIP netip.Addr) (*net.TCPConn, *targetState, error) {
	var buf [16]int
	order := ft.pool.Order(buf[:0], balance.Key(clientIP), ft)
	if len(order) == 0 {
		return nil, nil, errors.New("no target can take connections (every weight is 0)")
	}
	now := time.Now()
	// The balancer puts a down target first only when every target is
	// down; then each gets a try anyway rather than refusing the client.
	force := !ft.targets[order[0]].health.Usable(now)
	var errs *multierror.Error
	attempts := 0
	for pass := 0; pass < 2 && attempts == 0; pass++ {
		for _, i := range order {
			if ft.app.MaxAttempts > 0 && attempts >= ft.app.MaxAttempts {
				break
			}
			ts := ft.targets[i]
			if !ts.health.Acquire(now, force) {
				continue // down, or another connection holds its one trial
			}
			attempts++
			c, err := ft.dialer.DialContext(ft.ctx, "tcp", ts.cfg.Address)
			if err != nil {
				now = time.Now()
				if ft.app.MaxFails > 0 { // max_fails: 0 turns failure accounting off, as in nginx
					ts.health.Failure(now, err)
				}
				errs = multierror.Append(errs, fmt.Errorf("%s: %w", ts.cfg.Address, unwrapOpError(err)))
				continue
			}
			ts.health.Success()
			return c.(*net.TCPConn), ts, nil
		}
		// Every target in the order was skipped (their single trials
		// taken by other connections): try them all rather than refuse.
		force = true
	}
	errs.ErrorFormat = joinErrors
	return nil, nil, errs
}

// relay copies bytes both ways until both directions are done. The
// library's DialProxy does the copying and half-close handling; we hand
// it the conn already dialed, wrapped in relay.Conn, whose WriteTo keeps
// splice(2) without holding pipes while the connection is idle.
func (ft *failoverTarget) relay(client, target *net.TCPConn) {
	for _, c := range [2]*net.TCPConn{client, target} {
		if err := relay.SetKeepAlive(c, keepAlivePeriod); err != nil {
			ft.log.Debug("set keepalive", "err", err)
		}
	}
	src, dst := relay.New(client, nil), relay.New(target, nil)
	dp := tcpproxy.DialProxy{
		Addr:            target.RemoteAddr().String(),
		DialTimeout:     -1, // already dialed: no per-connection timer
		KeepAlivePeriod: -1, // set above, on the conns the library cannot unwrap
		DialContext: func(context.Context, string, string) (net.Conn, error) {
			return dst, nil
		},
	}
	dp.HandleConn(src)
}

// allowed applies the app's allow and deny lists to a client address.
func (ft *failoverTarget) allowed(ip netip.Addr) bool {
	for _, p := range ft.app.Deny {
		if p.Contains(ip) {
			return false
		}
	}
	if len(ft.app.Allow) == 0 {
		return true
	}
	for _, p := range ft.app.Allow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// logLimit logs that max_connections turned a client away, at most once
// a second so that a flood does not become a flood of log lines.
func (ft *failoverTarget) logLimit() {
	now := time.Now().UnixNano()
	last := ft.limitAt.Load()
	if now-last < int64(time.Second) || !ft.limitAt.CompareAndSwap(last, now) {
		return
	}
	ft.log.Warn("max_connections reached, closing new clients", "max_connections", ft.app.MaxConnections, "rejected_total", ft.stats.rejectedLimit.Load())
}

// remoteIP is the client's address, IPv4-mapped IPv6 unmapped so that it
// matches allow/deny entries written as IPv4.
func remoteIP(c *net.TCPConn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// unwrapOpError drops the *net.OpError prefix ("dial tcp 127.0.0.1:9:")
// that would repeat the address the log line already names.
func unwrapOpError(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// joinErrors formats a multierror on one line, for logs.
func joinErrors(es []error) string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "; ")
}

// connSet tracks an app's open connections so that shutdown can wait
// for them and, when the grace period ends, close what is left.
type connSet struct {
	mu      sync.Mutex
	entries map[*connEntry]struct{}
	empty   chan struct{} // closed when the set becomes empty while draining
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
	ch := make(chan struct{})
	if len(s.entries) == 0 {
		close(ch)
		return ch
	}
	if s.empty == nil {
		s.empty = ch
	}
	return s.empty
}

// closeAll closes every open connection, both sides.
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
