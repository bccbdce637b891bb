//go:build linux

package main

import (
	"bytes"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSoakShort runs the whole soak in process against the built proxy,
// small: 50 long-lived connections, 40 short ones a second, 6 seconds of
// chaos with at least one kill, one reload, one toggle, one reload that
// must fail and one slow reader's whole response (then the cool-down),
// and requires PASS.
func TestSoakShort(t *testing.T) {
	bin := buildProxy(t)
	cfg := defaultConfig()
	cfg.proxyBin = bin
	cfg.duration = 6 * time.Second
	cfg.conns = 50
	cfg.churn = 40
	cfg.seed = uint64(time.Now().UnixNano())
	cfg.plan = chaosPlan{
		killGap:     [2]time.Duration{1500 * time.Millisecond, 2500 * time.Millisecond},
		downFor:     [2]time.Duration{time.Second, 1500 * time.Millisecond},
		reloadEvery: 2 * time.Second, // the second reload is one that must fail
		toggleEvery: 2500 * time.Millisecond,
	}
	cfg.slow.size = 512 << 10 // about 1.7 s at the slow readers' pace
	cfg.ramp = 500 * time.Millisecond
	cfg.sampleEvery = 200 * time.Millisecond
	cfg.progress = 0
	cfg.verbose = true
	cfg.out = testWriter{t}

	sum, err := run(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	sum.markdown(&table)
	t.Logf("seed %d\n%s", cfg.seed, table.String())
	if sum.Verdict != "PASS" {
		t.Fatalf("verdict %s; the proxy's log ends with:\n%s", sum.Verdict, sum.LogTail)
	}
	if sum.Kills < 1 || sum.Reloads < 1 || sum.Toggles < 1 {
		t.Errorf("chaos: %d kills, %d reloads, %d toggles; want at least one of each", sum.Kills, sum.Reloads, sum.Toggles)
	}
	if sum.FailedReloads < 1 || sum.SlowOK < 1 {
		t.Errorf("edges: %d failed reloads, %d slow readers complete; want at least one of each", sum.FailedReloads, sum.SlowOK)
	}
	if sum.LongPeak != int64(cfg.conns) || sum.ShortOK == 0 || sum.BytesUp == 0 || sum.BytesDown == 0 {
		t.Errorf("traffic: peak %d long-lived, %d short verified, %d/%d bytes verified", sum.LongPeak, sum.ShortOK, sum.BytesUp, sum.BytesDown)
	}
}

// buildProxy builds the proxy from the module root into a temp dir.
func buildProxy(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the proxy with")
	}
	bin := filepath.Join(t.TempDir(), "tcpproxy")
	cmd := exec.Command(goBin, "build", "-o", bin, "github.com/michaeldbianchi/tcpproxy")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the proxy: %v\n%s", err, out)
	}
	return bin
}

// testWriter sends the soak's progress lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestFramesVerify(t *testing.T) {
	s := stream{seed: 42, conn: 7, dir: up, kind: longLived}
	var wire []byte
	for seq := range uint64(50) {
		wire = appendFrame(wire, s, seq)
	}
	// Any split of the stream into reads verifies.
	for _, step := range []int{1, 3, 64, 1000, len(wire)} {
		v := newVerifier(s, false)
		for off := 0; off < len(wire); {
			n := copy(v.space(), wire[off:min(off+step, len(wire))])
			if _, err := v.consume(n); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			off += n
		}
		if v.frames() != 50 || v.pending() || v.bytes != int64(len(wire)) {
			t.Fatalf("step %d: %d frames, pending %v, %d of %d bytes", step, v.frames(), v.pending(), v.bytes, len(wire))
		}
	}
}

func TestFramesLearnConn(t *testing.T) {
	s := stream{seed: 42, conn: 99, dir: up, kind: short}
	wire := appendFrame(nil, s, 0)
	v := newVerifier(stream{seed: 42, dir: up}, true)
	n := copy(v.space(), wire)
	if _, err := v.consume(n); err != nil {
		t.Fatal(err)
	}
	if v.s.conn != 99 || v.s.kind != short {
		t.Fatalf("learned conn %d kind %v, want 99 short", v.s.conn, v.s.kind)
	}
}

