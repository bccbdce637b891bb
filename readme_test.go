package main

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/michaeldbianchi/tcpproxy/internal/balance"
	"github.com/michaeldbianchi/tcpproxy/internal/health"
	"github.com/michaeldbianchi/tcpproxy/internal/relay"
)

// readmeKeys returns README's table of config keys: each key's row, as
// its cells (key, where, type, default, example, meaning).
func readmeKeys(t *testing.T) map[string][]string {
	t.Helper()
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string][]string{}
	in := false
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "| key | where | type | default |"):
			in = true
		case in && !strings.HasPrefix(line, "|"):
			in = false
		case in && !strings.HasPrefix(line, "|---"):
			cells := strings.Split(strings.Trim(line, "|"), " | ")
			for i := range cells {
				cells[i] = strings.TrimSpace(cells[i])
			}
			rows[strings.Trim(cells[0], "`")] = cells
		}
	}
	if len(rows) == 0 {
		t.Fatal("README.md: no table of config keys")
	}
	return rows
}

// firstCode returns the first `quoted` text of a README cell.
func firstCode(cell string) string {
	if m := regexp.MustCompile("`([^`]*)`").FindStringSubmatch(cell); m != nil {
		return m[1]
	}
	return ""
}

// shortDuration formats d as README writes it: 1m, not 1m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// TestREADMEDefaults checks README's defaults against the constants that
// hold them and against what a config that leaves every key out gets.
func TestREADMEDefaults(t *testing.T) {
	cfg, err := parseConfig("test.yaml", []byte("apps:\n- name: a\n  ports: [1]\n  targets: [\"127.0.0.1:2\"]\n  health_check: {}\n"))
	if err != nil {
		t.Fatal(err)
	}
	app, hc := cfg.Apps[0], cfg.Apps[0].HealthCheck
	defaults := []struct {
		key               string
		constant, applied any
	}{
		{"dial_timeout", defaultDialTimeout, app.DialTimeout},
		{"balance", balance.Random, app.Balance},
		{"max_fails", health.DefaultMaxFails, app.MaxFails},
		{"fail_timeout", health.DefaultFailTimeout, app.FailTimeout},
		{"keepalive", relay.DefaultKeepAlivePeriod, relay.DefaultKeepAlivePeriod}, // applied by relay.SetKeepAlive for 0
		{"half_close_timeout", defaultHalfClose, app.HalfCloseTimeout},
		{"preread_timeout", defaultPrereadTimeout, app.PrereadTimeout},
		{"shutdown_timeout", defaultShutdownTimeout, cfg.ShutdownTimeout},
	}
	rows := readmeKeys(t)
	for _, d := range defaults {
		row := rows[d.key]
		if row == nil {
			t.Errorf("README.md: no row for %s", d.key)
			continue
		}
		want := fmt.Sprint(d.constant)
		if dur, ok := d.constant.(time.Duration); ok {
			want = shortDuration(dur)
		}
		if got := firstCode(row[3]); got != want {
			t.Errorf("README.md: %s defaults to `%s`; the constant is %s", d.key, got, want)
		}
		if d.applied != d.constant {
			t.Errorf("%s left out is %v; the constant is %v", d.key, d.applied, d.constant)
		}
	}

	// health_check: "defaults as in the example", with the minimums in
	// the meaning.
	hcRow := rows["health_check"]
	example := fmt.Sprintf("{interval: %s, timeout: %s, rise: %d, fall: %d}",
		shortDuration(health.DefaultInterval), shortDuration(health.DefaultTimeout), health.DefaultRise, health.DefaultFall)
	if got := firstCode(hcRow[4]); got != example {
		t.Errorf("README.md: health_check example (its defaults) is `%s`; the constants make `%s`", got, example)
	}
	for _, s := range []string{"`interval` at least `" + shortDuration(health.MinInterval) + "`", "`timeout` at least `" + shortDuration(health.MinTimeout) + "`"} {
		if !strings.Contains(hcRow[5], s) {
			t.Errorf("README.md: health_check does not say %s", s)
		}
	}
	wantHC := healthCheckConfig{Interval: health.DefaultInterval, Timeout: health.DefaultTimeout, Rise: health.DefaultRise, Fall: health.DefaultFall}
	if *hc != wantHC {
		t.Errorf("health_check: {} is %+v; the constants make %+v", *hc, wantHC)
	}

	b, _ := os.ReadFile("README.md")
	if weights := fmt.Sprintf("`weight` (0..%d, default 1;", balance.MaxWeight); !strings.Contains(string(b), weights) {
		t.Errorf("README.md does not say %s", weights)
	}
}
