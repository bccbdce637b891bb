package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
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

// freePort returns a loopback TCP port that was free a moment ago and
// that no earlier call in this test process returned.
func freePort(t testing.TB) int {
	t.Helper()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		// The kernel may give a port back once it is closed: a test that
		// asks for a proxy port and a dead target's must not get one port
		// for both (the proxy would dial itself).
		if _, taken := portsHandedOut.LoadOrStore(port, true); !taken {
			return port
		}
	}
}

// portsHandedOut are the ports freePort returned in this test process.
var portsHandedOut sync.Map

// deadAddr returns a loopback address nothing listens on, so that a dial
// to it is refused at once.
func deadAddr(t testing.TB) string {
	return fmt.Sprintf("127.0.0.1:%d", freePort(t))
}

// backend is a test server on loopback.
type backend struct {
	ln       net.Listener
	addr     string
	accepted atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]bool
}

// startBackend serves handle for every connection until the test ends.
func startBackend(t testing.TB, handle func(net.Conn)) *backend {
	t.Helper()
	return startBackendOn(t, "127.0.0.1:0", handle)
}

// startBackendOn is startBackend on a given address, for a backend that
// comes back where it was.
func startBackendOn(t testing.TB, addr string, handle func(net.Conn)) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{ln: ln, addr: ln.Addr().String(), conns: map[net.Conn]bool{}}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.accepted.Add(1)
			b.mu.Lock()
			b.conns[c] = true
			b.mu.Unlock()
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer func() {
					c.Close()
					b.mu.Lock()
					delete(b.conns, c)
					b.mu.Unlock()
				}()
				handle(c)
			}()
		}
	}()
	t.Cleanup(b.close)
	return b
}

// open returns the number of connections the backend holds open.
func (b *backend) open() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.conns)
}

// close stops the backend and closes its open connections.
func (b *backend) close() {
	b.ln.Close()
	b.mu.Lock()
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// echoHandler copies everything back until the client half-closes.
func echoHandler(c net.Conn) { io.Copy(c, c) }

// namedHandler answers with name and a newline, then echoes.
func namedHandler(name string) func(net.Conn) {
	return func(c net.Conn) {
		if _, err := io.WriteString(c, name+"\n"); err != nil {
			return
		}
		io.Copy(c, c)
	}
}

// resetHandler accepts and resets the connection at once.
func resetHandler(c net.Conn) {
	c.(*net.TCPConn).SetLinger(0)
}

// testLogger returns a logger writing into a buffer the test can read.
func testLogger() (*slog.Logger, *syncBuffer) {
	var buf syncBuffer
	return slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), &buf
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startProxy loads yamlText and runs it in-process until the test ends.
func startProxy(t testing.TB, yamlText string) (*proxyServer, *syncBuffer) {
	t.Helper()
	return startProxyEnv(t, yamlText, prodEnv(listenFunc(false, nil)))
}

// startProxyEnv is startProxy in env.
func startProxyEnv(t testing.TB, yamlText string, env serverEnv) (*proxyServer, *syncBuffer) {
	t.Helper()
	cfg, err := parseConfig("test.yaml", []byte(yamlText))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, yamlText)
	}
	log, buf := testLogger()
	srv, err := startProxyServer(cfg, log, env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.shutdown(ctx)
	})
	return srv, buf
}

// appYAML is the YAML of one app listening on 127.0.0.1 ports.
func appYAML(name string, ports []int, targets []string, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "- name: %s\n  listen: 127.0.0.1\n  ports: %s\n  targets:\n", name, strings.Join(strings.Fields(fmt.Sprint(ports)), ", "))
	for _, t := range targets {
		fmt.Fprintf(&b, "  - %q\n", t)
	}
	for _, line := range strings.Split(strings.TrimSpace(extra), "\n") {
		if line != "" {
			fmt.Fprintf(&b, "  %s\n", line)
		}
	}
	return b.String()
}

// dialProxy connects to a proxy port on loopback.
func dialProxy(t testing.TB, port int) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// readLine reads one line from c with a deadline.
func readLine(t testing.TB, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read: %v (got %q)", err, line)
	}
	c.SetReadDeadline(time.Time{})
	return strings.TrimSuffix(line, "\n")
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitListening waits until a proxy started as a subprocess accepts on
// a loopback port.
func waitListening(t testing.TB, port int) {
	t.Helper()
	waitFor(t, 10*time.Second, "the proxy to listen", func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// startCmd starts cmd with its output captured, and kills it when the
// test ends.
func startCmd(t testing.TB, cmd *exec.Cmd) *syncBuffer {
	t.Helper()
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return &out
}

// refuses reports whether a connection to the proxy's port is refused
// (the listener is closed); one that connects is closed at once.
func refuses(port int) bool {
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err == nil {
		c.Close()
	}
	return isRefused(err)
}

// isRefused reports whether err is a refused connection.
func isRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtPath != "" {
		os.RemoveAll(filepath.Dir(builtPath))
	}
	os.Exit(code)
}

// writeConfig writes text to a config file in a test's temp dir.
func writeConfig(t testing.TB, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// runBinary starts the built binary with args and returns it with its
// combined output.
func runBinary(t testing.TB, args ...string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	return runBinaryEnv(t, nil, args...)
}

// runBinaryEnv is runBinary with env added to the environment.
func runBinaryEnv(t testing.TB, env []string, args ...string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	cmd := exec.Command(buildBinary(t), args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	return cmd, startCmd(t, cmd)
}

// startBinary runs the built binary on a config file and waits until
// port accepts.
func startBinary(t testing.TB, port int, args ...string) (*os.Process, *syncBuffer) {
	t.Helper()
	cmd, out := runBinary(t, args...)
	waitListening(t, port)
	return cmd.Process, out
}

// waitExit waits until cmd exits, and fails the test unless it exits 0
// within d.
func waitExit(t testing.TB, cmd *exec.Cmd, d time.Duration, out *syncBuffer) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, out)
		}
	case <-time.After(d):
		t.Fatalf("the proxy did not exit within %v\n%s", d, out)
	}
}

var (
	buildOnce sync.Once
	builtPath string
	buildErr  error
)

// buildBinary builds the tcpproxy binary once per test run.
func buildBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tcpproxy-bin")
		if err != nil {
			buildErr = err
			return
		}
		builtPath = filepath.Join(dir, "tcpproxy")
		out, err := exec.Command("go", "build", "-o", builtPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtPath
}

// appAt returns the i-th app of the running config.
func (s *proxyServer) appAt(i int) *failoverTarget { return (*s.current.Load())[i] }

// clientLoad runs client loops against the proxy until finish: each
// worker calls do again and again, and the load counts what succeeded
// and keeps every distinct error.
type clientLoad struct {
	stop     atomic.Bool
	ok, fail atomic.Int64
	errs     sync.Map
	wg       sync.WaitGroup
}

func startClientLoad(workers int, do func() error) *clientLoad {
	l := &clientLoad{}
	for range workers {
		l.wg.Go(func() {
			for !l.stop.Load() {
				if err := do(); err != nil {
					l.fail.Add(1)
					l.errs.Store(err.Error(), true)
				} else {
					l.ok.Add(1)
				}
			}
		})
	}
	return l
}

// finish stops the workers and returns the distinct errors they met.
func (l *clientLoad) finish() []string {
	l.stop.Store(true)
	l.wg.Wait()
	var list []string
	l.errs.Range(func(k, _ any) bool { list = append(list, k.(string)); return true })
	return list
}
