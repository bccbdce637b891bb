package main

import (
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/michaeldbianchi/tcpproxy/internal/admin"
)

// TestLoadConfigProxyProtocolFrom: accept_proxy_protocol needs
// proxy_protocol_from (secure by default), which takes CIDRs and
// addresses, may stand in defaults:, and is one setting per shared
// listen address; every problem is reported with its file and line
// (#10 item 1).
func TestLoadConfigProxyProtocolFrom(t *testing.T) {
	app := "apps:\n- name: a\n  ports: [1]\n  targets: [a:1]\n"
	tests := []struct {
		name string
		yaml string
		want []string // errors; none: the config loads
	}{
		{"required", app + "  accept_proxy_protocol: true\n",
			[]string{`:5: app "a": accept_proxy_protocol: true needs proxy_protocol_from`}},
		{"required from defaults", "defaults:\n  accept_proxy_protocol: true\n" + app,
			[]string{`:2: app "a": accept_proxy_protocol: true needs proxy_protocol_from`}},
		{"empty list", app + "  accept_proxy_protocol: true\n  proxy_protocol_from: []\n",
			[]string{`:6: app "a": proxy_protocol_from: empty: list the addresses or CIDRs of the load balancers that send the header`}},
		{"bad entries", app + "  accept_proxy_protocol: true\n  proxy_protocol_from:\n  - 10.0.0.0/33\n  - lb.example.com\n",
			[]string{`:7: app "a": proxy_protocol_from: "10.0.0.0/33" is not an IP address or CIDR`, `:8: app "a": proxy_protocol_from: "lb.example.com" is not an IP address or CIDR`}},
		{"shared address differs", "apps:\n- name: a\n  ports: [443]\n  targets: [a:1]\n  sni: [a.test]\n  accept_proxy_protocol: true\n  proxy_protocol_from: [10.0.0.1]\n" +
			"- name: b\n  ports: [443]\n  targets: [a:1]\n  accept_proxy_protocol: true\n  proxy_protocol_from: [10.0.0.2]\n",
			[]string{`:8: app "b": proxy_protocol_from differs from app "a" on the shared listen address :443`}},
		{"every problem at once", "apps:\n- name: a\n  ports: [1]\n  targets: [a:1]\n  accept_proxy_protocol: true\n- name: b\n  ports: [2]\n  targets: [a:1]\n  accept_proxy_protocol: true\n",
			[]string{`:5: app "a": accept_proxy_protocol: true needs proxy_protocol_from`, `:9: app "b": accept_proxy_protocol: true needs proxy_protocol_from`}},
		{"in defaults", "defaults:\n  accept_proxy_protocol: true\n  proxy_protocol_from: [10.0.0.0/8, \"2001:db8::1\"]\n" + app, nil},
		{"per app", app + "  accept_proxy_protocol: true\n  proxy_protocol_from: [192.0.2.10]\n", nil},
		{"without accept_proxy_protocol", app + "  proxy_protocol_from: [192.0.2.10]\n", nil},
		{"in defaults, for the apps that take the header", "defaults:\n  proxy_protocol_from: [192.0.2.10]\n" + app + "- name: b\n  ports: [2]\n  targets: [a:1]\n  accept_proxy_protocol: true\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, tt.yaml)
			cfg, err := loadConfig(path)
			if tt.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if len(cfg.Apps[0].ProxyProtocolFrom) == 0 {
					t.Fatal("proxy_protocol_from not loaded")
				}
				// Only an app's own proxy_protocol_from without
				// accept_proxy_protocol warns; one in defaults: may serve
				// other apps.
				warned := len(cfg.Warnings) == 1 && cfg.Warnings[0].String() == path+`:5: warning: app "a": proxy_protocol_from has no effect without accept_proxy_protocol: true`
				if want := tt.name == "without accept_proxy_protocol"; warned != want || !want && len(cfg.Warnings) != 0 {
					t.Errorf("warnings %v, want one: %v", cfg.Warnings, want)
				}
				return
			}
			if err == nil {
				t.Fatalf("loaded, want errors %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), path+w) {
					t.Errorf("error lacks %q; got:\n%s", path+w, err)
				}
			}
		})
	}
}

