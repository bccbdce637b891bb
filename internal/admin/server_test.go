package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"reflect"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/michaeldbianchi/tcpproxy/internal/metrics"
	"github.com/michaeldbianchi/tcpproxy/internal/stats"
)

var errAt = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

// sampleSnapshot has an app with an up target and a down backup one, and
// an app with nothing in it yet.
func sampleSnapshot() stats.Snapshot {
	at := errAt
	return stats.Snapshot{
		Apps: []stats.App{
			{
				Name: "web", Listen: "127.0.0.1", Ports: []int{5001, 5200}, Balance: "round_robin", SNI: []string{"a.example.com"},
				Active: 3, Total: 120, RejectedLimit: 4, RejectedDenied: 2, Failed: 1,
				BytesToTarget: 1 << 20, BytesToClient: 5 << 20,
				Duration:       stats.Histogram{Count: 1, Sum: 0.5, Buckets: map[float64]uint64{1: 1}},
				MaxConnections: 1000,
				HealthChecks:   "passive (max_fails 1, fail_timeout 10s), active (interval 5s, timeout 1s, rise 2, fall 3)",
				Targets: []stats.Target{
					{Address: "127.0.0.1:9001", Up: true, Weight: 2, Active: 3, Total: 110, Dials: 111, Failures: 1},
					{Address: "backend.internal:9003", Weight: 1, Backup: true, Total: 10, Dials: 25, Failures: 15,
						LastError: "dial tcp 10.0.0.3:9003: connect: connection refused", LastErrorAt: &at,
						DownBy: "active", DownSince: &at},
					{Address: "127.0.0.1:9002", Up: true, Weight: 1, Drain: true},
				},
				TLS: &stats.TLS{Terminate: true, MinVersion: "1.2", ALPN: []string{"h2"}, Target: true,
					Certificates: []stats.Certificate{{Use: "server", Subject: "CN=a.example.com", Names: []string{"a.example.com"},
						NotAfter: time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC), File: "/etc/tcpproxy/a.pem"}},
					Handshakes: stats.Handshakes{ClientOK: 7, ClientFailure: 1, TargetOK: 6}},
			},
			{Name: "idle", Balance: "random"},
		},
		Listeners: []stats.Listener{{Listen: "127.0.0.1:5001", UnroutedNoMatch: 3, UnroutedPrereadTimeout: 1}},
		Reloads:   stats.Reloads{Success: 2, LastSuccess: errAt},
	}
}

// serve runs a Server with o on a loopback port and returns its base URL.
// The server is shut down when the test ends, and Serve must then have
// returned nil.
func serve(t *testing.T, o Options) (*Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(o)
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve after Shutdown: %v", err)
		}
	})
	return s, "http://" + ln.Addr().String()
}

type response struct {
	status int
	header http.Header
	body   string
}

