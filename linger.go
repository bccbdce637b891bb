package main

import (
	"net"
	"syscall"
	"time"

	"github.com/inetaf/tcpproxy"
)

// lingerDrainMax bounds how much of what a turned-away client has sent
// lingerClose reads and drops: 64 KiB, enough for any request a client
// sends before it waits for an answer, and nothing to a client that
// keeps sending.
const lingerDrainMax = 64 << 10

// lingerClose closes a client turned away before any relay (all targets
// failed, denied, a bad PROXY header, max_connections, no app), so that
// it sees EOF rather than a reset: closing a socket whose receive queue
// holds unread bytes sends RST, and a client reading then gets
// ECONNRESET instead of the EOF it was promised. Like nginx's lingering
// close, it first shuts down the write side (the client gets FIN, so its
// reads end in EOF), then drops what the client has queued, at most
// lingerDrainMax bytes and without waiting for more, then closes. It
// returns the number of bytes dropped.
func lingerClose(c *net.TCPConn) int {
	defer c.Close()
	if c.CloseWrite() != nil || c.SetReadDeadline(time.Time{}) != nil {
		return 0 // the connection is gone already
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	rc.Read(func(fd uintptr) bool {
		n = drainFD(int(fd), lingerDrainMax)
		return true // never wait for more
	})
	return n
}

// drainFD reads and drops up to max bytes from the non-blocking socket
// fd, stopping when nothing more is queued, and returns how many it
// dropped.
func drainFD(fd, max int) int {
	var buf [4096]byte
	n := 0
	for n < max {
		k, err := syscall.Read(fd, buf[:min(len(buf), max-n)])
		if err == syscall.EINTR {
			continue
		}
		if err != nil || k <= 0 { // EAGAIN: nothing queued; 0: EOF
			return n
		}
		n += k
	}
	return n
}

// closeTurnedAway closes c, as the library's routes hand it over (a
// *tcpproxy.Conn, an *acceptedConn or the bare *net.TCPConn), with
// lingerClose.
func closeTurnedAway(c net.Conn) {
	switch u := tcpproxy.UnderlyingConn(c).(type) {
	case *net.TCPConn:
		lingerClose(u)
	case *acceptedConn:
		lingerClose(u.TCPConn)
	default:
		c.Close()
	}
}
