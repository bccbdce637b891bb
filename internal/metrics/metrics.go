// Package metrics exports the proxy's accounting (a stats.Snapshot) in the
// Prometheus format.
//
// Nothing here touches the connection path: the proxy counts in its own
// atomics, and the Collector turns one Snapshot into const metrics at each
// scrape. A scrape therefore costs the proxy one Snapshot, however many
// connections it carries, and the numbers agree with the status API and
// page, which read the same Snapshot.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/michaeldbianchi/tcpproxy/internal/stats"
)

// Label values that operators' queries match on; kept here so the
// Collector and its tests cannot drift apart.
const (
	reasonLimit  = "limit"
	reasonDenied = "denied"
	// reasonUntrusted: the client's own address is outside the app's
	// proxy_protocol_from.
	reasonUntrusted = "untrusted_proxy"

	directionToTarget = "to_target"
	directionToClient = "to_client"

	resultSuccess = "success"
	resultFailure = "failure"

	reasonNoMatch        = "no_match"
	reasonPrereadTimeout = "preread_timeout"

	sideClient = "client"
	sideTarget = "target"
	resultOK   = "ok"
)

// descs are the descriptions of every series the Collector emits. The label
// sets are fixed, so the Collector is a checked one: the registry verifies
// at registration that no other collector claims these names, and a
// pedantic registry can verify that Collect keeps to what Describe promised.
type descs struct {
	connections       *prometheus.Desc
	rejected          *prometheus.Desc
	failed            *prometheus.Desc
	idleTimeouts      *prometheus.Desc
	active            *prometheus.Desc
	targetActive      *prometheus.Desc
	targetDials       *prometheus.Desc
	targetDialFailure *prometheus.Desc
	targetUp          *prometheus.Desc
	duration          *prometheus.Desc
	bytes             *prometheus.Desc
	reloads           *prometheus.Desc
	lastReloadSuccess *prometheus.Desc
	unrouted          *prometheus.Desc
	tlsHandshakes     *prometheus.Desc
	tlsNotAfter       *prometheus.Desc
}

func newDescs() descs {
	app := []string{"app"}
	target := []string{"app", "target"}
	return descs{
		connections: prometheus.NewDesc("tcpproxy_connections_total",
			"Client connections handed to the app, those it then turned away (tcpproxy_connections_rejected_total) included.",
			app, nil),
		rejected: prometheus.NewDesc("tcpproxy_connections_rejected_total",
			"Client connections closed on accept: reason=\"limit\" by max_connections, reason=\"denied\" by the allow/deny rules, reason=\"untrusted_proxy\" sent from outside proxy_protocol_from.",
			[]string{"app", "reason"}, nil),
		failed: prometheus.NewDesc("tcpproxy_connections_failed_total",
			"Accepted client connections closed because every target failed to dial.",
			app, nil),
		idleTimeouts: prometheus.NewDesc("tcpproxy_connections_idle_timeout_total",
			"Relayed connections closed because no data moved either way for idle_timeout.",
			app, nil),
		active: prometheus.NewDesc("tcpproxy_active_connections",
			"Client connections of the app open now.",
			app, nil),
		targetActive: prometheus.NewDesc("tcpproxy_target_active_connections",
			"Connections relayed to the target open now.",
			target, nil),
		targetDials: prometheus.NewDesc("tcpproxy_target_dials_total",
			"Dial attempts to the target, failed ones included.",
			target, nil),
		targetDialFailure: prometheus.NewDesc("tcpproxy_target_dial_failures_total",
			"Dial attempts to the target that failed.",
			target, nil),
		targetUp: prometheus.NewDesc("tcpproxy_target_up",
			"Whether the health checks consider the target up (1) or down (0).",
			target, nil),
		duration: prometheus.NewDesc("tcpproxy_connection_duration_seconds",
			"How long relayed client connections lasted, from accept to close.",
			app, nil),
		bytes: prometheus.NewDesc("tcpproxy_bytes_total",
			"Bytes relayed: direction=\"to_target\" from clients to targets, direction=\"to_client\" from targets to clients.",
			[]string{"app", "direction"}, nil),
		reloads: prometheus.NewDesc("tcpproxy_config_reloads_total",
			"Config loads since start, by result; a failed reload leaves the running config in place.",
			[]string{"result"}, nil),
		lastReloadSuccess: prometheus.NewDesc("tcpproxy_config_last_reload_success_timestamp_seconds",
			"Unix time of the last successful config load; 0 before the first.",
			nil, nil),
		unrouted: prometheus.NewDesc("tcpproxy_unrouted_connections_total",
			"Connections on a listen address that no app took: reason=\"no_match\" matched no sni/http_host name and the address has no default app, reason=\"preread_timeout\" sent too little to be routed within preread_timeout.",
			[]string{"listen", "reason"}, nil),
		tlsHandshakes: prometheus.NewDesc("tcpproxy_tls_handshakes_total",
			"TLS handshakes of the app: side=\"client\" terminating TLS from clients (tls:), side=\"target\" speaking TLS to targets (target_tls:); result=\"ok\" or \"failure\".",
			[]string{"app", "side", "result"}, nil),
		tlsNotAfter: prometheus.NewDesc("tcpproxy_tls_certificate_not_after_timestamp_seconds",
			"Unix time at which a certificate loaded for the app expires, by subject (the earliest, if two share a subject).",
			[]string{"app", "subject"}, nil),
	}
}

