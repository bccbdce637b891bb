package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/michaeldbianchi/tcpproxy/internal/relay"
	"github.com/michaeldbianchi/tcpproxy/internal/stats"
)

// TLS at run time: termination in the app's Target, after the library
// routed the connection, and TLS to the targets after the dial. The
// relay stays the library's DialProxy, with a relay.Stream (plaintext
// through the *tls.Conn, no splice) on each TLS side.

// targetSessionCacheSize is how many TLS sessions to each target an app
// keeps for resumption (nginx's proxy_ssl_session_reuse, HAProxy's
// default): a new connection to a target resumes instead of a full
// handshake.
const targetSessionCacheSize = 64

// appTLS is one config generation of an app's TLS: the server config
// of its clients' handshakes, behind its certStore, and the client
// config of each of its targets. Immutable once built.
type appTLS struct {
	store   *certStore  // nil: the app does not terminate TLS
	serving *tls.Config // this generation's certificates and settings
	targets []*tls.Config
	status  stats.TLS // what /status and the metrics show, counts aside
}

// certStore is an app's TLS server across config generations. Every
// handshake starts from base, whose GetConfigForClient returns the
// generation in force: a reload changes the certificate of the
// handshakes that start after it, while open connections (and any
// handshake under way) keep theirs; and base's session ticket keys
// carry over, so clients resume across reloads. (Go re-verifies a
// resumed client certificate against the client_ca in force.)
type certStore struct {
	base    *tls.Config
	current atomic.Pointer[tls.Config]
}

func newCertStore(serving *tls.Config) *certStore {
	s := &certStore{}
	s.current.Store(serving)
	s.base = &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return s.current.Load(), nil
	}}
	return s
}

// tlsStats are an app's TLS counters and log limits, carried across
// reloads with its other counters.
type tlsStats struct {
	clientOK, clientFailure atomic.Int64
	targetOK, targetFailure atomic.Int64
	clientLog, targetLog    logLimiter // "TLS handshake failed", per side
}

// tlsFor builds app's TLS for a new generation; prev is the app's
// running generation, whose certStore it takes over (nil: none). It
// returns nil when the app has no TLS.
func tlsFor(app *appConfig, prev *failoverTarget) (*appTLS, error) {
	if app.TLS == nil && app.TargetTLS == nil {
		return nil, nil
	}
	t := &appTLS{}
	if app.TLS != nil {
		if err := t.buildServer(app.TLS); err != nil {
			return nil, fmt.Errorf("app %q: tls: %w", app.Name, err)
		}
		if prev != nil && prev.tls != nil && prev.tls.store != nil {
			t.store = prev.tls.store // takes t.serving at commit
		} else {
			t.store = newCertStore(t.serving)
		}
	}
	if app.TargetTLS != nil {
		if err := t.buildTargets(app); err != nil {
			return nil, fmt.Errorf("app %q: target_tls: %w", app.Name, err)
		}
	}
	return t, nil
}

// commit makes t's certificates those of the app's new handshakes.
func (t *appTLS) commit() {
	if t != nil && t.store != nil {
		t.store.current.Store(t.serving)
	}
}

// buildServer builds the server config of tls: c. The files were
// checked at load; these are the same bytes.
func (t *appTLS) buildServer(c *tlsConfig) error {
	cfg := &tls.Config{MinVersion: c.MinVersion, NextProtos: c.ALPN}
	for _, p := range c.Certificates {
		pair, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
		if err != nil {
			return fmt.Errorf("%s: %w", p.Cert, err)
		}
		cfg.Certificates = append(cfg.Certificates, pair)
		t.status.Certificates = append(t.status.Certificates, certStatus("server", p, pair.Leaf))
	}
	if c.ClientCAPEM != nil {
		cfg.ClientCAs = x509.NewCertPool()
		cfg.ClientCAs.AppendCertsFromPEM(c.ClientCAPEM)
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	t.serving = cfg
	t.status.Terminate, t.status.ClientAuth, t.status.ALPN = true, c.ClientCAPEM != nil, c.ALPN
	t.status.MinVersion = map[uint16]string{tls.VersionTLS12: "1.2", tls.VersionTLS13: "1.3"}[c.MinVersion]
	return nil
}

// buildTargets builds one client config per target of app: the server
// name to send and verify is target_tls.server_name, else the target's
// host.
func (t *appTLS) buildTargets(app *appConfig) error {
	c := app.TargetTLS
	base := &tls.Config{InsecureSkipVerify: c.InsecureSkipVerify}
	if c.CAPEM != nil {
		base.RootCAs = x509.NewCertPool()
		base.RootCAs.AppendCertsFromPEM(c.CAPEM)
	}
	if c.Client != nil {
		pair, err := tls.X509KeyPair(c.Client.CertPEM, c.Client.KeyPEM)
		if err != nil {
			return fmt.Errorf("%s: %w", c.Client.Cert, err)
		}
		base.Certificates = []tls.Certificate{pair}
		t.status.Certificates = append(t.status.Certificates, certStatus("target_client", *c.Client, pair.Leaf))
	}
	for _, tc := range app.Targets {
		cfg := base.Clone()
		cfg.ServerName = c.ServerName
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(tc.Address)
		}
		cfg.ClientSessionCache = tls.NewLRUClientSessionCache(targetSessionCacheSize)
		t.targets = append(t.targets, cfg)
	}
	t.status.Target = true
	return nil
}

