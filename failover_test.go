package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// blackholeAddr returns a loopback address whose accept queue is full,
// so the kernel drops new SYNs and a dial to it waits for its timeout,
// like a target behind a firewall that drops packets.
func blackholeAddr(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil { // never accepted from
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return addr // the queue is full: SYNs are dropped now
			}
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if i > 16 {
			t.Fatal("the accept queue never filled")
		}
	}
}

// namedBackends starts one named backend per name.
func namedBackends(t *testing.T, names ...string) []*backend {
	bs := make([]*backend, len(names))
	for i, n := range names {
		bs[i] = startBackend(t, namedHandler(n))
	}
	return bs
}

func addrs(bs ...*backend) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.addr
	}
	return out
}

func TestBalanceRoundRobinExact(t *testing.T) {
	bs := namedBackends(t, "a", "b", "c")
	port := freePort(t)
	startProxy(t, "apps:\n"+appYAML("rr", []int{port}, addrs(bs...), "balance: round_robin"))
	counts := countTargets(t, port, 300)
	if counts["a"] != 100 || counts["b"] != 100 || counts["c"] != 100 {
		t.Fatalf("round_robin split = %v, want 100/100/100", counts)
	}
}

// TestBalanceWeights checks weights 1:2:3 over 3,000 connections: exact
// for round_robin, within 5 percentage points for random.
func TestBalanceWeights(t *testing.T) {
	tests := []struct {
		balance string
		slack   float64 // allowed deviation of each share
	}{
		{"round_robin", 0},
		{"random", 0.05},
	}
	for _, tt := range tests {
		t.Run(tt.balance, func(t *testing.T) {
			bs := namedBackends(t, "w1", "w2", "w3")
			port := freePort(t)
			yaml := fmt.Sprintf(`apps:
- name: weighted
  listen: 127.0.0.1
  ports: [%d]
  balance: %s
  targets:
  - {address: %q, weight: 1}
  - {address: %q, weight: 2}
  - {address: %q, weight: 3}
`, port, tt.balance, bs[0].addr, bs[1].addr, bs[2].addr)
			startProxy(t, yaml)
			const n = 3000
			counts := countTargets(t, port, n)
			for i, name := range []string{"w1", "w2", "w3"} {
				want := float64(i+1) / 6
				got := float64(counts[name]) / n
				if d := got - want; d > tt.slack+1e-9 || d < -tt.slack-1e-9 {
					t.Errorf("%s got %.4f of connections, want %.4f ± %.2f (%v)", name, got, want, tt.slack, counts)
				}
			}
		})
	}
}

func TestBalanceLeastConn(t *testing.T) {
	bs := namedBackends(t, "a", "b", "c")
	port := freePort(t)
	srv, _ := startProxy(t, "apps:\n"+appYAML("lc", []int{port}, addrs(bs...), "balance: least_conn"))
	// Hold 4 connections open on whichever target they land on until
	// one target has 2 of them; the next connections must avoid it.
	held := map[string]int{}
	for i := 0; i < 3; i++ {
		c := dialProxy(t, port)
		held[readLine(t, c)]++
	}
	// Least-conn gave each target one connection.
	if held["a"] != 1 || held["b"] != 1 || held["c"] != 1 {
		t.Fatalf("3 long-lived connections landed %v, want one per target", held)
	}
	c := dialProxy(t, port)
	busy := readLine(t, c) // this target now has 2
	for i := 0; i < 2; i++ {
		c := dialProxy(t, port)
		if got := readLine(t, c); got == busy {
			t.Fatalf("connection %d went to %s, which holds 2 connections while the others hold 1", i, busy)
		}
	}
	if got := srv.appAt(0).targets[0].active.Load() + srv.appAt(0).targets[1].active.Load() + srv.appAt(0).targets[2].active.Load(); got != 6 {
		t.Errorf("active connections = %d, want 6", got)
	}
}

func TestBalanceHashSticksToClient(t *testing.T) {
	bs := namedBackends(t, "a", "b", "c", "d")
	port := freePort(t)
	startProxy(t, "apps:\n"+appYAML("hash", []int{port}, addrs(bs...), "balance: hash"))
	counts := countTargets(t, port, 50)
	if len(counts) != 1 {
		t.Fatalf("one client IP reached %d targets, want 1: %v", len(counts), counts)
	}
}

