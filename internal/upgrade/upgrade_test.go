package upgrade

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as the upgraded child: Start re-executes
// os.Executable() (this binary) with the same arguments, and TestMain
// diverts to runHelper when helperModeEnv is set. Tests pass the mode
// through the environment, which the child inherits.
const (
	helperModeEnv = "UPGRADE_TEST_HELPER"  // serve | exit | hang
	helperTakeEnv = "UPGRADE_TEST_TAKE"    // serve: comma-separated addresses to take
	helperPIDEnv  = "UPGRADE_TEST_PIDFILE" // where the child writes its pid, if set
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperModeEnv); mode != "" {
		os.Exit(runHelper(mode))
	}
	os.Exit(m.Run())
}

// runHelper is the child's main.
func runHelper(mode string) int {
	in, err := FromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	if _, ok := os.LookupEnv(envFDs); ok {
		fmt.Fprintln(os.Stderr, "helper: FromEnv left", envFDs, "set")
		return 4
	}
	go exitWithParent()
	if p := os.Getenv(helperPIDEnv); p != "" {
		if err := WritePIDFile(p); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			return 2
		}
	}
	switch mode {
	case "exit":
		return 3
	case "hang":
		select {}
	case "serve":
		for _, addr := range strings.Split(os.Getenv(helperTakeEnv), ",") {
			ln := in.Listener(addr)
			if ln == nil {
				fmt.Fprintln(os.Stderr, "helper: no inherited listener for", addr)
				return 5
			}
			go serveGreeting(ln, "child")
		}
		if err := in.Ready(); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			return 2
		}
		select {}
	}
	fmt.Fprintln(os.Stderr, "helper: unknown mode", mode)
	return 2
}

// exitWithParent ends the child when the test process is gone or after a
// minute, so that a failing test leaves no process behind.
func exitWithParent() {
	ppid := os.Getppid()
	deadline := time.Now().Add(time.Minute)
	for os.Getppid() == ppid && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	os.Exit(0)
}

// serveGreeting answers each connection with name and a newline, then
// echoes.
func serveGreeting(ln net.Listener, name string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			if _, err := io.WriteString(c, name+"\n"); err != nil {
				return
			}
			io.Copy(c, c)
		}()
	}
}

// greet dials addr and returns who answered.
func greet(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read greeting from %s: %w", addr, err)
	}
	return strings.TrimSuffix(line, "\n"), nil
}

func mustGreet(t *testing.T, addr, want string) {
	t.Helper()
	got, err := greet(addr)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("%s answered by %q, want %q", addr, got, want)
	}
}

// listenParent opens a listener answering "parent".
func listenParent(t *testing.T) *net.TCPListener {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeBounded(ln) }) // closeWithin reports a hang
	go serveGreeting(ln, "parent")
	return ln
}

// closeWithin closes the parent's listeners, failing if that hangs: Close
// waits for a pending Accept, and an Accept stuck in a blocking accept(2)
// (the socket lost O_NONBLOCK while being passed) never returns.
func closeWithin(t *testing.T, lns ...*net.TCPListener) {
	t.Helper()
	if !closeBounded(lns...) {
		t.Fatal("closing the parent's listeners hangs: its Accept is stuck in blocking mode")
	}
}

// closeBounded closes lns and reports whether that finished in time.
func closeBounded(lns ...*net.TCPListener) bool {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, ln := range lns {
			ln.Close()
		}
	}()
	select {
	case <-done:
		return true
	case <-time.After(5 * time.Second):
		return false
	}
}

