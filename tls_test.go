package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// tlsTest holds what the TLS tests share: a server CA with certificates
// for a.test and b.test (and 127.0.0.1, db.internal) on disk, and a
// client CA with a client certificate.
type tlsTest struct {
	dir                                string
	ca, clientCA                       *testCA
	a, b, db, ip                       issued
	aCert, aKey, bCert, bKey, caPath   string
	clientCAPath, dbCert, dbKey, ipKey string
	ipCert                             string
	client, strangerClient             issued
}

func newTLSTest(t *testing.T) *tlsTest {
	t.Helper()
	x := &tlsTest{dir: t.TempDir(), ca: newTestCA(t, "Test CA"), clientCA: newTestCA(t, "Client CA")}
	x.a = x.ca.issue(t, "a.test", []string{"a.test"}, inDays(90), false)
	x.b = x.ca.issue(t, "b.test", []string{"b.test", "*.b.test"}, inDays(90), false)
	x.db = x.ca.issue(t, "db.internal", []string{"db.internal"}, inDays(90), false)
	x.ip = x.ca.issue(t, "loopback", []string{"127.0.0.1"}, inDays(90), false)
	x.aCert, x.aKey = x.a.write(t, x.dir, "a")
	x.bCert, x.bKey = x.b.write(t, x.dir, "b")
	x.dbCert, x.dbKey = x.db.write(t, x.dir, "db")
	x.ipCert, x.ipKey = x.ip.write(t, x.dir, "ip")
	x.caPath, x.clientCAPath = filepath.Join(x.dir, "ca.pem"), filepath.Join(x.dir, "client-ca.pem")
	writeFile(t, x.caPath, x.ca.pem)
	writeFile(t, x.clientCAPath, x.clientCA.pem)
	x.client = x.clientCA.issue(t, "client one", nil, inDays(30), true)
	x.strangerClient = newTestCA(t, "Stranger CA").issue(t, "stranger", nil, inDays(30), true)
	return x
}

// tlsKeys is the tls: block (as appYAML's extra) terminating with the
// given certificate and key files, plus extra lines inside tls:.
func tlsKeys(pairs [][2]string, extra ...string) string {
	var b strings.Builder
	b.WriteString("tls:\n  certificates:\n")
	for _, p := range pairs {
		fmt.Fprintf(&b, "  - {cert: %q, key: %q}\n", p[0], p[1])
	}
	for _, e := range extra {
		b.WriteString("  " + e + "\n")
	}
	return b.String()
}

// dialTLSProxy handshakes with the proxy on port as a TLS client.
func dialTLSProxy(t testing.TB, port int, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	raw := dialProxy(t, port)
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(raw, cfg)
	return c, c.Handshake()
}

// echoCheck reads the backend's name line through c, then sends n
// random bytes and expects them echoed intact.
func echoCheck(t testing.TB, c net.Conn, wantName string, n int) {
	t.Helper()
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil || strings.TrimSuffix(line, "\n") != wantName {
		t.Fatalf("first line %q, %v; want %q", line, err, wantName)
	}
	out := make([]byte, n)
	rand.Read(out)
	go c.Write(out)
	in := make([]byte, n)
	if _, err := io.ReadFull(r, in); err != nil {
		t.Fatalf("echo: %v", err)
	}
	if !bytes.Equal(in, out) {
		t.Fatal("echo differs from what was sent")
	}
}

