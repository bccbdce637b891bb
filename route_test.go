package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestProxyEveryPortOfAnApp(t *testing.T) {
	be := startBackend(t, echoHandler)
	ports := []int{freePort(t), freePort(t), freePort(t)}
	startProxy(t, "apps:\n"+appYAML("multi", ports, []string{be.addr}, ""))
	for _, p := range ports {
		t.Run(fmt.Sprint(p), func(t *testing.T) {
			c := dialProxy(t, p)
			msg := fmt.Sprintf("hello via %d\n", p)
			if _, err := io.WriteString(c, msg); err != nil {
				t.Fatal(err)
			}
			if got := readLine(t, c); got+"\n" != msg {
				t.Fatalf("got %q, want %q", got, msg)
			}
		})
	}
}

// TestProxyLargeTransferBothWays sends 64 MiB each way at once and
// compares hashes, so that a lost, duplicated or reordered byte in
// either direction fails it.
func TestProxyLargeTransferBothWays(t *testing.T) {
	const size = 64 << 20
	// The backend sends its own 64 MiB while it hashes what it reads.
	// It waits for its own write before it returns: startBackend closes
	// the connection then, which would cut the download short whenever
	// the upload finishes first.
	type result struct {
		sum               [32]byte
		n                 int64
		readErr, writeErr error
	}
	fromClient := make(chan result, 1)
	toClientData := make([]byte, size)
	rand.Read(toClientData)
	be := startBackend(t, func(c net.Conn) {
		wrote := make(chan error, 1)
		go func() {
			_, err := c.Write(toClientData)
			wrote <- err
		}()
		h := sha256.New()
		var r result
		r.n, r.readErr = io.Copy(h, c)
		copy(r.sum[:], h.Sum(nil))
		r.writeErr = <-wrote
		fromClient <- r
	})
	port := freePort(t)
	startProxy(t, "apps:\n"+appYAML("bulk", []int{port}, []string{be.addr}, ""))

	c := dialProxy(t, port)
	toBackendData := make([]byte, size)
	rand.Read(toBackendData)
	writeErr := make(chan error, 1)
	go func() {
		_, err := c.Write(toBackendData)
		if err == nil {
			err = c.CloseWrite()
		}
		writeErr <- err
	}()
	h := sha256.New()
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	n, err := io.CopyN(h, c, size)
	if err != nil {
		t.Fatalf("read %d of %d bytes: %v", n, size, err)
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	if got, want := h.Sum(nil), sha256.Sum256(toClientData); !bytes.Equal(got, want[:]) {
		t.Error("backend-to-client bytes differ")
	}
	r := <-fromClient
	if r.readErr != nil || r.writeErr != nil {
		t.Fatalf("backend: read error %v, write error %v", r.readErr, r.writeErr)
	}
	if want := sha256.Sum256(toBackendData); r.n != size || r.sum != want {
		t.Errorf("client-to-backend: got %d bytes, hash match %v", r.n, r.sum == want)
	}
}

func TestProxyHalfClose(t *testing.T) {
	// The backend reads until EOF, then answers: it only can if the
	// proxy passes the client's half-close on and keeps the reply path.
	be := startBackend(t, func(c net.Conn) {
		data, _ := io.ReadAll(c)
		fmt.Fprintf(c, "got %d bytes", len(data))
	})
	port := freePort(t)
	startProxy(t, "apps:\n"+appYAML("halfclose", []int{port}, []string{be.addr}, ""))
	c := dialProxy(t, port)
	if _, err := c.Write(make([]byte, 100000)); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	reply, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(reply) != "got 100000 bytes" {
		t.Fatalf("reply = %q", reply)
	}
}

// countTargets opens n connections and counts which named backend
// answered each.
func countTargets(t *testing.T, port, n int) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		counts[readLine(t, c)]++
		c.Close()
	}
	return counts
}

func TestProxySpreadsOverTargets(t *testing.T) {
	var addrs []string
	for _, name := range []string{"a", "b", "c"} {
		addrs = append(addrs, startBackend(t, namedHandler(name)).addr)
	}
	port := freePort(t)
	startProxy(t, "apps:\n"+appYAML("spread", []int{port}, addrs, ""))
	counts := countTargets(t, port, 300)
	for _, name := range []string{"a", "b", "c"} {
		if share := float64(counts[name]) / 300; share < 0.20 || share > 0.47 {
			t.Errorf("target %s got %d of 300 connections (%.0f%%), want 20%%..47%%: %v", name, counts[name], share*100, counts)
		}
	}
}