func TestBackupOnlyWhilePrimariesDown(t *testing.T) {
	primary := startBackend(t, namedHandler("primary"))
	backup := startBackend(t, namedHandler("backup"))
	port := freePort(t)
	yaml := fmt.Sprintf(`apps:
- name: bk
  listen: 127.0.0.1
  ports: [%d]
  fail_timeout: 100ms
  targets:
  - %q
  - {address: %q, backup: true}
`, port, primary.addr, backup.addr)
	srv, _ := startProxy(t, yaml)
	if c := countTargets(t, port, 20); c["primary"] != 20 {
		t.Fatalf("with the primary up: %v, want all on primary", c)
	}
	primaryAddr := primary.addr
	primary.close()
	if c := countTargets(t, port, 20); c["backup"] != 20 {
		t.Fatalf("with the primary down: %v, want all on backup", c)
	}
	if srv.appAt(0).targets[0].health.Up() {
		t.Fatal("primary not marked down")
	}
	// The primary comes back on the same address: once its fail_timeout
	// passes, a trial connection finds it and traffic returns to it.
	startBackendOn(t, primaryAddr, namedHandler("primary"))
	waitFor(t, 5*time.Second, "the primary to be used again", func() bool {
		return countTargets(t, port, 1)["primary"] == 1
	})
	if c := countTargets(t, port, 20); c["primary"] != 20 {
		t.Fatalf("with the primary back: %v, want all on primary", c)
	}
}

func TestPassiveHealth(t *testing.T) {
	live := startBackend(t, namedHandler("live"))
	dead := deadAddr(t)
	port := freePort(t)
	yaml := fmt.Sprintf(`apps:
- name: passive
  listen: 127.0.0.1
  ports: [%d]
  balance: round_robin
  fail_timeout: 300ms
  targets: [%q, %q]
`, port, dead, live.addr)
	srv, logs := startProxy(t, yaml)
	deadTarget := srv.appAt(0).targets[0]

	// Round robin puts the dead target first for the first connection:
	// its refused dial marks it down and the client is served by live.
	if c := countTargets(t, port, 1); c["live"] != 1 {
		t.Fatalf("first connection: %v", c)
	}
	if deadTarget.health.Up() {
		t.Fatal("one refused dial did not mark the target down (max_fails defaults to 1)")
	}
	// While down it is skipped: no more dial errors are logged.
	before := strings.Count(logs.String(), "connection refused")
	countTargets(t, port, 20)
	if after := strings.Count(logs.String(), "connection refused"); after != before {
		t.Fatalf("a down target was dialed again within fail_timeout (%d new refusals)", after-before)
	}
	if n := strings.Count(logs.String(), `msg="target down"`); n != 1 {
		t.Fatalf("target down logged %d times, want once:\n%s", n, logs)
	}
	// After fail_timeout it is retried: bring it up and it gets traffic.
	startBackendOn(t, dead, namedHandler("revived"))
	waitFor(t, 5*time.Second, "the target to be retried after fail_timeout", func() bool {
		return countTargets(t, port, 2)["revived"] > 0
	})
	if !deadTarget.health.Up() || !strings.Contains(logs.String(), `msg="target up"`) {
		t.Fatal("a successful retry did not mark the target up")
	}
}

// TestPassiveHealthAllDown: with every target down, a client still gets
// a try at each of them.
func TestPassiveHealthAllDown(t *testing.T) {
	dead1, dead2 := deadAddr(t), deadAddr(t)
	port := freePort(t)
	srv, logs := startProxy(t, "apps:\n"+appYAML("alldown", []int{port}, []string{dead1, dead2}, "fail_timeout: 1h"))
	for i := 0; i < 3; i++ {
		c := dialProxy(t, port)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.ReadAll(c)
	}
	for _, ts := range srv.appAt(0).targets {
		if ts.health.Up() {
			t.Fatalf("%s still up", ts.health.Addr())
		}
	}
	// The third client, with both targets down for an hour, still had
	// both dialed.
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	var last string
	for _, l := range lines {
		if strings.Contains(l, `msg="all targets failed"`) {
			last = l
		}
	}
	if !strings.Contains(last, dead1) || !strings.Contains(last, dead2) {
		t.Fatalf("last failure does not show a try at each target: %q", last)
	}
}

