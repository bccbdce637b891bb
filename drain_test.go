package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/michaeldbianchi/tcpproxy/internal/admin"
	"github.com/michaeldbianchi/tcpproxy/internal/stats"
)

// serveAdmin serves the admin API of srv on a loopback port with token,
// and returns its base URL.
func serveAdmin(t *testing.T, srv *proxyServer, token string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := admin.New(admin.Options{Snapshot: srv.snapshot, Token: func() string { return token }, SetDrain: srv.setDrain})
	go s.Serve(ln)
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	return "http://" + ln.Addr().String()
}

// adminPost POSTs to url with a bearer token ("" sends none) and returns
// the status and body.
func adminPost(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// getStatus fetches /status.
func getStatus(t *testing.T, base string) stats.Snapshot {
	t.Helper()
	resp, err := http.Get(base + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s stats.Snapshot
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// answers returns the first line of n fresh connections to port.
func answers(t *testing.T, port, n int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for range n {
		c := dialProxy(t, port)
		seen[readLine(t, c)]++
		c.Close()
	}
	return seen
}

// TestDrainTarget: a drained target gets no new connection while its
// open one goes on; the drain shows in /status, survives a reload that
// keeps the target, and is undone by .../ready.
func TestDrainTarget(t *testing.T) {
	a, b := startBackend(t, namedHandler("a")), startBackend(t, namedHandler("b"))
	port := freePort(t)
	yaml := "apps:\n" + appYAML("web", []int{port}, []string{a.addr, b.addr}, "balance: round_robin")
	srv, logs := startProxy(t, yaml)
	base := serveAdmin(t, srv, "tok")
	held := dialProxy(t, port)
	for readLine(t, held) != "a" {
		held = dialProxy(t, port)
	}

	if code, body := adminPost(t, base+"/apps/web/targets/"+a.addr+"/drain", "tok"); code != 200 || !strings.Contains(body, `"drain":true`) {
		t.Fatalf("drain: %d %s", code, body)
	}
	if got := answers(t, port, 10); got["b"] != 10 {
		t.Fatalf("after drain: %v, want every connection on b", got)
	}
	fmt.Fprintln(held, "still here")
	if got := readLine(t, held); got != "still here" {
		t.Fatalf("the drained target's open connection: %q", got)
	}
	ta := getStatus(t, base).Apps[0].Targets[0]
	if !ta.Drain || ta.Active != 1 || !ta.Up {
		t.Errorf("/status of the drained target: %+v", ta)
	}

	applyYAML(t, srv, "apps:\n"+appYAML("web", []int{port}, []string{a.addr, b.addr}, "balance: least_conn"))
	if got := answers(t, port, 10); got["b"] != 10 || !getStatus(t, base).Apps[0].Targets[0].Drain {
		t.Fatalf("after a reload that keeps the target: %v, want it still drained", got)
	}

	if code, _ := adminPost(t, base+"/apps/web/targets/"+a.addr+"/ready", "tok"); code != 200 {
		t.Fatalf("ready: %d", code)
	}
	held.Close()
	if got := answers(t, port, 10); got["a"] == 0 {
		t.Fatalf("after ready: %v, want a back in rotation", got)
	}

	// Every target drained: clients are closed at once, with a clear log.
	adminPost(t, base+"/apps/web/targets/"+a.addr+"/drain", "tok")
	adminPost(t, base+"/apps/web/targets/"+b.addr+"/drain", "tok")
	c := dialProxy(t, port)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("every target drained: read %d, %v; want EOF", n, err)
	}
	waitFor(t, 5*time.Second, "the log line", func() bool { return strings.Contains(logs.String(), "every target is drained") })
	if code, _ := adminPost(t, base+"/apps/web/targets/127.0.0.1:1/drain", "tok"); code != 404 {
		t.Errorf("unknown target: %d, want 404", code)
	}
}

// TestBinaryDrain drives the built binary's admin API with curl and
// net/http: the token from TCPPROXY_ADMIN_TOKEN, 401 on a wrong one,
// the drain kept across SIGHUP and gone after a restart.
func TestBinaryDrain(t *testing.T) {
	a, b := startBackend(t, namedHandler("a")), startBackend(t, namedHandler("b"))
	port, adminPort := freePort(t), freePort(t)
	path := writeConfig(t, fmt.Sprintf("admin: 127.0.0.1:%d\napps:\n", adminPort)+appYAML("web", []int{port}, []string{a.addr, b.addr}, "balance: round_robin"))
	base := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	start := func(token string) *exec.Cmd {
		cmd, _ := runBinaryEnv(t, []string{envAdminToken + "=" + token}, "-c", path)
		waitListening(t, port)
		waitListening(t, adminPort)
		return cmd
	}
	cmd := start("from-env")
	drainURL := base + "/apps/web/targets/" + a.addr + "/drain"
	if code, _ := adminPost(t, drainURL, "wrong"); code != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d, want 401", code)
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed")
	}
	out, err := exec.Command(curl, "-fsS", "-X", "POST", "-H", "Authorization: Bearer from-env", drainURL).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"drain":true`) {
		t.Fatalf("curl drain: %v %s", err, out)
	}
	if got := answers(t, port, 6); got["b"] != 6 {
		t.Fatalf("after drain: %v", got)
	}
	cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 5*time.Second, "the reload", func() bool {
		return getStatus(t, base).Apps[0].Targets[0].Drain && answers(t, port, 4)["b"] == 4
	})

	cmd.Process.Signal(syscall.SIGTERM)
	waitExit(t, cmd, 10*time.Second, &syncBuffer{})
	start("") // no token at all: the config has none either
	if getStatus(t, base).Apps[0].Targets[0].Drain {
		t.Error("drain survived a restart; the config is the source of truth")
	}
	if code, _ := adminPost(t, drainURL, "from-env"); code != http.StatusForbidden {
		t.Errorf("POST without a configured token: %d, want 403", code)
	}
}
