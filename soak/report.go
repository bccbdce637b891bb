//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// summary is the outcome of one soak run.
type summary struct {
	Seed            uint64        `json:"seed"`
	Duration        time.Duration `json:"duration_ns"`
	Warmup          time.Duration `json:"warmup_ns"`
	Cooldown        time.Duration `json:"cooldown_ns"`
	LongTarget      int           `json:"long_target"`
	WarmEstablished int64         `json:"long_established_after_warmup"`
	LongPeak        int64         `json:"long_peak"`
	LongSessions    int64         `json:"long_sessions"`
	LongRetired     int64         `json:"long_retired"`
	ChurnRate       int           `json:"churn_per_second"`
	ShortMade       int64         `json:"short_made"`
	ShortOK         int64         `json:"short_ok"`
	ShortSkipped    int64         `json:"short_skipped"`
	// Entries counts the connections dialed through each entry (entry.go):
	// plain ports, SNI a, SNI b, PROXY header.
	Entries   [numEntries]int64 `json:"connections_by_entry"`
	BytesUp   int64             `json:"bytes_verified_client_to_backend"`
	BytesDown int64             `json:"bytes_verified_backend_to_client"`

	Kills   int64 `json:"backend_kills"`
	Resets  int64 `json:"backend_kills_with_reset"`
	Reloads int64 `json:"reloads"`
	Toggles int64 `json:"toggles"`

	// Edges is the mode that adds listen changes, failing reloads and
	// slow readers (soak -edges).
	Edges         bool     `json:"edges"`
	FailedReloads int64    `json:"failed_reloads"`
	SlowMade      int64    `json:"slow_readers"`
	SlowOK        int64    `json:"slow_readers_complete"`
	SlowStarved   int64    `json:"slow_readers_starved"`
	SlowBytes     int64    `json:"slow_reader_bytes_verified"`
	SlowFailures  []string `json:"slow_reader_failures,omitempty"`

	Counts           classCounts      `json:"classes"`
	ProxyCauses      map[string]int64 `json:"proxy_failure_causes"`
	LateCauses       map[string]int64 `json:"late_cut_causes"`
	CutCauses        map[string]int64 `json:"cut_causes"`
	MaxCutLatency    time.Duration    `json:"max_cut_notice_ns"`
	CutLimit         time.Duration    `json:"cut_notice_limit_ns"`
	ProxyFailedDials float64          `json:"proxy_all_targets_failed"`

	Baseline     usage         `json:"baseline"`
	Peak         usage         `json:"peak"`
	End          usage         `json:"end"`
	Settle       time.Duration `json:"settle_ns"`
	RSSQ2KiB     int64         `json:"rss_q2_max_kib"`
	RSSQ4KiB     int64         `json:"rss_q4_max_kib"`
	RSSOK        bool          `json:"rss_ok"`
	RSSErr       error         `json:"-"`
	ScrapeErrors int           `json:"scrape_errors"`
	Series       []point       `json:"series"`
	ProxyCPU     float64       `json:"proxy_cpu_percent"`
	SoakCPU      float64       `json:"soak_cpu_percent"`
	OtherCPU     float64       `json:"other_cpu_percent"`
	StallWorst   time.Duration `json:"soak_worst_stall_ns"`
	StallTotal   time.Duration `json:"soak_stalled_ns"`

	ProxyExit    int      `json:"proxy_exit_code"`
	ProxyStopErr string   `json:"proxy_stop_error,omitempty"`
	LogErrors    int      `json:"proxy_log_errors"`
	LogWarns     int      `json:"proxy_log_warnings"`
	LogPanics    []string `json:"proxy_log_panics,omitempty"`
	LogPath      string   `json:"proxy_log"`
	LogTail      string   `json:"-"`

	ChaosErrors []string `json:"chaos_errors,omitempty"`
	Aborted     string   `json:"aborted,omitempty"`
	Details     []string `json:"failure_details,omitempty"`
	Verdict     string   `json:"verdict"`
	Reasons     []string `json:"fail_reasons,omitempty"`
}

// point is one resource sample of the proxy, at t seconds into the run.
type point struct {
	T          float64 `json:"t"`
	Goroutines int     `json:"goroutines"`
	FDs        int     `json:"fds"`
	RSSMiB     float64 `json:"rss_mib"`
	Active     int     `json:"active"`
}

