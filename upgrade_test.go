package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/michaeldbianchi/tcpproxy/internal/upgrade"
)

// TestBinaryUpgrade upgrades the running binary while clients connect
// in a loop, and asserts that not one connection failed, and that a
// connection opened before the upgrade finishes on the old process.
func TestBinaryUpgrade(t *testing.T) {
	be := startBackend(t, echoHandler)
	port, adminPort := freePort(t), freePort(t)
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "tcpproxy.pid")
	path := writeConfig(t, fmt.Sprintf("admin: 127.0.0.1:%d\nshutdown_timeout: 30s\napps:\n", adminPort)+appYAML("web", []int{port}, []string{be.addr}, ""))
	oldProc, out := startBinary(t, port, "-c", path, "-pid-file", pidFile)
	waitFor(t, 5*time.Second, "the pid file", func() bool { return readPIDFile(pidFile) == oldProc.Pid })

	// A connection from before the upgrade, held across it.
	held := dialProxy(t, port)
	held.Write([]byte("before\n"))
	if got := readLine(t, held); got != "before" {
		t.Fatalf("held connection: %q", got)
	}

	load := startClientLoad(4, func() error { return echoOnce(fmt.Sprintf("127.0.0.1:%d", port)) })
	waitFor(t, 5*time.Second, "the client loop to run", func() bool { return load.ok.Load() > 50 })

	// `tcpproxy -upgrade` signals the old process and waits for the new.
	upgradeOut, err := exec.Command(buildBinary(t), "-upgrade", "-pid-file", pidFile).CombinedOutput()
	if err != nil {
		t.Fatalf("tcpproxy -upgrade: %v\n%s\nproxy log:\n%s", err, upgradeOut, out)
	}
	newPID := readPIDFile(pidFile)
	if newPID == oldProc.Pid || newPID == 0 {
		t.Fatalf("pid file holds %d after the upgrade (old %d)", newPID, oldProc.Pid)
	}
	newProc, _ := os.FindProcess(newPID)
	t.Cleanup(func() {
		newProc.Signal(syscall.SIGKILL)
	})
	before := load.ok.Load()
	waitFor(t, 5*time.Second, "connections after the upgrade", func() bool { return load.ok.Load() > before+50 })
	if errs := load.finish(); len(errs) != 0 {
		n := load.fail.Load()
		t.Fatalf("%d of %d connections failed across the upgrade: %v\n%s", n, n+load.ok.Load(), errs, out)
	}
	t.Logf("%d connections across the upgrade, none failed", load.ok.Load())

	// The held connection still works, served by the old process, which
	// is still running because of it.
	held.Write([]byte("after\n"))
	if got := readLine(t, held); got != "after" {
		t.Fatalf("held connection after the upgrade: %q", got)
	}
	if err := oldProc.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the old process exited while it still had a connection: %v", err)
	}
	held.Close()
	exited := make(chan struct{})
	go func() {
		for oldProc.Signal(syscall.Signal(0)) == nil && !processGone(oldProc.Pid) {
			time.Sleep(10 * time.Millisecond)
		}
		close(exited)
	}()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("the old process did not exit after its last connection closed\n%s", out)
	}
	// Its last line may still be on its way through the stdout pipe,
	// which os/exec copies into out.
	defer func() {
		if t.Failed() {
			t.Log(out)
		}
	}()
	waitFor(t, 5*time.Second, "the old process to log its drain", func() bool {
		return strings.Contains(out.String(), "msg=stopped drained=")
	})
	// The admin server moved with the listeners.
	waitFor(t, 5*time.Second, "the new process's admin server", func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", adminPort))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// readPIDFile returns the PID in path, or 0.
func readPIDFile(path string) int {
	pid, _ := upgrade.ReadPIDFile(path)
	return pid
}

// processGone reports whether pid has exited (or is a zombie waiting to
// be reaped by the test's exec.Cmd).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	f := strings.Fields(string(b))
	return len(f) > 2 && f[2] == "Z"
}

// stoppedWithoutCut matches the last line of a drain that cut nothing.
var stoppedWithoutCut = regexp.MustCompile(`msg=stopped drained=[1-9][0-9]* cut=0`)

// heldEcho opens a proxied echo connection and checks it works.
func heldEcho(t *testing.T, port int, msg string) net.Conn {
	t.Helper()
	c := dialProxy(t, port)
	c.Write([]byte(msg + "\n"))
	if got := readLine(t, c); got != msg {
		t.Fatalf("echo %q: %q", msg, got)
	}
	return c
}

