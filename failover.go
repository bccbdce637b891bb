package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"runtime/debug"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-multierror"
	"github.com/inetaf/tcpproxy"

	"github.com/michaeldbianchi/tcpproxy/internal/balance"
	"github.com/michaeldbianchi/tcpproxy/internal/health"
	"github.com/michaeldbianchi/tcpproxy/internal/proxyproto"
	"github.com/michaeldbianchi/tcpproxy/internal/relay"
	"github.com/michaeldbianchi/tcpproxy/internal/stats"
)

var _ tcpproxy.Target = (*failoverTarget)(nil)

// failoverTarget is the tcpproxy.Target of one app. For each connection
// it asks the app's balancer for an order of targets, dials them one by
// one until one answers, and hands both connections to the library's
// relay (tcpproxy.DialProxy). When every target fails it closes the
// client and logs every target's error.
//
// A failoverTarget is immutable once built; a config reload builds a new
// one that shares the old one's counters and target health.
type failoverTarget struct {
	app     *appConfig
	ctx     context.Context // cancelled when the proxy stops for good: aborts dials
	log     *slog.Logger
	dialer  contextDialer  // serverEnv.dialer's, for app
	targets []*targetState // in app.Targets order
	pool    *balance.Pool
	conns   *connSet
	stats   *appStats
	past    map[string]*targetState // targets of earlier generations that this one lacks; see commit
	tls     *appTLS                 // nil: no TLS (tls.go)
	// keepAliveAtAccept is set when every listening socket of the app
	// carries its keepalive, so its clients come with it (keepalive.go).
	keepAliveAtAccept bool
}

// targetState is the live state of one target of one app. It outlives
// reloads that keep the target, so health and counts carry over.
type targetState struct {
	health   *health.Target
	active   atomic.Int64
	total    atomic.Int64 // connections relayed to it
	dials    atomic.Int64
	failures atomic.Int64
	drain    drainState // set through the admin API (drain.go)
	literal  bool       // the address is an IP literal: see dialTarget
}

// appStats are an app's counters since start, shared by every
// generation of the app's failoverTarget.
type appStats struct {
	active         atomic.Int64 // connections admitted and not closed: from accept (from routing on a name-routed address), PROXY header wait included
	accepted       atomic.Int64
	rejectedLimit  atomic.Int64
	rejectedDenied atomic.Int64
	failed         atomic.Int64
	idleTimeouts   atomic.Int64
	bytesToTarget  atomic.Int64
	bytesToClient  atomic.Int64
	duration       stats.DurationRecorder
	logs           appLogs // rate limits of the per-connection log lines

	// pastTargets are the targets a reload removed, by address, so that
	// one added back carries on from its counts. Only apply (under
	// proxyServer.mu) touches it.
	pastTargets map[string]*targetState
	// rejectedUntrusted counts clients outside proxy_protocol_from
	// (trust.go).
	rejectedUntrusted atomic.Int64
	tls               tlsStats
}

// newFailoverTarget builds the Target of app, which dials its targets
// with dialer. ctx bounds every dial. If prev, the app's previous
// generation, is given, its counters, its
// balancer (when the strategy and targets are the same, so a round_robin
// cycle goes on) and the health of the targets that stay are carried
// over. Nothing shared with prev changes until commit.
func newFailoverTarget(ctx context.Context, app *appConfig, log *slog.Logger, conns *connSet, dialer contextDialer, prev *failoverTarget) (*failoverTarget, error) {
	pool, err := poolFor(app, prev)
	if err != nil {
		return nil, fmt.Errorf("app %q: %w", app.Name, err)
	}
	appTLS, err := tlsFor(app, prev)
	if err != nil {
		return nil, err
	}
	ft := &failoverTarget{
		app:   app,
		ctx:   ctx,
		log:   log.With("app", app.Name),
		pool:  pool,
		conns: conns,
		tls:   appTLS,
		stats: &appStats{},
		// Injected at construction (serverEnv.dialer).
		dialer: dialer,
	}
	old := map[string]*targetState{}
	if prev != nil {
		ft.stats = prev.stats
		maps.Copy(old, prev.stats.pastTargets)
		for i, t := range prev.app.Targets {
			old[t.Address] = prev.targets[i]
		}
	}
	ft.past = old
	for _, t := range app.Targets {
		ts := old[t.Address]
		delete(ft.past, t.Address)
		if ts == nil {
			ts = &targetState{health: health.NewTarget(t.Address, ft.policy(), ft.log)}
			_, err := netip.ParseAddrPort(t.Address)
			ts.literal = err == nil
		}
		ft.targets = append(ft.targets, ts)
	}
	return ft, nil
}