func get(t *testing.T, url string) response {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

func TestStatusJSON(t *testing.T) {
	tests := []struct {
		name string
		snap stats.Snapshot
		want string
	}{
		{
			name: "sample",
			snap: sampleSnapshot(),
			want: `{"apps": [
				{"name": "web", "listen": "127.0.0.1", "ports": [5001, 5200], "balance": "round_robin", "sni": ["a.example.com"], "http_host": [],
				 "active": 3, "total": 120, "rejected_limit": 4, "rejected_denied": 2, "rejected_untrusted_proxy": 0, "failed": 1, "idle_timeouts": 0,
				 "bytes_to_target": 1048576, "bytes_to_client": 5242880,
				 "max_connections": 1000,
				 "health_checks": "passive (max_fails 1, fail_timeout 10s), active (interval 5s, timeout 1s, rise 2, fall 3)",
				 "rates": {"connections_per_second": 0, "bytes_to_target_per_second": 0, "bytes_to_client_per_second": 0},
				 "targets": [
					{"address": "127.0.0.1:9001", "up": true, "weight": 2, "backup": false,
					 "active": 3, "total": 110, "dials": 111, "failures": 1,
					 "last_error": "", "last_error_at": null, "drain": false, "down_by": "", "down_since": null},
					{"address": "backend.internal:9003", "up": false, "weight": 1, "backup": true,
					 "active": 0, "total": 10, "dials": 25, "failures": 15,
					 "last_error": "dial tcp 10.0.0.3:9003: connect: connection refused",
					 "last_error_at": "2026-05-01T12:00:00Z", "drain": false, "down_by": "active", "down_since": "2026-05-01T12:00:00Z"},
					{"address": "127.0.0.1:9002", "up": true, "weight": 1, "backup": false,
					 "active": 0, "total": 0, "dials": 0, "failures": 0,
					 "last_error": "", "last_error_at": null, "drain": true, "down_by": "", "down_since": null}
				 ],
				 "tls": {"terminate": true, "client_auth": false, "min_version": "1.2", "alpn": ["h2"], "target": true,
				  "certificates": [{"use": "server", "subject": "CN=a.example.com", "names": ["a.example.com"],
				   "not_after": "2099-01-01T00:00:00Z", "file": "/etc/tcpproxy/a.pem"}],
				  "handshakes": {"client_ok": 7, "client_failure": 1, "target_ok": 6, "target_failure": 0}}},
				{"name": "idle", "listen": "", "ports": [], "balance": "random", "sni": [], "http_host": [],
				 "active": 0, "total": 0, "rejected_limit": 0, "rejected_denied": 0, "rejected_untrusted_proxy": 0, "failed": 0, "idle_timeouts": 0,
				 "bytes_to_target": 0, "bytes_to_client": 0, "max_connections": 0, "health_checks": "",
				 "rates": {"connections_per_second": 0, "bytes_to_target_per_second": 0, "bytes_to_client_per_second": 0},
				 "targets": [], "tls": null}
			],
			"listeners": [{"listen": "127.0.0.1:5001", "unrouted_no_match": 3, "unrouted_preread_timeout": 1}]}`,
		},
		{
			name: "no apps",
			snap: stats.Snapshot{},
			want: `{"apps": [], "listeners": []}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, base := serve(t, Options{Snapshot: func() stats.Snapshot { return tt.snap }})
			r := get(t, base+"/status")
			if r.status != http.StatusOK {
				t.Fatalf("status %d, want 200; body %q", r.status, r.body)
			}
			if ct := r.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			var got, want any
			if err := json.Unmarshal([]byte(r.body), &got); err != nil {
				t.Fatalf("decode /status: %v\n%s", err, r.body)
			}
			if err := json.Unmarshal([]byte(tt.want), &want); err != nil {
				t.Fatalf("decode want: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("/status =\n%s\nwant the same as\n%s", r.body, tt.want)
			}
		})
	}
}

// The JSON's last_error_at must read back as the same instant.
func TestStatusLastErrorAtRoundTrips(t *testing.T) {
	_, base := serve(t, Options{Snapshot: sampleSnapshot})
	var got stats.Snapshot
	if err := json.Unmarshal([]byte(get(t, base+"/status").body), &got); err != nil {
		t.Fatal(err)
	}
	at := got.Apps[0].Targets[1].LastErrorAt
	if at == nil || !at.Equal(errAt) {
		t.Errorf("last_error_at = %v, want %v", at, errAt)
	}
	if got.Apps[0].Targets[0].LastErrorAt != nil {
		t.Errorf("last_error_at of a target without errors = %v, want null", got.Apps[0].Targets[0].LastErrorAt)
	}
}

func TestPage(t *testing.T) {
	hostile := stats.Snapshot{Apps: []stats.App{{
		Name:    `<script>alert("x")</script>`,
		Targets: []stats.Target{{Address: `"><img src=x onerror=alert(1)>:80`, LastError: "<b>bold</b>"}},
	}}}
	tests := []struct {
		name    string
		snap    stats.Snapshot
		want    []*regexp.Regexp
		notWant []string
	}{
		{
			name: "sample",
			snap: sampleSnapshot(),
			want: []*regexp.Regexp{
				regexp.MustCompile(`<meta http-equiv="refresh" content="5">`),
				regexp.MustCompile(`<span class="name">web</span>`),
				regexp.MustCompile(`<span class="name">idle</span>`),
				regexp.MustCompile(`listen 127\.0\.0\.1 ports 5001, 5200 · sni a\.example\.com</span>`),
				regexp.MustCompile(`<tr class="target up">\s*<td class="l addr">127\.0\.0\.1:9001</td>`),
				regexp.MustCompile(`<tr class="target down backup">\s*<td class="l addr">backend\.internal:9003</td>`),
				regexp.MustCompile(`connection refused`),
				regexp.MustCompile(`2026-05-01T12:00:00Z`),
				regexp.MustCompile(`1\.00 MiB`),
				regexp.MustCompile(`5\.00 MiB`),
				regexp.MustCompile(`<tr class="target drain">\s*<td class="l addr">127\.0\.0\.1:9002</td>\s*<td class="l"><span class="badge drain">DRAIN</span> <span class="badge up">UP</span></td>`),
				regexp.MustCompile(`down by failed health checks \(active\) since 2026-05-01T12:00:00Z \(\d+d\d+h\)`),
				regexp.MustCompile(`1000 <meter min="0" max="1000" low="800" high="950" optimum="0" value="3"></meter> 0\.3%`),
				regexp.MustCompile(`health checks: passive \(max_fails 1, fail_timeout 10s\), active`),
				regexp.MustCompile(`2/3 targets up, 1 drained`),
				regexp.MustCompile(`config loaded</dt><dd>2026-05-01T12:00:00Z \(`),
				regexp.MustCompile(`TLS: terminates \(min version 1\.2, ALPN h2\), handshakes 7 ok, 1 failed; to targets, handshakes 6 ok, 0 failed<br>certificate CN=a\.example\.com for a\.example\.com: expires <span class="ok">2099-01-01T00:00:00Z \(in \d+d\d+h\)</span>`),
			},
		},
		{
			name:    "hostile names are escaped",
			snap:    hostile,
			want:    []*regexp.Regexp{regexp.MustCompile(`&lt;script&gt;alert\(&#34;x&#34;\)&lt;/script&gt;`), regexp.MustCompile(`&lt;b&gt;bold&lt;/b&gt;`)},
			notWant: []string{"<script>", "<img", "<b>"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, base := serve(t, Options{Snapshot: func() stats.Snapshot { return tt.snap }})
			r := get(t, base+"/")
			if r.status != http.StatusOK {
				t.Fatalf("status %d, want 200", r.status)
			}
			if ct := r.header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
				t.Errorf("Content-Type %q", ct)
			}
			for _, re := range tt.want {
				if !re.MatchString(r.body) {
					t.Errorf("page does not match %s", re)
				}
			}
			for _, s := range tt.notWant {
				if strings.Contains(r.body, s) {
					t.Errorf("page contains %q unescaped", s)
				}
			}
			if t.Failed() {
				t.Logf("page:\n%s", r.body)
			}
		})
	}
}

