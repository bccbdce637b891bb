package main

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestTurnedAwayClientSeesEOF turns away, for each reason, a client that
// has already sent bytes the proxy will never read, and checks that it
// sees the EOF README promises, not a reset.
func TestTurnedAwayClientSeesEOF(t *testing.T) {
	header := "PROXY TCP4 192.0.2.1 192.0.2.2 1111 2222\r\n"
	junk := strings.Repeat("x", 10000) // more than the library peeks at (4 KiB)
	tests := []struct {
		name, extra, send string
		hold              bool // a first client holds the only slot
	}{
		{"all targets failed", "accept_proxy_protocol: true\nproxy_protocol_from: [127.0.0.1]", header + junk, false},
		{"denied", "accept_proxy_protocol: true\nproxy_protocol_from: [127.0.0.1]\ndeny: [192.0.2.0/24]", header + junk, false},
		{"bad PROXY header", "accept_proxy_protocol: true\nproxy_protocol_from: [127.0.0.1]", "GET / HTTP/1.0\r\n" + junk, false},
		{"no app for the name", "sni: [a.test]", "GET / HTTP/1.0\r\n" + junk, false},
		{"max_connections", "max_connections: 1\ndial_timeout: 1m", junk, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port, target := freePort(t), deadAddr(t)
			if tt.hold {
				target = blackholeAddr(t)
			}
			srv, _ := startProxy(t, "apps:\n"+appYAML("away", []int{port}, []string{target}, tt.extra))
			if tt.hold {
				dialProxy(t, port)
				t.Cleanup(srv.cancel) // first: end its dial, so shutdown does not wait
				waitFor(t, 5*time.Second, "the slot to be taken", func() bool { return srv.appAt(0).stats.active.Load() == 1 })
			}
			for i := range 3 {
				c := dialProxy(t, port)
				if _, err := c.Write([]byte(tt.send)); err != nil {
					t.Fatal(err)
				}
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, err := c.Read(make([]byte, 1))
				if n != 0 || err != io.EOF {
					t.Fatalf("client %d: read = %d, %v; want 0, EOF (reset: %v)", i, n, err, errors.Is(err, syscall.ECONNRESET))
				}
			}
		})
	}
}

// TestLingerCloseBounded checks that closing a client that keeps sending
// drains a bounded amount of what it queued, without waiting, and that
// the client still sees EOF.
func TestLingerCloseBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	server := sc.(*net.TCPConn)
	// 1 MiB is more than the drain takes; wait until the server has
	// queued more than it may drain.
	go client.Write(bytes.Repeat([]byte("y"), 1<<20))
	waitFor(t, 5*time.Second, "the bytes to be queued", func() bool { return queued(t, server) > lingerDrainMax })
	n := lingerClose(server)
	if n != lingerDrainMax {
		t.Errorf("drained %d bytes, want the bound, %d", n, lingerDrainMax)
	}
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if k, err := client.Read(make([]byte, 1)); k != 0 || err != io.EOF {
		t.Errorf("client read = %d, %v; want 0, EOF", k, err)
	}
}

// queued returns how many bytes c's receive queue holds.
func queued(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	rc.Control(func(fd uintptr) {
		buf := make([]byte, 4*lingerDrainMax)
		n, _, _ = syscall.Recvfrom(int(fd), buf, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	})
	return n
}
