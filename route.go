package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/inetaf/tcpproxy"

	"github.com/michaeldbianchi/tcpproxy/internal/names"
)

// routeTable is how one listen address routes a connection: to the app
// of its TLS server name, else of its HTTP Host, else to the default
// app (the one app on the address with no names), else nowhere.
//
// A table is immutable once built; a reload builds new tables and swaps
// them in, so the library's routes, which read the current table for
// every connection, follow reloads without a new Proxy.
type routeTable struct {
	sni, host names.Table[*failoverTarget]
	def       *failoverTarget // nil: unmatched connections are closed
	// preread bounds how long a client may take to be routed by name: the
	// preread_timeout the address's apps agree on; 0 if none is named.
	preread     time.Duration
	acceptProxy bool   // clients send a PROXY header first (all apps agree)
	owner       string // the first app on the address, for error messages

	first *failoverTarget // the first app on the address (trust.go)

	// keepAlive is the keepalive period (keepAlivePeriod) of the
	// address's apps, carried by its listening socket, unless they
	// disagree (keepAliveMixed): see keepalive.go.
	keepAlive      time.Duration
	keepAliveMixed bool
}

// routeShape is the set of library routes a table needs. A Proxy takes
// no routes after Start, so a table of another shape needs a new Proxy.
type routeShape struct{ sni, host bool }

func (t *routeTable) shape() routeShape { return routeShape{t.sni.Len() > 0, t.host.Len() > 0} }

// named reports whether connections are peeked at to be routed.
func (s routeShape) named() bool { return s.sni || s.host }

// buildTables returns the routing table of every listen address of gen.
// Validation has ruled out a name twice on one address and two default
// apps on one.
func buildTables(gen []*failoverTarget) map[string]*routeTable {
	tables := map[string]*routeTable{}
	for _, ft := range gen {
		for _, addr := range ft.app.listenAddrs() {
			t := tables[addr]
			if t == nil {
				t = &routeTable{owner: ft.app.Name, first: ft}
				tables[addr] = t
			}
			for _, n := range ft.app.SNI {
				t.sni.Add(n, ft)
			}
			for _, n := range ft.app.HTTPHost {
				t.host.Add(n, ft)
			}
			if !ft.app.named() {
				t.def = ft
			}
			t.preread = ft.app.PrereadTimeout
			t.acceptProxy = ft.app.AcceptProxyProtocol
			t.noteKeepAlive(ft.app)
		}
	}
	for _, t := range tables {
		if !t.shape().named() {
			t.preread = 0 // nothing is peeked: no deadline at accept
		}
	}
	return tables
}

// listenRoute is one listen address on the library's Proxy. With no
// names it has a single AddRoute, so nothing is peeked and server-first
// protocols are unaffected. With names it has AddSNIRouteFunc and/or
// AddHTTPHostMatchRoute, then AddRoute for the default, all reading the
// current table.
type listenRoute struct {
	addr     string
	shape    routeShape
	proxy    *tcpproxy.Proxy
	ln       net.Listener // the socket, set by the Proxy's ListenFunc
	table    atomic.Pointer[routeTable]
	unrouted *unroutedStats // outlives the route: shared by the address's routes
	conns    *connSet       // the server's open connections, for shutdown
	log      *slog.Logger
	closing  atomic.Bool // Close was called: the accept loop's end is expected
	// alias is set on a route the config no longer names, kept open
	// because a wildcard address on its port covers it (see
	// proxyServer.withAliases); it routes with that address's table.
	// Guarded by proxyServer.mu.
	alias bool
	// from is the route whose socket this one took over (a duplicate of
	// its descriptor), until the reload commits. Then from closes at
	// once instead of retiring: its socket lives on here, so nothing in
	// its queue is lost, and its accept loop would otherwise go on taking
	// new connections with the old config's table. Guarded by
	// proxyServer.mu.
	from *listenRoute
	// fromFile is set when the socket came through net.FileListener,
	// whose accepted connections need their keepalive set again (see
	// fileListener). Set before the accept loop starts.
	fromFile bool

	retireMu sync.Mutex
	retiring bool // retire was called and the route has not closed yet
	closed   bool
}

// Bounds of a retiring route's wait: it keeps its socket open for
// retireGrace, long enough for handshakes that reached it before a new
// socket took its address over to complete, then until its accept queue
// is empty, for retireWait at most.
const (
	retireGrace = 250 * time.Millisecond
	retireWait  = time.Second
)

