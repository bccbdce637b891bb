//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

func TestPanicInConnectionIsContained(t *testing.T) {
	be := startBackend(t, echoHandler)
	port := freePort(t)
	// The first dial panics, where a real bug in the connection path
	// would strike.
	env := prodEnv(listenFunc(false, nil))
	var panics atomic.Int64
	env.dialer = func(app *appConfig) contextDialer {
		return panickyDialer{appDialer(app), &panics}
	}
	srv, logs := startProxyEnv(t, "apps:\n"+appYAML("fragile", []int{port}, []string{be.addr}, ""), env)
	c := dialProxy(t, port)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(c); len(b) != 0 || err != nil {
		t.Fatalf("the panicking connection: read %q, %v; want it closed", b, err)
	}
	out := logs.String()
	if !strings.Contains(out, `msg="panic in connection handler"`) || !strings.Contains(out, "injected by the test") || !strings.Contains(out, "failover.go") {
		t.Fatalf("no panic log with a stack:\n%s", out)
	}
	// The process, and the app, go on.
	c = dialProxy(t, port)
	c.Write([]byte("after\n"))
	if got := readLine(t, c); got != "after" {
		t.Fatalf("after the panic: %q", got)
	}
	if srv.appAt(0).stats.active.Load() != 1 {
		t.Errorf("active = %d: the panicking connection was not released", srv.appAt(0).stats.active.Load())
	}
}

// panickyDialer panics on its first dial and dials with its
// contextDialer after that.
type panickyDialer struct {
	contextDialer
	panics *atomic.Int64
}

func (d panickyDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if d.panics.Add(1) == 1 {
		panic("injected by the test")
	}
	return d.contextDialer.DialContext(ctx, network, addr)
}

