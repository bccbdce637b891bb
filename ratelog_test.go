package main

import (
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// logTally counts the lines of one kind in a text log: full lines (the
// first of each second, with every detail) and the suppressed counts of
// the summary lines.
type logTally struct {
	full, summaries, suppressed int
}

// tallyLog counts the lines with msg in logs. A full line must contain
// detail; a summary line must be exactly summary, with N filled in.
func tallyLog(t *testing.T, logs, msg, detail string, summary *regexp.Regexp) logTally {
	t.Helper()
	var n logTally
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, "msg="+strconv.Quote(msg)) {
			continue
		}
		if m := summary.FindStringSubmatch(line); m != nil {
			k, _ := strconv.Atoi(m[1])
			n.summaries++
			n.suppressed += k
			continue
		}
		if !strings.Contains(line, detail) {
			t.Errorf("line %q is neither a full line (with %q) nor a summary", line, detail)
		}
		n.full++
	}
	return n
}

// TestErrorLogsRateLimited turns 40 clients away for each kind of
// per-connection error or warning and checks that each kind logs its first line of
// a second in full, then one line a second with the number left out,
// and that every client is accounted for.
func TestErrorLogsRateLimited(t *testing.T) {
	const clients = 40
	tests := []struct {
		name, app, extra, send string
		msg, level, detail     string
		hold                   bool // a first client holds the one slot
	}{
		{"all targets failed", "dead", "max_fails: 0", "", "all targets failed", "ERROR", `err="127.0.0.1:`, false},
		{"bad PROXY protocol header", "hdr", "accept_proxy_protocol: true\nproxy_protocol_from: [127.0.0.1]", "GET / HTTP/1.0\r\n\r\n", "bad PROXY protocol header", "ERROR", `err="proxyproto: malformed header`, false},
		{"max_connections", "full", "max_connections: 1\ndial_timeout: 1m", "", "max_connections reached, closing new clients", "WARN", "max_connections=1 rejected_total=", true},
		// The sender is outside proxy_protocol_from (#10 item 1): on a
		// plain address and, counted against the address's first app, on
		// a name-routed one.
		{"untrusted PROXY sender", "lb", "accept_proxy_protocol: true\nproxy_protocol_from: [127.0.0.2]", "PROXY TCP4 10.1.2.3 10.9.9.9 4000 443\r\n", "untrusted PROXY protocol sender, closing it", "WARN", "reason=untrusted_proxy rejected_total=", false},
		{"untrusted PROXY sender, name-routed", "lbnamed", "accept_proxy_protocol: true\nproxy_protocol_from: [127.0.0.2]\nsni: [a.test]", "PROXY TCP4 10.1.2.3 10.9.9.9 4000 443\r\n", "untrusted PROXY protocol sender, closing it", "WARN", "reason=untrusted_proxy rejected_total=", false},
		// Per listen address, not per app: no app took these.
		{"no app for this connection", "named", "sni: [a.test]", "GET / HTTP/1.0\r\n\r\n", "no app for this connection, closing it", "WARN", "reason=no_match unrouted_total=", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port, target := freePort(t), deadAddr(t)
			if tt.hold {
				target = blackholeAddr(t) // its dial waits, holding the slot
			}
			srv, logs := startProxy(t, "apps:\n"+appYAML(tt.app, []int{port}, []string{target}, tt.extra))
			if tt.hold {
				dialProxy(t, port)
				t.Cleanup(srv.cancel) // first: end its dial, so shutdown does not wait
				waitFor(t, 5*time.Second, "the slot to be taken", func() bool { return srv.appAt(0).stats.active.Load() == 1 })
			}
			start := time.Now()
			for range clients {
				c := dialProxy(t, port)
				c.Write([]byte(tt.send))
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				c.Read(make([]byte, 1)) // turned away
				c.Close()
			}
			who := "app=" + tt.app
			if tt.app == "named" {
				who = fmt.Sprintf("listen=127.0.0.1:%d", port)
			}
			summary := regexp.MustCompile(fmt.Sprintf(`^time=\S+ level=%s msg=%q %s suppressed=(\d+)$`, tt.level, tt.msg, who))
			var n logTally
			waitFor(t, 5*time.Second, "every client to be logged or counted", func() bool {
				n = tallyLog(t, logs.String(), tt.msg, tt.detail, summary)
				return n.full+n.suppressed >= clients
			})
			elapsed := time.Since(start)
			if n.full+n.suppressed != clients {
				t.Errorf("%d full lines + %d suppressed = %d, want %d clients", n.full, n.suppressed, n.full+n.suppressed, clients)
			}
			if limit := 1 + int(elapsed/time.Second); n.full > limit || n.summaries > limit {
				t.Errorf("%d full and %d summary lines in %v, want at most %d each (one a second)", n.full, n.summaries, elapsed, limit)
			}
		})
	}
}

// TestLogLimiter checks the exact lines one limiter writes: the first
// of a window in full, the count of the rest when the window ends, and
// a full line again for the first of the next window.
func TestLogLimiter(t *testing.T) {
	var buf syncBuffer
	noTime := func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{ReplaceAttr: noTime})).With("app", "web")
	var lim logLimiter
	start := time.Now()
	for i := range 10 {
		lim.log(log, slog.LevelError, "all targets failed", "client", fmt.Sprintf("192.0.2.%d:1", i))
	}
	if time.Since(start) >= logWindow {
		t.Skip("the machine is too slow to log 10 lines within a window")
	}
	want := `level=ERROR msg="all targets failed" app=web client=192.0.2.0:1` + "\n"
	if got := buf.String(); got != want {
		t.Fatalf("within the window the limiter wrote %q, want only %q", got, want)
	}
	want += `level=ERROR msg="all targets failed" app=web suppressed=9` + "\n"
	waitFor(t, 5*time.Second, "the suppressed count", func() bool { return buf.String() == want })
	lim.log(log, slog.LevelError, "all targets failed", "client", "192.0.2.10:1")
	want += `level=ERROR msg="all targets failed" app=web client=192.0.2.10:1` + "\n"
	if got := buf.String(); got != want {
		t.Fatalf("after the window the limiter wrote\n%s\nwant\n%s", got, want)
	}
}