// certStatus describes a loaded certificate for /status and metrics.
func certStatus(use string, p certPEM, leaf *x509.Certificate) stats.Certificate {
	return stats.Certificate{Use: use, Subject: certSubject(leaf), Names: certNames(leaf), NotAfter: leaf.NotAfter, File: p.Cert}
}

// tlsSnapshot returns the app's TLS status with its handshake counts,
// or nil when the app has no TLS.
func (ft *failoverTarget) tlsSnapshot() *stats.TLS {
	if ft.tls == nil {
		return nil
	}
	s := ft.tls.status
	s.Certificates = append([]stats.Certificate(nil), s.Certificates...)
	st := &ft.stats.tls
	s.Handshakes = stats.Handshakes{
		ClientOK: st.clientOK.Load(), ClientFailure: st.clientFailure.Load(),
		TargetOK: st.targetOK.Load(), TargetFailure: st.targetFailure.Load(),
	}
	return &s
}

// sentAny is the conn a TLS server reads the client through: it notes
// whether the client sent anything, so that a client that closes
// before its first byte (a TCP health check) is not taken for a failed
// handshake.
type sentAny struct {
	net.Conn
	got bool
}

func (c *sentAny) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.got = c.got || n > 0
	return n, err
}

// sessionTLS is a session's TLS connections, when its app has them.
type sessionTLS struct {
	client *tls.Conn // terminated: the client side, over the library's conn
	target *tls.Conn // target_tls: the target side, over the dialed conn
}

// handshakeClient terminates TLS when the app has tls:, on the
// connection's goroutine, bounded by preread_timeout: on a name-routed
// address the deadline set at accept (it covers the peek too), else from
// now. The handshake reads through c, the conn the library handed over,
// which replays what the library peeked (the ClientHello). It returns
// why the client is turned away, or "".
func (s *session) handshakeClient(c net.Conn) string {
	t := s.ft.tls
	if t == nil || t.store == nil {
		return ""
	}
	deadline := time.Now().Add(s.ft.app.PrereadTimeout)
	if s.accepted != nil && !s.accepted.deadline.IsZero() {
		deadline = s.accepted.deadline
	}
	st := &s.ft.stats.tls
	in := &sentAny{Conn: c}
	tc := tls.Server(in, t.store.base)
	err := s.client.SetDeadline(deadline)
	if err == nil {
		err = tc.Handshake()
	}
	if err == nil {
		err = s.client.SetDeadline(time.Time{}) // relayed from here on: no deadline
	}
	switch {
	case err != nil && !in.got && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)):
		return "closed before the TLS handshake" // a TCP health check: no handshake
	case err != nil:
		st.clientFailure.Add(1)
		st.clientLog.log(s.ft.log, slog.LevelWarn, "TLS handshake failed", "side", "client", "client", s.info.client.String(), "err", err)
		return "tls handshake failed"
	}
	st.clientOK.Add(1)
	s.tls.client, s.peeked = tc, nil // the handshake consumed what was peeked
	return ""
}

// handshakeTarget speaks TLS to target, just dialed, when the app has
// target_tls:, bounded by dial_timeout. A failure is not the target's
// health (a wrong name or CA is the config's), so it marks nothing down
// and tries no other target; it closes target. It returns why the client
// is turned away, or "".
func (s *session) handshakeTarget(target *net.TCPConn) string {
	t := s.ft.tls
	if t == nil || t.targets == nil {
		return ""
	}
	i := s.targetIndex()
	st := &s.ft.stats.tls
	tc := tls.Client(target, t.targets[i])
	err := target.SetDeadline(time.Now().Add(s.ft.app.DialTimeout))
	if err == nil {
		err = tc.Handshake()
	}
	if err == nil {
		err = target.SetDeadline(time.Time{})
	}
	if err != nil {
		target.Close()
		st.targetFailure.Add(1)
		st.targetLog.log(s.ft.log, slog.LevelError, "TLS handshake failed", "side", "target", "client", s.info.client.String(), "target", s.info.target, "err", err)
		return "target tls handshake failed"
	}
	st.targetOK.Add(1)
	s.tls.target = tc
	return ""
}

// targetIndex is the index, in the app's targets, of the session's.
func (s *session) targetIndex() int {
	for i, ts := range s.ft.targets {
		if ts == s.ts {
			return i
		}
	}
	return -1 // not reached: connect set s.ts to one of them
}

// relayEnd is one side of a relayed pair as the session hands it to the
// library's DialProxy: a relay.Conn (plain TCP, spliced) or a
// relay.Stream (TLS, copied through the *tls.Conn).
type relayEnd interface {
	net.Conn
	BytesRead() int64
	Panicked() any
}

// relayEnds wraps the client and the target for the relay, sharing idle.
func (s *session) relayEnds(target *net.TCPConn, idle *relay.Idle) (client, dst relayEnd) {
	if s.tls.client != nil {
		client = relay.NewStream(s.tls.client, s.client, idle)
	} else {
		client = relay.New(s.client, idle)
	}
	if s.tls.target != nil {
		dst = relay.NewStream(s.tls.target, target, idle)
	} else {
		dst = relay.New(target, idle)
	}
	return client, dst
}
