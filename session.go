package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/inetaf/tcpproxy"

	"github.com/michaeldbianchi/tcpproxy/internal/proxyproto"
)

// proxyHeaderTimeout bounds how long a client of an app with
// accept_proxy_protocol, on an address that does not route by name, may
// take to send its PROXY header. (On a name-routed address the header
// is read within preread_timeout.)
const proxyHeaderTimeout = 5 * time.Second

// acceptedConn is a client connection on an address that peeks at what
// the client sends (to route it by name) or that takes a PROXY header.
// It is what the library's routes read from: the first Read consumes
// the PROXY header, so the library peeks at the payload behind it.
//
// Only one goroutine at a time uses it: the library's peeking goroutine,
// then the app's HandleConn on that same goroutine.
type acceptedConn struct {
	*net.TCPConn
	entry       *connEntry // in the server's connSet since accept; the session takes it over
	deadline    time.Time  // preread deadline set at accept; zero if none
	proxyHeader bool       // a PROXY header comes first
	hdrRead     bool
	hdr         proxyproto.Header
	hdrErr      error
	timedOut    bool // a read hit the preread deadline
}

// Read implements net.Conn for the library's peeking.
func (c *acceptedConn) Read(p []byte) (int, error) {
	if err := c.readHeader(c.deadline); err != nil {
		return 0, err
	}
	n, err := c.TCPConn.Read(p)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.timedOut = true
	}
	return n, err
}

// readHeader reads the PROXY header, once, waiting until deadline (zero:
// no limit), and puts back the preread deadline proxyproto.Read clears.
func (c *acceptedConn) readHeader(deadline time.Time) error {
	if !c.proxyHeader || c.hdrRead {
		return c.hdrErr
	}
	c.hdrRead = true
	c.hdr, c.hdrErr = proxyproto.Read(c.TCPConn, deadline)
	if errors.Is(c.hdrErr, os.ErrDeadlineExceeded) {
		c.timedOut = true
	}
	if c.hdrErr == nil && !c.deadline.IsZero() {
		c.hdrErr = c.TCPConn.SetReadDeadline(c.deadline)
	}
	return c.hdrErr
}

// connInfo is what the access log says about one connection.
type connInfo struct {
	client     netip.AddrPort
	serverName string // the SNI or Host the connection was routed by
	target     string
	attempts   int
	result     string
	toTarget   int64
	toClient   int64
}

// session is one client connection from the app's HandleConn to close.
// Its end runs exactly once: on the handling goroutine when the
// connection never reaches the relay, else when the relay returns.
type session struct {
	ft       *failoverTarget
	client   *net.TCPConn
	accepted *acceptedConn // nil on an address that neither peeks nor takes a PROXY header
	peeked   []byte        // what the library read while routing, for the target first
	start    time.Time
	info     connInfo
	active   bool              // holds one of the app's active slots
	entry    *connEntry        // tracked for shutdown
	ts       *targetState      // the target relayed to
	hdr      proxyproto.Header // inbound PROXY header, if the app takes one
	tls      sessionTLS        // TLS to the client and the target, if the app has it (tls.go)
	ended    bool
}

// newSession unwraps what the library hands a Target: a *tcpproxy.Conn
// (peeked bytes, the routed name) around an *acceptedConn or the bare
// *net.TCPConn.
func newSession(ft *failoverTarget, c net.Conn) (*session, error) {
	s := &session{ft: ft, start: time.Now()}
	if wc, ok := c.(*tcpproxy.Conn); ok {
		s.peeked, s.info.serverName = wc.Peeked, wc.HostName
	}
	switch u := tcpproxy.UnderlyingConn(c).(type) {
	case *net.TCPConn:
		s.client = u
	case *acceptedConn:
		s.client, s.accepted, s.entry = u.TCPConn, u, u.entry
	default:
		return nil, fmt.Errorf("unexpected connection type %T", u)
	}
	s.info.client = peerAddr(s.client.RemoteAddr())
	return s, nil
}