func TestFramesDetectBadData(t *testing.T) {
	s := stream{seed: 1, conn: 3, dir: down, kind: longLived}
	frame := func(s stream, seq uint64) []byte { return appendFrame(nil, s, seq) }
	join := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	flipped := join(frame(s, 0), frame(s, 1))
	flipped[len(flipped)-10] ^= 0x40
	other := s
	other.conn = 4
	for name, wire := range map[string][]byte{
		"flipped bit": flipped,
		"reordered":   join(frame(s, 0), frame(s, 2), frame(s, 1)),
		"lost":        join(frame(s, 0), frame(s, 2)),
		"duplicated":  join(frame(s, 0), frame(s, 0)),
		"cross-talk":  join(frame(s, 0), frame(other, 1)),
		"wrong seed":  frame(stream{seed: 2, conn: 3, dir: down, kind: longLived}, 0),
	} {
		v := newVerifier(s, false)
		n := copy(v.space(), wire)
		_, err := v.consume(n)
		var fe *frameError
		if !errors.As(err, &fe) {
			t.Errorf("%s: got %v, want a frame error", name, err)
		}
	}
}

func TestRSSGrowth(t *testing.T) {
	start := time.Now()
	series := func(rss ...int64) []usage {
		var out []usage
		for i, r := range rss {
			out = append(out, usage{At: start.Add(time.Duration(i) * time.Second), RSSKiB: r})
		}
		return out
	}
	end := start.Add(7 * time.Second) // eight samples, two per quarter
	for _, tc := range []struct {
		name string
		rss  []int64
		ok   bool
	}{
		{"flat", []int64{50000, 80000, 80000, 81000, 80000, 82000, 81000, 80000}, true},
		{"saw-tooth", []int64{50000, 80000, 90000, 70000, 85000, 75000, 92000, 70000}, true},
		{"leak", []int64{50000, 60000, 70000, 80000, 90000, 100000, 110000, 120000}, false},
	} {
		q2, q4, ok, err := rssGrowth(series(tc.rss...), start, end)
		if err != nil || ok != tc.ok {
			t.Errorf("%s: q2 %d q4 %d ok %v err %v, want ok %v", tc.name, q2, q4, ok, err, tc.ok)
		}
	}
	if _, _, _, err := rssGrowth(series(1, 2), start, end); err == nil {
		t.Error("two samples: want an error for too few samples")
	}
}

func TestParseMetrics(t *testing.T) {
	m := parseMetrics([]byte("# HELP go_goroutines x\n# TYPE go_goroutines gauge\ngo_goroutines 12\n" +
		"tcpproxy_config_reloads_total{result=\"success\"} 3\ntcpproxy_active_connections{app=\"soak\"} 2e+03\n"))
	if m["go_goroutines"] != 12 || m[reloadsOK] != 3 || m[`tcpproxy_active_connections{app="soak"}`] != 2000 {
		t.Fatalf("parsed %v", m)
	}
}

func TestWorld(t *testing.T) {
	t0 := time.Now()
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	w := newWorld(3, []int{0, 1, 2}, t0)
	for i := range 3 {
		w.setUp(i, true)
	}
	s := w.sending([]int{1, 2}, at(10))
	w.applied(s, at(10.5))

	if !w.allowed(0, at(5), at(6)) {
		t.Error("backend 0 before the reload: want allowed")
	}
	if !w.allowed(0, at(9.9), at(10.2)) {
		t.Error("backend 0 dialed before the reload was confirmed: want allowed")
	}
	if w.allowed(0, at(11), at(11.1)) {
		t.Error("backend 0 dialed after the reload was confirmed: want misrouted")
	}
	w.setUp(1, false)
	if got := w.healthyTargets(); got != 1 {
		t.Errorf("healthy targets %d, want 1 (backend 2 of set {1, 2})", got)
	}
}