func TestProbes(t *testing.T) {
	var ready atomic.Bool
	_, base := serve(t, Options{Snapshot: sampleSnapshot, Ready: ready.Load})
	steps := []struct {
		name       string
		ready      bool
		path       string
		wantStatus int
		wantBody   string
	}{
		{"healthz while starting", false, "/healthz", 200, "ok"},
		{"readyz while starting", false, "/readyz", 503, "not ready"},
		{"readyz once listening", true, "/readyz", 200, "ready"},
		{"healthz once listening", true, "/healthz", 200, "ok"},
		{"readyz while draining", false, "/readyz", 503, "not ready"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			ready.Store(st.ready)
			r := get(t, base+st.path)
			if r.status != st.wantStatus || r.body != st.wantBody {
				t.Errorf("GET %s = %d %q, want %d %q", st.path, r.status, r.body, st.wantStatus, st.wantBody)
			}
		})
	}
}

func TestNilReadyMeansReady(t *testing.T) {
	_, base := serve(t, Options{Snapshot: sampleSnapshot})
	if r := get(t, base+"/readyz"); r.status != http.StatusOK {
		t.Errorf("/readyz with nil Ready = %d, want 200", r.status)
	}
}

func TestMetrics(t *testing.T) {
	_, base := serve(t, Options{Snapshot: sampleSnapshot})
	r := get(t, base+"/metrics")
	if r.status != http.StatusOK {
		t.Fatalf("status %d, want 200; body %q", r.status, r.body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(r.body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	for _, name := range []string{
		"tcpproxy_connections_total",
		"tcpproxy_target_up",
		"tcpproxy_connection_duration_seconds",
		"go_goroutines",
		"process_start_time_seconds",
	} {
		t.Run(name, func(t *testing.T) {
			if families[name] == nil {
				t.Errorf("/metrics lacks %s", name)
			}
		})
	}
	// One value end to end, to show the route serves this Snapshot.
	for _, m := range families["tcpproxy_connections_total"].GetMetric() {
		if m.GetLabel()[0].GetValue() == "web" && m.GetCounter().GetValue() != 120 {
			t.Errorf(`tcpproxy_connections_total{app="web"} = %v, want 120`, m.GetCounter().GetValue())
		}
	}
}

// TestMetricsOpenMetrics: a scraper that asks for OpenMetrics gets it
// (with the build info and the terminating # EOF); curl gets the classic
// text format.
func TestMetricsOpenMetrics(t *testing.T) {
	_, base := serve(t, Options{Snapshot: sampleSnapshot, Build: metrics.Build{Version: "v1.2.3", Revision: "abc", GoVersion: "go1.26.8"}})
	tests := []struct {
		accept, wantType string
		wantEOF          bool
	}{
		{"application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1", "application/openmetrics-text", true},
		{"*/*", "text/plain", false},
	}
	for _, tt := range tests {
		t.Run(tt.wantType, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, base+"/metrics", nil)
			req.Header.Set("Accept", tt.accept)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, tt.wantType) {
				t.Errorf("Content-Type %q, want %s", ct, tt.wantType)
			}
			if got := strings.HasSuffix(string(body), "# EOF\n"); got != tt.wantEOF {
				t.Errorf("ends with # EOF: %v, want %v", got, tt.wantEOF)
			}
			want := `tcpproxy_build_info{goversion="go1.26.8",revision="abc",version="v1.2.3"} 1`
			if !strings.Contains(string(body), want) {
				t.Errorf("body lacks %s", want)
			}
		})
	}
}