// TestTLSTerminate: the proxy terminates TLS with the certificate
// crypto/tls picks by SNI among an app's, and on an SNI-routed address
// the app the library's SNI route chose terminates with its own (the
// ClientHello was only peeked); passthrough apps on that address stay
// untouched. Bytes go through intact both ways, and count in plaintext.
func TestTLSTerminate(t *testing.T) {
	x := newTLSTest(t)
	a, b := startBackend(t, namedHandler("A")), startBackend(t, namedHandler("B"))
	pass := tlsBackend(t, "passthrough", "other.test")
	plain, shared := freePort(t), freePort(t)
	srv, _ := startProxy(t, "apps:\n"+
		appYAML("both", []int{plain}, []string{a.addr}, tlsKeys([][2]string{{x.aCert, x.aKey}, {x.bCert, x.bKey}}))+
		appYAML("a", []int{shared}, []string{a.addr}, "sni: [a.test]\n"+tlsKeys([][2]string{{x.aCert, x.aKey}}))+
		appYAML("b", []int{shared}, []string{b.addr}, "sni: [\"*.b.test\"]\n"+tlsKeys([][2]string{{x.bCert, x.bKey}}))+
		appYAML("pass", []int{shared}, []string{pass.addr}, ""))
	tests := []struct {
		name, sni, wantCN, wantLine string
		port                        int
		verify                      bool
	}{
		{"own port, a.test", "a.test", "a.test", "A", plain, true},
		{"own port, b.test", "b.test", "b.test", "A", plain, true},
		{"own port, no SNI: the first", "", "a.test", "A", plain, false},
		{"SNI route a", "a.test", "a.test", "A", shared, true},
		{"SNI route b, wildcard", "x.b.test", "b.test", "B", shared, true},
		{"SNI route to passthrough", "other.test", "passthrough", "passthrough", shared, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := dialTLSProxy(t, tt.port, &tls.Config{ServerName: tt.sni, RootCAs: x.ca.pool, InsecureSkipVerify: !tt.verify})
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			if cn := c.ConnectionState().PeerCertificates[0].Subject.CommonName; cn != tt.wantCN {
				t.Fatalf("certificate %q, want %q", cn, tt.wantCN)
			}
			echoCheck(t, c, tt.wantLine, 300<<10)
		})
	}
	st := srv.appAt(0).stats
	if ok, fail := st.tls.clientOK.Load(), st.tls.clientFailure.Load(); ok != 3 || fail != 0 {
		t.Errorf("handshakes of app both: %d ok, %d failed; want 3, 0", ok, fail)
	}
	waitFor(t, 5*time.Second, "the plaintext bytes to be counted", func() bool {
		return st.bytesToTarget.Load() == 3*300<<10 && st.bytesToClient.Load() == 3*(2+300<<10)
	})
}

// TestTLSClientAuth: with client_ca, a client certificate from that CA
// is accepted; none, or one from another CA, is refused before any
// target is dialed, and counted.
func TestTLSClientAuth(t *testing.T) {
	x := newTLSTest(t)
	be := startBackend(t, namedHandler("A"))
	port := freePort(t)
	srv, log := startProxy(t, "apps:\n"+appYAML("mtls", []int{port}, []string{be.addr},
		tlsKeys([][2]string{{x.aCert, x.aKey}}, "client_ca: "+x.clientCAPath)))
	tests := []struct {
		name  string
		certs []tls.Certificate
		ok    bool
	}{
		{"certificate from client_ca", []tls.Certificate{x.client.pair}, true},
		{"no certificate", nil, false},
		{"certificate from another CA", []tls.Certificate{x.strangerClient.pair}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := be.accepted.Load()
			c, err := dialTLSProxy(t, port, &tls.Config{ServerName: "a.test", RootCAs: x.ca.pool, Certificates: tt.certs})
			if err == nil {
				// TLS 1.3: the server's verdict on the client's certificate
				// arrives after the client's handshake is done.
				_, err = bufio.NewReader(c).ReadString('\n')
			}
			if tt.ok != (err == nil) {
				t.Fatalf("err = %v, want ok %v", err, tt.ok)
			}
			if !tt.ok && be.accepted.Load() != before {
				t.Fatal("a refused client reached the target")
			}
		})
	}
	st := &srv.appAt(0).stats.tls
	waitFor(t, 5*time.Second, "the handshakes to be counted", func() bool { return st.clientOK.Load() == 1 && st.clientFailure.Load() == 2 })
	if !strings.Contains(log.String(), `msg="TLS handshake failed" app=mtls side=client`) {
		t.Errorf("refusal not logged:\n%s", log)
	}
}

// tlsTargetBackend serves TLS with cert (requiring client certificates
// from clientCAs if given), then writes name and echoes.
func tlsTargetBackend(t *testing.T, name string, cert tls.Certificate, clientCAs *x509.CertPool) *backend {
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	if clientCAs != nil {
		cfg.ClientCAs, cfg.ClientAuth = clientCAs, tls.RequireAndVerifyClientCert
	}
	return startBackend(t, func(c net.Conn) {
		tc := tls.Server(c, cfg)
		if tc.Handshake() == nil {
			namedHandler(name)(tc)
		}
	})
}

