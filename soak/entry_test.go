//go:build linux

package main

import (
	"net"
	"strings"
	"testing"
	"time"
)

// TestEntryPreambleCheck: what a backend reads before frame 0 passes the
// check for the entry the client took, and is caught as misrouted when
// it is another entry's (the wrong SNI app, a header lost or added).
func TestEntryPreambleCheck(t *testing.T) {
	e, err := newEntries([]string{"127.0.0.1:1"}, "127.0.0.1:2", "127.0.0.1:3")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const id = 7
	s := stream{seed: 1, conn: id, dir: up, kind: short}
	tests := []struct {
		name      string
		entry     entryKind
		delivered func(want []byte) []byte // what the proxy delivers, given what start recorded
		ok        bool
	}{
		{"plain", entryPlain, func(w []byte) []byte { return w }, true},
		{"SNI a", entrySNIA, func(w []byte) []byte { return w }, true},
		{"SNI b with the header", entrySNIB, func(w []byte) []byte { return w }, true},
		{"PROXY header passed on", entryProxy, func(w []byte) []byte { return w }, true},
		{"SNI b without its header", entrySNIB, func(w []byte) []byte { return e.hello[1] }, false},
		{"SNI a routed as b", entrySNIA, func(w []byte) []byte { return e.hello[1] }, false},
		{"PROXY header lost", entryProxy, func(w []byte) []byte { return nil }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pair := func() (*net.TCPConn, *net.TCPConn) {
				c, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				s, err := ln.Accept()
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close(); s.Close() })
				return c.(*net.TCPConn), s.(*net.TCPConn)
			}
			// start writes the client's preamble on one connection; the test
			// plays the proxy and delivers its own version of it, then frame
			// 0, on another, which the backend side reads.
			client, _ := pair()
			if err := e.start(client, tt.entry, id, time.Now().Add(5*time.Second)); err != nil {
				t.Fatal(err)
			}
			defer e.forget(id)
			e.mu.Lock()
			want := e.preambles[id]
			e.mu.Unlock()
			proxy, server := pair()
			go proxy.Write(append(tt.delivered(want), appendFrame(nil, s, 0)...))
			v := newVerifier(stream{seed: 1, dir: up}, true)
			pre, err := readPreamble(server, v, time.Now().Add(5*time.Second))
			if err == nil {
				_, err = readFrames(server, v, 1, time.Now().Add(5*time.Second))
			}
			if err != nil || v.s.conn != id {
				t.Fatalf("read: %v, conn %d", err, v.s.conn)
			}
			if got := e.check(id, pre); (got == "") != tt.ok {
				t.Errorf("check: %q, want ok %v", got, tt.ok)
			} else if !tt.ok && !strings.Contains(got, "before frame 0") {
				t.Errorf("check: %q", got)
			}
		})
	}
}