func TestRoutes(t *testing.T) {
	_, base := serve(t, Options{Snapshot: sampleSnapshot})
	tests := []struct {
		method, path string
		want         int
	}{
		{http.MethodGet, "/nope", http.StatusNotFound},
		{http.MethodPost, "/status", http.StatusForbidden}, // no admin token: nothing but GET
		{http.MethodHead, "/healthz", http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, base+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("%s %s = %d, want %d", tt.method, tt.path, resp.StatusCode, tt.want)
			}
		})
	}
}

func TestShutdownStopsServing(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	s := New(Options{Snapshot: sampleSnapshot})
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	if r := get(t, "http://"+addr+"/healthz"); r.status != http.StatusOK {
		t.Fatalf("/healthz before Shutdown = %d", r.status)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve returned %v after Shutdown, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Shutdown")
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("listener still accepts connections after Shutdown")
	}
}

func TestServeReportsListenerFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close() // Serve's Accept fails at once
	err = New(Options{Snapshot: sampleSnapshot}).Serve(ln)
	if err == nil || !errors.Is(err, net.ErrClosed) {
		t.Errorf("Serve on a closed listener = %v, want an error wrapping net.ErrClosed", err)
	}
}

func TestNewRejectsNilSnapshot(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("New with a nil Snapshot did not panic")
		}
	}()
	New(Options{})
}