// TestTLSToTarget: target_tls verifies the target's certificate against
// ca for server_name (default: the target's host), shows a client
// certificate when asked, and refuses, logs and counts a target whose
// certificate does not verify, without marking it down.
func TestTLSToTarget(t *testing.T) {
	x := newTLSTest(t)
	db := tlsTargetBackend(t, "db", x.db.pair, nil)
	ip := tlsTargetBackend(t, "ip", x.ip.pair, nil)
	mtls := tlsTargetBackend(t, "mtls", x.db.pair, x.clientCA.pool)
	clientCert, clientKey := x.client.write(t, x.dir, "client")
	const (
		ok       = iota
		refused  // the proxy's handshake with the target fails
		cutAfter // TLS 1.3: the target refuses after the proxy's side is done; the relay ends at once
	)
	tests := []struct {
		name, target, keys, want string
		clientTLS                bool
		outcome                  int
	}{
		{"ca and server_name", db.addr, "{server_name: db.internal, ca: %q}", "db", false, ok},
		{"default name: the target's host", ip.addr, "{ca: %q}", "ip", false, ok},
		{"terminated and to target", db.addr, "{server_name: db.internal, ca: %q}", "db", true, ok},
		{"client certificate", mtls.addr, "{server_name: db.internal, ca: %q, cert: " + clientCert + ", key: " + clientKey + "}", "mtls", false, ok},
		{"wrong name", db.addr, "{server_name: other.internal, ca: %q}", "", false, refused},
		{"no client certificate", mtls.addr, "{server_name: db.internal, ca: %q}", "", false, cutAfter},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port := freePort(t)
			extra := "target_tls: " + fmt.Sprintf(tt.keys, x.caPath)
			if tt.clientTLS {
				extra += "\n" + tlsKeys([][2]string{{x.aCert, x.aKey}})
			}
			srv, log := startProxy(t, "apps:\n"+appYAML("app", []int{port}, []string{tt.target}, extra))
			var c net.Conn
			if tt.clientTLS {
				tc, err := dialTLSProxy(t, port, &tls.Config{ServerName: "a.test", RootCAs: x.ca.pool})
				if err != nil {
					t.Fatal(err)
				}
				c = tc
			} else {
				c = dialProxy(t, port)
			}
			st := &srv.appAt(0).stats.tls
			if tt.outcome == ok {
				echoCheck(t, c, tt.want, 100<<10)
				if st.targetOK.Load() != 1 {
					t.Errorf("target handshakes ok = %d, want 1", st.targetOK.Load())
				}
				return
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if got, err := io.ReadAll(c); err != nil || len(got) != 0 {
				t.Fatalf("client got %q, %v; want EOF", got, err)
			}
			if tt.outcome == cutAfter {
				return
			}
			if st.targetFailure.Load() != 1 || !strings.Contains(log.String(), `msg="TLS handshake failed" app=app side=target`) ||
				!strings.Contains(log.String(), "certificate is valid for db.internal, not other.internal") {
				t.Fatalf("target handshake failures %d; log:\n%s", st.targetFailure.Load(), log)
			}
			if !srv.appAt(0).targets[0].health.Up() {
				t.Error("a target refused for its certificate was marked down")
			}
		})
	}
}

