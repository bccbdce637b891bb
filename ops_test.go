package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/michaeldbianchi/tcpproxy/internal/admin"
)

// scrape fetches /metrics from h and returns each sample by its series
// as exposed, e.g. `tcpproxy_connections_total{app="web"}`.
func scrape(t *testing.T, h http.Handler) map[string]float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("/metrics: %d", rec.Code)
	}
	samples := map[string]float64{}
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad sample line %q", line)
		}
		samples[line[:i]] = v
	}
	return samples
}

// TestMetricsExactValues drives known traffic through four apps and
// checks every tcpproxy_ series against the exact expected value.
func TestMetricsExactValues(t *testing.T) {
	live := startBackend(t, echoHandler)
	dead, dead2 := deadAddr(t), deadAddr(t)
	pWeb, pACL, pLimit, pDead := freePort(t), freePort(t), freePort(t), freePort(t)
	yaml := "apps:\n" +
		appYAML("web", []int{pWeb}, []string{dead, live.addr}, "balance: round_robin\nfail_timeout: 1h") +
		appYAML("acl", []int{pACL}, []string{live.addr}, "deny: [127.0.0.1]") +
		appYAML("limit", []int{pLimit}, []string{live.addr}, "max_connections: 1") +
		appYAML("dead", []int{pDead}, []string{dead2}, "")
	srv, _ := startProxy(t, yaml)
	path := writeConfig(t, yaml)
	log, _ := testLogger()
	d := &daemon{opts: &options{configPath: path}, log: log, startCfg: srv.cfg, srv: srv}
	h := admin.New(admin.Options{Snapshot: d.snapshot, Ready: srv.ready.Load}).Handler()

	echo := func(port int) {
		c := dialProxy(t, port)
		c.Write([]byte("hello\n"))
		if got := readLine(t, c); got != "hello" {
			t.Fatalf("echo: %q", got)
		}
		c.Close()
	}
	closedAtOnce := func(port int) {
		c := dialProxy(t, port)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if b, _ := io.ReadAll(c); len(b) != 0 {
			t.Fatalf("port %d answered %q, want it closed", port, b)
		}
	}
	for i := 0; i < 4; i++ {
		echo(pWeb) // the first also meets the dead target
	}
	closedAtOnce(pACL)
	closedAtOnce(pACL)
	held := dialProxy(t, pLimit)
	held.Write([]byte("x\n"))
	readLine(t, held)
	closedAtOnce(pLimit)
	closedAtOnce(pDead)

	// A failed reload, then a good one.
	os.WriteFile(path, []byte("apps: nope\n"), 0o644)
	d.reload()
	os.WriteFile(path, []byte(yaml), 0o644)
	d.reload()

	waitFor(t, 5*time.Second, "connections to end", func() bool {
		return srv.appAt(0).stats.active.Load() == 0 && srv.appAt(3).stats.active.Load() == 0
	})
	m := scrape(t, h)
	want := map[string]float64{
		`tcpproxy_connections_total{app="web"}`:                                      4,
		`tcpproxy_connections_total{app="acl"}`:                                      2,
		`tcpproxy_connections_total{app="limit"}`:                                    2,
		`tcpproxy_connections_total{app="dead"}`:                                     1,
		`tcpproxy_connections_rejected_total{app="acl",reason="denied"}`:             2,
		`tcpproxy_connections_rejected_total{app="acl",reason="limit"}`:              0,
		`tcpproxy_connections_rejected_total{app="limit",reason="limit"}`:            1,
		`tcpproxy_connections_failed_total{app="dead"}`:                              1,
		`tcpproxy_connections_failed_total{app="web"}`:                               0,
		`tcpproxy_active_connections{app="web"}`:                                     0,
		`tcpproxy_active_connections{app="limit"}`:                                   1,
		`tcpproxy_target_active_connections{app="limit",target="` + live.addr + `"}`: 1,
		`tcpproxy_target_dials_total{app="web",target="` + dead + `"}`:               1,
		`tcpproxy_target_dial_failures_total{app="web",target="` + dead + `"}`:       1,
		`tcpproxy_target_dials_total{app="web",target="` + live.addr + `"}`:          4,
		`tcpproxy_target_dial_failures_total{app="web",target="` + live.addr + `"}`:  0,
		`tcpproxy_target_up{app="web",target="` + dead + `"}`:                        0,
		`tcpproxy_target_up{app="web",target="` + live.addr + `"}`:                   1,
		`tcpproxy_target_dials_total{app="acl",target="` + live.addr + `"}`:          0,
		`tcpproxy_bytes_total{app="web",direction="to_target"}`:                      24,
		`tcpproxy_bytes_total{app="web",direction="to_client"}`:                      24,
		`tcpproxy_connection_duration_seconds_count{app="web"}`:                      4,
		`tcpproxy_connection_duration_seconds_bucket{app="web",le="+Inf"}`:           4,
		`tcpproxy_config_reloads_total{result="success"}`:                            1,
		`tcpproxy_config_reloads_total{result="failure"}`:                            1,
	}
	for series, v := range want {
		got, ok := m[series]
		if !ok {
			t.Errorf("missing series %s", series)
		} else if got != v {
			t.Errorf("%s = %v, want %v", series, got, v)
		}
	}
	if ts := m["tcpproxy_config_last_reload_success_timestamp_seconds"]; ts < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last reload success timestamp = %v", ts)
	}
	if _, ok := m["go_goroutines"]; !ok {
		t.Error("no Go collector series")
	}
	if _, ok := m["process_open_fds"]; !ok {
		t.Error("no process collector series")
	}
}