// policy is the app's passive health policy.
func (ft *failoverTarget) policy() health.Policy {
	return health.Policy{MaxFails: ft.app.MaxFails, FailTimeout: ft.app.FailTimeout}
}

// commit makes ft's settings those of the targets it shares with the
// previous generation, and remembers the targets it dropped, once the
// config ft belongs to is in force.
func (ft *failoverTarget) commit() {
	for _, ts := range ft.targets {
		ts.health.SetPolicy(ft.policy())
	}
	ft.stats.pastTargets = ft.past
	ft.tls.commit()
}

// poolFor returns the balancer of app: prev's when the strategy and the
// targets (addresses, weights, roles) are unchanged, else a new one.
func poolFor(app *appConfig, prev *failoverTarget) (*balance.Pool, error) {
	if prev != nil && prev.app.Balance == app.Balance && slices.Equal(prev.app.Targets, app.Targets) {
		return prev.pool, nil
	}
	peers := make([]balance.Peer, len(app.Targets))
	for i, t := range app.Targets {
		peers[i] = balance.Peer{Name: t.Address, Weight: t.Weight, Backup: t.Backup}
	}
	return balance.New(app.Balance, peers)
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
func (ft *failoverTarget) Usable(i int) bool {
	return !ft.targets[i].drain.on() && ft.targets[i].health.Usable(time.Now())
}

// Active implements balance.State.
func (ft *failoverTarget) Active(i int) int64 { return ft.targets[i].active.Load() }

// HandleConn implements tcpproxy.Target: admit, dial, then relay on a
// goroutine of the session's own (see session.relay).
func (ft *failoverTarget) HandleConn(c net.Conn) {
	ft.stats.accepted.Add(1)
	s, err := newSession(ft, c)
	if err != nil {
		ft.log.Error("cannot relay connection", "err", err) // a bug: the routes hand over only our conns
		c.Close()
		return
	}
	defer func() {
		if r := recover(); r != nil {
			// One connection's bug must not take the process, and every
			// other connection, down with it.
			ft.log.Error("panic in connection handler", "client", s.info.client.String(), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			s.client.Close()
			s.end("panic")
		}
	}()
	if result := s.admit(); result != "" {
		s.turnAway(result)
		return
	}
	if result := s.handshakeClient(c); result != "" {
		s.turnAway(result)
		return
	}
	target, result := s.connect()
	if result == "" {
		result = s.handshakeTarget(target)
	}
	if result != "" {
		s.turnAway(result)
		return
	}
	if s.accepted != nil && !s.accepted.deadline.IsZero() {
		s.client.SetReadDeadline(time.Time{}) // the preread deadline: routed now
	}
	go s.relay(target)
}

// connect dials a target and sends it the PROXY header if configured. It
// returns why there is no target to relay to, or "".
func (s *session) connect() (*net.TCPConn, string) {
	ft := s.ft
	target, i, attempts, err := ft.dial(s.info.client.Addr().Unmap())
	s.info.attempts = attempts
	if err != nil && ft.ctx.Err() != nil {
		return nil, s.dialAborted() // shutting down (abort.go)
	}
	if err != nil {
		ft.stats.failed.Add(1)
		ft.stats.logs.allFailed.log(ft.log, slog.LevelError, "all targets failed", "client", s.info.client.String(), "err", err)
		return nil, "all targets failed"
	}
	s.info.target = ft.app.Targets[i].Address
	ts := ft.targets[i]
	s.ts = ts
	ts.total.Add(1)
	ts.active.Add(1)
	ft.conns.setTarget(s.entry, target)
	if v := ft.app.ProxyProtocol; v != 0 {
		dst := s.hdr.Destination
		if !dst.IsValid() {
			dst = addrPort(s.client.LocalAddr())
		}
		var buf [128]byte
		if _, err := target.Write(proxyproto.Append(buf[:0], v, s.info.client, dst)); err != nil {
			ft.stats.logs.targetWrite.log(ft.log, slog.LevelError, "write PROXY protocol header", "target", s.info.target, "err", err)
			target.Close()
			return nil, "target write failed"
		}
	}
	return target, ""
}

// relay hands the client and its dialed target to the library's relay,
// DialProxy, and ends the session when both directions are done. It
// runs on a goroutine of its own, so the goroutine that peeked and
// dialed, with its grown stack and the library's peek buffer, is gone
// while the connection lasts.
func (s *session) relay(target *net.TCPConn) {
	app := s.ft.app
	if !s.ft.keepAliveAtAccept {
		relay.SetKeepAlive(s.client, app.KeepAlive) // DialProxy cannot unwrap a relay.Conn to do it
	}
	idle := relay.NewTimeouts(app.IdleTimeout, app.HalfCloseTimeout)
	client, dst := s.relayEnds(target, idle)
	var src net.Conn = client
	if len(s.peeked) > 0 {
		// The library writes Peeked to the target before relaying.
		src = &tcpproxy.Conn{HostName: s.info.serverName, Peeked: s.peeked, Conn: client}
	}
	defer func() {
		if r := recover(); r != nil {
			s.ft.log.Error("panic in relay", "client", s.info.client.String(), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			client.Close()
			dst.Close()
			if !s.ended {
				s.end("panic")
			}
		}
	}()
	dp := &tcpproxy.DialProxy{
		DialTimeout: -1, // dialed already: no timer
		DialContext: func(context.Context, string, string) (net.Conn, error) { return dst, nil },
	}
	dp.HandleConn(src)
	s.relayed(client, dst, idle, len(s.peeked))
}

// relayed records what the relay moved and ends the session.
func (s *session) relayed(client, target relayEnd, idle *relay.Idle, peeked int) {
	st := s.ft.stats
	s.info.toTarget, s.info.toClient = client.BytesRead()+int64(peeked), target.BytesRead()
	st.bytesToTarget.Add(s.info.toTarget)
	st.bytesToClient.Add(s.info.toClient)
	st.duration.Observe(time.Since(s.start))
	result := "ok"
	if idle.TimedOut() {
		st.idleTimeouts.Add(1)
		result = "idle timeout"
	}
	for _, c := range []relayEnd{client, target} {
		if p := c.Panicked(); p != nil {
			s.ft.log.Error("panic in relay", "client", s.info.client.String(), "panic", fmt.Sprint(p))
			result = "panic"
		}
	}
	s.end(result)
}

// turnAway closes a client that will not be relayed so that it sees EOF
// (see lingerClose), and ends the session with result.
func (s *session) turnAway(result string) {
	lingerClose(s.client)
	s.end(result)
}

// dial tries the app's targets in the balancer's order until one
// answers. It returns the index of the target that answered, the number
// of dials made and, when none answered, every target's error.
func (ft *failoverTarget) dial(clientIP netip.Addr) (*net.TCPConn, int, int, error) {
	var buf [16]int
	order := ft.pool.Order(buf[:0], balance.Key(clientIP), ft)
	if len(order) == 0 {
		return nil, -1, 0, errors.New("no target can take connections (every weight is 0)")
	}
	// tried is by target index. It is not a field of dialRun, so that the
	// buffer stays on the stack.
	var triedBuf [64]bool
	var tried []bool
	if n := len(ft.targets); n <= len(triedBuf) {
		tried = triedBuf[:n]
	} else {
		tried = make([]bool, n)
	}
	r := dialRun{ft: ft, now: time.Now()}
	if c, i := r.inOrder(order, tried); c != nil {
		return c, i, r.attempts, nil
	}
	if c, i := r.untried(tried); c != nil {
		return c, i, r.attempts, nil
	}
	if r.errs == nil { // nothing was dialed
		return nil, -1, r.attempts, errAllDrained
	}
	r.errs.ErrorFormat = joinErrors
	return nil, -1, r.attempts, r.errs
}

// dialRun is one connection's walk over its app's targets: which it
// tried, how many dials, and why each failed.
type dialRun struct {
	ft       *failoverTarget
	now      time.Time
	attempts int
	errs     *multierror.Error
}

// inOrder tries the balancer's order, skipping drained targets and
// those health says to leave alone. The balancer puts a down target
// first only when every target is down; then each gets a try anyway
// rather than refusing the client.
func (r *dialRun) inOrder(order []int, tried []bool) (*net.TCPConn, int) {
	force := !r.ft.targets[order[0]].health.Usable(r.now)
	for _, i := range order {
		if r.limited() {
			break
		}
		ts := r.ft.targets[i]
		if ts.drain.on() || !ts.health.Acquire(r.now, force) {
			continue // drained, down, or another connection holds its one trial
		}
		if c := r.try(i, tried); c != nil {
			return c, i
		}
	}
	return nil, -1
}

// untried runs once every target inOrder tried failed: before refusing
// the client it tries the others too, the ones marked down (which the
// order left out) included. A target marked down may be back, and a
// refused client is worse than a slow one. Drained targets stay out.
func (r *dialRun) untried(tried []bool) (*net.TCPConn, int) {
	for i, ts := range r.ft.targets {
		if tried[i] || r.ft.app.Targets[i].Weight == 0 || ts.drain.on() {
			continue
		}
		if r.limited() {
			break
		}
		if c := r.try(i, tried); c != nil {
			return c, i
		}
	}
	return nil, -1
}

// limited reports whether max_attempts dials were made, or the proxy is
// shutting down.
func (r *dialRun) limited() bool {
	return r.ft.app.MaxAttempts > 0 && r.attempts >= r.ft.app.MaxAttempts || r.ft.ctx.Err() != nil
}

// try dials target i, marks it tried, and tells its health how that
// went.
func (r *dialRun) try(i int, tried []bool) *net.TCPConn {
	ts := r.ft.targets[i]
	tried[i] = true
	r.attempts++
	ts.dials.Add(1)
	addr := r.ft.app.Targets[i].Address
	c, err := r.ft.dialTarget(addr, ts.literal)
	if err != nil && r.ft.ctx.Err() != nil {
		return nil // aborted by shutdown: not the target's failure
	}
	if err != nil {
		r.now = time.Now()
		r.errs = multierror.Append(r.errs, fmt.Errorf("%s: %w", addr, unwrapOpError(err)))
		if localResourceError(err) {
			return nil // out of descriptors here: not the target's failure
		}
		ts.failures.Add(1)
		ts.health.Failure(r.now, err) // nothing with max_fails: 0 (passive health off)
		return nil
	}
	ts.health.Success()
	return c.(*net.TCPConn)
}

// dialTarget dials addr within the app's dial_timeout, or until the
// proxy stops. An IP literal is dialed with a deadlineCtx rather than
// the dialer's Timeout, which would build a context.WithDeadline, its
// timer and its cancel registration for every dial: 7 allocations and
// about 600 bytes.
func (ft *failoverTarget) dialTarget(addr string, literal bool) (net.Conn, error) {
	if !literal || ft.app.DialTimeout <= 0 || ft.ctx.Done() == nil {
		return ft.dialer.DialContext(ft.ctx, "tcp", addr)
	}
	ctx := &deadlineCtx{Context: ft.ctx, at: time.Now().Add(ft.app.DialTimeout)}
	return ft.dialer.DialContext(ctx, "tcp", addr)
}

// deadlineCtx is a cancellable context with a deadline and no timer of
// its own. net's connect waits for the socket with its write deadline
// set to Deadline (the poller's timer) as long as Done is not nil, and
// registers its abort with the parent's cancellation directly, since
// Done and Value are the parent's; the dialer's Timeout, no later than
// Deadline, then adds no context. The deadline passing does not close
// Done, so it suits only a dial that resolves nothing (a DNS lookup
// waits on Done): IP literals.
type deadlineCtx struct {
	context.Context
	at time.Time
}

// Deadline implements context.Context.
func (c *deadlineCtx) Deadline() (time.Time, bool) { return c.at, true }

// snapshot returns the app's state for metrics and the status page.
func (ft *failoverTarget) snapshot() stats.App {
	st := ft.stats
	a := stats.App{
		Name:           ft.app.Name,
		Listen:         ft.app.Listen,
		Ports:          ft.app.Ports,
		Balance:        ft.app.Balance,
		SNI:            append([]string{}, ft.app.SNI...),
		HTTPHost:       append([]string{}, ft.app.HTTPHost...),
		Active:         st.active.Load(),
		Total:          st.accepted.Load(),
		RejectedLimit:  st.rejectedLimit.Load(),
		RejectedDenied: st.rejectedDenied.Load(),
		Failed:         st.failed.Load(),
		IdleTimeouts:   st.idleTimeouts.Load(),
		BytesToTarget:  st.bytesToTarget.Load(),
		BytesToClient:  st.bytesToClient.Load(),
		Duration:       st.duration.Snapshot(),
		Targets:        make([]stats.Target, len(ft.targets)),

		RejectedUntrusted: st.rejectedUntrusted.Load(), // trust.go
	}
	for i, ts := range ft.targets {
		cfg := ft.app.Targets[i]
		t := stats.Target{
			Address:  cfg.Address,
			Up:       ts.health.Up(),
			Weight:   cfg.Weight,
			Backup:   cfg.Backup,
			Active:   ts.active.Load(),
			Total:    ts.total.Load(),
			Dials:    ts.dials.Load(),
			Failures: ts.failures.Load(),
		}
		if at, err := ts.health.LastError(); err != nil {
			t.LastError = err.Error()
			t.LastErrorAt = &at
		}
		a.Targets[i] = t
	}
	ft.extendSnapshot(&a) // status.go
	return a
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

// logLimit logs that max_connections turned a client away, rate-limited
// (see logLimiter) so that a flood does not become a flood of log lines.
func (ft *failoverTarget) logLimit() {
	ft.stats.logs.limit.log(ft.log, slog.LevelWarn, "max_connections reached, closing new clients", "max_connections", ft.app.MaxConnections, "rejected_total", ft.stats.rejectedLimit.Load())
}

// addrPort converts a TCP address; IPv4-mapped IPv6 stays as is.
func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	return netip.AddrPort{}
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
