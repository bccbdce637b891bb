package metrics

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/michaeldbianchi/tcpproxy/internal/stats"
)

// sampleSnapshot has one busy app with an up and a down (backup) target,
// and one app that has seen nothing yet, whose zero values must still be
// exported.
func sampleSnapshot() stats.Snapshot {
	errAt := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	return stats.Snapshot{
		Apps: []stats.App{
			{
				Name:           "web",
				Listen:         "127.0.0.1",
				Ports:          []int{5001, 5200},
				Balance:        "round_robin",
				Active:         3,
				Total:          120,
				RejectedLimit:  4,
				RejectedDenied: 2,
				// Clients outside proxy_protocol_from.
				RejectedUntrusted: 5,
				Failed:            1,
				IdleTimeouts:      2,
				BytesToTarget:     1 << 20,
				BytesToClient:     5 << 20,
				Duration: stats.Histogram{
					Count: 4,
					Sum:   7202.023,
					Buckets: map[float64]uint64{
						0.005: 1, 0.01: 1, 0.025: 2, 0.05: 2, 0.1: 2, 0.25: 2, 0.5: 2, 1: 2,
						2.5: 3, 5: 3, 10: 3, 30: 3, 60: 3, 300: 3, 600: 3, 1800: 3, 3600: 3,
					},
				},
				Targets: []stats.Target{
					{Address: "127.0.0.1:9001", Up: true, Weight: 2, Active: 3, Total: 110, Dials: 111, Failures: 1},
					{Address: "backend.internal:9003", Up: false, Weight: 1, Backup: true, Total: 10, Dials: 25, Failures: 15,
						LastError: "connection refused", LastErrorAt: &errAt},
				},
			},
			{Name: "idle", Ports: []int{6000}, Balance: "random"},
		},
		Reloads: stats.Reloads{Success: 3, Failure: 1, LastSuccess: time.Unix(1777636800, 500_000_000)},
	}
}

// histogramText renders the exposition lines of one app's duration
// histogram; cum holds the cumulative counts for stats.DurationBuckets.
func histogramText(app string, cum [len(stats.DurationBuckets)]uint64, count uint64, sum string) string {
	var b strings.Builder
	for i, ub := range stats.DurationBuckets {
		fmt.Fprintf(&b, "tcpproxy_connection_duration_seconds_bucket{app=%q,le=%q} %d\n", app, strconv.FormatFloat(ub, 'g', -1, 64), cum[i])
	}
	fmt.Fprintf(&b, "tcpproxy_connection_duration_seconds_bucket{app=%q,le=\"+Inf\"} %d\n", app, count)
	fmt.Fprintf(&b, "tcpproxy_connection_duration_seconds_sum{app=%q} %s\n", app, sum)
	fmt.Fprintf(&b, "tcpproxy_connection_duration_seconds_count{app=%q} %d\n", app, count)
	return b.String()
}

