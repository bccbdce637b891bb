package relay

import (
	"io"
	"net"
	"testing"
)

// This file holds the loopback harness shared by tests and benchmarks:
//
//	client <-> front [proxy: io.Copy both ways] back <-> server
//
// The proxy copies and half-closes like inetaf/tcpproxy's proxyCopy.

// mode selects how the proxy's conns are wrapped.
type mode int

const (
	modeRelay     mode = iota // *Conn on both sides: WriteTo, splice for bulk
	modeRelayCopy             // *Conn sources, destinations hide ReadFrom: WriteTo's buffer path
	modePlain                 // bare *net.TCPConn: Go's splice, holds pipes while idle
	modeUserspace             // both sides hide WriteTo/ReadFrom: io.Copy's 32 KiB buffer
	modeStream                // front is a *Stream over the plain socket (a TLS side without the crypto), back a *Conn
)

func (m mode) String() string {
	return [...]string{"relay", "relay-nosplice", "plain", "userspace", "stream"}[m]
}

type proxy struct {
	front, back net.Conn // as handed to io.Copy
	done        chan struct{}
	errs        [2]error // front->back, back->front
}

// startProxy relays between front and back until both directions end,
// then closes both, like DialProxy.HandleConn.
func startProxy(front, back *net.TCPConn, m mode, idle *Idle) *proxy {
	p := &proxy{front: front, back: back, done: make(chan struct{})}
	if m == modeRelay || m == modeRelayCopy {
		p.front, p.back = New(front, idle), New(back, idle)
	}
	if m == modeStream {
		p.front, p.back = NewStream(front, front, idle), New(back, idle)
	}
	hideW := m == modeRelayCopy || m == modeUserspace
	hideR := m == modeUserspace
	errc := make(chan error, 2)
	go proxyCopy(errc, &p.errs[0], p.back, p.front, hideW, hideR)
	go proxyCopy(errc, &p.errs[1], p.front, p.back, hideW, hideR)
	go func() {
		<-errc
		<-errc
		front.Close()
		back.Close()
		close(p.done)
	}()
	return p
}

func proxyCopy(errc chan<- error, errp *error, dst, src net.Conn, hideW, hideR bool) {
	defer src.(interface{ CloseRead() error }).CloseRead()
	defer dst.(interface{ CloseWrite() error }).CloseWrite()
	var w io.Writer = dst
	var r io.Reader = src
	if hideW {
		w = struct{ io.Writer }{dst}
	}
	if hideR {
		r = struct{ io.Reader }{src}
	}
	_, err := io.Copy(w, r)
	*errp = err
	errc <- err
}

// relayConns returns the proxy's *Conn pair; it fails the test in the
// plain modes.
func (p *proxy) relayConns(t testing.TB) (front, back *Conn) {
	t.Helper()
	f, ok1 := p.front.(*Conn)
	b, ok2 := p.back.(*Conn)
	if !ok1 || !ok2 {
		t.Fatal("proxy is not using *relay.Conn")
	}
	return f, b
}

func listen(t testing.TB) *net.TCPListener {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// connPair returns both ends of one loopback TCP connection.
func connPair(t testing.TB, ln *net.TCPListener) (dialed, accepted *net.TCPConn) {
	t.Helper()
	d, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	a, err := ln.AcceptTCP()
	if err != nil {
		d.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Close()
		a.Close()
	})
	return d, a
}

// setup builds client <-> proxy <-> server and returns the test's ends.
// The proxy is shut down and waited for at cleanup.
func setup(t testing.TB, ln *net.TCPListener, m mode, idle *Idle) (client, server *net.TCPConn, p *proxy) {
	t.Helper()
	client, front := connPair(t, ln)
	back, server := connPair(t, ln)
	p = startProxy(front, back, m, idle)
	t.Cleanup(func() {
		client.Close()
		server.Close()
		<-p.done
	})
	return client, server, p
}