// httpStatus returns the status code of GET url, or 0 if it failed.
func httpStatus(url string) int {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestBinaryDrainOrder: on SIGTERM the listeners close at once, even with
// an admin connection that never sends its request, and the admin server
// answers while connections drain: /readyz 503, /healthz 200, /metrics
// (#16 item 3, #10 item 3).
func TestBinaryDrainOrder(t *testing.T) {
	be := startBackend(t, echoHandler)
	port, admin := freePort(t), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	path := writeConfig(t, "admin: "+admin+"\nshutdown_timeout: 30s\napps:\n"+appYAML("web", []int{port}, []string{be.addr}, ""))
	proc, out := startBinary(t, port, "-c", path)
	held := heldEcho(t, port, "before")
	stalled, err := net.Dial("tcp", admin) // sends nothing
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	proc.Signal(syscall.SIGTERM)
	waitFor(t, 2*time.Second, "the listeners to close", func() bool { return refuses(port) })
	for path, want := range map[string]int{"/readyz": 503, "/healthz": 200, "/metrics": 200} {
		if got := httpStatus("http://" + admin + path); got != want {
			t.Errorf("%s while draining: %d, want %d", path, got, want)
		}
	}
	held.Write([]byte("during\n"))
	if got := readLine(t, held); got != "during" {
		t.Fatalf("held connection while draining: %q", got)
	}
	held.Close()
	defer func() {
		if t.Failed() {
			t.Logf("proxy log:\n%s", out)
		}
	}()
	waitFor(t, 10*time.Second, "the process to stop", func() bool { return stoppedWithoutCut.MatchString(out.String()) })
}

// TestBinaryTermDuringUpgrade: a SIGTERM that arrives while an upgrade
// runs is the first stop signal, not a second: the old process drains its
// connections instead of cutting them (#16 item 4). -pprof is on, and its
// socket is handed over like the others (#16 item 6).
func TestBinaryTermDuringUpgrade(t *testing.T) {
	be := startBackend(t, echoHandler)
	port, pprofAddr := freePort(t), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	pidFile := filepath.Join(t.TempDir(), "tcpproxy.pid")
	path := writeConfig(t, "shutdown_timeout: 30s\napps:\n"+appYAML("web", []int{port}, []string{be.addr}, ""))
	oldProc, out := startBinary(t, port, "-c", path, "-pid-file", pidFile, "-pprof", pprofAddr)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("proxy log:\n%s", out)
		}
	})
	waitFor(t, 5*time.Second, "the pid file", func() bool { return readPIDFile(pidFile) == oldProc.Pid })
	held := heldEcho(t, port, "before")
	oldProc.Signal(syscall.SIGUSR2)
	oldProc.Signal(syscall.SIGTERM) // while the new binary starts
	waitFor(t, 30*time.Second, "the upgrade to finish", func() bool {
		return strings.Contains(out.String(), "stop signal during the upgrade")
	})
	if !strings.Contains(out.String(), "upgraded=true") {
		t.Fatalf("the upgrade failed (with -pprof on):\n%s", out)
	}
	// The new process shares the test's output pipe: it must be gone
	// before the old one's cleanup waits on that pipe.
	waitFor(t, 10*time.Second, "the new process's pid file", func() bool {
		pid := readPIDFile(pidFile)
		return pid != oldProc.Pid && pid != 0
	})
	newProc, _ := os.FindProcess(readPIDFile(pidFile))
	t.Cleanup(func() { newProc.Signal(syscall.SIGKILL) })
	held.Write([]byte("after\n"))
	if got := readLine(t, held); got != "after" {
		t.Fatalf("held connection after SIGTERM during the upgrade: %q\n%s", got, out)
	}
	if got := httpStatus("http://" + pprofAddr + "/debug/pprof/"); got != 200 {
		t.Errorf("pprof after the upgrade: %d", got)
	}
	held.Close()
	waitFor(t, 10*time.Second, "the old process to stop", func() bool { return stoppedWithoutCut.MatchString(out.String()) })
	if strings.Contains(out.String(), "second signal") {
		t.Errorf("the SIGTERM was taken for a second signal:\n%s", out)
	}
}

