//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Leak-check slack: after every connection is closed, the proxy's
// goroutines and descriptors must be back within this of the count
// before the first connection.
const (
	goroutineSlack = 10
	fdSlack        = 10
)

// config is one soak run's parameters.
type config struct {
	proxyBin    string
	duration    time.Duration // traffic and chaos, after the warm-up
	conns       int           // long-lived connections
	churn       int           // short connections per second
	seed        uint64
	pace        pacing           // gap between two frames of a long-lived stream
	lifetime    [2]time.Duration // a long-lived connection is closed cleanly after a time drawn from this
	reconnect   [2]time.Duration // a client whose connection was cut reconnects after a time drawn from this
	plan        chaosPlan
	hangLimit   time.Duration // a connect, exchange or silence longer than this is a hang
	promptCut   time.Duration // a connection cut by its backend's kill must see it within this
	ramp        time.Duration // the long-lived connections open over this
	sampleEvery time.Duration // resource sampling interval
	settle      time.Duration // how long the proxy may take to return to its baseline at the end
	progress    time.Duration // interval of progress lines; 0 for none
	verbose     bool          // print every chaos event
	// edges: reloads that change app soak's listen host and reloads that
	// must fail on a held port, and slow readers under idle_timeout.
	edges bool
	slow  slowPlan  // the slow readers, with edges
	out   io.Writer // progress and failures as they happen
}

// defaultConfig is the soak the flags start from: ten minutes, 2000
// long-lived connections, 200 short ones a second.
func defaultConfig() config {
	return config{
		duration: 10 * time.Minute,
		conns:    2000,
		churn:    200,
		// 2000 connections × 2 directions at one frame per 0.6 s on
		// average is ~6700 small frames a second: enough to keep every
		// relay busy, little enough for 2 cores shared with the proxy.
		pace: pacing{min: 200 * time.Millisecond, max: time.Second},
		// Connections retire after a while, so they spread again over
		// the backends of the target set in force: without it they pile
		// up on whichever backend was not killed last.
		lifetime:  [2]time.Duration{15 * time.Second, 45 * time.Second},
		reconnect: [2]time.Duration{100 * time.Millisecond, 2 * time.Second},
		plan: chaosPlan{
			killGap:     [2]time.Duration{4 * time.Second, 12 * time.Second},
			downFor:     [2]time.Duration{2 * time.Second, 5 * time.Second},
			reloadEvery: 10 * time.Second,
			toggleEvery: 15 * time.Second,
		},
		hangLimit:   5 * time.Second,
		promptCut:   3 * time.Second,
		ramp:        3 * time.Second,
		sampleEvery: 2 * time.Second,
		settle:      10 * time.Second,
		progress:    10 * time.Second,
		edges:       true,
		// 4 readers taking 4 KiB every 13 ms (about 300 KiB/s) through
		// an 8 KiB receive buffer: 3 MiB lasts about 10 s.
		slow: slowPlan{readers: 4, size: 3 << 20, chunk: 4 << 10, pause: 13 * time.Millisecond, rcvbuf: 8 << 10},
		out:  os.Stderr,
	}
}

// runEnv is what every part of one run shares.
type runEnv struct {
	cfg        *config
	seed       uint64
	start      time.Time
	stop       chan struct{} // closed when traffic and chaos must end
	world      *world
	ledger     *ledger
	proxyAddrs []string // the plain ports
	entries    *entries // the plain ports, the SNI-routed one, the PROXY-protocol one
}

// event prints one chaos event, with -v.
func (e *runEnv) event(format string, args ...any) {
	if e.cfg.verbose {
		fmt.Fprintf(e.cfg.out, "soak: t=%s %s\n", time.Since(e.start).Round(time.Millisecond), fmt.Sprintf(format, args...))
	}
}

// stableBackends is the number of stable backends; the toggler comes on
// top.
const stableBackends = 3