// TestTLSReloadNewCertificate: a reload (same config, new files) gives
// new connections the new certificate, while a connection made with the
// old one works on, and a session from before the reload resumes.
func TestTLSReloadNewCertificate(t *testing.T) {
	x := newTLSTest(t)
	be := startBackend(t, namedHandler("A"))
	port := freePort(t)
	text := "apps:\n" + appYAML("web", []int{port}, []string{be.addr}, tlsKeys([][2]string{{x.aCert, x.aKey}}))
	srv, _ := startProxy(t, text)
	cfg := &tls.Config{ServerName: "a.test", RootCAs: x.ca.pool}
	old, err := dialTLSProxy(t, port, cfg)
	if err != nil {
		t.Fatal(err)
	}
	echoCheck(t, old, "A", 1000)
	// A client that keeps sessions, to resume after the reload.
	resuming := &tls.Config{ServerName: "a.test", RootCAs: x.ca.pool, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	first, err := dialTLSProxy(t, port, resuming)
	if err != nil {
		t.Fatal(err)
	}
	echoCheck(t, first, "A", 10) // reads the session ticket too
	first.Close()

	renewed := x.ca.issue(t, "a.test renewed", []string{"a.test"}, inDays(180), false)
	renewed.write(t, x.dir, "a")
	if sum := applyYAML(t, srv, text); len(sum.changed) != 1 {
		t.Fatalf("reload with new files: changed %v, want [web]", sum.changed)
	}
	c, err := dialTLSProxy(t, port, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if cn := c.ConnectionState().PeerCertificates[0].Subject.CommonName; cn != "a.test renewed" {
		t.Fatalf("new connection got %q, want the renewed certificate", cn)
	}
	echoCheck(t, c, "A", 1000)
	if cn := old.ConnectionState().PeerCertificates[0].Subject.CommonName; cn != "a.test" {
		t.Fatalf("old connection's certificate %q", cn)
	}
	msg := []byte("still here")
	if _, err := old.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(old, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("old connection after the reload: %q, %v", got, err)
	}
	again, err := dialTLSProxy(t, port, resuming)
	if err != nil {
		t.Fatal(err)
	}
	if !again.ConnectionState().DidResume {
		t.Error("a session from before the reload did not resume: the ticket keys were not carried over")
	}
}

// TestTLSHandshakeStallsAndGarbage: a client that stalls mid-handshake
// is closed at preread_timeout, on its own port (where the proxy bounds
// the handshake itself) and on an SNI-routed one (the deadline set at
// accept); garbage instead of a ClientHello is closed at once. None
// reaches the target; each is counted and logged, rate-limited. A
// client that closes before sending a byte is no failed handshake.
func TestTLSHandshakeStallsAndGarbage(t *testing.T) {
	x := newTLSTest(t)
	be := startBackend(t, namedHandler("A"))
	plain, shared := freePort(t), freePort(t)
	// Long enough that the library's peek routes the stalled client on
	// the SNI port before it, on a loaded machine under -race.
	const preread = time.Second
	srv, log := startProxy(t, "apps:\n"+
		appYAML("own", []int{plain}, []string{be.addr}, "preread_timeout: 1s\n"+tlsKeys([][2]string{{x.aCert, x.aKey}}))+
		appYAML("named", []int{shared}, []string{be.addr}, "preread_timeout: 1s\nsni: [a.test]\n"+tlsKeys([][2]string{{x.aCert, x.aKey}})))
	hello := clientHello(t, "a.test")
	tests := []struct {
		name  string
		port  int
		send  []byte
		stall bool // closed at preread_timeout, not at once
	}{
		{"own port: stalls after the ClientHello", plain, hello, true},
		{"own port: stalls mid-ClientHello", plain, hello[:len(hello)/2], true},
		{"own port: sends nothing", plain, nil, true},
		{"SNI route: stalls after the ClientHello", shared, hello, true},
		{"own port: garbage", plain, []byte("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"), false},
		{"own port: binary garbage", plain, bytes.Repeat([]byte{0x16, 0x03, 0x01, 0xff, 0xff}, 8), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			c := dialProxy(t, tt.port)
			c.Write(tt.send)
			c.SetReadDeadline(start.Add(10 * time.Second))
			_, err := io.Copy(io.Discard, c) // the server's hello, if any, then the close
			if err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("read: %v: not closed", err)
			}
			if d := time.Since(start); tt.stall && d < preread-50*time.Millisecond {
				t.Fatalf("closed after %v, before preread_timeout", d)
			}
		})
	}
	if n := be.accepted.Load(); n != 0 {
		t.Fatalf("the target saw %d connections", n)
	}
	own, named := &srv.appAt(0).stats.tls, &srv.appAt(1).stats.tls
	for deadline := time.Now().Add(5 * time.Second); own.clientFailure.Load() != 5 || named.clientFailure.Load() != 1; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("failed handshakes counted: own port %d, want 5; SNI route %d, want 1; log:\n%s", own.clientFailure.Load(), named.clientFailure.Load(), log)
		}
	}
	waitFor(t, 5*time.Second, "the suppressed failures to be summed up", func() bool {
		return strings.Contains(log.String(), `msg="TLS handshake failed" app=own suppressed=`)
	})
	for _, want := range []string{"i/o timeout", "first record does not look like a TLS handshake"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	// A TCP health check connects and closes: that is no handshake.
	dialProxy(t, plain).Close()
	waitFor(t, 5*time.Second, "the health check's connection to end", func() bool {
		return strings.Contains(log.String(), `result="closed before the TLS handshake"`)
	})
	if n := own.clientFailure.Load(); n != 5 {
		t.Errorf("a connection closed before its first byte counted as a failed handshake (%d)", n)
	}
}