// TestBinaryUpgradeFailureReportedAtOnce: when the binary on disk cannot
// start, `tcpproxy -upgrade` reports the failure as soon as the proxy
// knows it, not after its minute-long wait, and the proxy carries on
// (#16 item 12).
func TestBinaryUpgradeFailureReportedAtOnce(t *testing.T) {
	be := startBackend(t, echoHandler)
	dir := t.TempDir()
	bin := filepath.Join(dir, "tcpproxy")
	data, err := os.ReadFile(buildBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	pidFile := filepath.Join(dir, "tcpproxy.pid")
	path := writeConfig(t, "apps:\n"+appYAML("web", []int{port}, []string{be.addr}, ""))
	cmd := exec.Command(bin, "-c", path, "-pid-file", pidFile)
	out := startCmd(t, cmd)
	waitListening(t, port)
	waitFor(t, 5*time.Second, "the pid file", func() bool { return readPIDFile(pidFile) == cmd.Process.Pid })
	// A new binary that cannot start: the upgrade's child exits at once.
	if err := os.WriteFile(bin+".new", []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(bin+".new", bin); err != nil {
		t.Fatal(err)
	}
	up := exec.Command(bin, "-upgrade", "-pid-file", pidFile)
	up.Path = buildBinary(t)        // the client itself is a working binary
	res, err := up.CombinedOutput() // before the fix: a minute's wait, then "no new process took over"
	if err == nil || !strings.Contains(string(res), "the upgrade failed") {
		t.Fatalf("tcpproxy -upgrade: %v\n%s\nproxy log:\n%s", err, res, out)
	}
	heldEcho(t, port, "still serving")
}

// TestBinaryDrainWaitsForUnroutedClients: a client on a name-routed port
// that has connected but not yet sent what routes it when SIGTERM comes
// is tracked from accept: the drain waits for it, and once it speaks it
// is closed cleanly (no dial starts after shutdown began) and counted,
// not dropped uncounted (#16 item 5, with #10 item 2).
func TestBinaryDrainWaitsForUnroutedClients(t *testing.T) {
	a := tlsBackend(t, "a")
	port := freePort(t)
	path := writeConfig(t, "shutdown_timeout: 30s\napps:\n"+appYAML("a", []int{port}, []string{a.addr}, "sni: [a.test]\npreread_timeout: 20s\naccess_log: true"))
	proc, out := startBinary(t, port, "-c", path)
	raw := dialProxy(t, port) // accepted, then silent: the library is peeking
	waitFor(t, 5*time.Second, "the silent client to be accepted", func() bool {
		s, _ := procFDs(t, proc.Pid)
		return s >= 2 // the listener and the client
	})
	proc.Signal(syscall.SIGTERM)
	waitFor(t, 5*time.Second, "the drain to start", func() bool { return strings.Contains(out.String(), "shutting down") })
	time.Sleep(200 * time.Millisecond) // the drain must wait for the silent client, not exit
	if strings.Contains(out.String(), "msg=stopped") {
		t.Fatalf("the drain ended with a client still sending its ClientHello:\n%s", out)
	}
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(raw, &tls.Config{ServerName: "a.test", InsecureSkipVerify: true})
	if err := c.Handshake(); err == nil || isReset(err) {
		t.Fatalf("handshake after SIGTERM: %v; want the connection closed cleanly", err)
	}
	waitFor(t, 10*time.Second, "the process to stop", func() bool {
		return strings.Contains(out.String(), "cut=0 dials_aborted=1") && strings.Contains(out.String(), `server_name=a.test`)
	})
}

// TestBinaryReloadWhileDraining: a SIGHUP after SIGTERM, while a
// connection drains, is logged and dropped: no reload, no cut, and the
// process stops once the connection ends.
func TestBinaryReloadWhileDraining(t *testing.T) {
	be := startBackend(t, echoHandler)
	port := freePort(t)
	path := writeConfig(t, "shutdown_timeout: 30s\napps:\n"+appYAML("web", []int{port}, []string{be.addr}, ""))
	proc, out := startBinary(t, port, "-c", path)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("proxy log:\n%s", out)
		}
	})
	held := heldEcho(t, port, "before")
	proc.Signal(syscall.SIGTERM)
	waitFor(t, 5*time.Second, "the drain to start", func() bool { return strings.Contains(out.String(), "listeners closed") })
	proc.Signal(syscall.SIGHUP)
	waitFor(t, 5*time.Second, "the SIGHUP to be logged", func() bool {
		return strings.Contains(out.String(), `msg="signal ignored while draining" signal=hangup`)
	})
	held.Write([]byte("during\n"))
	if got := readLine(t, held); got != "during" {
		t.Fatalf("held connection after SIGHUP while draining: %q", got)
	}
	held.Close()
	waitFor(t, 10*time.Second, "the process to stop", func() bool { return stoppedWithoutCut.MatchString(out.String()) })
	if strings.Contains(out.String(), "config reloaded") {
		t.Errorf("a SIGHUP while draining reloaded the config")
	}
}
