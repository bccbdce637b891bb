package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

const testIdle = 200 * time.Millisecond

// waitClosed reads from c until the relay hangs up and returns how long
// that took. Data is discarded.
func waitClosed(t *testing.T, c *net.TCPConn) time.Duration {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(20 * testIdle)) // only so a broken test ends
	_, err := io.Copy(io.Discard, struct{ io.Reader }{c})
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("waiting for the relay to close: %v", err)
	}
	return time.Since(start)
}

func TestIdleTimeout(t *testing.T) {
	ln := listen(t)
	idle := newIdle(testIdle)
	client, _, p := setup(t, ln, modeRelay, idle)
	if d := waitClosed(t, client); d < testIdle {
		t.Errorf("idle pair closed after %v, before the %v timeout", d, testIdle)
	}
	<-p.done
	if !idle.TimedOut() {
		t.Error("TimedOut() = false after the pair was closed for idleness")
	}
	for i, err := range p.errs {
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("relay direction %d ended with %v, want a deadline error", i, err)
		}
	}
}

// TestIdleTimeoutStuckWriter: one direction is blocked writing to a
// client that never reads, the other has nothing to read. No bytes move,
// so the pair is idle, and expiring it must unblock the writer too.
func TestIdleTimeoutStuckWriter(t *testing.T) {
	ln := listen(t)
	idle := newIdle(testIdle)
	client, server, p := setup(t, ln, modeRelay, idle)
	// Fill the server->client path until the server's own write blocks.
	sent := sendAndClose(server, 1<<30, 6)
	select {
	case <-p.done:
	case <-time.After(20 * testIdle):
		t.Fatal("stuck pair not closed")
	}
	if !idle.TimedOut() {
		t.Error("TimedOut() = false")
	}
	client.Close()
	server.Close()
	<-sent
}

// TestIdleOneWayTraffic streams in one direction only for 3x the timeout;
// the shared clock must keep the silent direction from closing the pair.
func TestIdleOneWayTraffic(t *testing.T) {
	ln := listen(t)
	for _, dir := range []string{"client->server", "server->client"} {
		t.Run(dir, func(t *testing.T) {
			idle := newIdle(testIdle)
			client, server, p := setup(t, ln, modeRelay, idle)
			from, to := client, server
			if dir == "server->client" {
				from, to = server, client
			}

			received := make(chan error, 1)
			go func() {
				buf := make([]byte, 100)
				for {
					if _, err := io.ReadFull(to, buf); err != nil {
						received <- err
						return
					}
					if buf[0] == 'q' {
						received <- nil
						return
					}
				}
			}()
			tick := time.NewTicker(testIdle / 10)
			msg := make([]byte, 100)
			for end := time.Now().Add(3 * testIdle); time.Now().Before(end); <-tick.C {
				if _, err := from.Write(msg); err != nil {
					t.Fatalf("write after %v: %v", time.Since(end.Add(-3*testIdle)), err)
				}
			}
			tick.Stop()
			msg[0] = 'q'
			if _, err := from.Write(msg); err != nil {
				t.Fatal(err)
			}
			if err := <-received; err != nil {
				t.Fatalf("reading the stream: %v", err)
			}
			if idle.TimedOut() {
				t.Fatal("pair with steady one-way traffic timed out")
			}
			// The silent direction still works.
			exchange(t, to, from, 1)

			// Once both directions are quiet, the pair does time out.
			waitClosed(t, client)
			<-p.done
			if !idle.TimedOut() {
				t.Error("TimedOut() = false after the traffic stopped")
			}
		})
	}
}

func TestNewIdleNonPositive(t *testing.T) {
	for _, d := range []time.Duration{0, -time.Second} {
		if i := newIdle(d); i != nil || i.TimedOut() {
			t.Errorf("newIdle(%v) = %v, want nil (no timeout)", d, i)
		}
	}
}

// TestHalfCloseTimeout: once one direction has ended with EOF, the other
// may stay quiet only for the half-close timeout, however long the idle
// timeout is.
func TestHalfCloseTimeout(t *testing.T) {
	ln := listen(t)
	for _, tc := range []struct {
		name   string
		stream bool // the server keeps replying after the client's half-close
	}{
		{"silent", false},
		{"streaming", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			idle := NewTimeouts(time.Hour, testIdle)
			client, server, p := setup(t, ln, modeRelay, idle)
			if _, err := client.Write([]byte("req")); err != nil {
				t.Fatal(err)
			}
			// The half-close phase cannot start before the client's FIN;
			// taken after the server read EOF, start could lag the relay's
			// clock by more than its slack, and the check below flaked.
			start := time.Now()
			if err := client.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadAll(server); err != nil {
				t.Fatal(err)
			}

			if !tc.stream {
				waitClosed(t, client)
				if d := time.Since(start); d < testIdle {
					t.Errorf("half-closed pair closed after %v, before the %v timeout", d, testIdle)
				}
				<-p.done
				if idle.TimedOut() {
					t.Error("TimedOut() = true for a half-close timeout")
				}
				return
			}

			// Replies for 3x the half-close timeout must all arrive.
			const msgs = 30
			sent := make(chan error, 1)
			go func() {
				tick := time.NewTicker(3 * testIdle / msgs)
				defer tick.Stop()
				for range msgs {
					if _, err := server.Write(make([]byte, 100)); err != nil {
						sent <- err
						return
					}
					<-tick.C
				}
				sent <- server.CloseWrite()
			}()
			n, err := io.Copy(io.Discard, struct{ io.Reader }{client})
			if err != nil || n != msgs*100 {
				t.Fatalf("client got %d bytes, %v; want %d", n, err, msgs*100)
			}
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
			<-p.done
			for i, err := range p.errs {
				if err != nil {
					t.Errorf("relay direction %d: %v", i, err)
				}
			}
		})
	}
}

// TestStopOnFailure: with an Idle, a direction that fails stops the other
// at once; the library's relay would keep it open until the other peer
// hangs up too, which a silent server never does. Without an Idle nothing
// is stopped (see TestReset).
func TestStopOnFailure(t *testing.T) {
	ln := listen(t)
	idle := newIdle(time.Hour)
	client, _, p := setup(t, ln, modeRelay, idle)
	if err := client.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	client.Close() // sends RST
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the other direction was not stopped")
	}
	if !errors.Is(p.errs[0], syscall.ECONNRESET) {
		t.Errorf("client->server error = %v, want ECONNRESET", p.errs[0])
	}
	if !errors.Is(p.errs[1], os.ErrDeadlineExceeded) {
		t.Errorf("server->client error = %v, want it stopped by a deadline", p.errs[1])
	}
	if idle.TimedOut() {
		t.Error("TimedOut() = true after a reset")
	}
}

func TestNewTimeoutsNil(t *testing.T) {
	if i := NewTimeouts(0, -1); i != nil {
		t.Errorf("NewTimeouts(0, -1) = %v, want nil", i)
	}
}