func TestFlags(t *testing.T) {
	for _, args := range [][]string{{}, {"-proxy", "x", "-duration", "0s"}, {"-proxy", "x", "extra"}} {
		if got := mainStatus(args, io.Discard, io.Discard); got != 2 {
			t.Errorf("%q: status %d, want 2", args, got)
		}
	}
}

func TestLedgerClassifies(t *testing.T) {
	t0 := time.Now()
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	cfg := defaultConfig()
	cfg.out = io.Discard
	reset := errors.New("connection reset by peer")
	for _, tc := range []struct {
		name  string
		kind  connKind
		kill  float64 // seconds, or 0 for none; the conn is identified by its backend unless beforeHello
		stall float64 // seconds the soak stalled at 1.0s, or 0
		hello bool    // backend 0 read its frame 0
		down  bool    // every backend down
		out   outcome
		want  classCounts
	}{
		{"cut, prompt", longLived, 1, 0, true, false,
			outcome{established: true, err: io.EOF, at: at(1.1)}, classCounts{CutLong: 1}},
		{"cut, late", longLived, 1, 0, true, false,
			outcome{established: true, err: errStalled, at: at(5)}, classCounts{CutLong: 1, SlowCuts: 1}},
		{"cut, late while starved", longLived, 1, 2.5, true, false,
			outcome{established: true, err: errStalled, at: at(5)}, classCounts{CutLong: 1, Starved: 1}},
		{"cut before hello", short, 1, 0, false, false,
			outcome{phase: "response", err: reset, at: at(1.01)}, classCounts{CutBeforeHello: 1}},
		{"proxy failure", short, 0, 0, false, false,
			outcome{phase: "response", err: reset, at: at(1.01)}, classCounts{ProxyFailures: 1}},
		{"set-up failure while starved", short, 0, 0.3, false, false,
			outcome{phase: "response", err: reset, at: at(1.5)}, classCounts{Starved: 1}},
		{"established conn reset, stall no excuse", longLived, 0, 0.3, true, false,
			outcome{established: true, phase: "stream", err: reset, at: at(1.5)}, classCounts{ProxyFailures: 1}},
		{"no healthy target", short, 0, 0, false, true,
			outcome{phase: "response", err: reset, at: at(1.01)}, classCounts{NoHealthy: 1}},
		{"corruption", longLived, 0, 0, true, false,
			outcome{established: true, err: &frameError{what: "x"}, at: at(2)}, classCounts{Corruption: 1}},
		{"clean end", longLived, 0, 0, true, false,
			outcome{established: true, ok: true, at: at(2)}, classCounts{}},
	} {
		w := newWorld(3, []int{0, 1, 2}, t0)
		for i := range 3 {
			w.setUp(i, !tc.down)
		}
		dog := newWatchdog(50 * time.Millisecond)
		if tc.stall > 0 {
			dog.spans = []stallSpan{{from: at(1), to: at(1 + tc.stall)}}
		}
		l := newLedger(t0, w, dog, &cfg)
		id := l.open(tc.kind, at(0.9))
		if tc.hello {
			l.attach(id, 0, at(0.95))
		}
		if tc.kill > 0 {
			var ids []uint64
			if tc.hello {
				ids = []uint64{id}
			}
			l.killed(at(tc.kill), func() []uint64 { return ids })
		}
		l.finish(id, tc.out)
		if got := l.report().counts; got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestWatchdogStalledWithin(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	w := newWatchdog(50 * time.Millisecond)
	w.spans = []stallSpan{{at(100), at(300)}, {at(1000), at(1100)}}
	for _, tc := range []struct {
		from, to int
		want     time.Duration
	}{
		{0, 2000, 300 * time.Millisecond},
		{200, 1050, 150 * time.Millisecond},
		{400, 900, 0},
	} {
		if got := w.stalledWithin(at(tc.from), at(tc.to)); got != tc.want {
			t.Errorf("[%d, %d] ms: %v, want %v", tc.from, tc.to, got, tc.want)
		}
	}
}