func (d descs) all() []*prometheus.Desc {
	return []*prometheus.Desc{
		d.connections, d.rejected, d.failed, d.idleTimeouts, d.active,
		d.targetActive, d.targetDials, d.targetDialFailure, d.targetUp,
		d.duration, d.bytes, d.reloads, d.lastReloadSuccess, d.unrouted,
		d.tlsHandshakes, d.tlsNotAfter,
	}
}

var _ prometheus.Collector = (*collector)(nil)

// collector is the prometheus.Collector behind newCollector.
type collector struct {
	snapshot func() stats.Snapshot
	d        descs
}

// newCollector returns a prometheus.Collector that calls snapshot once per
// scrape and exports it as the tcpproxy_* series. snapshot must be safe to
// call concurrently, as scrapes may overlap.
func newCollector(snapshot func() stats.Snapshot) prometheus.Collector {
	if snapshot == nil {
		panic("metrics: newCollector with a nil snapshot func")
	}
	return &collector{snapshot: snapshot, d: newDescs()}
}

// Build describes the running binary: the labels of tcpproxy_build_info.
type Build struct {
	Version   string // v1.2.3, a module pseudo-version, or "(devel)"
	Revision  string // VCS commit; "" when unknown
	GoVersion string // e.g. go1.26.8
}

// newBuildInfo returns the constant gauge
// tcpproxy_build_info{version,revision,goversion} 1, the usual way to
// expose a build so that a query can join it to any series.
func newBuildInfo(b Build) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "tcpproxy_build_info",
		Help:        "Always 1; the labels say which build of tcpproxy is running.",
		ConstLabels: prometheus.Labels{"version": b.Version, "revision": b.Revision, "goversion": b.GoVersion},
	})
	g.Set(1)
	return g
}

// NewRegistry returns a registry holding the Collector for snapshot,
// tcpproxy_build_info for build, and the standard Go runtime and process
// collectors.
func NewRegistry(snapshot func() stats.Snapshot, build Build) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		newCollector(snapshot),
		newBuildInfo(build),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.d.all() {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	e := emitter{ch: ch}
	snap := c.snapshot()
	for i := range snap.Apps {
		c.collectApp(e, &snap.Apps[i])
	}
	for _, l := range snap.Listeners {
		e.metric(c.d.unrouted, prometheus.CounterValue, float64(l.UnroutedNoMatch), l.Listen, reasonNoMatch)
		e.metric(c.d.unrouted, prometheus.CounterValue, float64(l.UnroutedPrereadTimeout), l.Listen, reasonPrereadTimeout)
	}
	r := snap.Reloads
	e.metric(c.d.reloads, prometheus.CounterValue, float64(r.Success), resultSuccess)
	e.metric(c.d.reloads, prometheus.CounterValue, float64(r.Failure), resultFailure)
	var last float64
	if !r.LastSuccess.IsZero() {
		last = float64(r.LastSuccess.UnixNano()) / 1e9
	}
	e.metric(c.d.lastReloadSuccess, prometheus.GaugeValue, last)
}

