package relay

import (
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := <-accepted
	if c == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { d.Close(); c.Close() })
	return d.(*net.TCPConn), c.(*net.TCPConn)
}

// TestStart relays a request with a half-close and a reply, and checks
// that done runs once, after both directions, with the byte counts.
func TestStart(t *testing.T) {
	client, clientSide := tcpPair(t) // client -> proxy
	targetSide, target := tcpPair(t) // proxy -> target
	done := make(chan Result, 2)
	Start(clientSide, targetSide, Options{HalfCloseTimeout: time.Minute}, func(r Result) { done <- r })

	replied := make(chan error, 1)
	go func() {
		req, err := io.ReadAll(target) // until the client's half-close arrives
		if err == nil {
			_, err = target.Write(append([]byte("reply to "), req...))
		}
		if err == nil {
			err = target.CloseWrite()
		}
		replied <- err
	}()
	client.Write([]byte("request"))
	client.CloseWrite()
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(client)
	if err != nil || string(got) != "reply to request" {
		t.Fatalf("client read %q, %v", got, err)
	}
	if err := <-replied; err != nil {
		t.Fatalf("target: %v", err)
	}
	select {
	case r := <-done:
		if r.ToTarget != 7 || r.ToClient != 16 || r.IdleTimedOut || r.Panic != nil {
			t.Fatalf("result = %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("done was not called")
	}
	select {
	case r := <-done:
		t.Fatalf("done called twice: %+v", r)
	case <-time.After(50 * time.Millisecond):
	}
}

// TestStartIdleTimeout: a pair quiet both ways is closed and reported.
func TestStartIdleTimeout(t *testing.T) {
	client, clientSide := tcpPair(t)
	targetSide, _ := tcpPair(t)
	done := make(chan Result, 1)
	Start(clientSide, targetSide, Options{IdleTimeout: 100 * time.Millisecond}, func(r Result) { done <- r })
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(client); err != nil {
		t.Fatalf("read: %v", err)
	}
	if r := <-done; !r.IdleTimedOut {
		t.Fatalf("result = %+v, want IdleTimedOut", r)
	}
}
