package main

import (
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// keepAliveOf reads c's SO_KEEPALIVE and TCP_KEEPIDLE (seconds) from
// the kernel.
func keepAliveOf(t *testing.T, c net.Conn) (on bool, idle int) {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var onv int
	var err1, err2 error
	if err := rc.Control(func(fd uintptr) {
		onv, err1 = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
		idle, err2 = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
	}); err != nil || err1 != nil || err2 != nil {
		t.Fatal(err, err1, err2)
	}
	return onv != 0, idle
}

// proxiedPair opens a connection through the proxy on port, sending
// first (the HTTP request line that routes it, if any), and returns the
// proxy's own two sockets for it: the accepted client and the dialed
// target.
func proxiedPair(t *testing.T, srv *proxyServer, port int, first string) (client, target net.Conn) {
	t.Helper()
	c := dialProxy(t, port)
	if _, err := io.WriteString(c, first+"x"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the proxy's connection pair", func() bool {
		srv.conns.mu.Lock()
		defer srv.conns.mu.Unlock()
		for e := range srv.conns.entries {
			if e.target != nil && e.client.RemoteAddr().String() == c.LocalAddr().String() {
				client, target = e.client, e.target
				return true
			}
		}
		return false
	})
	return client, target
}

// TestKeepAliveSetOnce checks what keepalive the proxy's sockets carry
// when it comes from the listening socket (the address's apps agree),
// from the dialer, and per connection (they disagree), and after a
// reload changes it.
func TestKeepAliveSetOnce(t *testing.T) {
	be := startBackend(t, echoHandler)
	one, two, shared := freePort(t), freePort(t), freePort(t)
	yaml := func(period string) string {
		return "apps:\n" +
			appYAML("a", []int{one}, []string{be.addr}, "keepalive: "+period) +
			appYAML("off", []int{two}, []string{be.addr}, "keepalive: -1s") +
			appYAML("host", []int{shared}, []string{be.addr}, "keepalive: 45s\nhttp_host: [h.test]") +
			appYAML("default", []int{shared}, []string{be.addr}, "keepalive: -1s")
	}
	srv, _ := startProxy(t, yaml("30s"))
	want := func(c net.Conn, on bool, idle int) {
		t.Helper()
		gotOn, gotIdle := keepAliveOf(t, c)
		if gotOn != on || on && gotIdle != idle {
			t.Errorf("%s -> %s: keepalive %v, idle %ds; want %v, %ds", c.LocalAddr(), c.RemoteAddr(), gotOn, gotIdle, on, idle)
		}
	}
	client, target := proxiedPair(t, srv, one, "")
	want(client, true, 30)
	want(target, true, 30)
	client, target = proxiedPair(t, srv, two, "")
	want(client, false, 0)
	want(target, false, 0)
	client, target = proxiedPair(t, srv, shared, "GET / HTTP/1.1\r\nHost: h.test\r\n\r\n")
	want(client, true, 45)
	want(target, true, 45)
	client, target = proxiedPair(t, srv, shared, "GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
	want(client, false, 0)
	want(target, false, 0)

	cfg, err := parseConfig("test.yaml", []byte(yaml("20s")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.apply(cfg); err != nil {
		t.Fatal(err)
	}
	client, target = proxiedPair(t, srv, one, "")
	want(client, true, 20)
	want(target, true, 20)
}

// TestKeepAliveOnHandedOverSockets: a socket that comes through
// net.FileListener (a duplicate taken over when a reload respells the
// listen address, or one an upgrade hands over) accepts with Go's
// default keepalive (15 s); the proxy's sockets must still carry each
// app's own, on or off.
func TestKeepAliveOnHandedOverSockets(t *testing.T) {
	be := startBackend(t, echoHandler)
	on, off := freePort(t), freePort(t)
	yaml := func(listen string) string {
		return fmt.Sprintf(`apps:
- {name: on, listen: %[1]s, ports: [%[2]d], keepalive: 45s, targets: [%[4]q]}
- {name: off, listen: %[1]s, ports: [%[3]d], keepalive: -1s, targets: [%[4]q]}
`, listen, on, off, be.addr)
	}
	check := func(t *testing.T, srv *proxyServer) {
		t.Helper()
		c, _ := proxiedPair(t, srv, on, "")
		if gotOn, idle := keepAliveOf(t, c); !gotOn || idle != 45 {
			t.Errorf("app on: keepalive %v, idle %ds; want on, 45s", gotOn, idle)
		}
		c, _ = proxiedPair(t, srv, off, "")
		if gotOn, idle := keepAliveOf(t, c); gotOn {
			t.Errorf("app off: keepalive on (idle %ds); want off", idle)
		}
	}
	t.Run("listen respelled on reload", func(t *testing.T) {
		srv, _ := startProxy(t, yaml("127.0.0.1"))
		check(t, srv)
		applyYAML(t, srv, yaml("localhost"))
		check(t, srv)
	})
	t.Run("socket handed over by an upgrade", func(t *testing.T) {
		inherited := map[string]net.Listener{}
		for _, port := range []int{on, off} {
			addr := fmt.Sprintf("127.0.0.1:%d", port)
			inherited[addr] = handedOver(t, addr)
		}
		env := prodEnv(listenFunc(false, func(addr string) net.Listener { return inherited[addr] }))
		srv, _ := startProxyEnv(t, yaml("127.0.0.1"), env)
		check(t, srv)
	})
}

// handedOver listens on addr and returns the socket as an upgraded
// process gets it: through a descriptor and net.FileListener.
func handedOver(t *testing.T, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fl, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	return fl
}
