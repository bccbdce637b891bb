package main

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestStatusHealthAndLimits: /status says per target who marked it down
// and since when, and per app its limit and how health is checked.
func TestStatusHealthAndLimits(t *testing.T) {
	live := startBackend(t, echoHandler)
	deadPassive, deadActive := deadAddr(t), deadAddr(t)
	pA, pB := freePort(t), freePort(t)
	srv, _ := startProxy(t, "apps:\n"+
		appYAML("passive", []int{pA}, []string{deadPassive, live.addr}, "balance: round_robin\nmax_connections: 100\nfail_timeout: 1h")+
		appYAML("active", []int{pB}, []string{deadActive, live.addr}, "max_fails: 0\nhealth_check: {interval: 100ms, timeout: 100ms, rise: 1, fall: 1}"))
	base := serveAdmin(t, srv, "")
	before := time.Now()
	c := dialProxy(t, pA) // round robin starts with the dead target
	fmt.Fprintln(c, "x")
	readLine(t, c)
	waitFor(t, 5*time.Second, "the active check to mark its target down", func() bool {
		return getStatus(t, base).Apps[1].Targets[0].DownBy == "active"
	})

	s := getStatus(t, base)
	pa, ac := s.Apps[0], s.Apps[1]
	if pa.MaxConnections != 100 || pa.HealthChecks != "passive (max_fails 1, fail_timeout 1h0m0s)" || ac.MaxConnections != 0 ||
		ac.HealthChecks != "active (interval 100ms, timeout 100ms, rise 1, fall 1)" {
		t.Errorf("apps: max_connections %d, %d; health_checks %q, %q", pa.MaxConnections, ac.MaxConnections, pa.HealthChecks, ac.HealthChecks)
	}
	for _, tc := range []struct {
		app, by string
		i       int
	}{{"passive", "passive", 0}, {"active", "active", 1}} {
		tg := s.Apps[tc.i].Targets[0]
		if tg.Up || tg.DownBy != tc.by || tg.DownSince == nil || tg.DownSince.Before(before.Add(-time.Second)) {
			t.Errorf("%s: dead target %+v, want down_by %q with down_since", tc.app, tg, tc.by)
		}
		if up := s.Apps[tc.i].Targets[1]; !up.Up || up.DownBy != "" || up.DownSince != nil {
			t.Errorf("%s: live target %+v", tc.app, up)
		}
	}
}

// TestBinaryStatusPage: right after a successful start the page and the
// metrics say when the config was loaded (not "never"), and the page
// shows the new columns.
func TestBinaryStatusPage(t *testing.T) {
	be := startBackend(t, echoHandler)
	port, adminPort := freePort(t), freePort(t)
	path := writeConfig(t, fmt.Sprintf("admin: 127.0.0.1:%d\napps:\n", adminPort)+appYAML("web", []int{port}, []string{be.addr}, "max_connections: 10"))
	runBinary(t, "-c", path)
	waitListening(t, adminPort)
	get := func(p string) string {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", adminPort, p))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	page := get("/")
	for _, re := range []string{
		`config loaded</dt><dd>\d{4}-\d\d-\d\dT[^<]+ \(\d+s ago\)</dd>`,
		`<th>max_connections</th>`,
		`10 <meter min="0" max="10" low="8" high="9" optimum="0" value="0"></meter> 0\.0%`,
		`<th>Conn/s</th>`,
		`health checks: passive \(max_fails 1, fail_timeout 10s\)`,
	} {
		if !regexp.MustCompile(re).MatchString(page) {
			t.Errorf("page does not match %s", re)
		}
	}
	if t.Failed() {
		t.Log(page)
	}
	m := regexp.MustCompile(`(?m)^tcpproxy_config_last_reload_success_timestamp_seconds (\S+)$`).FindStringSubmatch(get("/metrics"))
	if m == nil || m[1] == "0" || strings.HasPrefix(m[1], "0") {
		t.Errorf("last reload timestamp after start: %v, want the start time", m)
	}
}