func TestProxyFailsOverRefusingTarget(t *testing.T) {
	a := startBackend(t, namedHandler("a"))
	b := startBackend(t, namedHandler("b"))
	port := freePort(t)
	// Passive health is off so that every connection still meets the
	// refusing target as often as chance puts it first.
	startProxy(t, "apps:\n"+appYAML("failover", []int{port}, []string{a.addr, deadAddr(t), b.addr}, "max_fails: 0"))
	counts := countTargets(t, port, 100)
	if counts["a"]+counts["b"] != 100 {
		t.Fatalf("not every connection was served: %v", counts)
	}
}

func TestProxyAllTargetsDead(t *testing.T) {
	dead1, dead2 := deadAddr(t), deadAddr(t)
	live := startBackend(t, namedHandler("live"))
	deadPort, livePort := freePort(t), freePort(t)
	_, logs := startProxy(t, "apps:\n"+
		appYAML("dead", []int{deadPort}, []string{dead1, dead2}, "")+
		appYAML("live", []int{livePort}, []string{live.addr}, ""))

	for i := 0; i < 3; i++ { // also once both targets are marked down
		c := dialProxy(t, deadPort)
		start := time.Now()
		c.SetReadDeadline(start.Add(5 * time.Second))
		n, err := c.Read(make([]byte, 1))
		if n != 0 || (err != io.EOF && !errors.Is(err, syscall.ECONNRESET)) {
			t.Fatalf("read = %d, %v; want EOF", n, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("client waited %v for its EOF, want < 1s", d)
		}
	}
	// One log line names the app, the client and every target's error.
	var line string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, `msg="all targets failed"`) {
			line = l
			break
		}
	}
	for _, want := range []string{"app=dead", "client=127.0.0.1:", dead1 + ": connect: connection refused", dead2 + ": connect: connection refused"} {
		if !strings.Contains(line, want) {
			t.Errorf("log line %q does not contain %q", line, want)
		}
	}
	// The other app is unaffected.
	if got := readLine(t, dialProxy(t, livePort)); got != "live" {
		t.Fatalf("live app answered %q", got)
	}
}

func TestProxyTargetResetsAfterAccept(t *testing.T) {
	reset := startBackend(t, resetHandler)
	port := freePort(t)
	startProxy(t, "apps:\n"+appYAML("reset", []int{port}, []string{reset.addr}, ""))
	for i := 0; i < 5; i++ {
		c := dialProxy(t, port)
		c.Write([]byte("ping"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := io.ReadAll(c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("client hung after the target reset its connection")
		}
	}
	if reset.accepted.Load() != 5 {
		t.Errorf("backend accepted %d connections, want 5", reset.accepted.Load())
	}
}

func TestProxyPortInUse(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port
	be := startBackend(t, echoHandler)
	otherPorts := []int{freePort(t), freePort(t), freePort(t)}

	cfg, err := parseConfig("test.yaml", []byte("apps:\n"+
		appYAML("first", otherPorts, []string{be.addr}, "")+
		appYAML("web", []int{takenPort}, []string{be.addr}, "")))
	if err != nil {
		t.Fatal(err)
	}
	log, _ := testLogger()
	_, err = startProxyServer(cfg, log, listenFunc(false, nil))
	want := fmt.Sprintf(`app "web": listen on 127.0.0.1:%d: bind: address already in use`, takenPort)
	if err == nil || err.Error() != want {
		t.Fatalf("start error = %v, want %q", err, want)
	}
	// Nothing stays half-started.
	for _, p := range otherPorts {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
			c.Close()
			t.Errorf("port %d still accepts after the failed start", p)
		}
	}
}

// TestProxyNoLeaks runs 1,000 connections and checks that the proxy's
// goroutines and sockets return to where they were. Splice pipes are
// told apart from sockets: Go keeps a small pool of them on purpose.
func TestProxyNoLeaks(t *testing.T) {
	be := startBackend(t, echoHandler)
	port := freePort(t)
	startProxy(t, "apps:\n"+appYAML("leak", []int{port}, []string{be.addr, deadAddr(t)}, "max_fails: 0"))

	countSockets := func() int {
		n := 0
		ents, _ := os.ReadDir("/proc/self/fd")
		for _, e := range ents {
			if l, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && strings.HasPrefix(l, "socket:") {
				n++
			}
		}
		return n
	}
	// Warm up once so that lazily started runtime goroutines count in
	// the baseline.
	exchange := func() {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("x"))
		c.(*net.TCPConn).CloseWrite()
		if b, err := io.ReadAll(c); err != nil || string(b) != "x" {
			t.Fatalf("echo = %q, %v", b, err)
		}
	}
	exchange()
	waitFor(t, 5*time.Second, "backend connections to close", func() bool { return be.accepted.Load() == 1 && be.open() == 0 })
	baseG, baseS := runtime.NumGoroutine(), countSockets()

	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := 0; i < 1000; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			exchange()
		}()
	}
	wg.Wait()
	waitFor(t, 10*time.Second, "goroutines and sockets back to baseline", func() bool {
		return runtime.NumGoroutine() <= baseG+2 && countSockets() <= baseS
	})
}

