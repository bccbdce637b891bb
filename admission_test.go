//go:build linux

package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/michaeldbianchi/tcpproxy/internal/admin"
)

// TestMaxConnectionsCountsHeaderWait checks that, with
// accept_proxy_protocol, a client counts against max_connections from
// accept, while it has not sent its PROXY header yet: silent clients
// fill the slots and show as active, the next client is turned away at
// once without its header being read, and every way out of admission
// gives its slot back.
func TestMaxConnectionsCountsHeaderWait(t *testing.T) {
	be := startBackend(t, echoHandler)
	port := freePort(t)
	srv, _ := startProxy(t, "apps:\n"+appYAML("behind-lb", []int{port}, []string{be.addr},
		"accept_proxy_protocol: true\nproxy_protocol_from: [127.0.0.1]\nmax_connections: 3\ndeny: [198.51.100.0/24]"))
	h := admin.New(admin.Options{Snapshot: srv.snapshot, Ready: srv.ready.Load}).Handler()
	st := srv.appAt(0).stats
	active := func() float64 { return scrape(t, h)[`tcpproxy_active_connections{app="behind-lb"}`] }

	var silent []*net.TCPConn
	for range 3 {
		silent = append(silent, dialProxy(t, port))
	}
	waitFor(t, 5*time.Second, "3 silent clients to count as active", func() bool { return active() == 3 })

	// A fourth client is turned away at once, its header unread.
	c := dialProxy(t, port)
	c.Write([]byte("PROXY TCP4 192.0.2.1 192.0.2.2 1111 2222\r\nhello\n"))
	c.SetReadDeadline(time.Now().Add(proxyHeaderTimeout / 2))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("client over the limit: read = %d, %v; want EOF before the header timeout", n, err)
	}
	if got := scrape(t, h)[`tcpproxy_connections_rejected_total{app="behind-lb",reason="limit"}`]; got != 1 {
		t.Errorf("rejected for the limit = %v, want 1", got)
	}

	// A silent client that sends its header now is relayed in its slot.
	silent[0].Write([]byte("PROXY TCP4 192.0.2.1 192.0.2.2 1111 2222\r\nhello\n"))
	if got := readLine(t, silent[0]); got != "hello" {
		t.Fatalf("relayed client got %q", got)
	}
	// A bad header and a denied address give their slots back.
	silent[1].Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	silent[2].Write([]byte("PROXY TCP4 198.51.100.1 192.0.2.2 1111 2222\r\n"))
	for _, c := range silent[1:] {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("turned-away client: read = %d, %v; want EOF", n, err)
		}
	}
	waitFor(t, 5*time.Second, "the two slots to be given back", func() bool { return active() == 1 })
	silent[0].Close()
	waitFor(t, 5*time.Second, "the last slot to be given back", func() bool { return active() == 0 && srv.active() == 0 })
	if st.rejectedLimit.Load() != 1 || st.rejectedDenied.Load() != 1 {
		t.Errorf("rejected: limit %d, denied %d; want 1 and 1", st.rejectedLimit.Load(), st.rejectedDenied.Load())
	}
}

// TestBinarySilentHeaderClientsDoNotExhaustDescriptors runs the built
// binary with 200 open files, an app behind a load balancer limited to
// 10 connections, and 300 clients that never send their PROXY header:
// beyond the 10 they are closed at once (a burst may briefly run out of
// descriptors, which accept rides out), so the proxy holds about 10
// client sockets and another app's client and /healthz are served.
func TestBinarySilentHeaderClientsDoNotExhaustDescriptors(t *testing.T) {
	be := startBackend(t, echoHandler)
	lbPort, otherPort, adminPort := freePort(t), freePort(t), freePort(t)
	path := writeConfig(t, fmt.Sprintf("admin: 127.0.0.1:%d\napps:\n", adminPort)+
		appYAML("behind-lb", []int{lbPort}, []string{be.addr}, "accept_proxy_protocol: true\nproxy_protocol_from: [127.0.0.1]\nmax_connections: 10")+
		appYAML("other", []int{otherPort}, []string{be.addr}, ""))
	cmd, _ := ulimitBinary(t, 200, "-c", path)
	waitListening(t, otherPort)
	for range 300 {
		dialProxy(t, lbPort) // silent
	}
	metrics := func() string {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", adminPort))
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	waitFor(t, 10*time.Second, "290 clients to be rejected for the limit", func() bool {
		return strings.Contains(metrics(), `tcpproxy_connections_rejected_total{app="behind-lb",reason="limit"} 290`)
	})
	if m := metrics(); !strings.Contains(m, `tcpproxy_active_connections{app="behind-lb"} 10`) {
		t.Errorf("metrics do not show the 10 silent clients as active")
	}
	// 3 listeners, the 10 silent clients, the scrapes' connections.
	waitFor(t, 10*time.Second, "the proxy to hold at most 20 sockets", func() bool {
		s, _ := procFDs(t, cmd.Process.Pid)
		return s <= 20
	})
	c := dialProxy(t, otherPort)
	c.Write([]byte("other\n"))
	if got := readLine(t, c); got != "other" {
		t.Fatalf("other app: %q", got)
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", adminPort))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/healthz: %v, %v", resp, err)
	}
	resp.Body.Close()
}
