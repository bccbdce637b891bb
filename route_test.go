package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/michaeldbianchi/tcpproxy/internal/proxyproto"
	"github.com/michaeldbianchi/tcpproxy/internal/stats"
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
		if n != 0 || err != io.EOF {
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
	_, err = startProxyServer(cfg, log, prodEnv(listenFunc(false, nil)))
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

// countSockets returns the number of sockets this process holds open
// (pipes apart: Go keeps a small pool of splice pipes on purpose).
func countSockets() int {
	n := 0
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

// TestProxyNoLeaks runs 1,000 connections and checks that the proxy's
// goroutines and sockets return to where they were. Splice pipes are
// told apart from sockets: Go keeps a small pool of them on purpose.
func TestProxyNoLeaks(t *testing.T) {
	be := startBackend(t, echoHandler)
	port := freePort(t)
	startProxy(t, "apps:\n"+appYAML("leak", []int{port}, []string{be.addr, deadAddr(t)}, "max_fails: 0"))

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
	assertNoLeaks(t, 1000, exchange)
}

// assertNoLeaks runs exchange n times, 16 at once, and checks that this
// process's goroutines and sockets return to where they were before.
// Call it after one warm-up exchange, so that lazily started runtime
// goroutines count in the baseline.
func assertNoLeaks(t *testing.T, n int, exchange func()) {
	t.Helper()
	baseG, baseS := runtime.NumGoroutine(), countSockets()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := 0; i < n; i++ {
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
	waitFor(t, 5*time.Second, "new connections to be refused", func() bool { return refuses(port) })

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
	waitExit(t, cmd, 10*time.Second, out)
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
		{"valid", good, 0, []string{"config OK: 1 apps, 2 listeners, 2 targets, 2 routes"}},
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
	for _, p := range []int{5001, 5443, 9001, 9002, 9101, 9102, 9103, 9104} {
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
	t.Run("SNI routes, crypto/tls", func(t *testing.T) {
		for sni, want := range map[string]string{"a.demo.test": "9101", "x.b.demo.test": "9102", "other.test": "9103"} {
			if cn := demoPeerCN(t, sni); !strings.HasSuffix(cn, "127.0.0.1:"+want) {
				t.Errorf("server name %s answered by %q, want the backend on %s", sni, cn, want)
			}
		}
	})
	t.Run("SNI routes, curl as in README", func(t *testing.T) {
		if _, err := exec.LookPath("curl"); err != nil {
			t.Skip("curl not installed")
		}
		out, err := exec.Command("curl", "-sk", "--max-time", "10", "--resolve", "a.demo.test:5443:127.0.0.1", "https://a.demo.test:5443/").CombinedOutput()
		if want := `hello from demo backend 127.0.0.1:9101 (server name "a.demo.test")`; err != nil || strings.TrimSpace(string(out)) != want {
			t.Fatalf("curl: %q, %v; want %q", out, err, want)
		}
	})
	t.Run("SNI routes, openssl s_client as in README", func(t *testing.T) {
		if _, err := exec.LookPath("openssl"); err != nil {
			t.Skip("openssl not installed")
		}
		cmd := exec.Command("openssl", "s_client", "-connect", "127.0.0.1:5443", "-servername", "b.demo.test")
		cmd.Stdin = strings.NewReader("")
		out, _ := cmd.CombinedOutput()
		if !strings.Contains(string(out), "CN = tcpproxy demo backend 127.0.0.1:9102") {
			t.Fatalf("openssl s_client did not reach the b backend:\n%s", out)
		}
	})
	t.Run("TLS terminated, crypto/tls", func(t *testing.T) {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", "127.0.0.1:5443", &tls.Config{ServerName: "t.demo.test", InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if cn := c.ConnectionState().PeerCertificates[0].Subject.CommonName; cn != "t.demo.test" {
			t.Fatalf("certificate %q, want the self-signed t.demo.test", cn)
		}
		fmt.Fprintln(c, "hello")
		if got := readLine(t, c); got != "[127.0.0.1:9104] hello" {
			t.Fatalf("terminated echo %q", got)
		}
	})
	t.Run("TLS terminated, openssl s_client as in README", func(t *testing.T) {
		if _, err := exec.LookPath("openssl"); err != nil {
			t.Skip("openssl not installed")
		}
		cmd := exec.Command("openssl", "s_client", "-connect", "127.0.0.1:5443", "-servername", "t.demo.test", "-quiet")
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out := startCmd(t, cmd)
		io.WriteString(stdin, "hello\n")
		waitFor(t, 10*time.Second, "the echo through the terminated connection", func() bool {
			return strings.Contains(out.String(), "[127.0.0.1:9104] hello") && strings.Contains(out.String(), "CN = t.demo.test")
		})
		stdin.Close()
	})
}

// demoPeerCN handshakes with the demo's SNI port and returns the common
// name of the certificate the backend presented.
func demoPeerCN(t *testing.T, sni string) string {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", "127.0.0.1:5443", &tls.Config{ServerName: sni, InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("%s: %v", sni, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName
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

// tlsBackend serves TLS with a self-signed certificate for name: after
// the handshake it writes name and a newline, then echoes. It stands for
// a TLS service behind a passthrough route: the proxy never terminates.
func tlsBackend(t testing.TB, name string, names ...string) *backend {
	t.Helper()
	cert, err := selfSignedCert(name, names...)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	return startBackend(t, func(c net.Conn) {
		tc := tls.Server(c, cfg)
		if tc.Handshake() != nil {
			return
		}
		namedHandler(name)(tc)
	})
}

// dialTLS makes a TLS connection through the proxy port with server name
// sni ("" sends none) and returns the first line the backend sent.
func dialTLS(t testing.TB, port int, sni string, nextProtos ...string) (string, error) {
	t.Helper()
	raw := dialProxy(t, port)
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(raw, &tls.Config{ServerName: sni, InsecureSkipVerify: true, NextProtos: nextProtos})
	if err := c.Handshake(); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSuffix(line, "\n"), err
}

// sniConfig is a shared address with exact, wildcard and default apps.
func sniConfig(port int, a, b, x, def string, extra string) string {
	return "apps:\n" +
		appYAML("a", []int{port}, []string{a}, "sni: [a.test]\n"+extra) +
		appYAML("b", []int{port}, []string{b}, "sni: [\"*.b.test\"]\n"+extra) +
		appYAML("x", []int{port}, []string{x}, "sni: [x.b.test, X.Other.Test.]\n"+extra) +
		func() string {
			if def == "" {
				return ""
			}
			return appYAML("def", []int{port}, []string{def}, extra)
		}()
}

func TestRouteBySNI(t *testing.T) {
	a, b, x, def := tlsBackend(t, "a", "a.test"), tlsBackend(t, "b"), tlsBackend(t, "x"), tlsBackend(t, "def")
	port := freePort(t)
	srv, logs := startProxy(t, sniConfig(port, a.addr, b.addr, x.addr, def.addr, "access_log: true"))
	for _, tc := range []struct{ sni, want string }{
		{"a.test", "a"},
		{"A.Test", "a"},         // case-insensitive
		{"y.b.test", "b"},       // wildcard
		{"x.b.test", "x"},       // exact wins over the wildcard added before it
		{"x.other.test", "x"},   // configured in odd case with a trailing dot
		{"b.test", "def"},       // a wildcard does not match its own base
		{"z.y.b.test", "def"},   // nor two labels
		{"unknown.test", "def"}, // unknown name: the default
		{"", "def"},             // no SNI at all: the default
		{"big.a.test", "def"},   // (checked below with a big ClientHello)
	} {
		t.Run(tc.sni, func(t *testing.T) {
			got, err := dialTLS(t, port, tc.sni)
			if err != nil || got != tc.want {
				t.Fatalf("server name %q: got %q, %v; want backend %q", tc.sni, got, err, tc.want)
			}
		})
	}
	t.Run("ClientHello dribbled a byte at a time is routed", func(t *testing.T) {
		raw := dialProxy(t, port)
		raw.SetDeadline(time.Now().Add(10 * time.Second))
		c := tls.Client(dribbleConn{raw}, &tls.Config{ServerName: "a.test", InsecureSkipVerify: true})
		if err := c.Handshake(); err != nil {
			t.Fatalf("handshake: %v", err)
		}
		if got := readLine(t, c); got != "a" {
			t.Fatalf("backend %q, want a", got)
		}
	})
	t.Run("ClientHello over the library's 4 KiB peek buffer goes to the default", func(t *testing.T) {
		protos := make([]string, 20) // ~5 KiB of ALPN: the SNI cannot be peeked
		for i := range protos {
			protos[i] = fmt.Sprintf("%03d%s", i, strings.Repeat("p", 250))
		}
		got, err := dialTLS(t, port, "a.test", protos...)
		if err != nil || got != "def" {
			t.Fatalf("got %q, %v; want the default backend, handshake intact", got, err)
		}
	})
	waitFor(t, 5*time.Second, "access log lines", func() bool { return strings.Contains(logs.String(), "server_name=a.test") })
	if !strings.Contains(logs.String(), `server_name="" target=`+def.addr) && !strings.Contains(logs.String(), `server_name="" target="`+def.addr) {
		t.Errorf("no default-routed access log line with an empty server_name:\n%s", logs.String())
	}
	for _, l := range srv.snapshot().Listeners {
		if l.UnroutedNoMatch+l.UnroutedPrereadTimeout != 0 {
			t.Errorf("unrouted %+v with a default app", l)
		}
	}
}

// dribbleConn writes one byte at a time, each its own TCP segment.
type dribbleConn struct{ net.Conn }

func (d dribbleConn) Write(p []byte) (int, error) {
	for i := range p {
		if _, err := d.Conn.Write(p[i : i+1]); err != nil {
			return i, err
		}
		time.Sleep(time.Millisecond)
	}
	return len(p), nil
}

func TestRouteBySNIWithoutDefault(t *testing.T) {
	a, b, x := tlsBackend(t, "a"), tlsBackend(t, "b"), tlsBackend(t, "x")
	port := freePort(t)
	srv, logs := startProxy(t, sniConfig(port, a.addr, b.addr, x.addr, "", "preread_timeout: 300ms"))
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	unrouted := func() stats.Listener {
		for _, l := range srv.snapshot().Listeners {
			if l.Listen == listen {
				return l
			}
		}
		t.Fatalf("no listener %s in the snapshot", listen)
		return stats.Listener{}
	}

	t.Run("unknown name is closed and counted", func(t *testing.T) {
		if got, err := dialTLS(t, port, "unknown.test"); err == nil {
			t.Fatalf("handshake succeeded, backend %q", got)
		}
		if n := unrouted().UnroutedNoMatch; n != 1 {
			t.Fatalf("no_match = %d, want 1", n)
		}
		if !strings.Contains(logs.String(), "reason=no_match") {
			t.Errorf("no log line:\n%s", logs.String())
		}
	})
	t.Run("no SNI is closed", func(t *testing.T) {
		if _, err := dialTLS(t, port, ""); err == nil {
			t.Fatal("handshake succeeded")
		}
	})
	t.Run("not TLS is closed", func(t *testing.T) {
		c := dialProxy(t, port)
		c.Write([]byte("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if b, err := io.ReadAll(c); len(b) != 0 || err != nil && !isReset(err) {
			t.Fatalf("read %q, %v; want closed", b, err)
		}
	})
	t.Run("silent client is closed at preread_timeout", func(t *testing.T) {
		before := unrouted().UnroutedPrereadTimeout
		c := dialProxy(t, port)
		start := time.Now()
		c.SetReadDeadline(start.Add(5 * time.Second))
		if b, err := io.ReadAll(c); len(b) != 0 || err != nil {
			t.Fatalf("read %q, %v; want EOF", b, err)
		}
		if d := time.Since(start); d < 300*time.Millisecond {
			t.Fatalf("closed after %v, before preread_timeout", d)
		}
		waitFor(t, 5*time.Second, "the preread timeout to be counted", func() bool { return unrouted().UnroutedPrereadTimeout == before+1 })
	})
}

// isReset reports whether err is a connection reset by the peer.
func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// TestRoutePrereadTimeoutToDefault: a server-first protocol on a
// name-routed address still works, after preread_timeout, through the
// default app.
func TestRoutePrereadTimeoutToDefault(t *testing.T) {
	a := tlsBackend(t, "a")
	greeter := startBackend(t, namedHandler("220 smtp ready"))
	port := freePort(t)
	startProxy(t, "apps:\n"+
		appYAML("a", []int{port}, []string{a.addr}, "sni: [a.test]\npreread_timeout: 200ms")+
		appYAML("smtp", []int{port}, []string{greeter.addr}, "preread_timeout: 200ms"))
	c := dialProxy(t, port)
	start := time.Now()
	if got := readLine(t, c); got != "220 smtp ready" {
		t.Fatalf("greeting %q", got)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("routed after %v, before preread_timeout", d)
	}
	// The deadline set for the peek must not survive into the relay.
	time.Sleep(300 * time.Millisecond)
	c.Write([]byte("EHLO x\n"))
	if got := readLine(t, c); got != "EHLO x" {
		t.Fatalf("echo after the preread deadline: %q", got)
	}
}

// httpNamed serves HTTP answering with its name and the Host it got.
func httpNamed(t testing.TB, name string) *backend {
	t.Helper()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", name, r.Host)
	})}
	return startBackend(t, func(c net.Conn) {
		ln := &oneConnListener{c: c, done: make(chan struct{})}
		go srv.Serve(ln)
		<-ln.done
	})
}

// oneConnListener serves one connection to an http.Server and reports
// when the server is done with it.
type oneConnListener struct {
	c    net.Conn
	once sync.Once
	done chan struct{}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	var c net.Conn
	l.once.Do(func() { c = &closeNotifyConn{Conn: l.c, done: l.done} })
	if c == nil {
		<-l.done
		return nil, net.ErrClosed
	}
	return c, nil
}
func (l *oneConnListener) Close() error   { return nil }
func (l *oneConnListener) Addr() net.Addr { return l.c.LocalAddr() }

type closeNotifyConn struct {
	net.Conn
	once sync.Once
	done chan struct{}
}

func (c *closeNotifyConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return c.Conn.Close()
}

func TestRouteByHTTPHost(t *testing.T) {
	www, api, def := httpNamed(t, "www"), httpNamed(t, "api"), httpNamed(t, "def")
	port := freePort(t)
	startProxy(t, "apps:\n"+
		appYAML("www", []int{port}, []string{www.addr}, "http_host: [www.test, \"*.www.test\"]")+
		appYAML("api", []int{port}, []string{api.addr}, "http_host: [api.test]")+
		appYAML("def", []int{port}, []string{def.addr}, ""))
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	for _, tc := range []struct{ host, want string }{
		{"www.test", "www www.test"},
		{"www.test:8080", "www www.test:8080"}, // Host with a port
		{"API.Test", "api API.Test"},           // odd case
		{"a.www.test", "www a.www.test"},
		{"other.test", "def other.test"},
	} {
		t.Run(tc.host, func(t *testing.T) {
			req, _ := http.NewRequest("GET", url, nil)
			req.Host = tc.host
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if string(body) != tc.want {
				t.Fatalf("Host %q: %q, want %q", tc.host, body, tc.want)
			}
		})
	}
	t.Run("HTTP/1.0 without Host goes to the default", func(t *testing.T) {
		c := dialProxy(t, port)
		c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if !strings.HasPrefix(string(body), "def ") {
			t.Fatalf("body %q, want the default backend", body)
		}
	})
}

// TestRouteSNIAfterProxyHeader: a PROXY header (as an AWS NLB sends it)
// in front of the ClientHello is consumed before the library peeks, and
// its address is what allow and the logs see.
func TestRouteSNIAfterProxyHeader(t *testing.T) {
	a, def := tlsBackend(t, "a"), tlsBackend(t, "def")
	port := freePort(t)
	pp := "accept_proxy_protocol: true\nproxy_protocol_from: [127.0.0.1]\naccess_log: true\nallow: [192.0.2.0/24]"
	_, logs := startProxy(t, "apps:\n"+
		appYAML("a", []int{port}, []string{a.addr}, "sni: [a.test]\n"+pp)+
		appYAML("def", []int{port}, []string{def.addr}, pp))
	src := netip.MustParseAddrPort("192.0.2.7:40000")
	dst := netip.MustParseAddrPort("198.51.100.1:443")
	for _, v := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			raw := dialProxy(t, port)
			raw.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := raw.Write(proxyproto.Append(nil, v, src, dst)); err != nil {
				t.Fatal(err)
			}
			c := tls.Client(raw, &tls.Config{ServerName: "a.test", InsecureSkipVerify: true})
			if err := c.Handshake(); err != nil {
				t.Fatalf("handshake: %v", err)
			}
			if got := readLine(t, c); got != "a" {
				t.Fatalf("backend %q, want a", got)
			}
		})
	}
	waitFor(t, 5*time.Second, "access log lines", func() bool {
		return strings.Count(logs.String(), "client=192.0.2.7:40000 server_name=a.test") == 2
	})
}