func TestIdleTimeout(t *testing.T) {
	be := startBackend(t, echoHandler)
	port := freePort(t)
	srv, _ := startProxy(t, "apps:\n"+appYAML("idle", []int{port}, []string{be.addr}, "idle_timeout: 300ms"))

	t.Run("idle connection closed and counted", func(t *testing.T) {
		c := dialProxy(t, port)
		start := time.Now()
		c.SetReadDeadline(start.Add(10 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Fatalf("read: %v", err)
		}
		if d := time.Since(start); d < 300*time.Millisecond {
			t.Fatalf("closed after %v, before idle_timeout", d)
		}
		waitFor(t, 5*time.Second, "the idle timeout to be counted", func() bool { return srv.appAt(0).stats.idleTimeouts.Load() == 1 })
	})
	t.Run("traffic one way keeps it open", func(t *testing.T) {
		// The client only sends; the backend (a sink) never answers, so
		// one direction is silent the whole time.
		sink := startBackend(t, func(c net.Conn) { io.Copy(io.Discard, c) })
		p := freePort(t)
		startProxy(t, "apps:\n"+appYAML("oneway", []int{p}, []string{sink.addr}, "idle_timeout: 300ms"))
		c := dialProxy(t, p)
		for i := 0; i < 15; i++ { // 1.5 s, five idle timeouts
			if _, err := c.Write([]byte("tick")); err != nil {
				t.Fatalf("write %d: %v: the connection was closed while data flowed one way", i, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, errTimeout(err)) {
			t.Fatalf("read = %v, want still open", err)
		}
	})
}

// errTimeout returns err if it is a timeout, for errors.Is above.
func errTimeout(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return err
	}
	return errors.New("not a timeout")
}

// TestPeerResetReleasesEverything: a client that resets mid-transfer,
// and one that half-closes and vanishes, while the backend stays silent
// and keeps its side open, release the proxy's connection.
func TestPeerResetReleasesEverything(t *testing.T) {
	// The backend reads until EOF, then holds the connection without a
	// word until the test ends.
	hold := make(chan struct{})
	defer close(hold)
	silent := startBackend(t, func(c net.Conn) {
		io.Copy(io.Discard, c)
		<-hold
	})
	port := freePort(t)
	srv, _ := startProxy(t, "apps:\n"+appYAML("silent", []int{port}, []string{silent.addr}, "half_close_timeout: 300ms"))
	app := srv.appAt(0)

	t.Run("reset", func(t *testing.T) {
		c := dialProxy(t, port)
		c.Write(bytes.Repeat([]byte("x"), 1<<20))
		c.SetLinger(0)
		c.Close() // RST
		waitFor(t, 5*time.Second, "the proxy to release the reset connection", func() bool { return app.stats.active.Load() == 0 })
	})
	t.Run("half-close and vanish", func(t *testing.T) {
		c := dialProxy(t, port)
		c.Write([]byte("request"))
		c.CloseWrite()
		c.Close()
		waitFor(t, 5*time.Second, "the half-closed connection to be released", func() bool { return app.stats.active.Load() == 0 })
	})
}

// TestBackendFaults covers backends that misbehave, each handled as a
// correct TCP relay would.
func TestBackendFaults(t *testing.T) {
	t.Run("never reads: the client is throttled, memory stays flat", func(t *testing.T) {
		hold := make(chan struct{})
		defer close(hold)
		deaf := startBackend(t, func(c net.Conn) { <-hold })
		port := freePort(t)
		startProxy(t, "apps:\n"+appYAML("deaf", []int{port}, []string{deaf.addr}, ""))
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		c := dialProxy(t, port)
		buf := make([]byte, 1<<20)
		written := 0
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		for written < 1<<30 {
			n, err := c.Write(buf)
			written += n
			if err != nil {
				break
			}
		}
		// Only the kernel's socket buffers hold the backlog.
		if written > 64<<20 {
			t.Fatalf("the client wrote %d MiB into a backend that never reads", written>>20)
		}
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 16<<20 {
			t.Fatalf("heap grew by %d MiB while the backend did not read", grew>>20)
		}
	})
	t.Run("resets mid-stream", func(t *testing.T) {
		rst := startBackend(t, func(c net.Conn) {
			io.CopyN(io.Discard, c, 64<<10)
			c.(*net.TCPConn).SetLinger(0)
		})
		port := freePort(t)
		startProxy(t, "apps:\n"+appYAML("rst", []int{port}, []string{rst.addr}, ""))
		c := dialProxy(t, port)
		done := make(chan error, 1)
		go func() {
			_, err := c.Write(make([]byte, 16<<20))
			done <- err
		}()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := io.ReadAll(c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the client hung after its backend reset")
		}
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("16 MiB written to a backend that reset after 64 KiB")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the client's write hung after its backend reset")
		}
	})
	t.Run("half-closes", func(t *testing.T) {
		got := make(chan int64, 1)
		hc := startBackend(t, func(c net.Conn) {
			io.WriteString(c, "bye")
			c.(*net.TCPConn).CloseWrite()
			n, _ := io.Copy(io.Discard, c)
			got <- n
		})
		port := freePort(t)
		startProxy(t, "apps:\n"+appYAML("hc", []int{port}, []string{hc.addr}, ""))
		c := dialProxy(t, port)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil || string(b) != "bye" {
			t.Fatalf("read %q, %v; want bye then EOF", b, err)
		}
		// The other direction still works after the backend's FIN.
		if _, err := c.Write(make([]byte, 1<<20)); err != nil {
			t.Fatal(err)
		}
		c.CloseWrite()
		if n := <-got; n != 1<<20 {
			t.Fatalf("backend got %d bytes after its half-close, want %d", n, 1<<20)
		}
	})
	t.Run("answers after 30s", func(t *testing.T) {
		t.Parallel()
		slow := startBackend(t, func(c net.Conn) {
			line := make([]byte, 3)
			io.ReadFull(c, line)
			time.Sleep(30 * time.Second)
			c.Write(line)
		})
		port := freePort(t)
		startProxy(t, "apps:\n"+appYAML("slow", []int{port}, []string{slow.addr}, ""))
		c := dialProxy(t, port)
		c.Write([]byte("hi\n"))
		c.SetReadDeadline(time.Now().Add(60 * time.Second))
		if got := make([]byte, 3); func() error { _, err := io.ReadFull(c, got); return err }() != nil || string(got) != "hi\n" {
			t.Fatalf("the slow backend's answer did not arrive: %q", got)
		}
	})
}

// ulimitBinary runs the built binary under bash's ulimit -n.
func ulimitBinary(t *testing.T, nofile int, args ...string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	script := fmt.Sprintf("ulimit -n %d && exec \"$0\" \"$@\"", nofile)
	cmd := exec.Command("bash", append([]string{"-c", script, buildBinary(t)}, args...)...)
	return cmd, startCmd(t, cmd)
}

// TestBinaryOutOfDescriptors runs the proxy with idle clients, takes
// away every free descriptor, and checks that accept errors are logged
// at most once a second and that the proxy serves again, the client
// that waited included, as soon as descriptors free up.
//
// The limit is lowered to exactly what the proxy holds: with a fixed
// ulimit and a flood of clients, whether accept ever failed depended on
// the parity of the descriptors in use (at one below the limit, a client
// is accepted, its dial fails and it is closed again before the next
// accept), so the test failed 5 runs in 30 under -race.
func TestBinaryOutOfDescriptors(t *testing.T) {
	be := startBackend(t, echoHandler)
	port := freePort(t)
	path := writeConfig(t, "apps:\n"+appYAML("tight", []int{port}, []string{be.addr}, ""))
	cmd, out := runBinary(t, "-c", path)
	pid := cmd.Process.Pid
	waitListening(t, port)
	defer func() {
		if t.Failed() {
			t.Logf("proxy log:\n%s", out)
		}
	}()
	// waitListening's probe is relayed and closed first, so that the idle
	// clients' sockets take the lowest numbers, below the limit set next.
	waitFor(t, 10*time.Second, "the probe's relay to end", func() bool {
		s, _ := procFDs(t, pid)
		return be.accepted.Load() == 1 && be.open() == 0 && s == 1
	})
	const n = 10
	var idle []net.Conn
	for i := 0; i < n; i++ {
		idle = append(idle, dialProxy(t, port))
	}
	waitFor(t, 10*time.Second, "every idle client to be relayed", func() bool {
		s, _ := procFDs(t, pid)
		return s == 2*n+1 // and the listener
	})
	fillDescriptors(t, pid)
	waiting := dialProxy(t, port) // in the accept queue: accept fails
	waitFor(t, 10*time.Second, "accept to fail for lack of descriptors", func() bool {
		return strings.Contains(out.String(), "accept failed, backing off")
	})
	// Let the backoff run a while: at most one log line a second.
	start := time.Now()
	time.Sleep(1500 * time.Millisecond)
	if n := strings.Count(out.String(), "accept failed"); float64(n) > time.Since(start).Seconds()+2 {
		t.Errorf("%d accept failure lines in %v: not rate limited", n, time.Since(start))
	}
	for _, c := range idle {
		c.Close()
	}
	// Served again once the descriptors are free: the client that waited
	// in the accept queue first, then new ones.
	waiting.Write([]byte("waited\n"))
	if got := readLine(t, waiting); got != "waited" {
		t.Fatalf("the client that waited for a descriptor: %q", got)
	}
	c := dialProxy(t, port)
	c.Write([]byte("new\n"))
	if got := readLine(t, c); got != "new" {
		t.Fatalf("new client: %q", got)
	}
}

// fillDescriptors lowers process pid's open-files limit to its lowest
// free descriptor number, so that its next accept or socket fails with
// EMFILE while every descriptor it holds stays open; a socket it closes
// later frees a number below the limit. The process must be quiet
// meanwhile.
func fillDescriptors(t *testing.T, pid int) {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	used := map[int]string{}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			t.Fatal(err)
		}
		used[fd], _ = os.Readlink(filepath.Join(dir, e.Name()))
	}
	free := 0
	for used[free] != "" {
		free++
	}
	for fd, what := range used {
		if fd > free && strings.HasPrefix(what, "socket:") {
			t.Fatalf("socket %d is above the lowest free descriptor %d: closing it would not free one below the limit: %v", fd, free, used)
		}
	}
	var lim syscall.Rlimit
	if err := prlimit(pid, syscall.RLIMIT_NOFILE, nil, &lim); err != nil {
		t.Fatal(err)
	}
	lim.Cur = uint64(free)
	if err := prlimit(pid, syscall.RLIMIT_NOFILE, &lim, nil); err != nil {
		t.Fatal(err)
	}
}