func TestCollectorExportsEverySeries(t *testing.T) {
	want := `
# HELP tcpproxy_connections_total Client connections handed to the app, those it then turned away (tcpproxy_connections_rejected_total) included.
# TYPE tcpproxy_connections_total counter
tcpproxy_connections_total{app="web"} 120
tcpproxy_connections_total{app="idle"} 0
# HELP tcpproxy_connections_rejected_total Client connections closed on accept: reason="limit" by max_connections, reason="denied" by the allow/deny rules, reason="untrusted_proxy" sent from outside proxy_protocol_from.
# TYPE tcpproxy_connections_rejected_total counter
tcpproxy_connections_rejected_total{app="web",reason="limit"} 4
tcpproxy_connections_rejected_total{app="web",reason="denied"} 2
tcpproxy_connections_rejected_total{app="web",reason="untrusted_proxy"} 5
tcpproxy_connections_rejected_total{app="idle",reason="limit"} 0
tcpproxy_connections_rejected_total{app="idle",reason="denied"} 0
tcpproxy_connections_rejected_total{app="idle",reason="untrusted_proxy"} 0
# HELP tcpproxy_connections_failed_total Accepted client connections closed because every target failed to dial.
# TYPE tcpproxy_connections_failed_total counter
tcpproxy_connections_failed_total{app="web"} 1
tcpproxy_connections_failed_total{app="idle"} 0
# HELP tcpproxy_connections_idle_timeout_total Relayed connections closed because no data moved either way for idle_timeout.
# TYPE tcpproxy_connections_idle_timeout_total counter
tcpproxy_connections_idle_timeout_total{app="web"} 2
tcpproxy_connections_idle_timeout_total{app="idle"} 0
# HELP tcpproxy_active_connections Client connections of the app open now.
# TYPE tcpproxy_active_connections gauge
tcpproxy_active_connections{app="web"} 3
tcpproxy_active_connections{app="idle"} 0
# HELP tcpproxy_target_active_connections Connections relayed to the target open now.
# TYPE tcpproxy_target_active_connections gauge
tcpproxy_target_active_connections{app="web",target="127.0.0.1:9001"} 3
tcpproxy_target_active_connections{app="web",target="backend.internal:9003"} 0
# HELP tcpproxy_target_dials_total Dial attempts to the target, failed ones included.
# TYPE tcpproxy_target_dials_total counter
tcpproxy_target_dials_total{app="web",target="127.0.0.1:9001"} 111
tcpproxy_target_dials_total{app="web",target="backend.internal:9003"} 25
# HELP tcpproxy_target_dial_failures_total Dial attempts to the target that failed.
# TYPE tcpproxy_target_dial_failures_total counter
tcpproxy_target_dial_failures_total{app="web",target="127.0.0.1:9001"} 1
tcpproxy_target_dial_failures_total{app="web",target="backend.internal:9003"} 15
# HELP tcpproxy_target_up Whether the health checks consider the target up (1) or down (0).
# TYPE tcpproxy_target_up gauge
tcpproxy_target_up{app="web",target="127.0.0.1:9001"} 1
tcpproxy_target_up{app="web",target="backend.internal:9003"} 0
# HELP tcpproxy_connection_duration_seconds How long relayed client connections lasted, from accept to close.
# TYPE tcpproxy_connection_duration_seconds histogram
` + histogramText("web", [17]uint64{1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3}, 4, "7202.023") +
		histogramText("idle", [17]uint64{}, 0, "0") + `
# HELP tcpproxy_bytes_total Bytes relayed: direction="to_target" from clients to targets, direction="to_client" from targets to clients.
# TYPE tcpproxy_bytes_total counter
tcpproxy_bytes_total{app="web",direction="to_target"} 1048576
tcpproxy_bytes_total{app="web",direction="to_client"} 5242880
tcpproxy_bytes_total{app="idle",direction="to_target"} 0
tcpproxy_bytes_total{app="idle",direction="to_client"} 0
# HELP tcpproxy_config_reloads_total Config loads since start, by result; a failed reload leaves the running config in place.
# TYPE tcpproxy_config_reloads_total counter
tcpproxy_config_reloads_total{result="success"} 3
tcpproxy_config_reloads_total{result="failure"} 1
# HELP tcpproxy_config_last_reload_success_timestamp_seconds Unix time of the last successful config load; 0 before the first.
# TYPE tcpproxy_config_last_reload_success_timestamp_seconds gauge
tcpproxy_config_last_reload_success_timestamp_seconds 1.7776368005e+09
`
	// CollectAndCompare registers the collector in a pedantic registry,
	// which also checks that Collect emits only what Describe declared.
	c := newCollector(sampleSnapshot)
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

func TestCollectorEmptySnapshot(t *testing.T) {
	want := `
# HELP tcpproxy_config_reloads_total Config loads since start, by result; a failed reload leaves the running config in place.
# TYPE tcpproxy_config_reloads_total counter
tcpproxy_config_reloads_total{result="success"} 0
tcpproxy_config_reloads_total{result="failure"} 0
# HELP tcpproxy_config_last_reload_success_timestamp_seconds Unix time of the last successful config load; 0 before the first.
# TYPE tcpproxy_config_last_reload_success_timestamp_seconds gauge
tcpproxy_config_last_reload_success_timestamp_seconds 0
`
	c := newCollector(func() stats.Snapshot { return stats.Snapshot{} })
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

func TestCollectorPassesLint(t *testing.T) {
	problems, err := testutil.CollectAndLint(newCollector(sampleSnapshot))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// A label value Prometheus cannot carry must cost that one series, not
// panic the proxy in the middle of a scrape.
func TestCollectorInvalidLabelValueDoesNotPanic(t *testing.T) {
	snap := func() stats.Snapshot {
		return stats.Snapshot{Apps: []stats.App{{Name: "bad\xff"}}}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(snap))
	if _, err := reg.Gather(); err == nil {
		t.Fatal("Gather with an invalid UTF-8 label value: want an error, got none")
	}
}

func TestCollectorTakesOneSnapshotPerScrape(t *testing.T) {
	calls := 0
	c := newCollector(func() stats.Snapshot { calls++; return sampleSnapshot() })
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
	if calls != 1 {
		t.Errorf("snapshot called %d times in one scrape, want 1", calls)
	}
}

func TestNewRegistry(t *testing.T) {
	families, err := NewRegistry(sampleSnapshot, Build{Version: "v1.2.3", Revision: "abc123", GoVersion: "go1.26.8"}).Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := make(map[string]*dto.MetricFamily, len(families))
	for _, f := range families {
		byName[f.GetName()] = f
	}
	for _, name := range []string{
		"tcpproxy_connections_total",
		"tcpproxy_connection_duration_seconds",
		"tcpproxy_build_info",
		"go_goroutines",
		"process_start_time_seconds",
	} {
		t.Run(name, func(t *testing.T) {
			if byName[name] == nil {
				t.Errorf("registry does not export %s", name)
			}
		})
	}
	bi := byName["tcpproxy_build_info"].GetMetric()
	if len(bi) != 1 || bi[0].GetGauge().GetValue() != 1 {
		t.Fatalf("tcpproxy_build_info = %v, want one sample of 1", bi)
	}
	labels := map[string]string{}
	for _, l := range bi[0].GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	if want := map[string]string{"version": "v1.2.3", "revision": "abc123", "goversion": "go1.26.8"}; !reflect.DeepEqual(labels, want) {
		t.Errorf("tcpproxy_build_info labels = %v, want %v", labels, want)
	}
}

func TestUnroutedConnections(t *testing.T) {
	snap := stats.Snapshot{Listeners: []stats.Listener{
		{Listen: "127.0.0.1:5443", UnroutedNoMatch: 7, UnroutedPrereadTimeout: 2},
		{Listen: ":5001"},
	}}
	c := newCollector(func() stats.Snapshot { return snap })
	want := `
# HELP tcpproxy_unrouted_connections_total Connections on a listen address that no app took: reason="no_match" matched no sni/http_host name and the address has no default app, reason="preread_timeout" sent too little to be routed within preread_timeout.
# TYPE tcpproxy_unrouted_connections_total counter
tcpproxy_unrouted_connections_total{listen=":5001",reason="no_match"} 0
tcpproxy_unrouted_connections_total{listen=":5001",reason="preread_timeout"} 0
tcpproxy_unrouted_connections_total{listen="127.0.0.1:5443",reason="no_match"} 7
tcpproxy_unrouted_connections_total{listen="127.0.0.1:5443",reason="preread_timeout"} 2
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "tcpproxy_unrouted_connections_total"); err != nil {
		t.Fatal(err)
	}
}

// Exposition headers of the TLS series.
const (
	tlsHandshakesHead = "# HELP tcpproxy_tls_handshakes_total TLS handshakes of the app: side=\"client\" terminating TLS from clients (tls:), side=\"target\" speaking TLS to targets (target_tls:); result=\"ok\" or \"failure\".\n# TYPE tcpproxy_tls_handshakes_total counter\n"
	tlsNotAfterHead   = "# HELP tcpproxy_tls_certificate_not_after_timestamp_seconds Unix time at which a certificate loaded for the app expires, by subject (the earliest, if two share a subject).\n# TYPE tcpproxy_tls_certificate_not_after_timestamp_seconds gauge\n"
)

// TestTLSSeries: handshakes per side the app has, and one expiry per
// certificate subject, the earliest when two certificates share one.
func TestTLSSeries(t *testing.T) {
	at := func(y int) time.Time { return time.Date(y, 1, 1, 0, 0, 0, 0, time.UTC) }
	tests := []struct {
		name string
		tls  *stats.TLS
		want string
	}{
		{"terminate and target", &stats.TLS{Terminate: true, Target: true,
			Certificates: []stats.Certificate{
				{Subject: "CN=a.example.com", NotAfter: at(2031)},
				{Subject: "CN=b.example.com", NotAfter: at(2030)},
				{Subject: "CN=a.example.com", NotAfter: at(2029)}, // an RSA twin that expires first
				{Subject: "CN=a.example.com", NotAfter: at(2032)},
			},
			Handshakes: stats.Handshakes{ClientOK: 5, ClientFailure: 2, TargetOK: 4, TargetFailure: 1}},
			tlsHandshakesHead + `tcpproxy_tls_handshakes_total{app="db",result="ok",side="client"} 5
tcpproxy_tls_handshakes_total{app="db",result="failure",side="client"} 2
tcpproxy_tls_handshakes_total{app="db",result="ok",side="target"} 4
tcpproxy_tls_handshakes_total{app="db",result="failure",side="target"} 1
` + tlsNotAfterHead + `tcpproxy_tls_certificate_not_after_timestamp_seconds{app="db",subject="CN=a.example.com"} 1.86192e+09
tcpproxy_tls_certificate_not_after_timestamp_seconds{app="db",subject="CN=b.example.com"} 1.893456e+09
`},
		{"target only", &stats.TLS{Target: true, Handshakes: stats.Handshakes{TargetOK: 3}},
			tlsHandshakesHead + `tcpproxy_tls_handshakes_total{app="db",result="ok",side="target"} 3
tcpproxy_tls_handshakes_total{app="db",result="failure",side="target"} 0
`},
		{"no TLS", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := stats.Snapshot{Apps: []stats.App{{Name: "db", TLS: tt.tls}}}
			c := newCollector(func() stats.Snapshot { return snap })
			if err := testutil.CollectAndCompare(c, strings.NewReader(tt.want), "tcpproxy_tls_handshakes_total", "tcpproxy_tls_certificate_not_after_timestamp_seconds"); err != nil {
				t.Fatal(err)
			}
		})
	}
}
