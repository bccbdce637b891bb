package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/michaeldbianchi/tcpproxy/internal/stats"
)

// applyYAML reloads a running in-process proxy with yamlText.
func applyYAML(t *testing.T, srv *proxyServer, yamlText string) reloadSummary {
	t.Helper()
	cfg, err := parseConfig("test.yaml", []byte(yamlText))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	sum, err := srv.apply(cfg)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	return sum
}

func TestReloadSwapsTargetsForNextConnection(t *testing.T) {
	a, b := startBackend(t, namedHandler("a")), startBackend(t, namedHandler("b"))
	port := freePort(t)
	srv, _ := startProxy(t, "apps:\n"+appYAML("web", []int{port}, []string{a.addr}, ""))
	held := dialProxy(t, port)
	if got := readLine(t, held); got != "a" {
		t.Fatalf("before reload: %q", got)
	}
	sum := applyYAML(t, srv, "apps:\n"+appYAML("web", []int{port}, []string{b.addr}, ""))
	if fmt.Sprint(sum.changed) != "[web]" || len(sum.opened)+len(sum.closed)+len(sum.added)+len(sum.removed) != 0 {
		t.Errorf("summary = %+v", sum)
	}
	if got := readLine(t, dialProxy(t, port)); got != "b" {
		t.Fatalf("after reload the next connection went to %q, want b", got)
	}
	// The connection established before the reload still works.
	held.Write([]byte("still here\n"))
	if got := readLine(t, held); got != "still here" {
		t.Fatalf("old connection after reload: %q", got)
	}
}

func TestReloadPortsAddedAndRemoved(t *testing.T) {
	be := startBackend(t, echoHandler)
	p1, p2 := freePort(t), freePort(t)
	srv, _ := startProxy(t, "apps:\n"+appYAML("web", []int{p1}, []string{be.addr}, ""))
	held := dialProxy(t, p1)

	sum := applyYAML(t, srv, "apps:\n"+appYAML("web", []int{p2}, []string{be.addr}, ""))
	if fmt.Sprint(sum.opened) != fmt.Sprintf("[127.0.0.1:%d]", p2) || fmt.Sprint(sum.closed) != fmt.Sprintf("[127.0.0.1:%d]", p1) {
		t.Errorf("summary = %+v", sum)
	}
	// A removed port closes once the clients that reached it are taken
	// (after retireGrace, within retireWait), then refuses.
	waitFor(t, 2*retireWait, "the removed port to refuse", func() bool { return refuses(p1) })
	c := dialProxy(t, p2)
	c.Write([]byte("new port\n"))
	if got := readLine(t, c); got != "new port" {
		t.Fatalf("added port: %q", got)
	}
	// A connection accepted on the removed port runs on.
	held.Write([]byte("old port\n"))
	if got := readLine(t, held); got != "old port" {
		t.Fatalf("connection on a removed port: %q", got)
	}
}

// TestReloadRemovingAppKeepsTransfer starts a long transfer, reloads
// with a config that no longer has its app, and checks every byte.
func TestReloadRemovingAppKeepsTransfer(t *testing.T) {
	be := startBackend(t, echoHandler)
	other := startBackend(t, echoHandler)
	p1, p2 := freePort(t), freePort(t)
	srv, _ := startProxy(t, "apps:\n"+appYAML("doomed", []int{p1}, []string{be.addr}, "")+appYAML("other", []int{p2}, []string{other.addr}, ""))

	c := dialProxy(t, p1)
	data := bytes.Repeat([]byte("0123456789abcdef"), 2<<20) // 32 MiB
	half := len(data) / 2
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(c)
		got <- b
	}()
	if _, err := c.Write(data[:half]); err != nil {
		t.Fatal(err)
	}
	sum := applyYAML(t, srv, "apps:\n"+appYAML("other", []int{p2}, []string{other.addr}, ""))
	if fmt.Sprint(sum.removed) != "[doomed]" {
		t.Errorf("summary = %+v", sum)
	}
	if _, err := c.Write(data[half:]); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	select {
	case b := <-got:
		if sha256.Sum256(b) != sha256.Sum256(data) {
			t.Fatalf("transfer through a removed app: got %d of %d bytes, or different bytes", len(b), len(data))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("transfer did not finish")
	}
}