// TestPassiveHealthBlackhole: after the first dial to a black-holed
// target times out, later connections do not wait for dial_timeout.
func TestPassiveHealthBlackhole(t *testing.T) {
	hole := blackholeAddr(t)
	live := startBackend(t, namedHandler("live"))
	port := freePort(t)
	srv, _ := startProxy(t, "apps:\n"+appYAML("hole", []int{port}, []string{hole, live.addr}, "balance: round_robin\ndial_timeout: 1s\nfail_timeout: 1h"))
	for i := 0; i < 20; i++ {
		start := time.Now()
		c := dialProxy(t, port)
		if got := readLine(t, c); got != "live" {
			t.Fatalf("connection %d answered %q", i, got)
		}
		if d := time.Since(start); i == 0 && d < time.Second {
			t.Fatalf("the first connection took %v: it should have waited for the black hole's dial_timeout", d)
		}
	}
	// Counted, not timed: only a dial to the black hole waits for
	// dial_timeout, and only the first connection made one.
	if n := srv.snapshot().Apps[0].Targets[0].Dials; n != 1 {
		t.Fatalf("the black-holed target was dialed %d times in 20 connections, want once", n)
	}
}

func TestActiveHealthChecks(t *testing.T) {
	be := startBackend(t, namedHandler("checked"))
	other := startBackend(t, namedHandler("other"))
	port := freePort(t)
	yaml := fmt.Sprintf(`apps:
- name: active
  listen: 127.0.0.1
  ports: [%d]
  health_check: {interval: 100ms, timeout: 100ms, rise: 2, fall: 2}
  targets: [%q, %q]
`, port, be.addr, other.addr)
	srv, _ := startProxy(t, yaml)
	target := srv.appAt(0).targets[0]
	addr := be.addr
	be.close()
	start := time.Now()
	waitFor(t, 5*time.Second, "the stopped backend to be marked down", func() bool { return !target.health.Up() })
	// fall × interval is 200ms; jitter and a loaded machine add some.
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("marked down after %v, want about fall × interval", d)
	}
	startBackendOn(t, addr, namedHandler("checked"))
	start = time.Now()
	waitFor(t, 5*time.Second, "the restarted backend to be marked up", func() bool { return target.health.Up() })
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("marked up after %v, want about rise × interval", d)
	}
}

func TestMaxConnectionsExact(t *testing.T) {
	be := startBackend(t, echoHandler)
	port := freePort(t)
	srv, _ := startProxy(t, "apps:\n"+appYAML("limited", []int{port}, []string{be.addr}, "max_connections: 5"))
	const clients = 20
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		served   int
		rejected int
		conns    []net.Conn
	)
	start := make(chan struct{})
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				t.Error(err)
				return
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write([]byte("x"))
			buf := make([]byte, 1)
			_, err = io.ReadFull(c, buf)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				served++
				conns = append(conns, c) // held open: they count against the limit
			} else {
				rejected++
				c.Close()
			}
		}()
	}
	close(start)
	wg.Wait()
	for _, c := range conns {
		c.Close()
	}
	if served != 5 || rejected != clients-5 {
		t.Fatalf("served %d, rejected %d; want 5 and %d", served, rejected, clients-5)
	}
	if got := srv.appAt(0).stats.rejectedLimit.Load(); got != clients-5 {
		t.Errorf("rejected counter = %d, want %d", got, clients-5)
	}
}

func TestAllowDeny(t *testing.T) {
	tests := []struct {
		name        string
		extra       string
		v4ok, v6ok  bool
		wantDenials int64
	}{
		{"deny v4", "deny: [127.0.0.0/8]", false, true, 1},
		{"deny v6", `deny: ["::1"]`, true, false, 1},
		{"allow v6 only", `allow: ["::1/128"]`, false, true, 1},
		{"allow v4 only", "allow: [127.0.0.1]", true, false, 1},
		{"allow both", `allow: [127.0.0.1, "::1"]`, true, true, 0},
		{"deny wins over allow", "allow: [127.0.0.1]\ndeny: [127.0.0.1/32]", false, false, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			be := startBackend(t, echoHandler)
			port := freePort(t)
			yaml := fmt.Sprintf("apps:\n- name: acl\n  ports: [%d]\n  targets: [%q]\n  %s\n", port, be.addr, strings.ReplaceAll(tt.extra, "\n", "\n  "))
			srv, _ := startProxy(t, yaml)
			for _, c := range []struct {
				host string
				ok   bool
			}{{"127.0.0.1", tt.v4ok}, {"::1", tt.v6ok}} {
				conn, err := net.Dial("tcp", net.JoinHostPort(c.host, fmt.Sprint(port)))
				if err != nil {
					t.Fatal(err)
				}
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				conn.Write([]byte("x"))
				_, err = io.ReadFull(conn, make([]byte, 1))
				conn.Close()
				if ok := err == nil; ok != c.ok {
					t.Errorf("client %s served = %v, want %v (err %v)", c.host, ok, c.ok, err)
				}
			}
			if got := srv.appAt(0).stats.rejectedDenied.Load(); got != tt.wantDenials {
				t.Errorf("denied counter = %d, want %d", got, tt.wantDenials)
			}
			// A denied client never causes a dial.
			served := int64(0)
			if tt.v4ok {
				served++
			}
			if tt.v6ok {
				served++
			}
			if got := be.accepted.Load(); got != served {
				t.Errorf("backend saw %d connections, want %d", got, served)
			}
		})
	}
}