// runBinary starts the built binary with args and returns it with its
// combined output.
func runBinary(t *testing.T, args ...string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	cmd := exec.Command(buildBinary(t), args...)
	return cmd, startCmd(t, cmd)
}

// TestBinaryGracefulShutdown runs the built binary: a transfer in flight
// when SIGTERM arrives completes, new connections are refused at once,
// and the process exits 0 once the transfer is done.
func TestBinaryGracefulShutdown(t *testing.T) {
	be := startBackend(t, echoHandler)
	port := freePort(t)
	path := writeConfig(t, "shutdown_timeout: 30s\napps:\n"+appYAML("drain", []int{port}, []string{be.addr}, ""))
	cmd, out := runBinary(t, "-c", path)
	waitListening(t, port)

	c := dialProxy(t, port)
	first := bytes.Repeat([]byte("a"), 1<<20)
	rest := bytes.Repeat([]byte("b"), 16<<20)
	if _, err := c.Write(first); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, len(first))); err != nil {
		t.Fatal(err)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "new connections to be refused", func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
		}
		return isRefused(err)
	})

	// The connection opened before the signal still works both ways.
	wrote := make(chan error, 1)
	go func() {
		_, err := c.Write(rest)
		if err == nil {
			err = c.CloseWrite()
		}
		wrote <- err
	}()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, rest) {
		t.Fatalf("after SIGTERM read %d of %d bytes, err %v", len(got), len(rest), err)
	}
	if err := <-wrote; err != nil {
		t.Fatalf("after SIGTERM write: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, out)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("proxy did not exit after its last connection closed\n%s", out)
	}
	if !regexp.MustCompile(`msg=stopped drained=[1-9]\d* cut=0`).MatchString(out.String()) {
		t.Errorf("log does not report the drain:\n%s", out)
	}
}

func TestBinaryCheck(t *testing.T) {
	good := writeConfig(t, "apps:\n"+appYAML("a", []int{1001, 1002}, []string{"127.0.0.1:1", "127.0.0.1:2"}, ""))
	bad := writeConfig(t, "apps:\n- name: a\n  ports: [0]\n  tagets: [x]\n")
	tests := []struct {
		name     string
		path     string
		wantCode int
		want     []string
	}{
		{"valid", good, 0, []string{"config OK: 1 apps, 2 listeners, 2 targets"}},
		{"invalid", bad, 1, []string{bad + `:3: app "a": port 0 outside 1..65535`, bad + `:4: unknown key "tagets" in app`, bad + `:2: app "a": no targets`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run([]string{"-check", "-c", tt.path}, &stdout, &stderr)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tt.wantCode, stderr.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(stdout.String()+stderr.String(), w) {
					t.Errorf("output lacks %q:\nstdout: %s\nstderr: %s", w, stdout.String(), stderr.String())
				}
			}
		})
	}
	// The built binary agrees, through --config.
	cmd := exec.Command(buildBinary(t), "-check", "--config", bad)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !bytes.Contains(out, []byte("port 0 outside")) {
		t.Fatalf("binary -check: %v\n%s", err, out)
	}
}