// TestTLSIdleTimeoutAndAccessLog: idle_timeout applies to a terminated
// connection, and the access log counts plaintext bytes.
func TestTLSIdleTimeoutAndAccessLog(t *testing.T) {
	x := newTLSTest(t)
	be := startBackend(t, namedHandler("A"))
	port := freePort(t)
	srv, log := startProxy(t, "apps:\n"+appYAML("idle", []int{port}, []string{be.addr}, "idle_timeout: 300ms\naccess_log: true\n"+tlsKeys([][2]string{{x.aCert, x.aKey}})))
	c, err := dialTLSProxy(t, port, &tls.Config{ServerName: "a.test", RootCAs: x.ca.pool})
	if err != nil {
		t.Fatal(err)
	}
	echoCheck(t, c, "A", 1000)
	start := time.Now()
	c.SetReadDeadline(start.Add(10 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("read: %v", err)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("closed after %v, before idle_timeout", d)
	}
	waitFor(t, 5*time.Second, "the access log line", func() bool {
		return strings.Contains(log.String(), "bytes_to_target=1000 bytes_to_client=1002 result=\"idle timeout\"")
	})
	if n := srv.appAt(0).stats.idleTimeouts.Load(); n != 1 {
		t.Errorf("idle timeouts %d, want 1", n)
	}
}

// TestTLSManyConnections: concurrent terminated connections, each its
// own handshake and echo, all intact.
func TestTLSManyConnections(t *testing.T) {
	x := newTLSTest(t)
	be := startBackend(t, namedHandler("A"))
	port := freePort(t)
	srv, _ := startProxy(t, "apps:\n"+appYAML("many", []int{port}, []string{be.addr}, tlsKeys([][2]string{{x.aCert, x.aKey}})))
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dialTLSProxy(t, port, &tls.Config{ServerName: "a.test", RootCAs: x.ca.pool})
			if err != nil {
				t.Error(err)
				return
			}
			echoCheck(t, c, "A", 64<<10)
			c.Close()
		}()
	}
	wg.Wait()
	waitFor(t, 5*time.Second, "every connection to end", func() bool { return srv.appAt(0).stats.active.Load() == 0 })
}

// TestTLSWithProxyProtocol: a PROXY header comes before TLS both ways,
// as HAProxy and AWS NLBs send it: read from the client before the
// handshake (accept_proxy_protocol), sent to the target before the
// target handshake (proxy_protocol with target_tls).
func TestTLSWithProxyProtocol(t *testing.T) {
	x := newTLSTest(t)
	plain := startBackend(t, namedHandler("A"))
	headers := make(chan string, 1)
	tlsAfterHeader := startBackend(t, func(c net.Conn) {
		r := bufio.NewReader(c)
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		headers <- line
		tc := tls.Server(bufferedConn{c, r}, &tls.Config{Certificates: []tls.Certificate{x.db.pair}})
		if tc.Handshake() == nil {
			namedHandler("db")(tc)
		}
	})
	in, out := freePort(t), freePort(t)
	srv, log := startProxy(t, "apps:\n"+
		appYAML("in", []int{in}, []string{plain.addr}, "accept_proxy_protocol: true\nproxy_protocol_from: [127.0.0.1]\naccess_log: true\n"+tlsKeys([][2]string{{x.aCert, x.aKey}}))+
		appYAML("out", []int{out}, []string{tlsAfterHeader.addr}, fmt.Sprintf("proxy_protocol: 1\ntarget_tls: {server_name: db.internal, ca: %q}", x.caPath)))

	t.Run("from the client", func(t *testing.T) {
		raw := dialProxy(t, in)
		raw.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(raw, "PROXY TCP4 192.0.2.7 127.0.0.1 40000 443\r\n")
		c := tls.Client(raw, &tls.Config{ServerName: "a.test", RootCAs: x.ca.pool})
		echoCheck(t, c, "A", 1000)
		c.Close()
		waitFor(t, 5*time.Second, "the access log line with the header's client", func() bool {
			return strings.Contains(log.String(), "app=in port=") && strings.Contains(log.String(), "client=192.0.2.7:40000")
		})
		if n := srv.appAt(0).stats.tls.clientOK.Load(); n != 1 {
			t.Errorf("handshakes ok %d, want 1", n)
		}
	})
	t.Run("to the target", func(t *testing.T) {
		echoCheck(t, dialProxy(t, out), "db", 1000)
		if h := <-headers; !strings.HasPrefix(h, "PROXY TCP4 127.0.0.1 127.0.0.1 ") {
			t.Fatalf("target got %q before TLS, want a PROXY v1 header", h)
		}
	})
}

// bufferedConn is a conn whose first bytes were read into r.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
