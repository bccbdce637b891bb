package relay

import (
	"bytes"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"
)

// The pipe tests count "pipe:[...]" entries in /proc/self/fd, so they run
// in a fresh test process where no other test's splice pipes linger in
// Go's pipe pool.

const pipeHelperEnv = "RELAY_PIPE_HELPER"

func TestPipes(t *testing.T) {
	if os.Getenv(pipeHelperEnv) != "" {
		t.Skip("running as the helper process")
	}
	for _, name := range []string{"BulkSplices", "IdleHoldsNoPipes"} {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperPipes$/^"+name+"$", "-test.v", "-test.count=1", "-test.timeout=60s")
			cmd.Env = append(os.Environ(), pipeHelperEnv+"=1")
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "--- PASS: TestHelperPipes/"+name) {
				t.Fatalf("helper process: %v\n%s", err, out)
			}
			t.Logf("helper process:\n%s", out)
		})
	}
}

// TestHelperPipes is the body of TestPipes, run in a subprocess.
func TestHelperPipes(t *testing.T) {
	if os.Getenv(pipeHelperEnv) == "" {
		t.Skip("helper for TestPipes")
	}
	t.Run("BulkSplices", testBulkSplices)
	t.Run("IdleHoldsNoPipes", testIdleHoldsNoPipes)
}

// testBulkSplices fails if WriteTo moves bulk data through user space:
// a splice needs a pipe, so one must show up during a large transfer. The
// user-space copy mode shows the check can fail.
func testBulkSplices(t *testing.T) {
	const n = 256 << 20
	ln := listen(t)
	for _, tc := range []struct {
		mode      mode
		wantPipes bool
	}{
		{modeUserspace, false},
		{modeRelay, true},
	} {
		base := pipes(t)
		client, server, p := setup(t, ln, tc.mode, nil)
		up := make(chan error, 1)
		go func() { up <- blast(client, n) }()
		received := make(chan error, 1)
		go func() {
			got, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{server}, make([]byte, 1<<20))
			if err == nil && got != n {
				err = io.ErrUnexpectedEOF
			}
			received <- err
		}()

		sawPipe, done := false, false
		tick := time.NewTicker(time.Millisecond)
		timeout := time.After(30 * time.Second)
		for !sawPipe && !done {
			select {
			case err := <-received:
				if err != nil {
					t.Fatalf("%v: receive: %v", tc.mode, err)
				}
				done = true
			case <-timeout:
				t.Fatalf("%v: transfer did not finish", tc.mode)
			case <-tick.C:
			}
			sawPipe = newPipes(t, base) > 0 // after the transfer, used pipes stay pooled
		}
		tick.Stop()
		if sawPipe != tc.wantPipes {
			t.Fatalf("%v: saw a splice pipe during a %d MiB transfer: %v, want %v", tc.mode, n>>20, sawPipe, tc.wantPipes)
		}
		// Seen what we came for: abort the rest of the transfer.
		client.Close()
		server.Close()
		<-p.done
		<-up
		if !done {
			<-received
		}
	}
}

// blast writes n zero bytes to c, then half-closes it.
func blast(c *net.TCPConn, n int64) error {
	buf := make([]byte, 1<<20)
	for n > 0 {
		m, err := c.Write(buf[:min(n, int64(len(buf)))])
		if err != nil {
			return err
		}
		n -= int64(m)
	}
	return c.CloseWrite()
}

// testIdleHoldsNoPipes relays many connections that are now idle and
// counts pipes. Plain io.Copy is the contrast: it parks each direction in
// splice, holding a pipe pair.
func testIdleHoldsNoPipes(t *testing.T) {
	const pairs = 200
	ln := listen(t)
	for _, tc := range []struct {
		name     string
		mode     mode
		msgSize  int
		min, max int // new pipe fds allowed
	}{
		{"small messages", modeRelay, 4, 0, 4},
		// Bulk spliced, then idle: pipes go back to Go's pool, which may keep a
		// couple; any a connection still held would survive the GCs below.
		{"bulk then idle", modeRelay, 2 * smallSize, 0, 4},
		// Two pipe fds per direction; it may reuse up to 4 pooled from above.
		{"plain io.Copy", modePlain, 4, 2*2*pairs - 4, 1 << 30},
	} {
		base, start := pipes(t), time.Now()
		for range pairs {
			// With an Idle, as in production: deadlines must not pin pipes either.
			client, server, _ := setup(t, ln, tc.mode, newIdle(time.Hour))
			exchange(t, client, server, tc.msgSize)
			exchange(t, server, client, tc.msgSize)
		}
		// The relay goroutines are now, or soon, waiting for data. Poll
		// until the count is in range; a relay that holds pipes while
		// idle never gets below max. The GCs empty the pipe pool (the race
		// detector also drops pooled pipes at random, leaving them to GC).
		var got int
		for deadline := time.Now().Add(5 * time.Second); ; {
			got = newPipes(t, base)
			if tc.min <= got && got <= tc.max || time.Now().After(deadline) {
				break
			}
			runtime.GC()
			time.Sleep(10 * time.Millisecond)
		}
		if got < tc.min || got > tc.max {
			t.Fatalf("%s: %d idle relayed pairs hold %d pipe fds, want %d..%d", tc.name, pairs, got, tc.min, tc.max)
		}
		t.Logf("%s: %d idle relayed pairs hold %d pipe fds (%v)", tc.name, pairs, got, time.Since(start))
	}
}

// exchange sends size bytes from one end and reads them at the other.
func exchange(t *testing.T, from, to net.Conn, size int) {
	t.Helper()
	msg := bytes.Repeat([]byte("x"), size)
	sent := make(chan error, 1)
	go func() {
		_, err := from.Write(msg)
		sent <- err
	}()
	got := make([]byte, size)
	if _, err := io.ReadFull(to, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("read %d bytes: %v, or they differ", size, err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
}

// pipes returns the fds of this process that are pipes.
func pipes(t testing.TB) map[string]bool {
	t.Helper()
	dir := "/proc/self/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]bool)
	for _, e := range ents {
		target, err := os.Readlink(dir + "/" + e.Name())
		if err == nil && strings.HasPrefix(target, "pipe:[") {
			m[e.Name()] = true
		}
	}
	return m
}

// newPipes counts pipe fds that are not in base.
func newPipes(t testing.TB, base map[string]bool) int {
	n := 0
	for fd := range pipes(t) {
		if !base[fd] {
			n++
		}
	}
	return n
}
