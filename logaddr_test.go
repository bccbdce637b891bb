package main

import (
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestLogsUnmapClientAddress: on the default dual-stack listener an IPv4
// client's address is logged as 127.0.0.1:PORT, not in its IPv4-mapped
// IPv6 form [::ffff:127.0.0.1]:PORT, in the access log and in every
// per-connection error line, on a plain and on a name-routed address
// (#10 item 6).
func TestLogsUnmapClientAddress(t *testing.T) {
	be := startBackend(t, echoHandler)
	dead := deadAddr(t)
	plain, failing, named, header := freePort(t), freePort(t), freePort(t), freePort(t)
	// No listen: every app binds [::]:PORT without IPV6_V6ONLY.
	_, logs := startProxy(t, fmt.Sprintf(`apps:
- {name: echo, ports: [%d], targets: [%q], access_log: true}
- {name: dead, ports: [%d], targets: [%q], access_log: true}
- {name: named, ports: [%d], targets: [%q], sni: [a.test], access_log: true}
- {name: header, ports: [%d], targets: [%q], sni: [a.test], accept_proxy_protocol: true, proxy_protocol_from: [127.0.0.1]}
`, plain, be.addr, failing, dead, named, be.addr, header, be.addr))
	tests := []struct {
		name string
		port int
		send string
		msg  string // the log line that names the client
	}{
		{"access log", plain, "hello\n", `msg=connection app=echo`},
		{"all targets failed", failing, "hello\n", `msg="all targets failed" app=dead`},
		{"no app for the name", named, "not TLS\r\n\r\n", `msg="no app for this connection, closing it"`},
		// The sender is trusted as 127.0.0.1 although the socket sees
		// ::ffff:127.0.0.1; its header is bad.
		{"bad PROXY header", header, "GET / HTTP/1.0\r\n\r\n", `msg="bad PROXY protocol header"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", tt.port))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			local := c.LocalAddr().String() // 127.0.0.1:PORT, as the proxy should log it
			c.Write([]byte(tt.send))
			c.(*net.TCPConn).CloseWrite()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			io.Copy(io.Discard, c)
			var line string
			waitFor(t, 10*time.Second, "the log line of "+local, func() bool {
				for _, l := range strings.Split(logs.String(), "\n") {
					if strings.Contains(l, tt.msg) && strings.Contains(l, strings.TrimPrefix(local, "127.0.0.1")+" ") {
						line = l
						return true
					}
				}
				return false
			})
			if !strings.Contains(line, " client="+local+" ") {
				t.Errorf("log line names the client otherwise than %s:\n%s", local, line)
			}
			if strings.Contains(line, "::ffff:") {
				t.Errorf("log line has the IPv4-mapped form:\n%s", line)
			}
		})
	}
}
