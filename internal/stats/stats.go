// Package stats is the proxy's own accounting, read by the metrics
// exporter, the status API and the status page alike.
//
// The connection path only adds to atomics (counters, and the buckets of
// a fixed histogram); a scrape or a status request builds a Snapshot from
// them. So nothing on the hot path depends on whether anyone is watching,
// and every view of the proxy agrees with every other.
package stats

import (
	"sync/atomic"
	"time"
)

// Snapshot is the state of the whole proxy at one moment.
type Snapshot struct {
	Apps      []App      `json:"apps"`
	Listeners []Listener `json:"listeners"`
	Reloads   Reloads    `json:"-"`
}

// Listener is one listen address's count of connections that no app
// took: they matched no name and the address has no default app
// (UnroutedNoMatch), or they sent too little to be routed within
// preread_timeout (UnroutedPrereadTimeout).
type Listener struct {
	Listen                 string `json:"listen"` // host:port, host empty for every interface
	UnroutedNoMatch        int64  `json:"unrouted_no_match"`
	UnroutedPrereadTimeout int64  `json:"unrouted_preread_timeout"`
}

// Reloads counts config reloads since start.
type Reloads struct {
	Success, Failure int64
	// LastSuccess is the time of the last successful load: the one at
	// start until a reload succeeds. Zero only before the first load.
	LastSuccess time.Time
}

// App is one app's state. Counts are since the process started.
type App struct {
	Name           string   `json:"name"`
	Listen         string   `json:"listen"`
	Ports          []int    `json:"ports"`
	Balance        string   `json:"balance"`
	SNI            []string `json:"sni"`       // TLS server names routed to the app; empty when unset
	HTTPHost       []string `json:"http_host"` // HTTP Host names routed to the app; empty when unset
	Active         int64    `json:"active"`
	Total          int64    `json:"total"` // accepted connections
	RejectedLimit  int64    `json:"rejected_limit"`
	RejectedDenied int64    `json:"rejected_denied"`
	// RejectedUntrusted counts clients closed at accept because they sent
	// from outside proxy_protocol_from.
	RejectedUntrusted int64     `json:"rejected_untrusted_proxy"`
	Failed            int64     `json:"failed"` // every target failed
	IdleTimeouts      int64     `json:"idle_timeouts"`
	BytesToTarget     int64     `json:"bytes_to_target"`
	BytesToClient     int64     `json:"bytes_to_client"`
	Duration          Histogram `json:"-"`
	// MaxConnections is the app's max_connections; 0 is unlimited.
	MaxConnections int `json:"max_connections"`
	// HealthChecks describes the app's health checking for people, e.g.
	// "passive (max_fails 1, fail_timeout 10s)"; "off" when there is none.
	HealthChecks string `json:"health_checks"`
	// Rates are per-second rates over the last RateWindow; a Snapshot
	// leaves them zero and the admin server fills them in.
	Rates   Rates    `json:"rates"`
	Targets []Target `json:"targets"`
	// Removed marks an app a reload removed whose connections still run.
	Removed bool `json:"removed,omitempty"`
	// TLS is the app's TLS termination and TLS to its targets; nil when
	// it has neither (TLS passes through untouched).
	TLS *TLS `json:"tls"`
}

// TLS is what an app does with TLS, its certificates and its handshakes.
type TLS struct {
	Terminate  bool     `json:"terminate"`   // tls: set: the proxy terminates TLS from clients
	ClientAuth bool     `json:"client_auth"` // clients must show a certificate (client_ca)
	MinVersion string   `json:"min_version"` // "1.2" or "1.3"; "" when not terminating
	ALPN       []string `json:"alpn"`        // offered ALPN protocols
	Target     bool     `json:"target"`      // target_tls: set: the proxy speaks TLS to targets
	// Certificates are those loaded for the app: the ones it shows
	// clients, then the one it shows targets, if any.
	Certificates []Certificate `json:"certificates"`
	Handshakes   Handshakes    `json:"handshakes"`
}

// Certificate is one loaded certificate.
type Certificate struct {
	Use      string    `json:"use"`     // "server" (shown to clients) or "target_client" (shown to targets)
	Subject  string    `json:"subject"` // the subject, or the first name if the subject is empty
	Names    []string  `json:"names"`   // DNS names and IP addresses
	NotAfter time.Time `json:"not_after"`
	File     string    `json:"file"` // the certificate file; "" for a self-signed one made in memory
}

// Handshakes counts an app's TLS handshakes since start, by side:
// with its clients (termination) and with its targets (target_tls).
type Handshakes struct {
	ClientOK      int64 `json:"client_ok"`
	ClientFailure int64 `json:"client_failure"`
	TargetOK      int64 `json:"target_ok"`
	TargetFailure int64 `json:"target_failure"`
}

// RateWindow is the span the admin server's rates are taken over.
const RateWindow = 10 * time.Second

// Rates are an app's rates per second over the last RateWindow (or since
// the first sample, when the server is younger than that).
type Rates struct {
	Connections   float64 `json:"connections_per_second"`
	BytesToTarget float64 `json:"bytes_to_target_per_second"` // of connections that ended
	BytesToClient float64 `json:"bytes_to_client_per_second"` // of connections that ended
}

// Target is one target's state within an app.
type Target struct {
	Address     string     `json:"address"` // host:port as written in the config
	Up          bool       `json:"up"`
	Weight      int        `json:"weight"`
	Backup      bool       `json:"backup"`
	Active      int64      `json:"active"`
	Total       int64      `json:"total"`    // connections relayed to it
	Dials       int64      `json:"dials"`    // dial attempts
	Failures    int64      `json:"failures"` // failed dials
	LastError   string     `json:"last_error"`
	LastErrorAt *time.Time `json:"last_error_at"` // RFC 3339; null when none
	// Drain is whether an operator drained the target through the admin
	// API: it takes no new connections, like weight 0.
	Drain bool `json:"drain"`
	// DownBy says what marked the target down: "passive" (failed dials)
	// or "active" (failed health checks); "" while up.
	DownBy string `json:"down_by"`
	// DownSince is when it was marked down; null while up.
	DownSince *time.Time `json:"down_since"`
}

// DurationBuckets are the upper bounds, in seconds, of the connection
// duration histogram: from a quick request/response to a long-lived
// stream.
var DurationBuckets = [...]float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600, 1800, 3600}

// Histogram is a snapshot of a DurationRecorder.
type Histogram struct {
	Count   uint64
	Sum     float64            // seconds
	Buckets map[float64]uint64 // cumulative count per upper bound
}

// DurationRecorder is a lock-free histogram of connection durations with
// the fixed DurationBuckets. The zero value is ready to use.
type DurationRecorder struct {
	counts [len(DurationBuckets) + 1]atomic.Uint64 // last: above every bound
	sumNs  atomic.Int64
}

// Observe records one duration.
func (r *DurationRecorder) Observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(DurationBuckets) && s > DurationBuckets[i] {
		i++
	}
	r.counts[i].Add(1)
	r.sumNs.Add(int64(d))
}

// Snapshot returns the histogram with cumulative bucket counts.
func (r *DurationRecorder) Snapshot() Histogram {
	h := Histogram{Buckets: make(map[float64]uint64, len(DurationBuckets))}
	var cum uint64
	for i, b := range DurationBuckets {
		cum += r.counts[i].Load()
		h.Buckets[b] = cum
	}
	h.Count = cum + r.counts[len(DurationBuckets)].Load()
	h.Sum = float64(r.sumNs.Load()) / 1e9
	return h
}