// TestRouteReloadMovesName moves a name from one app to another, then
// makes the address plain and named again, while connections to both
// apps stay up and a client loop sees no refusal.
func TestRouteReloadMovesName(t *testing.T) {
	a, b := tlsBackend(t, "a"), tlsBackend(t, "b")
	port := freePort(t)
	two := func(aNames, bNames string) string {
		return "apps:\n" + appYAML("a", []int{port}, []string{a.addr}, aNames) + appYAML("b", []int{port}, []string{b.addr}, bNames)
	}
	srv, logs := startProxy(t, two("sni: [a.test]", "sni: [b.test]"))
	open := map[string]*tls.Conn{}
	for _, n := range []string{"a", "b"} {
		raw := dialProxy(t, port)
		c := tls.Client(raw, &tls.Config{ServerName: n + ".test", InsecureSkipVerify: true})
		if got := readLine(t, c); got != n {
			t.Fatalf("%s.test went to %q", n, got)
		}
		open[n] = c
	}

	stop := make(chan struct{})
	var failures, dials atomic.Int64
	var loops sync.WaitGroup
	loops.Add(1)
	go func() {
		defer loops.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				failures.Add(1)
				continue
			}
			dials.Add(1)
			c.Close()
		}
	}()
	waitFor(t, 5*time.Second, "the client loop to connect", func() bool { return dials.Load() > 0 })
	apply := func(text string) {
		t.Helper()
		cfg, err := parseConfig("test.yaml", []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := srv.apply(cfg); err != nil {
			t.Fatal(err)
		}
	}
	apply(two("sni: [c.test]", "sni: [a.test, b.test]")) // a.test moves to b
	if got, err := dialTLS(t, port, "a.test"); err != nil || got != "b" {
		t.Fatalf("after the move a.test went to %q, %v", got, err)
	}
	for i := 0; i < 20; i++ { // plain and named again, on the same socket
		apply("apps:\n" + appYAML("a", []int{port}, []string{a.addr}, ""))
		if got, err := dialTLS(t, port, "b.test"); err != nil || got != "a" {
			t.Fatalf("plain: %q, %v", got, err)
		}
		apply(two("sni: [a.test]", "sni: [b.test]"))
		if got, err := dialTLS(t, port, "b.test"); err != nil || got != "b" {
			t.Fatalf("named again: %q, %v", got, err)
		}
	}
	close(stop)
	loops.Wait()
	if n := failures.Load(); n != 0 {
		t.Errorf("%d of %d connections refused during the reloads", n, n+dials.Load())
	}
	if n := dials.Load(); n < 100 {
		t.Errorf("only %d connections during the reloads: the test proved little", n)
	}
	if strings.Contains(logs.String(), "accept loop stopped") {
		t.Errorf("a route the reload replaced was logged as failed:\n%s", logs.String())
	}
	for n, c := range open {
		c.Write([]byte("still " + n + "\n"))
		if got := readLine(t, c); got != "still "+n {
			t.Errorf("connection to %s after the reloads: %q", n, got)
		}
	}
}