func toPoints(samples []usage, start time.Time) []point {
	out := make([]point, len(samples))
	for i, u := range samples {
		out[i] = point{T: u.At.Sub(start).Round(time.Millisecond).Seconds(), Goroutines: u.Goroutines, FDs: u.FDs, RSSMiB: mib(u.RSSKiB), Active: u.Active}
	}
	return out
}

// judge sets the verdict: PASS unless something below went wrong.
func (s *summary) judge(conns int) {
	var r []string
	fail := func(bad bool, format string, args ...any) {
		if bad {
			r = append(r, fmt.Sprintf(format, args...))
		}
	}
	c := s.Counts
	fail(s.Aborted != "", "%s", s.Aborted)
	fail(c.ProxyFailures > 0, "%d connection failures while a target was healthy (class b)", c.ProxyFailures)
	fail(c.NoHealthy > 0, "%d connection failures with no healthy target (class c): the chaos broke its own rules", c.NoHealthy)
	fail(c.Corruption > 0, "%d corrupted, lost, reordered or crossed frames", c.Corruption)
	fail(c.Misrouted > 0, "%d connections sent to a target not in the target set in force", c.Misrouted)
	fail(c.SlowCuts > 0, "%d connections noticed their backend's kill late (max %v)", c.SlowCuts, s.MaxCutLatency.Round(time.Millisecond))
	fail(s.WarmEstablished < int64(conns), "only %d of %d long-lived connections established during the warm-up", s.WarmEstablished, conns)
	for k, n := range s.Entries {
		fail(n == 0 && s.LongSessions+s.ShortMade > 0, "no connection went in through the %v entry", entryKind(k))
	}
	s.judgeEdges(fail)
	for _, e := range s.ChaosErrors {
		fail(true, "chaos: %s", e)
	}
	if s.Aborted == "" {
		fail(s.End.Active != 0, "%d connections still active in the proxy %v after the last client closed", s.End.Active, s.Settle.Round(time.Millisecond))
		fail(s.End.Goroutines > s.Baseline.Goroutines+goroutineSlack, "goroutine leak: %d at the end, %d before any connection (slack %d)", s.End.Goroutines, s.Baseline.Goroutines, goroutineSlack)
		fail(s.End.FDs > s.Baseline.FDs+fdSlack, "descriptor leak: %d at the end, %d before any connection (slack %d)", s.End.FDs, s.Baseline.FDs, fdSlack)
		fail(s.RSSErr != nil, "RSS: %v", s.RSSErr)
		fail(s.RSSErr == nil && !s.RSSOK, "RSS still growing: max %.1f MiB in the last quarter > 1.15 × %.1f MiB (second quarter) + 4 MiB", mib(s.RSSQ4KiB), mib(s.RSSQ2KiB))
		fail(s.ProxyStopErr != "", "SIGTERM: %s", s.ProxyStopErr)
		fail(s.ProxyStopErr == "" && s.ProxyExit != 0, "the proxy exited %d on SIGTERM, want 0", s.ProxyExit)
	}
	fail(len(s.LogPanics) > 0, "the proxy logged a panic: %s", strings.Join(s.LogPanics, " | "))
	s.Reasons = r
	s.Verdict = "PASS"
	if len(r) > 0 {
		s.Verdict = "FAIL"
	}
}

