package proxyproto

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/inetaf/tcpproxy"
)

func TestAppendV1(t *testing.T) {
	tests := []struct {
		name     string
		src, dst netip.AddrPort
		want     string
	}{
		{"TCP4", ap("1.2.3.4:1111"), ap("5.6.7.8:2222"), "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n"},
		{"TCP4 from mapped", ap("[::ffff:1.2.3.4]:1111"), ap("[::ffff:5.6.7.8]:2222"), "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n"},
		{"TCP6", ap("[2001:db8::1]:1111"), ap("[2001:db8::2]:2222"), "PROXY TCP6 2001:db8::1 2001:db8::2 1111 2222\r\n"},
		{"TCP6 drops zone", ap("[fe80::1%eth0]:1"), ap("[fe80::2%eth0]:0"), "PROXY TCP6 fe80::1 fe80::2 1 0\r\n"},
		{"mixed v4 src", ap("1.2.3.4:1111"), ap("[2001:db8::2]:2222"), "PROXY TCP6 ::ffff:1.2.3.4 2001:db8::2 1111 2222\r\n"},
		{"mixed v4 dst", ap("[2001:db8::1]:1111"), ap("5.6.7.8:2222"), "PROXY TCP6 2001:db8::1 ::ffff:5.6.7.8 1111 2222\r\n"},
		{"invalid src", netip.AddrPort{}, ap("5.6.7.8:2222"), "PROXY UNKNOWN\r\n"},
		{"invalid dst", ap("1.2.3.4:1111"), netip.AddrPort{}, "PROXY UNKNOWN\r\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			prefix := []byte("keep")
			got := Append(prefix, 1, tc.src, tc.dst)
			if string(got) != "keep"+tc.want {
				t.Errorf("Append = %q, want %q", got, "keep"+tc.want)
			}
		})
	}
}

func TestAppendV2(t *testing.T) {
	sig := hex.EncodeToString([]byte(v2Signature))
	tests := []struct {
		name     string
		src, dst netip.AddrPort
		want     string // hex after the signature
	}{
		{"TCP4", ap("1.2.3.4:1111"), ap("5.6.7.8:2222"),
			"2111000c" + "01020304" + "05060708" + "0457" + "08ae"},
		{"TCP6", ap("[2001:db8::1]:1111"), ap("[::1]:2222"),
			"21210024" + "20010db8000000000000000000000001" + "00000000000000000000000000000001" + "0457" + "08ae"},
		{"mixed maps v4", ap("1.2.3.4:1111"), ap("[::1]:2222"),
			"21210024" + "00000000000000000000ffff01020304" + "00000000000000000000000000000001" + "0457" + "08ae"},
		{"invalid src is LOCAL", netip.AddrPort{}, ap("5.6.7.8:2222"), "20000000"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := hex.EncodeToString(Append(nil, 2, tc.src, tc.dst)); got != sig+tc.want {
				t.Errorf("Append = %s, want %s", got, sig+tc.want)
			}
		})
	}
}

func TestAppendBadVersionPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Append(version 3) did not panic")
		}
	}()
	Append(nil, 3, ap("1.2.3.4:1"), ap("5.6.7.8:2"))
}

func TestAppendParseRoundTrip(t *testing.T) {
	pairs := []struct {
		name     string
		src, dst netip.AddrPort
	}{
		{"v4", ap("192.0.2.1:54321"), ap("198.51.100.7:443")},
		{"v4 zero ports", ap("0.0.0.0:0"), ap("255.255.255.255:0")},
		{"v6", ap("[2001:db8::dead:beef]:54321"), ap("[2001:db8:1::7]:443")},
		{"v6 longest", ap("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535"), ap("[1:2:3:4:5:6:7:8]:65535")},
		{"mixed", ap("192.0.2.1:54321"), ap("[2001:db8:1::7]:443")},
		{"mapped", ap("[::ffff:192.0.2.1]:54321"), ap("[::ffff:198.51.100.7]:443")},
	}
	for _, version := range []int{1, 2} {
		for _, p := range pairs {
			t.Run(fmt.Sprintf("%s/v%d", p.name, version), func(t *testing.T) {
				b := Append(nil, version, p.src, p.dst)
				h, n, err := parse(b)
				if err != nil {
					t.Fatalf("parse(%q): %v", b, err)
				}
				want := Header{version, Proxy, unmapped(p.src), unmapped(p.dst)}
				if n != len(b) || h != want {
					t.Errorf("parse(%q) = %+v, %d; want %+v, %d", b, h, n, want, len(b))
				}
			})
		}
		t.Run(fmt.Sprintf("invalid/v%d", version), func(t *testing.T) {
			b := Append(nil, version, netip.AddrPort{}, netip.AddrPort{})
			h, n, err := parse(b)
			if err != nil || n != len(b) || h != (Header{Version: version, Command: Local}) {
				t.Errorf("parse(%q) = %+v, %d, %v; want a Local header", b, h, n, err)
			}
		})
	}
}

// TestAppendMatchesLibrary checks that for a same-family connection our
// version 1 header is the one inetaf/tcpproxy's DialProxy sends, byte for
// byte, so switching between the two does not change what targets see.
func TestAppendMatchesLibrary(t *testing.T) {
	for _, network := range []string{"127.0.0.1", "::1"} {
		t.Run(network, func(t *testing.T) {
			target := listen(t, network)
			front := listen(t, network)
			dp := &tcpproxy.DialProxy{Addr: target.Addr().String(), ProxyProtocolVersion: 1, DialTimeout: 5 * time.Second}

			client, err := net.Dial("tcp", front.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			server, err := front.Accept()
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() {
				// HandleConn closes server when the relay ends.
				dp.HandleConn(server)
				cancel()
			}()

			tc, err := target.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer tc.Close()
			tc.SetReadDeadline(time.Now().Add(5 * time.Second))
			line, err := bufio.NewReader(tc).ReadString('\n')
			if err != nil {
				t.Fatalf("reading library header: %v", err)
			}
			want := Append(nil, 1, server.RemoteAddr().(*net.TCPAddr).AddrPort(), server.LocalAddr().(*net.TCPAddr).AddrPort())
			if line != string(want) {
				t.Errorf("library sent %q, Append gives %q", line, want)
			}
			client.Close()
			tc.Close()
			<-ctx.Done()
		})
	}
}

// listen opens a loopback listener, skipping the test when the host
// lacks the address family.
func listen(t *testing.T, host string) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Skipf("no loopback listener on %s: %v", host, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}