func (c *collector) collectApp(e emitter, a *stats.App) {
	d := c.d
	e.metric(d.connections, prometheus.CounterValue, float64(a.Total), a.Name)
	e.metric(d.rejected, prometheus.CounterValue, float64(a.RejectedLimit), a.Name, reasonLimit)
	e.metric(d.rejected, prometheus.CounterValue, float64(a.RejectedDenied), a.Name, reasonDenied)
	e.metric(d.rejected, prometheus.CounterValue, float64(a.RejectedUntrusted), a.Name, reasonUntrusted)
	e.metric(d.failed, prometheus.CounterValue, float64(a.Failed), a.Name)
	e.metric(d.idleTimeouts, prometheus.CounterValue, float64(a.IdleTimeouts), a.Name)
	e.metric(d.active, prometheus.GaugeValue, float64(a.Active), a.Name)
	e.metric(d.bytes, prometheus.CounterValue, float64(a.BytesToTarget), a.Name, directionToTarget)
	e.metric(d.bytes, prometheus.CounterValue, float64(a.BytesToClient), a.Name, directionToClient)
	e.histogram(d.duration, a.Duration, a.Name)
	for i := range a.Targets {
		t := &a.Targets[i]
		e.metric(d.targetActive, prometheus.GaugeValue, float64(t.Active), a.Name, t.Address)
		e.metric(d.targetDials, prometheus.CounterValue, float64(t.Dials), a.Name, t.Address)
		e.metric(d.targetDialFailure, prometheus.CounterValue, float64(t.Failures), a.Name, t.Address)
		e.metric(d.targetUp, prometheus.GaugeValue, boolFloat(t.Up), a.Name, t.Address)
	}
	if a.TLS != nil {
		c.collectTLS(e, a.Name, a.TLS)
	}
}

// collectTLS emits an app's handshake counts (each side the app has)
// and the expiry of each certificate subject it loaded.
func (c *collector) collectTLS(e emitter, app string, t *stats.TLS) {
	d, h := c.d, t.Handshakes
	if t.Terminate {
		e.metric(d.tlsHandshakes, prometheus.CounterValue, float64(h.ClientOK), app, sideClient, resultOK)
		e.metric(d.tlsHandshakes, prometheus.CounterValue, float64(h.ClientFailure), app, sideClient, resultFailure)
	}
	if t.Target {
		e.metric(d.tlsHandshakes, prometheus.CounterValue, float64(h.TargetOK), app, sideTarget, resultOK)
		e.metric(d.tlsHandshakes, prometheus.CounterValue, float64(h.TargetFailure), app, sideTarget, resultFailure)
	}
	// One series per subject: two certificates with one subject (say an
	// ECDSA and an RSA one) report the one that expires first.
	notAfter := map[string]float64{}
	var order []string
	for _, cert := range t.Certificates {
		v := float64(cert.NotAfter.Unix())
		if old, seen := notAfter[cert.Subject]; !seen {
			order = append(order, cert.Subject)
		} else if old < v {
			continue
		}
		notAfter[cert.Subject] = v
	}
	for _, subject := range order {
		e.metric(d.tlsNotAfter, prometheus.GaugeValue, notAfter[subject], app, subject)
	}
}

// emitter sends const metrics built from a Snapshot. It uses the
// error-returning constructors rather than the Must ones: Collect runs in
// the proxy process, and a malformed label value (say, invalid UTF-8 in a
// name) must fail that one series in the scrape, not panic the proxy.
type emitter struct {
	ch chan<- prometheus.Metric
}

func (e emitter) metric(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
	m, err := prometheus.NewConstMetric(d, t, v, labels...)
	if err != nil {
		m = prometheus.NewInvalidMetric(d, err)
	}
	e.ch <- m
}

func (e emitter) histogram(d *prometheus.Desc, h stats.Histogram, labels ...string) {
	m, err := prometheus.NewConstHistogram(d, h.Count, h.Sum, histogramBuckets(h), labels...)
	if err != nil {
		m = prometheus.NewInvalidMetric(d, err)
	}
	e.ch <- m
}

// histogramBuckets returns h's cumulative buckets. An app that has not
// recorded anything yet may carry a zero Histogram (nil Buckets); it still
// gets every standard bucket, at zero, so that bucket sets agree across
// apps and across an app's lifetime, which histogram_quantile over several
// series relies on.
func histogramBuckets(h stats.Histogram) map[float64]uint64 {
	if h.Buckets != nil || h.Count != 0 {
		return h.Buckets
	}
	b := make(map[float64]uint64, len(stats.DurationBuckets))
	for _, ub := range stats.DurationBuckets {
		b[ub] = 0
	}
	return b
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