// judgeEdges fails a run with edges in which a slow reader lost data,
// or no slow reader finished, or no reload was made to fail.
func (s *summary) judgeEdges(fail func(bool, string, ...any)) {
	if !s.Edges {
		return
	}
	fail(len(s.SlowFailures) > 0, "%d slow readers under idle_timeout did not get their whole response (first: %s)", len(s.SlowFailures), first(s.SlowFailures))
	fail(s.SlowOK == 0, "no slow reader finished its response")
	fail(s.Reloads > 1 && s.FailedReloads == 0, "no failing reload was tried")
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

// markdown writes the summary table, then the reasons for a FAIL and the
// first failures one by one.
func (s *summary) markdown(w io.Writer) {
	row := func(k, format string, args ...any) { fmt.Fprintf(w, "| %s | %s |\n", k, fmt.Sprintf(format, args...)) }
	c := s.Counts
	fmt.Fprintln(w, "| soak | result |")
	fmt.Fprintln(w, "|---|---|")
	row("verdict", "**%s**", s.Verdict)
	row("seed", "%d", s.Seed)
	row("duration", "%v of traffic and chaos (after a %v warm-up; then %v of traffic without chaos)", s.Duration.Round(time.Second), s.Warmup.Round(time.Millisecond), s.Cooldown.Round(time.Millisecond))
	row("long-lived conns target / peak", "%d / %d (%d connections over the run, %d closed cleanly at the end of their lifetime)", s.LongTarget, s.LongPeak, s.LongSessions, s.LongRetired)
	row("short connections made / verified", "%d / %d (target %d/s, %d skipped at the in-flight cap)", s.ShortMade, s.ShortOK, s.ChurnRate, s.ShortSkipped)
	row("connections by entry: plain / SNI-routed a, b / PROXY header", "%d / %d, %d / %d", s.Entries[entryPlain], s.Entries[entrySNIA], s.Entries[entrySNIB], s.Entries[entryProxy])
	row("bytes verified client→backend / backend→client", "%.1f MiB / %.1f MiB", float64(s.BytesUp)/(1<<20), float64(s.BytesDown)/(1<<20))
	row("backend kills (with reset) / reloads / toggles", "%d (%d) / %d / %d", s.Kills, s.Resets, s.Reloads, s.Toggles)
	if s.Edges {
		row("edges: failed reloads (held port) / slow readers complete, starved, failed", "%d / %d of %d, %d, %d (%.1f MiB verified)", s.FailedReloads, s.SlowOK, s.SlowMade, s.SlowStarved, len(s.SlowFailures), float64(s.SlowBytes)/(1<<20))
	}
	row("(a) cut with their backend: long / short / before hello", "%d / %d / %d%s", c.CutLong, c.CutShort, c.CutBeforeHello, causes(s.CutCauses))
	row("(a) slowest to notice the kill / late", "%v / %d (limit %v)%s", s.MaxCutLatency.Round(time.Millisecond), c.SlowCuts, s.CutLimit, causes(s.LateCauses))
	row("(b) failures while a target was healthy", "%d%s", c.ProxyFailures, causes(s.ProxyCauses))
	row("(c) failures with no healthy target", "%d", c.NoHealthy)
	row("corrupted / misrouted", "%d / %d", c.Corruption, c.Misrouted)
	row("(e) timing failures while the soak itself was starved", "%d (soak stalled %v in all, worst %v)", c.Starved, s.StallTotal.Round(time.Millisecond), s.StallWorst.Round(time.Millisecond))
	row("proxy: \"all targets failed\"", "%.0f", s.ProxyFailedDials)
	row("proxy goroutines baseline → peak → end", "%d → %d → %d", s.Baseline.Goroutines, s.Peak.Goroutines, s.End.Goroutines)
	row("proxy fds baseline → peak → end", "%d → %d → %d", s.Baseline.FDs, s.Peak.FDs, s.End.FDs)
	row("proxy RSS baseline → peak → end", "%.1f → %.1f → %.1f MiB (max 2nd quarter %.1f, last quarter %.1f)", mib(s.Baseline.RSSKiB), mib(s.Peak.RSSKiB), mib(s.End.RSSKiB), mib(s.RSSQ2KiB), mib(s.RSSQ4KiB))
	row("back to baseline after", "%v (active connections at the end: %d)", s.Settle.Round(time.Millisecond), s.End.Active)
	row("CPU, % of one core: proxy / soak / other processes", "%.0f%% / %.0f%% / %.0f%%", s.ProxyCPU, s.SoakCPU, s.OtherCPU)
	row("proxy exit on SIGTERM", "%d%s", s.ProxyExit, suffix(s.ProxyStopErr))
	row("proxy log", "%d errors, %d warnings", s.LogErrors, s.LogWarns)
	if c.Starved > 0 {
		fmt.Fprintf(w, "\nWARNING: %d connections failed on timing while the soak's own process was stalled (other load on the machine, or the soak's own bursts); they are not counted against the proxy.\n", c.Starved)
	}
	if len(s.Reasons) > 0 {
		fmt.Fprintln(w, "\nFAIL:")
		for _, r := range s.Reasons {
			fmt.Fprintln(w, "- "+r)
		}
	}
	if len(s.Details) > 0 {
		fmt.Fprintf(w, "\nFailures one by one (classes b, c and e, corruption, misrouting, late cuts; the first %d):\n", maxDetails)
		for _, d := range s.Details {
			fmt.Fprintln(w, "- "+d)
		}
	}
}

func causes(m map[string]int64) string {
	if len(m) == 0 {
		return ""
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s: %d", k, m[k])
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func suffix(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

// writeJSON writes the summary as one JSON object.
func (s *summary) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(s); err != nil {
		return fmt.Errorf("summary JSON: %w", err)
	}
	return nil
}