// targetSets are the two sets the reloads alternate between. Both hold
// at least two stable backends, and only one is ever killed at a time,
// so every set always has a healthy target.
var targetSets = [2][]int{{0, 1, 2}, {1, 2}}

// soak is one run in progress: what it started, so it can stop it.
type soak struct {
	cfg     config
	env     *runEnv
	dir     string
	dog     *watchdog
	proxy   *proxyProc
	bes     []*backend
	toggler *toggler
	chaos   *chaos
	long    *longConns
	churn   *churn
	sampler *sampler
	held    net.Listener // the port failing reloads add, with edges
	bulk    *bulkBackend // soak-bulk's target, with edges
	slow    *slowReaders
}

// run runs the soak and returns its summary. An error means the soak
// could not run at all; a proxy that misbehaves gives a summary with a
// FAIL verdict.
func run(cfg config) (*summary, error) {
	if cfg.proxyBin == "" {
		return nil, errors.New("no proxy binary (-proxy)")
	}
	limit, err := raiseFileLimit()
	if err != nil {
		return nil, err
	}
	// Per long-lived connection the soak holds two sockets (client and
	// backend); short ones come and go.
	if need := uint64(2*cfg.conns + 4*cfg.churn + 200); limit < need {
		return nil, fmt.Errorf("RLIMIT_NOFILE is %d, the soak needs about %d for %d connections", limit, need, cfg.conns)
	}
	dir, err := os.MkdirTemp("", "tcpproxy-soak-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	s := &soak{cfg: cfg, dir: dir, dog: newWatchdog(50 * time.Millisecond)}
	dogStop := make(chan struct{})
	go s.dog.run(dogStop)
	sum, err := s.run()
	close(dogStop)
	s.cleanup()
	if err == nil && sum.Verdict == "PASS" {
		os.RemoveAll(dir)
	}
	return sum, err
}

// run goes through the phases: set up, baseline, warm-up, traffic and
// chaos for the duration, then stop everything and check the proxy came
// back to its baseline.
func (s *soak) run() (*summary, error) {
	start := time.Now()
	if err := s.setUp(start); err != nil {
		return nil, err
	}
	cfg := &s.cfg
	sum := &summary{Seed: cfg.seed, LongTarget: cfg.conns, ChurnRate: cfg.churn, CutLimit: cfg.promptCut, LogPath: s.proxy.logPath}
	time.Sleep(300 * time.Millisecond) // let the proxy finish starting up
	var err error
	if sum.Baseline, err = s.proxy.measure(); err != nil {
		return nil, fmt.Errorf("baseline: %w", err)
	}
	soakCPU0 := selfCPU()
	busy0, _ := machineBusy()
	sampStop := make(chan struct{})
	sampDone := make(chan struct{})
	go func() {
		defer close(sampDone)
		s.sampler.run(sampStop)
	}()

	s.warmUp(sum)
	steady := time.Now()
	aborted := s.steady()
	steadyEnd := time.Now()
	sum.Duration = min(cfg.duration, steadyEnd.Sub(steady))
	sum.Cooldown = steadyEnd.Sub(steady) - sum.Duration
	close(sampStop)
	<-sampDone

	wall := time.Since(start)
	sum.ProxyCPU = cpuShare(s.proxy, wall)
	sum.SoakCPU = (selfCPU() - soakCPU0).Seconds() / wall.Seconds() * 100
	if busy1, err := machineBusy(); err == nil && busy0 > 0 {
		sum.OtherCPU = max(0, (busy1-busy0).Seconds()/wall.Seconds()*100-sum.ProxyCPU-sum.SoakCPU)
	}
	sum.StallWorst, sum.StallTotal = s.dog.report()
	series := s.sampler.series()
	sum.Peak = peak(series)
	sum.ScrapeErrors = s.sampler.errs
	sum.Series = toPoints(series, start)
	if aborted == "" {
		sum.RSSQ2KiB, sum.RSSQ4KiB, sum.RSSOK, sum.RSSErr = rssGrowth(series, steady, steadyEnd)
		s.checkEnd(sum)
	}
	s.tally(sum)
	sum.Aborted = aborted
	sum.judge(cfg.conns)
	if sum.Verdict != "PASS" {
		sum.LogTail = s.proxy.logTail(80)
	}
	return sum, nil
}

// setUp starts the backends, the toggler and the proxy, on free
// loopback ports.
func (s *soak) setUp(start time.Time) error {
	cfg := &s.cfg
	r := splitmix(cfg.seed)
	ports, err := listenPorts(9+stableBackends, &r)
	if err != nil {
		return err
	}
	w := newWorld(stableBackends, targetSets[0], start)
	env := &runEnv{
		cfg:    cfg,
		seed:   cfg.seed,
		start:  start,
		stop:   make(chan struct{}),
		world:  w,
		ledger: newLedger(start, w, s.dog, cfg),
	}
	s.env = env
	for _, p := range ports[:2] {
		env.proxyAddrs = append(env.proxyAddrs, fmt.Sprintf("127.0.0.1:%d", p))
	}
	sniPort, ppPort := ports[4+stableBackends], ports[5+stableBackends]
	if env.entries, err = newEntries(env.proxyAddrs, fmt.Sprintf("127.0.0.1:%d", sniPort), fmt.Sprintf("127.0.0.1:%d", ppPort)); err != nil {
		return err
	}
	for i := range stableBackends {
		b := newBackend(i, fmt.Sprintf("127.0.0.1:%d", ports[3+i]), env)
		s.bes = append(s.bes, b)
		if err := b.start(); err != nil {
			return err
		}
	}
	s.toggler = newToggler(ports[3+stableBackends])

	s.chaos = &chaos{run: env, plan: cfg.plan, backends: s.bes, toggler: s.toggler, sets: targetSets, stop: make(chan struct{})}
	s.chaos.base = proxyConfig{
		admin:           fmt.Sprintf("127.0.0.1:%d", ports[2]),
		ports:           ports[:2],
		sniPort:         sniPort,
		ppPort:          ppPort,
		dialTimeout:     500 * time.Millisecond,
		failTimeout:     time.Second,
		shutdownTimeout: 5 * time.Second,
	}
	if cfg.edges {
		if err := s.setUpEdges(ports[6+stableBackends:], &r); err != nil {
			return err
		}
	}
	first := s.chaos.configFor(0)
	if s.proxy, err = startProxy(cfg.proxyBin, s.dir, first); err != nil {
		return err
	}
	s.chaos.proxy = s.proxy
	s.sampler = &sampler{proxy: s.proxy, every: cfg.sampleEvery}
	s.long = newLongConns(env, cfg.conns)
	s.churn = &churn{run: env, rate: cfg.churn, maxInFlight: int64(max(2*cfg.churn, 50))}
	fmt.Fprintf(cfg.out, "soak: seed %d, proxy pid %d, log %s; %d long-lived connections, %d short/s, %v\n",
		cfg.seed, s.proxy.pid(), s.proxy.logPath, cfg.conns, cfg.churn, cfg.duration)
	return nil
}

// setUpEdges holds the port failing reloads add, and starts soak-bulk's
// backend and its slow readers' state, on three free ports: the proxy's
// soak-bulk port, the held one, the backend's.
func (s *soak) setUpEdges(ports []int, r *splitmix) error {
	var err error
	if s.held, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", ports[1])); err != nil {
		return fmt.Errorf("hold a port for failing reloads: %w", err)
	}
	if s.bulk, err = startBulkBackend(fmt.Sprintf("127.0.0.1:%d", ports[2]), s.cfg.slow.size); err != nil {
		return err
	}
	c := s.chaos
	c.edges, c.heldPort = true, ports[1]
	c.base.bulkPort, c.base.bulkTarget, c.base.idleTimeout = ports[0], s.bulk.addr(), slowIdleTimeout
	s.slow = &slowReaders{run: s.env, addr: fmt.Sprintf("127.0.0.1:%d", ports[0]), plan: s.cfg.slow, seed: splitmix(r.next())}
	return nil
}