// TestUntrustedProxySender: with accept_proxy_protocol, a client whose
// own address is outside proxy_protocol_from is closed before a byte of
// it is read or a target dialed, on a plain and on a name-routed
// address, counted as tcpproxy_connections_rejected_total{reason=
// "untrusted_proxy"} and logged; a PROXY header from a trusted sender
// is honoured, and allow/deny apply to the address it names (#10 item 1).
func TestUntrustedProxySender(t *testing.T) {
	be := startBackend(t, namedHandler("relayed"))
	plain, named := freePort(t), freePort(t)
	// 127.0.0.2 is the load balancer; the test's clients dial from
	// 127.0.0.1 (untrusted) or from 127.0.0.2 (trusted).
	pp := "accept_proxy_protocol: true\nproxy_protocol_from: [127.0.0.2]\nallow: [10.0.0.0/8]\naccess_log: true"
	srv, logs := startProxy(t, "apps:\n"+
		appYAML("plain", []int{plain}, []string{be.addr}, pp)+
		appYAML("named", []int{named}, []string{be.addr}, pp+"\nsni: [a.test]")+
		appYAML("named-default", []int{named}, []string{be.addr}, pp))
	h := admin.New(admin.Options{Snapshot: srv.snapshot, Ready: srv.ready.Load}).Handler()
	from := func(ip string) *net.Dialer {
		return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	}
	header := "PROXY TCP4 10.1.2.3 10.9.9.9 4000 443\r\n"
	tests := []struct {
		name, from string
		port       int
		send       string
		app        string // the app the rejection is counted against
		relayed    bool
	}{
		{"spoofed header from an untrusted client, plain address", "127.0.0.1", plain, header + "hello\n", "plain", false},
		{"silent untrusted client, plain address", "127.0.0.1", plain, "", "plain", false},
		{"spoofed header from an untrusted client, name-routed address", "127.0.0.1", named, header + "hello\n", "named-default", false},
		{"silent untrusted client, name-routed address", "127.0.0.1", named, "", "named-default", false},
		{"trusted load balancer, plain address", "127.0.0.2", plain, header + "hello\n", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dials := be.accepted.Load()
			before := scrape(t, h)
			c, err := from(tt.from).Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tt.port))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte(tt.send))
			c.(*net.TCPConn).CloseWrite()
			// Well below the 5 s a PROXY header or a name may take: the
			// decision does not wait for the client to send anything.
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			got, err := io.ReadAll(c)
			if tt.relayed {
				if string(got) != "relayed\nhello\n" || err != nil {
					t.Fatalf("trusted sender: got %q, %v", got, err)
				}
				waitFor(t, 5*time.Second, "the access log line", func() bool { return strings.Contains(logs.String(), "client=10.1.2.3:4000") })
				return
			}
			if err != nil || len(got) != 0 {
				t.Fatalf("untrusted client: got %q, %v; want EOF at once", got, err)
			}
			if be.accepted.Load() != dials {
				t.Fatal("an untrusted client caused a dial")
			}
			series := fmt.Sprintf(`tcpproxy_connections_rejected_total{app=%q,reason="untrusted_proxy"}`, tt.app)
			if after := scrape(t, h); after[series] != before[series]+1 {
				t.Errorf("%s went from %v to %v, want +1", series, before[series], after[series])
			}
		})
	}
	for _, app := range []string{"plain", "named-default"} {
		if !strings.Contains(logs.String(), fmt.Sprintf(`level=WARN msg="untrusted PROXY protocol sender, closing it" app=%s client=127.0.0.1:`, app)) {
			t.Errorf("no log line for app %s:\n%s", app, logs)
		}
	}
	if strings.Contains(logs.String(), "client=10.1.2.3:4000 server_name=\"\" target=\"\"") {
		t.Errorf("a spoofed address reached the access log:\n%s", logs)
	}
}