func TestStatusJSON(t *testing.T) {
	live := startBackend(t, echoHandler)
	dead := deadAddr(t)
	port := freePort(t)
	srv, _ := startProxy(t, "apps:\n"+appYAML("web", []int{port}, []string{dead, live.addr}, "balance: round_robin"))
	c := dialProxy(t, port)
	c.Write([]byte("x\n"))
	readLine(t, c)

	h := admin.New(admin.Options{Snapshot: srv.snapshot, Ready: srv.ready.Load}).Handler()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/status", nil))
	var st struct {
		Apps []struct {
			Name    string `json:"name"`
			Listen  string `json:"listen"`
			Ports   []int  `json:"ports"`
			Balance string `json:"balance"`
			Active  int64  `json:"active"`
			Total   int64  `json:"total"`
			Targets []struct {
				Address     string  `json:"address"`
				Up          bool    `json:"up"`
				Weight      int     `json:"weight"`
				Backup      bool    `json:"backup"`
				Active      int64   `json:"active"`
				Total       int64   `json:"total"`
				Failures    int64   `json:"failures"`
				LastError   string  `json:"last_error"`
				LastErrorAt *string `json:"last_error_at"`
			} `json:"targets"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
		t.Fatalf("%v\n%s", err, rec.Body)
	}
	if len(st.Apps) != 1 {
		t.Fatalf("apps: %s", rec.Body)
	}
	a := st.Apps[0]
	if a.Name != "web" || a.Listen != "127.0.0.1" || len(a.Ports) != 1 || a.Ports[0] != port || a.Balance != "round_robin" || a.Active != 1 || a.Total != 1 {
		t.Errorf("app = %+v", a)
	}
	d, l := a.Targets[0], a.Targets[1]
	if d.Address != dead || d.Up || d.Failures != 1 || !strings.Contains(d.LastError, "connection refused") || d.LastErrorAt == nil {
		t.Errorf("dead target = %+v", d)
	} else if _, err := time.Parse(time.RFC3339, *d.LastErrorAt); err != nil {
		t.Errorf("last_error_at %q is not RFC 3339", *d.LastErrorAt)
	}
	if l.Address != live.addr || !l.Up || l.Weight != 1 || l.Backup || l.Active != 1 || l.Total != 1 || l.LastErrorAt != nil {
		t.Errorf("live target = %+v", l)
	}
	for path, code := range map[string]int{"/healthz": 200, "/readyz": 200, "/": 200} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != code {
			t.Errorf("%s = %d, want %d", path, rec.Code, code)
		}
	}
	srv.stopAccepting()
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != 503 {
		t.Errorf("/readyz while draining = %d, want 503", rec.Code)
	}
}

// recordingBackend hands each connection's first bytes to a channel.
func recordingBackend(t *testing.T, n int) (*backend, chan []byte) {
	got := make(chan []byte, 16)
	be := startBackend(t, func(c net.Conn) {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, n)
		k, _ := io.ReadFull(c, b)
		got <- b[:k]
	})
	return be, got
}

func TestProxyProtocolToTargets(t *testing.T) {
	payload := "hello"
	tests := []struct {
		name    string
		version int
		want    func(client, proxy *net.TCPAddr) []byte
	}{
		{"v1", 1, func(c, p *net.TCPAddr) []byte {
			return []byte(fmt.Sprintf("PROXY TCP4 %s %s %d %d\r\n%s", c.IP, p.IP, c.Port, p.Port, payload))
		}},
		{"v2", 2, func(c, p *net.TCPAddr) []byte {
			b := []byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c")
			b = append(b, c.IP.To4()...)
			b = append(b, p.IP.To4()...)
			b = binary.BigEndian.AppendUint16(b, uint16(c.Port))
			b = binary.BigEndian.AppendUint16(b, uint16(p.Port))
			return append(b, payload...)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			probe := tt.want(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
			be, got := recordingBackend(t, len(probe)+8) // room for longer port numbers in v1
			port := freePort(t)
			startProxy(t, "apps:\n"+appYAML("pp", []int{port}, []string{be.addr}, fmt.Sprintf("proxy_protocol: %d", tt.version)))
			c := dialProxy(t, port)
			c.Write([]byte(payload))
			want := tt.want(c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr))
			c.CloseWrite()
			if b := <-got; string(b) != string(want) {
				t.Fatalf("target got %q, want %q", b, want)
			}
		})
	}
}

func TestAcceptProxyProtocol(t *testing.T) {
	be, got := recordingBackend(t, 64)
	port := freePort(t)
	_, logs := startProxy(t, "apps:\n"+appYAML("behind-lb", []int{port}, []string{be.addr}, "accept_proxy_protocol: true\nproxy_protocol_from: [127.0.0.1]\nproxy_protocol: 1\ndeny: [198.51.100.0/24]\naccess_log: true"))

	t.Run("address taken from the header and sent on", func(t *testing.T) {
		c := dialProxy(t, port)
		hdr := "PROXY TCP4 192.0.2.7 203.0.113.9 5555 443\r\n"
		c.Write([]byte(hdr + "payload"))
		c.CloseWrite()
		b := <-got
		if want := hdr + "payload"; string(b) != want {
			t.Fatalf("target got %q, want %q", b, want)
		}
		waitFor(t, 5*time.Second, "the access log line", func() bool { return strings.Contains(logs.String(), "client=192.0.2.7:5555") })
	})
	t.Run("v2 header of the protocol's longest", func(t *testing.T) {
		// 16 fixed bytes, 12 address bytes, then TLVs to a length of 65,535.
		hdr := []byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff\xc0\x00\x02\x08\xcb\x00\x71\x09\x15\xb3\x01\xbb")
		hdr = append(hdr, make([]byte, 0xffff-12)...)
		c := dialProxy(t, port)
		c.Write(append(hdr, "payload"...))
		c.CloseWrite()
		select {
		case b := <-got:
			if want := "PROXY TCP4 192.0.2.8 203.0.113.9 5555 443\r\npayload"; string(b) != want {
				t.Fatalf("target got %q, want %q", b, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the target got nothing: the header was refused")
		}
	})
	t.Run("deny applies to the header's address", func(t *testing.T) {
		accepted := be.accepted.Load()
		c := dialProxy(t, port)
		c.Write([]byte("PROXY TCP4 198.51.100.1 203.0.113.9 5555 443\r\npayload"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.ReadAll(c)
		if be.accepted.Load() != accepted {
			t.Fatal("a denied client caused a dial")
		}
	})
	t.Run("bad header rejected", func(t *testing.T) {
		accepted := be.accepted.Load()
		c := dialProxy(t, port)
		c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if b, _ := io.ReadAll(c); len(b) != 0 {
			t.Fatalf("answered %q", b)
		}
		if be.accepted.Load() != accepted {
			t.Fatal("a client with a bad header caused a dial")
		}
		waitFor(t, 5*time.Second, "the error log line", func() bool { return strings.Contains(logs.String(), `msg="bad PROXY protocol header"`) })
	})
}

func TestAccessLog(t *testing.T) {
	be := startBackend(t, echoHandler)
	tests := []struct {
		name, extra, level string
	}{
		{"on", "access_log: true", "INFO"},
		{"off", "", "DEBUG"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port := freePort(t)
			_, logs := startProxy(t, "apps:\n"+appYAML("logged", []int{port}, []string{be.addr}, tt.extra))
			c := dialProxy(t, port)
			c.Write([]byte("12345\n"))
			readLine(t, c)
			c.Close()
			var line string
			waitFor(t, 5*time.Second, "the access log line", func() bool {
				for _, l := range strings.Split(logs.String(), "\n") {
					if strings.Contains(l, "msg=connection") {
						line = l
						return true
					}
				}
				return false
			})
			for _, want := range []string{"level=" + tt.level, "app=logged", fmt.Sprintf("port=%d", port), "client=127.0.0.1:", "target=" + be.addr,
				"attempts=1", "duration=", "bytes_to_target=6", "bytes_to_client=6", "result=ok"} {
				if !strings.Contains(line, want) {
					t.Errorf("access log line %q lacks %q", line, want)
				}
			}
		})
	}
}