// warmUp opens the long-lived connections, before any chaos, and waits
// until they are all established or the ramp and two hang limits pass.
func (s *soak) warmUp(sum *summary) {
	s.long.start(s.cfg.ramp)
	warm := time.Now()
	deadline := warm.Add(s.cfg.ramp + 2*s.cfg.hangLimit)
	for s.long.established.Load() < int64(s.cfg.conns) && time.Now().Before(deadline) && s.proxy.running() {
		time.Sleep(50 * time.Millisecond)
	}
	sum.Warmup = time.Since(warm)
	sum.WarmEstablished = s.long.established.Load()
}

// steady runs churn and chaos next to the long-lived connections for
// the duration, then stops the chaos (every backend comes back up) and
// lets the traffic run on for a cool-down, so that a kill in the last
// seconds is judged like the others: a connection that never noticed
// it hangs into the stall limit within the cool-down. Then the churn
// stops and every long-lived connection is closed. It returns why it
// stopped early, if it did.
func (s *soak) steady() string {
	waitChaos := s.chaos.start()
	var traffic sync.WaitGroup
	traffic.Go(s.churn.loop)
	if s.slow != nil {
		traffic.Go(s.slow.loop)
	}
	aborted := s.wait(s.cfg.duration)
	close(s.chaos.stop)
	waitChaos()
	if aborted == "" {
		aborted = s.wait(s.cfg.hangLimit + time.Second)
	}
	close(s.env.stop)
	traffic.Wait()
	s.long.stop()
	return aborted
}