// retire closes the route once the connections that reached its socket
// are taken (closing a listening socket resets those still in its
// queue); its accept loop serves them meanwhile. revive takes it back.
func (r *listenRoute) retire() {
	r.retireMu.Lock()
	r.retiring = true
	r.retireMu.Unlock()
	r.closing.Store(true)
	go func() {
		start := time.Now()
		for time.Since(start) < retireWait {
			if n, ok := acceptQueueLen(r.ln); !ok || n == 0 && time.Since(start) >= retireGrace {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		r.retireMu.Lock()
		defer r.retireMu.Unlock()
		if r.retiring { // not taken back meanwhile
			r.closed = true
			r.proxy.Close()
		}
	}()
}

// closeNow closes the route at once, retiring or not.
func (r *listenRoute) closeNow() {
	r.retireMu.Lock()
	defer r.retireMu.Unlock()
	r.retiring, r.closed = false, true
	r.closing.Store(true)
	r.proxy.Close()
}

// isClosed reports whether a retiring route has closed.
func (r *listenRoute) isClosed() bool {
	r.retireMu.Lock()
	defer r.retireMu.Unlock()
	return r.closed
}

// revive takes back a retiring route that has not closed yet, so that a
// reload that wants its socket again uses it rather than binding a
// second one beside it. It reports whether the route is open and now
// the caller's.
func (r *listenRoute) revive() bool {
	r.retireMu.Lock()
	defer r.retireMu.Unlock()
	if r.closed || !r.retiring {
		return false
	}
	r.retiring = false
	r.closing.Store(false)
	return true
}

// unroutedStats counts one listen address's connections that matched
// no name and had no default app, since start.
type unroutedStats struct {
	noMatch, prereadTimeout atomic.Int64
	noAppLog, badHeaderLog  logLimiter // rate limits of the two log lines
}

// startRoute starts a Proxy for addr routing by t. listen opens (or
// hands over) the listening socket.
func startRoute(addr string, t *routeTable, st *unroutedStats, conns *connSet, log *slog.Logger, listen func() (net.Listener, error)) (*listenRoute, error) {
	r := &listenRoute{addr: addr, shape: t.shape(), proxy: &tcpproxy.Proxy{}, unrouted: st, conns: conns, log: log.With("listen", addr)}
	r.table.Store(t)
	r.proxy.ListenFunc = func(_, _ string) (net.Listener, error) {
		ln, err := listen()
		if err != nil {
			return nil, err
		}
		r.ln = ln
		if rl, ok := ln.(*retryListener); ok {
			r.fromFile = rl.fromFile
		}
		applyKeepAlive(ln, t, r.log)
		return routeListener{ln, r}, nil
	}
	if r.shape.sni {
		r.proxy.AddSNIRouteFunc(addr, r.routeSNI)
	}
	if r.shape.host {
		r.proxy.AddHTTPHostMatchRoute(addr, r.matchHost, hostRoute{r})
	}
	r.proxy.AddRoute(addr, defaultRoute{r})
	if err := r.proxy.Start(); err != nil {
		return nil, err
	}
	go r.watch()
	return r, nil
}

// watch logs the end of the accept loop when nobody closed the route:
// the port no longer accepts, and an operator must hear of it.
func (r *listenRoute) watch() {
	err := r.proxy.Wait()
	if !r.closing.Load() {
		r.log.Error("accept loop stopped: this address no longer accepts connections", "err", err)
	}
}

// close stops accepting on the route's socket (a socket handed to a
// newer route stays open there). Accepted connections run on.
func (r *listenRoute) close() {
	r.closing.Store(true)
	r.proxy.Close()
}

// routeSNI is the library's SNI lookup (AddSNIRouteFunc).
func (r *listenRoute) routeSNI(_ context.Context, name string) (tcpproxy.Target, bool) {
	if ft, ok := r.table.Load().sni.Lookup(name); ok {
		return ft, true
	}
	return nil, false
}

// matchHost is the library's HTTP Host matcher (AddHTTPHostMatchRoute).
func (r *listenRoute) matchHost(_ context.Context, host string) bool {
	_, ok := r.table.Load().host.Lookup(names.HTTPHost(host))
	return ok
}

// The routes' targets and the listener handed to the library.
var (
	_ tcpproxy.Target = hostRoute{}
	_ tcpproxy.Target = defaultRoute{}
	_ net.Listener    = routeListener{}
)

// hostRoute is the Target of the HTTP Host route: the app of the Host
// the library matched.
type hostRoute struct{ r *listenRoute }

func (h hostRoute) HandleConn(c net.Conn) {
	t := h.r.table.Load()
	if wc, ok := c.(*tcpproxy.Conn); ok {
		if ft, ok := t.host.Lookup(names.HTTPHost(wc.HostName)); ok {
			ft.HandleConn(c)
			return
		}
	}
	h.r.fallback(t, c) // a reload took the name away since it matched
}

// defaultRoute is the Target of the last route, which every connection
// that no name routed reaches.
type defaultRoute struct{ r *listenRoute }

func (d defaultRoute) HandleConn(c net.Conn) { d.r.fallback(d.r.table.Load(), c) }

// fallback hands c to the address's default app, or closes it.
func (r *listenRoute) fallback(t *routeTable, c net.Conn) {
	if t.def != nil {
		t.def.HandleConn(c)
		return
	}
	r.reject(c)
}

// reject closes a connection that has nowhere to go, counts it, and logs
// it, rate-limited (see logLimiter).
func (r *listenRoute) reject(c net.Conn) {
	defer closeTurnedAway(c)
	ac, _ := tcpproxy.UnderlyingConn(c).(*acceptedConn)
	if ac != nil {
		defer r.conns.remove(ac.entry)
	}
	reason, n := "no_match", &r.unrouted.noMatch
	switch {
	case ac != nil && ac.hdrErr != nil:
		r.unrouted.badHeaderLog.log(r.log, slog.LevelWarn, "bad PROXY protocol header", "client", clientAddr(c), "err", ac.hdrErr)
		return
	case ac != nil && ac.timedOut:
		reason, n = "preread_timeout", &r.unrouted.prereadTimeout
	}
	n.Add(1)
	r.unrouted.noAppLog.log(r.log, slog.LevelWarn, "no app for this connection, closing it", "client", clientAddr(c), "server_name", hostName(c), "reason", reason,
		"unrouted_total", r.unrouted.noMatch.Load()+r.unrouted.prereadTimeout.Load())
}

// routeListener is the listener a route's Proxy accepts from. On an
// address that routes by name it sets the preread deadline at accept,
// so that a client that never sends cannot pin the library's peeking
// goroutine; where clients send a PROXY header it wraps the conn so the
// header is consumed before anything peeks. Otherwise it hands the
// library the bare *net.TCPConn.
type routeListener struct {
	net.Listener
	r *listenRoute
}

func (l routeListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		t := l.r.table.Load()
		tc, ok := c.(*net.TCPConn)
		if ok && l.r.fromFile {
			restoreKeepAlive(tc, t, l.r.log)
		}
		if ok && t.acceptProxy && t.preread > 0 && t.rejectUntrustedAtAccept(tc) {
			continue // before the library reads a byte (trust.go)
		}
		if !ok || t.preread == 0 && !t.acceptProxy {
			return c, nil
		}
		// Tracked for shutdown from accept: the library may read its
		// PROXY header and peek for a while before any app has it.
		ac := &acceptedConn{TCPConn: tc, proxyHeader: t.acceptProxy, entry: l.r.conns.add(tc)}
		if t.preread == 0 {
			return ac, nil
		}
		ac.deadline = time.Now().Add(t.preread)
		if tc.SetReadDeadline(ac.deadline) == nil {
			return ac, nil
		}
		// The client is already gone. An error here would end the
		// library's accept loop, so take the next one instead.
		l.r.conns.remove(ac.entry)
		tc.Close()
	}
}

// hostName returns the name the library routed c by ("" if none).
func hostName(c net.Conn) string {
	if wc, ok := c.(*tcpproxy.Conn); ok {
		return wc.HostName
	}
	return ""
}

// dupListener returns a second listener on ln's socket, so that a new
// route can accept on it before the old route's Close, and not one
// connection in the socket's queue is lost in between.
func dupListener(ln net.Listener) (net.Listener, error) {
	fl, ok := ln.(interface{ File() (*os.File, error) })
	if !ok {
		return nil, fmt.Errorf("listener %T cannot be handed over", ln)
	}
	f, err := fl.File()
	if err != nil {
		return nil, fmt.Errorf("hand over listener: %w", err)
	}
	defer f.Close()
	dup, err := net.FileListener(f)
	if tl, ok := dup.(*net.TCPListener); ok {
		return fileListener{tl}, nil
	}
	return dup, err
}
