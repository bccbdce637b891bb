package relay

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"syscall"
	"testing"
	"time"
)

// testCert is a self-signed ECDSA P-256 certificate for the TLS tests.
func testCert(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "relay.test"},
		DNSNames:     []string{"relay.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// tlsSetup builds TLS client <-> [Stream | Conn] <-> plain server, the
// proxy terminating TLS and relaying like the library's DialProxy. It
// returns the client's TLS conn and raw socket, the server, the
// proxy's two ends, and a channel closed when both directions ended.
func tlsSetup(t *testing.T, maxVersion uint16, idle *Idle) (*tls.Conn, *net.TCPConn, *net.TCPConn, *Stream, *Conn, <-chan struct{}) {
	t.Helper()
	ln := listen(t)
	clientRaw, frontRaw := connPair(t, ln)
	back, server := connPair(t, ln)
	client := tls.Client(clientRaw, &tls.Config{ServerName: "relay.test", InsecureSkipVerify: true, MaxVersion: maxVersion})
	front := tls.Server(frontRaw, &tls.Config{Certificates: []tls.Certificate{testCert(t)}})
	hs := make(chan error, 1)
	go func() { hs <- front.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-hs; err != nil {
		t.Fatal(err)
	}
	s, b := NewStream(front, frontRaw, idle), New(back, idle)
	done := make(chan struct{})
	errc := make(chan error, 2)
	var errs [2]error
	go proxyCopy(errc, &errs[0], b, s, false, false)
	go proxyCopy(errc, &errs[1], s, b, false, false)
	go func() {
		<-errc
		<-errc
		s.Close()
		b.Close()
		close(done)
	}()
	t.Cleanup(func() {
		clientRaw.Close()
		server.Close()
		<-done
	})
	return client, clientRaw, server, s, b, done
}

// TestStreamRelaysTLS: bytes both ways through a terminated TLS side,
// intact and counted in plaintext, and each side's end passes through:
// the client's close_notify reaches the server as EOF, the server's FIN
// reaches the client as close_notify then EOF.
func TestStreamRelaysTLS(t *testing.T) {
	sizes := []int64{0, 1, 100, 16<<10 + 1, 4<<20 + 3}
	for _, withIdle := range []bool{false, true} {
		for _, n := range sizes {
			name := map[bool]string{false: "no timeouts", true: "timeouts"}[withIdle]
			t.Run(name+"/"+big.NewInt(n).String(), func(t *testing.T) {
				var idle *Idle
				if withIdle {
					idle = NewTimeouts(time.Minute, time.Minute)
				}
				client, _, server, s, b, done := tlsSetup(t, 0, idle)
				up := make(chan sent, 1)
				go func() {
					sum, err := send(client, n, 1)
					if err == nil {
						err = client.CloseWrite() // close_notify
					}
					up <- sent{sum, err}
				}()
				down := sendAndClose(server, n/2, 2)
				gotUp, sumUp, err := recv(server)
				if err != nil {
					t.Fatalf("server read: %v", err)
				}
				gotDown, sumDown, err := recv(client)
				if err != nil {
					t.Fatalf("client read: %v (a clean end must arrive as close_notify)", err)
				}
				u, d := <-up, <-down
				if u.err != nil || d.err != nil {
					t.Fatalf("send: %v, %v", u.err, d.err)
				}
				if gotUp != n || sumUp != u.sum || gotDown != n/2 || sumDown != d.sum {
					t.Fatalf("relayed %d up (sum ok %v), %d down (sum ok %v); want %d, %d", gotUp, sumUp == u.sum, gotDown, sumDown == d.sum, n, n/2)
				}
				<-done
				if s.BytesRead() != n || b.BytesRead() != n/2 {
					t.Errorf("counted %d up, %d down; want %d, %d", s.BytesRead(), b.BytesRead(), n, n/2)
				}
			})
		}
	}
}

// TestStreamCutSendsNoCloseNotify: a pair cut for idleness must not look
// complete to the TLS client (no close_notify alert), while a clean end
// sends one. TLS 1.2 keeps the alert's record type in the clear, so the
// client's raw socket shows it.
func TestStreamCutSendsNoCloseNotify(t *testing.T) {
	tests := []struct {
		name      string
		idle      *Idle
		end       func(server *net.TCPConn)
		wantAlert bool
	}{
		{"idle timeout", newIdle(testIdle), func(*net.TCPConn) {}, false},
		{"server finished", nil, func(s *net.TCPConn) { s.CloseWrite() }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, raw, server, _, _, done := tlsSetup(t, tls.VersionTLS12, tt.idle)
			tt.end(server)
			raw.SetReadDeadline(time.Now().Add(20 * testIdle))
			got, err := io.ReadAll(raw)
			if err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("client raw read: %v", err)
			}
			alert := len(got) >= 5 && got[0] == 21 // TLS record type alert
			if alert != tt.wantAlert {
				t.Fatalf("client got %d bytes (% x), alert %v; want alert %v", len(got), got[:min(len(got), 8)], alert, tt.wantAlert)
			}
			if tt.idle != nil {
				server.Close()
				<-done
				if !tt.idle.TimedOut() {
					t.Error("TimedOut() = false after the idle cut")
				}
			}
		})
	}
}