// TestRouteSNINoLeaks: 1,000 SNI-routed connections leave no goroutine
// or socket behind.
func TestRouteSNINoLeaks(t *testing.T) {
	a := tlsBackend(t, "a")
	port := freePort(t)
	startProxy(t, "apps:\n"+appYAML("a", []int{port}, []string{a.addr}, "sni: [a.test]"))
	exchange := func() {
		raw, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Error(err)
			return
		}
		defer raw.Close()
		raw.SetDeadline(time.Now().Add(10 * time.Second))
		c := tls.Client(raw, &tls.Config{ServerName: "a.test", InsecureSkipVerify: true})
		if line, err := bufio.NewReader(c).ReadString('\n'); line != "a\n" {
			t.Errorf("got %q, %v", line, err)
		}
	}
	exchange()
	waitFor(t, 5*time.Second, "backend connections to close", func() bool { return a.open() == 0 })
	assertNoLeaks(t, 1000, exchange)
}

// TestRouteAcceptLoopEndLogged: a listening socket that dies under the
// library's accept loop is logged, not lost; one the proxy closes is not.
func TestRouteAcceptLoopEndLogged(t *testing.T) {
	be := startBackend(t, echoHandler)
	port, other := freePort(t), freePort(t)
	srv, logs := startProxy(t, "apps:\n"+appYAML("a", []int{port}, []string{be.addr}, "")+appYAML("b", []int{other}, []string{be.addr}, ""))
	srv.mu.Lock()
	r := srv.routes[fmt.Sprintf("127.0.0.1:%d", port)]
	srv.mu.Unlock()
	r.ln.Close() // not r.close(): as if the socket failed
	waitFor(t, 5*time.Second, "the log line", func() bool {
		return strings.Contains(logs.String(), fmt.Sprintf(`msg="accept loop stopped: this address no longer accepts connections" listen=127.0.0.1:%d`, port))
	})
	cfg, err := parseConfig("test.yaml", []byte("apps:\n"+appYAML("a", []int{port}, []string{be.addr}, "")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.apply(cfg); err != nil { // closes b's port on purpose
		t.Fatal(err)
	}
	srv.shutdown(context.Background())
	if n := strings.Count(logs.String(), "accept loop stopped"); n != 1 {
		t.Fatalf("%d accept-loop lines, want only the failed socket's:\n%s", n, logs.String())
	}
}