// prlimit is prlimit(2), which package syscall does not export.
func prlimit(pid, resource int, newLim, old *syscall.Rlimit) error {
	_, _, errno := syscall.RawSyscall6(syscall.SYS_PRLIMIT64, uintptr(pid), uintptr(resource),
		uintptr(unsafe.Pointer(newLim)), uintptr(unsafe.Pointer(old)), 0, 0)
	if errno != 0 {
		return fmt.Errorf("prlimit(%d): %w", pid, errno)
	}
	return nil
}

// TestBinaryIdleClientsDoNotStarveNewOnes holds as many idle clients as
// the descriptor limit allows within max_connections, one of them
// dribbling a byte now and then, and checks a new client is served.
func TestBinaryIdleClientsDoNotStarveNewOnes(t *testing.T) {
	be := startBackend(t, echoHandler)
	port := freePort(t)
	const maxConns = 200
	path := writeConfig(t, "apps:\n"+appYAML("crowded", []int{port}, []string{be.addr}, fmt.Sprintf("max_connections: %d", maxConns)))
	cmd, out := ulimitBinary(t, 2*maxConns+80, "-c", path)
	waitListening(t, port)
	var idle []net.Conn
	for i := 0; i < maxConns-1; i++ {
		c := dialProxy(t, port)
		if i == 0 {
			c.Write([]byte("x")) // the slow sender
		}
		idle = append(idle, c)
	}
	waitFor(t, 10*time.Second, "every idle client to be relayed", func() bool {
		s, _ := procFDs(t, cmd.Process.Pid)
		return s >= 2*(maxConns-1)+1
	})
	c := dialProxy(t, port)
	c.Write([]byte("new\n"))
	if got := readLine(t, c); got != "new" {
		t.Fatalf("new client: %q\n%s", got, out)
	}
	idle[0].Write([]byte("y"))
	buf := make([]byte, 2)
	idle[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(idle[0], buf); err != nil || string(buf) != "xy" {
		t.Fatalf("slow sender: %q, %v", buf, err)
	}
	if strings.Contains(out.String(), "accept failed") {
		t.Errorf("ran out of descriptors within max_connections:\n%s", out)
	}
}

// TestIdleTimeoutSlowReader: a busy transfer to a reader slower than the
// relay's chunks is activity, not idleness. The whole stream arrives,
// although no single write finishes within idle_timeout.
func TestIdleTimeoutSlowReader(t *testing.T) {
	const size = 512 << 10
	data := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	be := startBackend(t, func(c net.Conn) {
		c.Write(data) // all at once, as in the report
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c)
	})
	port := freePort(t)
	srv, logs := startProxy(t, "apps:\n"+appYAML("slow", []int{port}, []string{be.addr}, "idle_timeout: 300ms\naccess_log: true"))
	c := dialProxy(t, port)
	c.SetReadBuffer(8192)
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	got := make([]byte, 0, size)
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf) // a few hundred KiB/s: one splice write outlasts idle_timeout
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d of %d bytes: %v", len(got), size, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("got %d of %d bytes (equal prefix: %v)", len(got), size, bytes.HasPrefix(data, got))
	}
	if n := srv.appAt(0).stats.idleTimeouts.Load(); n != 0 {
		t.Errorf("%d idle timeouts counted for a busy transfer", n)
	}
	c.Close()
	waitFor(t, 5*time.Second, "the access log line", func() bool { return strings.Contains(logs.String(), "result=ok") })
}