func TestMaxAttempts(t *testing.T) {
	dead1, dead2 := deadAddr(t), deadAddr(t)
	live := startBackend(t, namedHandler("live"))
	port := freePort(t)
	_, logs := startProxy(t, "apps:\n"+appYAML("attempts", []int{port}, []string{dead1, dead2, live.addr}, "balance: round_robin\nmax_attempts: 2\nmax_fails: 0"))
	// Round robin starts at dead1: two attempts, both refused, and the
	// live target is never reached.
	c := dialProxy(t, port)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(c); len(b) != 0 {
		t.Fatalf("got %q, want the connection closed after 2 attempts", b)
	}
	if live.accepted.Load() != 0 {
		t.Fatal("a third target was tried")
	}
	if !strings.Contains(logs.String(), dead1) || !strings.Contains(logs.String(), dead2) {
		t.Fatalf("log lacks the two attempts:\n%s", logs)
	}
}

// TestDownTargetTriedBeforeRefusing: when every target the health state
// allows fails, the targets marked down are tried too before the client
// is refused (a target marked down may be back already).
func TestDownTargetTriedBeforeRefusing(t *testing.T) {
	live := startBackend(t, namedHandler("live"))
	dead := deadAddr(t)
	port := freePort(t)
	srv, _ := startProxy(t, "apps:\n"+appYAML("lastresort", []int{port}, []string{dead, live.addr}, "balance: round_robin\nfail_timeout: 1h"))
	// Mark the live target down, as if it had failed a moment ago.
	srv.appAt(0).targets[1].health.Failure(time.Now(), errors.New("injected by the test"))
	if srv.appAt(0).targets[1].health.Up() {
		t.Fatal("could not mark the target down")
	}
	// The dead target is tried first (it is up) and refuses; the live
	// one, marked down, still gets the client.
	if got := readLine(t, dialProxy(t, port)); got != "live" {
		t.Fatalf("got %q, want the down-marked live target as a last resort", got)
	}
	if !srv.appAt(0).targets[1].health.Up() {
		t.Error("a successful last-resort dial did not mark the target up")
	}
}

// TestDialTargetDeadline checks the two ways an IP-literal dial ends
// without a timer of its own (deadlineCtx): at dial_timeout, as a
// timeout, and when the proxy stops.
func TestDialTargetDeadline(t *testing.T) {
	hole := blackholeAddr(t)
	log, _ := testLogger()
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		stop    bool
	}{
		{"dial_timeout", 100 * time.Millisecond, false},
		{"shutdown", time.Hour, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			app := &appConfig{Name: "hole", DialTimeout: tc.timeout, Targets: []targetConfig{{Address: hole, Weight: 1}}}
			ft, err := newFailoverTarget(ctx, app, log, newConnSet(), appDialer(app), nil)
			if err != nil {
				t.Fatal(err)
			}
			if !ft.targets[0].literal {
				t.Fatalf("%s not taken for an IP literal", hole)
			}
			if tc.stop {
				time.AfterFunc(50*time.Millisecond, cancel) // before or during the dial: either must end it
			}
			c, err := ft.dialTarget(hole, true)
			if err == nil {
				c.Close()
				t.Fatal("dial to a black hole succeeded")
			}
			var ne net.Error
			if !tc.stop && !(errors.As(err, &ne) && ne.Timeout()) {
				t.Errorf("dial error %v, want a timeout", err)
			}
		})
	}
}
