package main

import (
	"fmt"
	"strings"

	"github.com/michaeldbianchi/tcpproxy/internal/stats"
)

// extendSnapshot adds to a's snapshot what an operator reads on the
// status page and API beside the counters: the limit, how health is
// checked, and per target the drain flag and who marked it down since
// when. a.Targets must be in config order, as snapshot builds them.
func (ft *failoverTarget) extendSnapshot(a *stats.App) {
	a.MaxConnections = ft.app.MaxConnections
	a.HealthChecks = describeHealthChecks(ft.app)
	a.TLS = ft.tlsSnapshot()
	for i, ts := range ft.targets {
		t := &a.Targets[i]
		t.Drain = ts.drain.on()
		by, since := ts.health.Down()
		t.DownBy = by
		if !since.IsZero() {
			t.DownSince = &since
		}
	}
}

// describeHealthChecks says how the app's target health is checked, in
// the config's terms.
func describeHealthChecks(a *appConfig) string {
	var parts []string
	if a.MaxFails > 0 {
		parts = append(parts, fmt.Sprintf("passive (max_fails %d, fail_timeout %s)", a.MaxFails, a.FailTimeout))
	}
	if hc := a.HealthCheck; hc != nil {
		parts = append(parts, fmt.Sprintf("active (interval %s, timeout %s, rise %d, fall %d)", hc.Interval, hc.Timeout, hc.Rise, hc.Fall))
	}
	if parts == nil {
		return "off"
	}
	return strings.Join(parts, ", ")
}