// checkEnd waits for the proxy to come back to its baseline with no
// client left, then stops it with SIGTERM.
func (s *soak) checkEnd(sum *summary) {
	sum.End, sum.Settle = s.settle(sum.Baseline)
	sum.ProxyFailedDials = s.failedTotal()
	code, err := s.proxy.stop(s.proxy.shutdownTimeout + 5*time.Second)
	sum.ProxyExit = code
	if err != nil {
		sum.ProxyStopErr = err.Error()
	}
}

// tally copies the counters of the run into the summary.
func (s *soak) tally(sum *summary) {
	sum.LogErrors, sum.LogWarns, sum.LogPanics = s.proxy.logCounts()
	sum.LongPeak = s.long.peak.Load()
	sum.LongSessions, sum.LongRetired = s.long.sessions.Load(), s.long.retired.Load()
	sum.ShortMade, sum.ShortOK, sum.ShortSkipped = s.churn.made.Load(), s.env.ledger.shortOK.Load(), s.churn.skipped.Load()
	for k := range sum.Entries {
		sum.Entries[k] = s.env.entries.made[k].Load()
	}
	sum.BytesUp, sum.BytesDown = s.env.ledger.bytesUp.Load(), s.env.ledger.bytesDown.Load()
	ch := s.chaos
	sum.Kills, sum.Resets, sum.Reloads, sum.Toggles = ch.kills.Load(), ch.resets.Load(), ch.reloads.Load(), ch.toggles.Load()
	sum.ChaosErrors = ch.failures()
	sum.FailedReloads = ch.failedReloads.Load()
	if sl := s.slow; sl != nil {
		sum.Edges = true
		sum.SlowMade, sum.SlowOK, sum.SlowStarved, sum.SlowBytes = sl.made.Load(), sl.ok.Load(), sl.starved.Load(), sl.bytes.Load()
		sum.SlowFailures = sl.failures()
	}
	lr := s.env.ledger.report()
	sum.Counts, sum.ProxyCauses, sum.LateCauses, sum.CutCauses = lr.counts, lr.proxyCauses, lr.lateCauses, lr.cutCauses
	sum.MaxCutLatency, sum.Details = lr.maxCutLatency, lr.details
}