func stopChild(t *testing.T, p *os.Process) {
	t.Cleanup(func() {
		p.Kill()
		p.Wait()
	})
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func assertGone(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("child %d still exists after Start failed (kill 0: %v)", pid, err)
	}
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	pid, err := ReadPIDFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func fileExists(path string) func() bool {
	return func() bool {
		_, err := os.Stat(path)
		return err == nil
	}
}

// hammer dials its addresses round-robin until stopped and records every
// failure, and any answer from the parent once the parent closed its
// listeners.
type hammer struct {
	addrs     []string
	closed    atomic.Bool // the parent closed its listeners
	stop      chan struct{}
	done      chan struct{}
	mu        sync.Mutex
	dials     int
	fromChild int // answers from the child to dials begun after closed
	failures  []string
}

func startHammer(addrs ...string) *hammer {
	h := &hammer{addrs: addrs, stop: make(chan struct{}), done: make(chan struct{})}
	go h.run()
	return h
}

func (h *hammer) run() {
	defer close(h.done)
	for i := 0; ; i++ {
		select {
		case <-h.stop:
			return
		default:
		}
		afterClose := h.closed.Load()
		addr := h.addrs[i%len(h.addrs)]
		who, err := greet(addr)
		h.mu.Lock()
		h.dials++
		switch {
		case err != nil:
			h.failures = append(h.failures, err.Error())
		case afterClose && who != "child":
			h.failures = append(h.failures, fmt.Sprintf("%s answered by %q after the parent closed its listener", addr, who))
		case afterClose:
			h.fromChild++
		}
		h.mu.Unlock()
	}
}

func (h *hammer) counts() (dials, fromChild int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.dials, h.fromChild
}

func (h *hammer) finish() []string {
	close(h.stop)
	<-h.done
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.failures
}

func TestHandoff(t *testing.T) {
	lnA, lnB := listenParent(t), listenParent(t)
	addrA, addrB := lnA.Addr().String(), lnB.Addr().String()

	// A connection the parent accepted before the upgrade must live on.
	early, err := net.Dial("tcp", addrA)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close()
	earlyR := bufio.NewReader(early)
	if line, err := earlyR.ReadString('\n'); err != nil || line != "parent\n" {
		t.Fatalf("early connection greeting %q, %v", line, err)
	}

	t.Setenv(helperModeEnv, "serve")
	t.Setenv(helperTakeEnv, addrA+","+addrB)

	h := startHammer(addrA, addrB)
	waitUntil(t, "dials before the upgrade", func() bool { n, _ := h.counts(); return n >= 20 })

	var u upgrader
	child, err := u.start(context.Background(), map[string]*net.TCPListener{addrA: lnA, addrB: lnB}, 20*time.Second)
	if err != nil {
		h.finish()
		t.Fatal(err)
	}
	stopChild(t, child)
	closeWithin(t, lnA, lnB)
	h.closed.Store(true)
	waitUntil(t, "answers from the child", func() bool { _, n := h.counts(); return n >= 50 })
	if failures := h.finish(); len(failures) > 0 {
		t.Fatalf("%d dials failed during the handoff, first: %s", len(failures), failures[0])
	}

	early.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(early, "ping\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := earlyR.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("early connection echo %q, %v", line, err)
	}

	_, err = u.start(context.Background(), map[string]*net.TCPListener{addrA: lnA}, time.Second)
	if err == nil || errors.Is(err, errInProgress) || !strings.Contains(err.Error(), "already handed") {
		t.Fatalf("Start after a handoff: %v, want already handed", err)
	}
}

func TestReadyClosesUntakenListener(t *testing.T) {
	lnA, lnB := listenParent(t), listenParent(t)
	addrA, addrB := lnA.Addr().String(), lnB.Addr().String()
	t.Setenv(helperModeEnv, "serve")
	t.Setenv(helperTakeEnv, addrA)

	var u upgrader
	child, err := u.start(context.Background(), map[string]*net.TCPListener{addrA: lnA, addrB: lnB}, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	stopChild(t, child)
	closeWithin(t, lnA, lnB)

	mustGreet(t, addrA, "child")
	if _, err := net.Dial("tcp", addrB); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial %s (not taken by the child): %v, want connection refused", addrB, err)
	}
}

// TestChildExitsBeforeReady goes through the exported Start: a failed
// upgrade leaves the process free to try again.
func TestChildExitsBeforeReady(t *testing.T) {
	ln := listenParent(t)
	addr := ln.Addr().String()
	t.Setenv(helperModeEnv, "exit")

	begin := time.Now()
	child, err := Start(context.Background(), map[string]*net.TCPListener{addr: ln}, 20*time.Second)
	if err == nil {
		stopChild(t, child)
		t.Fatal("Start succeeded with a child that exits")
	}
	if elapsed := time.Since(begin); elapsed > 10*time.Second {
		t.Errorf("Start took %s to notice the exit", elapsed)
	}
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 3 {
		t.Errorf("error %v, want the child's exit status 3", err)
	}
	mustGreet(t, addr, "parent")
}

func TestChildNeverReady(t *testing.T) {
	ln := listenParent(t)
	addr := ln.Addr().String()
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	t.Setenv(helperModeEnv, "hang")
	t.Setenv(helperPIDEnv, pidFile)

	const timeout = 1500 * time.Millisecond
	begin := time.Now()
	var u upgrader
	child, err := u.start(context.Background(), map[string]*net.TCPListener{addr: ln}, timeout)
	if err == nil {
		stopChild(t, child)
		t.Fatal("Start succeeded with a child that never signals")
	}
	if elapsed := time.Since(begin); elapsed < timeout {
		t.Errorf("Start gave up after %s, before the %s timeout", elapsed, timeout)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("error %v, want a timeout", err)
	}
	if !fileExists(pidFile)() {
		t.Fatal("child did not start within the timeout; cannot check it was killed")
	}
	assertGone(t, readPID(t, pidFile))
	mustGreet(t, addr, "parent")
}

func TestConcurrentStart(t *testing.T) {
	ln := listenParent(t)
	lns := map[string]*net.TCPListener{ln.Addr().String(): ln}
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	t.Setenv(helperModeEnv, "hang")
	t.Setenv(helperPIDEnv, pidFile)

	var u upgrader
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := make(chan error, 1)
	go func() {
		_, err := u.start(ctx, lns, 30*time.Second)
		first <- err
	}()
	waitUntil(t, "the first child", fileExists(pidFile))

	if _, err := u.start(context.Background(), lns, time.Second); !errors.Is(err, errInProgress) {
		t.Fatalf("second Start: %v, want %v", err, errInProgress)
	}

	cancel()
	select {
	case err := <-first:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("first Start: %v, want context canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("first Start did not return after its context was cancelled")
	}
	assertGone(t, readPID(t, pidFile))

	// The failed upgrade released the lock.
	t.Setenv(helperModeEnv, "exit")
	if _, err := u.start(context.Background(), lns, 20*time.Second); err == nil || errors.Is(err, errInProgress) {
		t.Fatalf("Start after a failed one: %v, want the child's exit", err)
	}
}