// TestBinaryDemo runs `tcpproxy -demo` on the shipped config.yaml and
// talks to it like the README says.
func TestBinaryDemo(t *testing.T) {
	for _, p := range []int{5001, 9001, 9002} {
		if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err != nil {
			t.Fatalf("port %d, used by the shipped config.yaml, is busy: %v", p, err)
		} else {
			ln.Close()
		}
	}
	_, out := runBinary(t, "-demo", "-c", "config.yaml")
	var seen map[string]bool
	waitFor(t, 10*time.Second, "the demo to answer", func() bool {
		c, err := net.Dial("tcp", "127.0.0.1:5001")
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	seen = map[string]bool{}
	for i := 0; i < 40; i++ {
		c := dialProxy(t, 5001)
		fmt.Fprintln(c, "hello")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("demo read: %v\n%s", err, out)
		}
		seen[strings.TrimSpace(line)] = true
		c.Close()
	}
	if !seen["[127.0.0.1:9001] hello"] || !seen["[127.0.0.1:9002] hello"] || len(seen) != 2 {
		t.Fatalf("demo answers = %v, want both live backends", seen)
	}
}

// procFDs counts the sockets and pipes that process pid holds open.
func procFDs(t testing.TB, pid int) (sockets, pipes int) {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		switch {
		case err != nil:
		case strings.HasPrefix(l, "socket:"):
			sockets++
		case strings.HasPrefix(l, "pipe:"):
			pipes++
		}
	}
	return sockets, pipes
}

// TestBinarySpliceAndIdleDescriptors proves from outside that the relay
// splices (the proxy process holds a pipe pair while a bulk transfer
// runs; a user-space copy never creates one) and that an idle relayed
// connection costs two descriptors, its sockets, and no pipes.
func TestBinarySpliceAndIdleDescriptors(t *testing.T) {
	sink := startBackend(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	echo := startBackend(t, echoHandler)
	bulkPort, idlePort := freePort(t), freePort(t)
	path := writeConfig(t, "apps:\n"+
		appYAML("bulk", []int{bulkPort}, []string{sink.addr}, "")+
		appYAML("idle", []int{idlePort}, []string{echo.addr}, ""))
	cmd, out := runBinary(t, "-c", path)
	pid := cmd.Process.Pid
	waitListening(t, idlePort)

	t.Run("bulk transfer splices", func(t *testing.T) {
		c := dialProxy(t, bulkPort)
		stop := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			buf := make([]byte, 1<<20)
			for {
				select {
				case <-stop:
					done <- nil
					return
				default:
				}
				if _, err := c.Write(buf); err != nil {
					done <- err
					return
				}
			}
		}()
		sawPipe := false
		deadline := time.Now().Add(10 * time.Second)
		for !sawPipe && time.Now().Before(deadline) {
			_, pipes := procFDs(t, pid)
			sawPipe = pipes >= 2
		}
		close(stop)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if !sawPipe {
			t.Fatalf("no splice pipe in the proxy during a bulk transfer: the relay copies in user space\n%s", out)
		}
	})

	t.Run("idle connections hold no pipes", func(t *testing.T) {
		const n = 200
		// Only the two listeners once the bulk connection is gone.
		const baseSockets = 2
		waitFor(t, 5*time.Second, "the proxy to hold only its listeners", func() bool {
			s, _ := procFDs(t, pid)
			return s == baseSockets
		})
		conns := make([]net.Conn, n)
		for i := range conns {
			c := dialProxy(t, idlePort)
			c.Write([]byte("ping\n"))
			if got := readLine(t, c); got != "ping" {
				t.Fatalf("echo = %q", got)
			}
			conns[i] = c
		}
		sockets, pipes := procFDs(t, pid)
		if got := sockets - baseSockets; got != 2*n {
			t.Errorf("%d idle connections hold %d sockets, want %d", n, got, 2*n)
		}
		// Go keeps a few pipes pooled after the bulk test; a relay that
		// held pipes while idle would have 4 per connection here.
		if pipes > 8 {
			t.Errorf("%d idle connections hold %d pipe descriptors, want none beyond Go's small pool", n, pipes)
		}
	})
}