func TestReloadKeepsHealthOfTargetsThatStay(t *testing.T) {
	live := startBackend(t, namedHandler("live"))
	dead := deadAddr(t)
	port := freePort(t)
	srv, _ := startProxy(t, "apps:\n"+appYAML("web", []int{port}, []string{dead, live.addr}, "balance: round_robin\nfail_timeout: 1h"))
	countTargets(t, port, 2) // marks dead down
	if srv.appAt(0).targets[0].health.Up() {
		t.Fatal("dead target not marked down")
	}
	applyYAML(t, srv, "apps:\n"+appYAML("web", []int{port}, []string{dead, live.addr}, "balance: round_robin\nfail_timeout: 1h\ndial_timeout: 2s"))
	if srv.appAt(0).targets[0].health.Up() {
		t.Fatal("a reload forgot that a target that stays is down")
	}
}

// TestReloadPortMovesBetweenApps runs a client loop while a port moves
// from one app to another, and asserts no connection is refused.
func TestReloadPortMovesBetweenApps(t *testing.T) {
	a, b := startBackend(t, namedHandler("a")), startBackend(t, namedHandler("b"))
	shared, pa, pb := freePort(t), freePort(t), freePort(t)
	before := "apps:\n" + appYAML("app-a", []int{pa, shared}, []string{a.addr}, "") + appYAML("app-b", []int{pb}, []string{b.addr}, "")
	after := "apps:\n" + appYAML("app-a", []int{pa}, []string{a.addr}, "") + appYAML("app-b", []int{pb, shared}, []string{b.addr}, "")
	srv, _ := startProxy(t, before)

	var seen sync.Map
	load := startClientLoad(4, func() error {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", shared))
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line := make([]byte, 2)
		if _, err := io.ReadFull(c, line); err != nil {
			return err
		}
		seen.Store(string(line[:1]), true)
		return nil
	})
	waitFor(t, 5*time.Second, "traffic to app-a", func() bool { _, ok := seen.Load("a"); return ok })
	for i := 0; i < 10; i++ {
		applyYAML(t, srv, after)
		applyYAML(t, srv, before)
	}
	applyYAML(t, srv, after)
	waitFor(t, 5*time.Second, "traffic to app-b", func() bool { _, ok := seen.Load("b"); return ok })
	if errs := load.finish(); len(errs) != 0 {
		t.Fatalf("%d connections failed while the port moved between apps: %q", load.fail.Load(), errs)
	}
}

