package admin

import (
	"testing"
	"time"

	"github.com/michaeldbianchi/tcpproxy/internal/stats"
)

func TestHumanBytes(t *testing.T) {
	tests := []struct {
		n    int64
		want string
	}{
		{0, "0 B"},
		{1023, "1023 B"},
		{1024, "1.00 KiB"},
		{1536, "1.50 KiB"},
		{200 << 20, "200.0 MiB"},
		{5 << 30, "5.00 GiB"},
		{1 << 62, "4.00 EiB"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := humanBytes(tt.n); got != tt.want {
				t.Errorf("humanBytes(%d) = %q, want %q", tt.n, got, tt.want)
			}
		})
	}
}

func TestHumanDuration(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "0s"},
		{1400 * time.Millisecond, "1s"},
		{5*time.Minute + 12*time.Second, "5m12s"},
		{3*time.Hour + 4*time.Minute + 59*time.Second, "3h4m"},
		{50 * time.Hour, "2d2h"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := humanDuration(tt.d); got != tt.want {
				t.Errorf("humanDuration(%v) = %q, want %q", tt.d, got, tt.want)
			}
		})
	}
}

func TestListenHost(t *testing.T) {
	tests := map[string]string{"": "*", "127.0.0.1": "127.0.0.1", "::1": "[::1]", "proxy.local": "proxy.local"}
	for in, want := range tests {
		t.Run(want, func(t *testing.T) {
			if got := listenHost(in); got != want {
				t.Errorf("listenHost(%q) = %q, want %q", in, got, want)
			}
		})
	}
}

// TestTLSView: what the page says of an app's TLS, and each
// certificate's expiry coloured by how close it is.
func TestTLSView(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	cert := func(use string, left time.Duration) stats.Certificate {
		return stats.Certificate{Use: use, Subject: "CN=x", Names: []string{"x.test", "10.0.0.1"}, NotAfter: now.Add(left)}
	}
	tests := []struct {
		name     string
		tls      stats.TLS
		want     string
		wantCert certView
	}{
		{"terminates", stats.TLS{Terminate: true, MinVersion: "1.3", ALPN: []string{"h2", "http/1.1"}, ClientAuth: true,
			Certificates: []stats.Certificate{cert("server", 90*24*time.Hour)}, Handshakes: stats.Handshakes{ClientOK: 3, ClientFailure: 1}},
			"terminates (min version 1.3, ALPN h2, http/1.1, client certificates required), handshakes 3 ok, 1 failed",
			certView{Subject: "CN=x", Names: "x.test, 10.0.0.1", NotAfter: "2026-07-30T12:00:00Z", Left: "in 90d0h", State: "ok"}},
		{"expiring", stats.TLS{Terminate: true, MinVersion: "1.2", Certificates: []stats.Certificate{cert("server", 49*time.Hour)}},
			"terminates (min version 1.2), handshakes 0 ok, 0 failed",
			certView{Subject: "CN=x", Names: "x.test, 10.0.0.1", NotAfter: "2026-05-03T13:00:00Z", Left: "in 2d1h", State: "expiring"}},
		{"to targets, expired client certificate", stats.TLS{Target: true, Certificates: []stats.Certificate{cert("target_client", -time.Hour)}, Handshakes: stats.Handshakes{TargetFailure: 2}},
			"to targets, handshakes 0 ok, 2 failed",
			certView{Subject: "CN=x (shown to targets)", Names: "x.test, 10.0.0.1", NotAfter: "2026-05-01T11:00:00Z", Left: "expired 1h0m ago", State: "expired"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, certs := tlsViewOf(&tt.tls, now)
			if got != tt.want || len(certs) != 1 || certs[0] != tt.wantCert {
				t.Errorf("tlsViewOf = %q, %+v\nwant       %q, %+v", got, certs, tt.want, tt.wantCert)
			}
		})
	}
}