// admit takes one of the app's max_connections slots, then reads the
// PROXY header if the app takes one and applies allow/deny (to the
// header's address), and returns why the client is turned away, or "".
// The slot is taken first so that a client still sending its header
// counts like any other (on a plain address from accept; on a
// name-routed one from routing, its header read during the peek), and a
// client over the limit is closed without its header being read.
func (s *session) admit() string {
	ft, st := s.ft, s.ft.stats
	if ft.untrusted(s.client) { // before the slot: a sender it cannot trust holds none
		ft.countUntrusted(s.info.client)
		return resultUntrusted
	}
	if !s.takeSlot() {
		return "rejected: limit"
	}
	if ft.app.AcceptProxyProtocol {
		h, err := s.proxyHeader()
		if err != nil {
			st.logs.badHeader.log(ft.log, slog.LevelError, "bad PROXY protocol header", "client", s.info.client.String(), "err", err)
			return "bad proxy header"
		}
		s.hdr = h
		if h.Source.IsValid() {
			s.info.client = netip.AddrPortFrom(h.Source.Addr().Unmap(), h.Source.Port())
		}
	}
	if !ft.allowed(s.info.client.Addr().Unmap()) {
		st.rejectedDenied.Add(1)
		return "rejected: denied"
	}
	return ""
}

// takeSlot counts the connection as active against max_connections and
// tracks it for shutdown, unless the app is full. end gives both back.
func (s *session) takeSlot() bool {
	ft, st := s.ft, s.ft.stats
	if n := st.active.Add(1); ft.app.MaxConnections > 0 && n > int64(ft.app.MaxConnections) {
		st.active.Add(-1)
		st.rejectedLimit.Add(1)
		ft.logLimit()
		return false
	}
	s.active = true
	if s.entry == nil { // tracked since accept otherwise
		s.entry = ft.conns.add(s.client)
	}
	return true
}

// proxyHeader returns the client's PROXY header: the one read while the
// library peeked, or else read now.
func (s *session) proxyHeader() (proxyproto.Header, error) {
	if s.accepted == nil {
		return proxyproto.Read(s.client, s.start.Add(proxyHeaderTimeout))
	}
	deadline := s.accepted.deadline
	if deadline.IsZero() {
		deadline = s.start.Add(proxyHeaderTimeout)
	}
	err := s.accepted.readHeader(deadline)
	return s.accepted.hdr, err
}

// end releases what the connection held and writes its access-log line.
func (s *session) end(result string) {
	s.ended = true
	if s.ts != nil {
		s.ts.active.Add(-1)
	}
	if s.active {
		s.ft.stats.active.Add(-1)
	}
	s.info.result = result
	s.ft.accessLog(s.client, s.start, &s.info)
	if s.entry != nil {
		// Last: a drain waits for the set to empty and the process may
		// exit then, so the access-log line must be written by then.
		s.ft.conns.remove(s.entry)
	}
}

// accessLog writes the connection's access-log line: at Info with
// access_log on, at Debug otherwise, and not even formatted when the
// level is off.
func (ft *failoverTarget) accessLog(client *net.TCPConn, start time.Time, info *connInfo) {
	level := slog.LevelDebug
	if ft.app.AccessLog {
		level = slog.LevelInfo
	}
	if !ft.log.Enabled(context.Background(), level) {
		return
	}
	ft.writeAccessLog(level, client, start, info)
}

// writeAccessLog writes the access-log line at level. It is apart from
// accessLog so that the attributes' large frame is only pushed when the
// line is written: within accessLog it grew the relay goroutine's stack
// (a copy) for every connection even with the line off.
//
//go:noinline
func (ft *failoverTarget) writeAccessLog(level slog.Level, client *net.TCPConn, start time.Time, info *connInfo) {
	ft.log.LogAttrs(context.Background(), level, "connection",
		slog.Int("port", int(addrPort(client.LocalAddr()).Port())),
		slog.String("client", info.client.String()),
		slog.String("server_name", info.serverName),
		slog.String("target", info.target),
		slog.Int("attempts", info.attempts),
		slog.Duration("duration", time.Since(start)),
		slog.Int64("bytes_to_target", info.toTarget),
		slog.Int64("bytes_to_client", info.toClient),
		slog.String("result", info.result),
	)
}

// clientAddr is c's peer address for logs, unmapped (see peerAddr).
func clientAddr(c net.Conn) string {
	return peerAddr(c.RemoteAddr()).String()
}