func TestReloadNewPortInUseChangesNothing(t *testing.T) {
	be := startBackend(t, namedHandler("old"))
	other := startBackend(t, namedHandler("new"))
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	port := freePort(t)
	srv, _ := startProxy(t, "apps:\n"+appYAML("web", []int{port}, []string{be.addr}, ""))
	cfg, err := parseConfig("test.yaml", []byte("apps:\n"+appYAML("web", []int{port, taken.Addr().(*net.TCPAddr).Port}, []string{other.addr}, "")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.apply(cfg); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("apply err = %v, want address in use", err)
	}
	if got := readLine(t, dialProxy(t, port)); got != "old" {
		t.Fatalf("after a failed reload the port serves %q, want the old config", got)
	}
	var listed []string
	for _, l := range srv.listenerStats() {
		listed = append(listed, l.Listen)
	}
	if want := []string{fmt.Sprintf("127.0.0.1:%d", port)}; !slices.Equal(listed, want) {
		t.Errorf("/status listeners after a failed reload = %q, want %q (the port it could not bind is not one)", listed, want)
	}
}

// TestBinaryReloadOnSIGHUP: an invalid file keeps the old config serving
// and logs every error; a valid one takes effect.
func TestBinaryReloadOnSIGHUP(t *testing.T) {
	a, b := startBackend(t, namedHandler("a")), startBackend(t, namedHandler("b"))
	port := freePort(t)
	path := writeConfig(t, "apps:\n"+appYAML("web", []int{port}, []string{a.addr}, ""))
	proc, out := startBinary(t, port, "-c", path)

	bad := "apps:\n- name: web\n  listen: 127.0.0.1\n  ports: [" + fmt.Sprint(port) + ", 0]\n  tagets: [x]\n"
	os.WriteFile(path, []byte(bad), 0o644)
	proc.Signal(syscall.SIGHUP)
	waitFor(t, 5*time.Second, "the failed reload to be logged", func() bool {
		return strings.Count(out.String(), "config reload failed") >= 3
	})
	for _, want := range []string{"port 0 outside 1..65535", `unknown key \"tagets\"`, "no targets"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if got := readLine(t, dialProxy(t, port)); got != "a" {
		t.Fatalf("after an invalid reload: %q, want the old config", got)
	}

	os.WriteFile(path, []byte("apps:\n"+appYAML("web", []int{port}, []string{b.addr}, "")), 0o644)
	proc.Signal(syscall.SIGHUP)
	waitFor(t, 5*time.Second, "the new config to serve", func() bool {
		return readLine(t, dialProxy(t, port)) == "b"
	})
	// The new config serves before the summary is logged, and the line
	// then still has to come through the proxy's stdout pipe.
	defer func() {
		if t.Failed() {
			t.Log(out)
		}
	}()
	waitFor(t, 5*time.Second, "the reload summary line", func() bool {
		return strings.Contains(out.String(), `msg="config reloaded" apps_added=[] apps_removed=[] apps_changed=[web]`)
	})
}

// TestBinaryWatch: -watch reloads on a write in place and on a new file
// renamed over the old one, as editors do.
func TestBinaryWatch(t *testing.T) {
	a, b, c := startBackend(t, namedHandler("a")), startBackend(t, namedHandler("b")), startBackend(t, namedHandler("c"))
	port := freePort(t)
	path := writeConfig(t, "apps:\n"+appYAML("web", []int{port}, []string{a.addr}, ""))
	_, out := startBinary(t, port, "-watch", "-c", path)
	defer func() {
		if t.Failed() {
			t.Log(out)
		}
	}()

	tests := []struct {
		name    string
		target  *backend
		answers string
		write   func(text string)
	}{
		{"write in place", b, "b", func(text string) {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString(text)
			f.Close()
		}},
		{"rename over", c, "c", func(text string) {
			tmp := filepath.Join(filepath.Dir(path), ".config.yaml.swp")
			os.WriteFile(tmp, []byte(text), 0o644)
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.write("apps:\n" + appYAML("web", []int{port}, []string{tt.target.addr}, ""))
			waitFor(t, 5*time.Second, "the change to be picked up", func() bool {
				return readLine(t, dialProxy(t, port)) == tt.answers
			})
		})
	}
}

// binaryStatus fetches /status from a binary's admin address.
func binaryStatus(t *testing.T, admin string) map[string]any {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// statusTarget returns target addr of app from a /status document.
func statusTarget(t *testing.T, st map[string]any, app, addr string) map[string]any {
	t.Helper()
	for _, a := range st["apps"].([]any) {
		am := a.(map[string]any)
		if am["name"] != app {
			continue
		}
		for _, tg := range am["targets"].([]any) {
			if tm := tg.(map[string]any); tm["address"] == addr {
				return tm
			}
		}
	}
	t.Fatalf("no target %s of app %s in /status", addr, app)
	return nil
}

// reloadBinary sends SIGHUP and waits for the n-th reload outcome line.
func reloadBinary(t *testing.T, proc *os.Process, out *syncBuffer, n int) {
	t.Helper()
	proc.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, fmt.Sprintf("reload %d", n), func() bool {
		return strings.Count(out.String(), `msg="config reloaded"`)+strings.Count(out.String(), `msg="config reload failed`) >= n
	})
}

// TestBinaryReloadKeepsRoundRobinCycle: a reload that keeps an app's
// targets and strategy keeps its round_robin cycle (#16 item 10).
func TestBinaryReloadKeepsRoundRobinCycle(t *testing.T) {
	var targets []string
	for _, n := range []string{"a", "b", "c"} {
		targets = append(targets, startBackend(t, namedHandler(n)).addr)
	}
	port := freePort(t)
	path := writeConfig(t, "apps:\n"+appYAML("rr", []int{port}, targets, "balance: round_robin"))
	proc, out := startBinary(t, port, "-c", path)
	seen := map[string]int{}
	for i := 1; i <= 12; i++ {
		reloadBinary(t, proc, out, i) // the same file every time
		seen[readLine(t, dialProxy(t, port))]++
	}
	if seen["a"] != 4 || seen["b"] != 4 || seen["c"] != 4 {
		t.Fatalf("12 connections, each after a reload: %v, want 4 each", seen)
	}
}

// TestBinaryFailedReloadChangesNothing: a reload that fails (a new port
// is taken) leaves the running health policy as it was (#16 item 7).
func TestBinaryFailedReloadChangesNothing(t *testing.T) {
	live := startBackend(t, namedHandler("live"))
	dead := deadAddr(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	port, admin := freePort(t), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := func(maxFails string, ports ...int) string {
		return "admin: " + admin + "\napps:\n" + appYAML("web", ports, []string{dead, live.addr}, "balance: round_robin\nmax_fails: "+maxFails)
	}
	path := writeConfig(t, cfg("3", port))
	proc, out := startBinary(t, port, "-c", path)
	os.WriteFile(path, []byte(cfg("1", port, taken.Addr().(*net.TCPAddr).Port)), 0o644)
	reloadBinary(t, proc, out, 1)
	if !strings.Contains(out.String(), "config reload failed") {
		t.Fatalf("the reload did not fail:\n%s", out)
	}
	// Connect until the dead target has failed a dial after the reload
	// (round robin alternates; the live target answers each client).
	// Under max_fails 3 two failed dials leave it up; under the failed
	// reload's max_fails 1 it would be down.
	dials := func() float64 { return statusTarget(t, binaryStatus(t, admin), "web", dead)["dials"].(float64) }
	before := dials()
	for i := 0; i < 4 && dials() == before; i++ {
		if got := readLine(t, dialProxy(t, port)); got != "live" {
			t.Fatalf("got %q", got)
		}
	}
	tg := statusTarget(t, binaryStatus(t, admin), "web", dead)
	if tg["dials"].(float64) != 2 || tg["up"] != true {
		t.Fatalf("dead target after 2 failed dials: %v; max_fails 1 of the failed reload took effect", tg)
	}
}

// TestBinaryReloadKeepsCheckState: a reload that changes an app's target
// list restarts its checker, and a target the checks marked down stays
// down without a trial connection (#16 item 11).
func TestBinaryReloadKeepsCheckState(t *testing.T) {
	a, b := startBackend(t, namedHandler("a")), startBackend(t, namedHandler("b"))
	dead := deadAddr(t)
	port, admin := freePort(t), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := func(targets ...string) string {
		return "admin: " + admin + "\napps:\n" + appYAML("web", []int{port}, targets, "balance: round_robin\nhealth_check: {interval: 100ms, timeout: 100ms, fall: 1, rise: 1}")
	}
	path := writeConfig(t, cfg(dead, a.addr))
	proc, out := startBinary(t, port, "-c", path)
	waitFor(t, 10*time.Second, "the checks to mark the dead target down", func() bool {
		return statusTarget(t, binaryStatus(t, admin), "web", dead)["down_by"] == "active"
	})
	before := statusTarget(t, binaryStatus(t, admin), "web", dead)["dials"].(float64)
	os.WriteFile(path, []byte(cfg(dead, a.addr, b.addr)), 0o644)
	reloadBinary(t, proc, out, 1)
	for i := 0; i < 12; i++ {
		readLine(t, dialProxy(t, port))
	}
	tg := statusTarget(t, binaryStatus(t, admin), "web", dead)
	if tg["dials"].(float64) != before || tg["down_by"] != "active" {
		t.Fatalf("dead target after the reload: %v (client dials before it: %v); want no new client dial, still down by the checks", tg, before)
	}
}

// TestBinaryWatchHalfWrittenFile: -watch never applies a prefix of a file
// written in place with pauses, even when the prefix is valid YAML that
// drops an app: the dropped app's port keeps accepting (#16 item 8).
func TestBinaryWatchHalfWrittenFile(t *testing.T) {
	a, b := startBackend(t, namedHandler("a")), startBackend(t, namedHandler("b"))
	pa, pb := freePort(t), freePort(t)
	head := "apps:\n" + appYAML("a", []int{pa}, []string{a.addr}, "")
	tail := appYAML("b", []int{pb}, []string{b.addr}, "")
	path := writeConfig(t, head+tail)
	_, out := startBinary(t, pb, "-watch", "-c", path)

	stop := make(chan struct{})
	var refused atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // b's clients, all along
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", pb))
			if err != nil {
				refused.Add(1)
				continue
			}
			c.Close()
		}
	}()
	for i, pause := range []time.Duration{200 * time.Millisecond, time.Second} {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(head) // valid YAML on its own, without app b
		time.Sleep(pause)   // the writer stalls mid-file
		f.WriteString(tail)
		f.Close()
		waitFor(t, 10*time.Second, "the whole file to be loaded", func() bool {
			return strings.Count(out.String(), `msg="config reloaded"`) == i+1
		})
	}
	close(stop)
	wg.Wait()
	if strings.Contains(out.String(), "apps_removed=[b]") || refused.Load() != 0 {
		t.Fatalf("a half-written file was applied: %d refused connections to b\n%s", refused.Load(), out)
	}
}

// loopbackV6 reports whether this host can listen on ::1.
func loopbackV6() bool {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err == nil {
		ln.Close()
	}
	return err == nil
}

// TestBinaryFailedReloadKeepsListeners: a reload that would move app a
// from every interface to 127.0.0.1 on the same port, and that then fails
// on app b's new port, leaves a's socket on every interface as it was
// (#16 item 2).
func TestBinaryFailedReloadKeepsListeners(t *testing.T) {
	if !loopbackV6() {
		t.Skip("no ::1: the socket on every interface is told apart from 127.0.0.1 through ::1")
	}
	be := startBackend(t, echoHandler)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	p, q := freePort(t), freePort(t)
	good := fmt.Sprintf("apps:\n- name: a\n  ports: [%d]\n  targets: [%q]\n- name: b\n  listen: 127.0.0.1\n  ports: [%d]\n  targets: [%q]\n", p, be.addr, q, be.addr)
	bad := fmt.Sprintf("apps:\n- name: a\n  listen: 127.0.0.1\n  ports: [%d]\n  targets: [%q]\n- name: b\n  listen: 127.0.0.1\n  ports: [%d, %d]\n  targets: [%q]\n", p, be.addr, q, taken.Addr().(*net.TCPAddr).Port, be.addr)
	path := writeConfig(t, good)
	proc, out := startBinary(t, p, "-c", path)
	v6 := fmt.Sprintf("[::1]:%d", p)
	for i := 1; i <= 10; i++ { // map order decided which socket went first
		os.WriteFile(path, []byte(bad), 0o644)
		reloadBinary(t, proc, out, i)
		c, err := net.Dial("tcp", v6)
		if err != nil {
			t.Fatalf("after failed reload %d, a's socket on every interface is gone: %v\n%s", i, err, out)
		}
		c.Close()
	}
	if n := strings.Count(out.String(), "config reload failed"); n < 10 {
		t.Fatalf("%d failed reloads, want 10:\n%s", n, out)
	}
}

// TestBinaryListenChangeRefusesNoClient: toggling an app's listen on one
// port between every interface, 127.0.0.1 and localhost refuses and
// resets no client connecting all along, and an upgrade after such an
// edit takes the socket over (#16 item 9).
func TestBinaryListenChangeRefusesNoClient(t *testing.T) {
	be := startBackend(t, echoHandler)
	p := freePort(t)
	pidFile := filepath.Join(t.TempDir(), "tcpproxy.pid")
	cfg := func(listen string) string {
		return fmt.Sprintf("apps:\n- name: a\n  %s\n  ports: [%d]\n  targets: [%q]\n", listen, p, be.addr)
	}
	path := writeConfig(t, cfg("listen: localhost"))
	proc, out := startBinary(t, p, "-c", path, "-pid-file", pidFile)
	t.Cleanup(func() { // the upgraded process shares the test's output pipe
		if pid := readPIDFile(pidFile); pid != proc.Pid && pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})

	stop := make(chan struct{})
	var ok, failed atomic.Int64
	var errs sync.Map
	var wg sync.WaitGroup
	var stopOnce sync.Once
	stopClients := func() { stopOnce.Do(func() { close(stop); wg.Wait() }) }
	t.Cleanup(stopClients)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := echoOnce(fmt.Sprintf("127.0.0.1:%d", p)); err != nil {
					failed.Add(1)
					errs.Store(err.Error(), true)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	listens := []string{"listen: 127.0.0.1", "", "listen: 127.0.0.1", "listen: localhost", "", "listen: localhost", "listen: 127.0.0.1"}
	for i := 1; i <= 14; i++ {
		os.WriteFile(path, []byte(cfg(listens[(i-1)%len(listens)])), 0o644)
		reloadBinary(t, proc, out, i)
		before := ok.Load()
		waitFor(t, 5*time.Second, "clients after the reload", func() bool { return ok.Load() > before+20 })
	}
	if strings.Contains(out.String(), "config reload failed") {
		t.Fatalf("a listen change failed:\n%s", out)
	}
	// The file says localhost now; an upgrade must take over the socket.
	if _, err := exec.Command(buildBinary(t), "-upgrade", "-pid-file", pidFile).CombinedOutput(); err != nil {
		t.Fatalf("upgrade after a listen edit: %v\n%s", err, out)
	}
	before := ok.Load()
	waitFor(t, 5*time.Second, "clients after the upgrade", func() bool { return ok.Load() > before+20 })
	stopClients()
	if n := failed.Load(); n != 0 {
		var list []string
		errs.Range(func(k, _ any) bool { list = append(list, k.(string)); return true })
		t.Fatalf("%d of %d clients failed across the listen changes: %v", n, n+ok.Load(), list)
	}
	t.Logf("%d clients across 14 listen changes and an upgrade, none refused or reset", ok.Load())
	if !strings.Contains(out.String(), "upgraded=true") {
		t.Fatalf("no upgrade:\n%s", out)
	}
}

// echoOnce connects to addr, echoes a line and closes.
func echoOnce(addr string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "ping\n" {
		return fmt.Errorf("echo %q", buf)
	}
	return nil
}

// TestReloadRemovedAppStaysCounted: an app a reload removes is shown
// (marked removed) while its connections drain, and an app or target
// removed and added back goes on from its counts, which are since start
// (#16 item 12).
func TestReloadRemovedAppStaysCounted(t *testing.T) {
	a, b := startBackend(t, echoHandler), startBackend(t, echoHandler)
	p, q := freePort(t), freePort(t)
	both := "apps:\n" + appYAML("web", []int{p}, []string{a.addr, b.addr}, "balance: round_robin") + appYAML("other", []int{q}, []string{a.addr}, "")
	srv, _ := startProxy(t, both)
	for i := 0; i < 4; i++ {
		heldEcho(t, p, "x").Close()
	}
	held := heldEcho(t, p, "held")
	findApp := func(name string) *stats.App {
		for _, app := range srv.snapshot().Apps {
			if app.Name == name {
				return &app
			}
		}
		return nil
	}
	applyYAML(t, srv, "apps:\n"+appYAML("other", []int{q}, []string{a.addr}, ""))
	waitFor(t, 5*time.Second, "the removed app with its one open connection", func() bool {
		app := findApp("web") // the closed ones end asynchronously
		return app != nil && app.Removed && app.Active == 1 && app.Total == 5
	})
	held.Close()
	waitFor(t, 5*time.Second, "the removed app to drain", func() bool { return findApp("web") == nil })

	applyYAML(t, srv, "apps:\n"+appYAML("web", []int{p}, []string{a.addr}, "")+appYAML("other", []int{q}, []string{a.addr}, ""))
	heldEcho(t, p, "y").Close()
	applyYAML(t, srv, both) // b back too
	app := findApp("web")
	if app == nil || app.Removed || app.Total != 6 {
		t.Fatalf("app added back: %+v, want total 6 since start", app)
	}
	waitFor(t, 5*time.Second, "the last connection to end", func() bool { return findApp("web").Active == 0 })
	app = findApp("web")
	for _, tg := range app.Targets {
		if want := map[string]int64{a.addr: 4, b.addr: 2}[tg.Address]; tg.Total != want {
			t.Errorf("target %s total %d, want %d since start", tg.Address, tg.Total, want)
		}
	}
}

// TestReloadSummaryNamesMovedListener: a port moving from every interface
// to 127.0.0.1 is reported opened and closed (#16 item 12).
func TestReloadSummaryNamesMovedListener(t *testing.T) {
	be := startBackend(t, echoHandler)
	p := freePort(t)
	app := func(listen string) string {
		return fmt.Sprintf("apps:\n- name: a\n  %s\n  ports: [%d]\n  targets: [%q]\n", listen, p, be.addr)
	}
	srv, _ := startProxy(t, app(""))
	sum := applyYAML(t, srv, app("listen: 127.0.0.1"))
	if got, want := fmt.Sprint(sum.opened, sum.closed), fmt.Sprintf("[127.0.0.1:%d] [:%d]", p, p); got != want {
		t.Fatalf("opened, closed = %s, want %s", got, want)
	}
}

// TestReloadRespelledListenRoutesWithNewConfig: a reload that changes
// an app's listen from localhost to 127.0.0.1 (the same socket, taken
// over), or from localhost to every interface (the localhost socket
// stays as an alias of the wildcard), and its target sends every
// connection made after the reload to the new target; the old route's
// accept loop must not take any with the old config.
func TestReloadRespelledListenRoutesWithNewConfig(t *testing.T) {
	old := startBackend(t, namedHandler("old"))
	nu := startBackend(t, namedHandler("new"))
	port := freePort(t)
	yaml := func(listen, target string) string {
		if listen != "" {
			listen = "\n  listen: " + listen
		}
		return fmt.Sprintf("apps:\n- name: web%s\n  ports: [%d]\n  targets: [%q]\n", listen, port, target)
	}
	srv, _ := startProxy(t, yaml("localhost", old.addr))
	for i, step := range []struct{ listen, target, want string }{
		{"127.0.0.1", nu.addr, "new"},
		{"localhost", old.addr, "old"},
		{"127.0.0.1", nu.addr, "new"},
		{"localhost", old.addr, "old"},
		{"", nu.addr, "new"}, // every interface
		{"localhost", old.addr, "old"},
		{"0.0.0.0", nu.addr, "new"},
	} {
		cfg, err := parseConfig("test.yaml", []byte(yaml(step.listen, step.target)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := srv.apply(cfg); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		for n := range 40 {
			if got := readLine(t, dialProxy(t, port)); got != step.want {
				t.Fatalf("reload %d to listen %s: connection %d after it reached %q, want %q", i, step.listen, n, got, step.want)
			}
		}
	}
}