// wait lets the soak run for d, printing progress. It returns early,
// with the reason, if the proxy exits.
func (s *soak) wait(d time.Duration) string {
	lc, chn, ch := s.long, s.churn, s.chaos
	end := time.After(d)
	var tick <-chan time.Time
	if s.cfg.progress > 0 {
		t := time.NewTicker(s.cfg.progress)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-end:
			return ""
		case <-s.proxy.exited:
			return fmt.Sprintf("the proxy exited during the run: %v", s.proxy.waitErr)
		case <-tick:
			c := s.env.ledger.report().counts
			u, err := s.proxy.measure()
			res := fmt.Sprintf("proxy goroutines %d, fds %d, RSS %.1f MiB, active %d", u.Goroutines, u.FDs, float64(u.RSSKiB)/1024, u.Active)
			if err != nil {
				res = "proxy: " + err.Error()
			}
			fmt.Fprintf(s.cfg.out, "soak: t=%s long %d/%d, short %d, kills %d, reloads %d, toggles %d, cut %d, FAILURES %d, corruption %d, starved %d | %s\n",
				time.Since(s.env.start).Round(time.Second), lc.established.Load(), lc.n, chn.made.Load(),
				ch.kills.Load(), ch.reloads.Load(), ch.toggles.Load(), c.CutLong+c.CutShort+c.CutBeforeHello,
				c.ProxyFailures+c.NoHealthy+c.Misrouted+c.SlowCuts, c.Corruption, c.Starved, res)
		}
	}
}

// settle waits, up to cfg.settle, for the proxy to hold no connection
// and be back within the slack of its baseline goroutines and
// descriptors, and returns its last reading and how long that took.
func (s *soak) settle(base usage) (usage, time.Duration) {
	start := time.Now()
	var u usage
	for {
		var err error
		u, err = s.proxy.measure()
		if err == nil && u.Active == 0 && u.Goroutines <= base.Goroutines+goroutineSlack && u.FDs <= base.FDs+fdSlack {
			return u, time.Since(start)
		}
		if time.Since(start) > s.cfg.settle {
			return u, time.Since(start)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// failedTotal is the proxy's own count of connections it closed because
// every target failed, all apps.
func (s *soak) failedTotal() float64 {
	m, err := s.proxy.metrics()
	if err != nil {
		return -1
	}
	total := 0.0
	for k, v := range m {
		if strings.HasPrefix(k, "tcpproxy_connections_failed_total{") {
			total += v
		}
	}
	return total
}

// cleanup stops whatever is still running, on every path.
func (s *soak) cleanup() {
	if s.proxy != nil {
		s.proxy.kill()
	}
	for _, b := range s.bes {
		b.close()
	}
	if s.toggler != nil {
		s.toggler.refuse()
	}
	if s.held != nil {
		s.held.Close()
	}
	if s.bulk != nil {
		s.bulk.close()
	}
}

// raiseFileLimit raises the soft RLIMIT_NOFILE to the hard limit and
// returns it. (Go does this at start-up too, but says so nowhere.)
func raiseFileLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return 0, fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", rl.Max, err)
		}
	}
	return rl.Cur, nil
}

// selfCPU is this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineBusy is the CPU time all processors spent on anything but
// idle and I/O wait since boot, from /proc/stat.
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("read /proc/stat: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, errors.New("cannot parse /proc/stat")
	}
	var busy int64
	for i, v := range f[1:9] { // user nice system idle iowait irq softirq steal
		if i == 3 || i == 4 {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse /proc/stat: %w", err)
		}
		busy += n
	}
	return time.Duration(busy) * time.Second / clockTick, nil
}

// cpuShare is the proxy's CPU time over wall, in percent of one core.
func cpuShare(p *proxyProc, wall time.Duration) float64 {
	t, err := cpuTime(p.pid())
	if err != nil || wall <= 0 {
		return -1
	}
	return t.Seconds() / wall.Seconds() * 100
}