// TestIdleTimeoutStalledReaderReset: when the proxy closes a connection
// for idleness while bytes are still in flight to a reader that stopped
// reading, the reader sees a reset, never a clean EOF that would make the
// cut stream look complete; the access log says why.
func TestIdleTimeoutStalledReaderReset(t *testing.T) {
	be := startBackend(t, func(c net.Conn) {
		c.Write(make([]byte, 32<<20)) // more than the socket buffers hold
		io.Copy(io.Discard, c)
	})
	port := freePort(t)
	srv, logs := startProxy(t, "apps:\n"+appYAML("stall", []int{port}, []string{be.addr}, "idle_timeout: 300ms\naccess_log: true"))
	c := dialProxy(t, port)
	c.SetReadBuffer(8192)
	waitFor(t, 10*time.Second, "the idle timeout", func() bool { return srv.appAt(0).stats.idleTimeouts.Load() == 1 })
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, c)
	if !isReset(err) {
		t.Fatalf("reading the cut stream ended with %v, want a connection reset", err)
	}
	waitFor(t, 5*time.Second, "the access log line", func() bool { return strings.Contains(logs.String(), `result="idle timeout"`) })
}

// TestBinaryOutOfDescriptorsBlamesNoTarget: when the proxy itself runs out
// of descriptors between accepting a client and dialing its target, the
// failed dial is not counted against the targets: none is marked down.
func TestBinaryOutOfDescriptorsBlamesNoTarget(t *testing.T) {
	a, b := startBackend(t, echoHandler), startBackend(t, echoHandler)
	port, admin := freePort(t), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	path := writeConfig(t, "admin: "+admin+"\napps:\n"+appYAML("tight", []int{port}, []string{a.addr, b.addr}, "max_fails: 1"))
	cmd, out := runBinary(t, "-c", path)
	pid := cmd.Process.Pid
	waitListening(t, port)
	waitFor(t, 10*time.Second, "the probe's relay to end", func() bool {
		return a.accepted.Load()+b.accepted.Load() == 1 && a.open()+b.open() == 0
	})
	fillDescriptors(t, pid)
	var lim syscall.Rlimit
	if err := prlimit(pid, syscall.RLIMIT_NOFILE, nil, &lim); err != nil {
		t.Fatal(err)
	}
	limited := lim
	limited.Cur++ // room for the accepted client, none for the dial
	if err := prlimit(pid, syscall.RLIMIT_NOFILE, &limited, nil); err != nil {
		t.Fatal(err)
	}
	c := dialProxy(t, port)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(c); len(b) != 0 {
		t.Fatalf("read %q, %v; want the client closed", b, err)
	}
	waitFor(t, 5*time.Second, "the failed dials to be logged", func() bool { return strings.Contains(out.String(), "too many open files") })
	lim.Cur += 64
	if err := prlimit(pid, syscall.RLIMIT_NOFILE, &lim, nil); err != nil {
		t.Fatal(err)
	}
	st := binaryStatus(t, admin)
	for _, addr := range []string{a.addr, b.addr} {
		if tg := statusTarget(t, st, "tight", addr); tg["up"] != true || tg["failures"].(float64) != 0 {
			t.Errorf("target %s after the proxy ran out of descriptors: %v; want up, no failure counted", addr, tg)
		}
	}
	if strings.Contains(out.String(), `msg="target down"`) {
		t.Errorf("a target was marked down:\n%s", out)
	}
}
