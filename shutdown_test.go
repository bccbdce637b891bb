package main

import (
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestLoadConfigShutdownDelayAndAdminToken(t *testing.T) {
	app := "apps:\n" + appYAML("a", []int{1}, []string{"a:1"}, "")
	tests := []struct {
		name, yaml string
		delay      time.Duration
		token      string
		wantErr    string
	}{
		{"defaults", app, 0, "", ""},
		{"set", "shutdown_delay: 5s\nadmin_token: 0123abcd-._~+/==\n" + app, 5 * time.Second, "0123abcd-._~+/==", ""},
		{"bad delay", "shutdown_delay: soon\n" + app, 0, "", `test.yaml:1: shutdown_delay: "soon" is not a duration`},
		{"negative delay", "shutdown_delay: -1s\n" + app, 0, "", "test.yaml:1: shutdown_delay: -1s must not be negative"},
		{"empty token", "admin_token: \"\"\n" + app, 0, "", "test.yaml:1: admin_token: must be a non-empty bearer token"},
		{"token with a space", "admin_token: two words\n" + app, 0, "", "test.yaml:1: admin_token: must be a non-empty bearer token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseConfig("test.yaml", []byte(tt.yaml))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.ShutdownDelay != tt.delay || cfg.AdminToken != tt.token {
				t.Errorf("shutdown_delay %v admin_token %q, want %v %q", cfg.ShutdownDelay, cfg.AdminToken, tt.delay, tt.token)
			}
		})
	}
}

// readyz returns the status of GET /readyz, or 0 if the admin server
// does not answer.
func readyz(adminPort int) int {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", adminPort))
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestBinaryShutdownDelay: on SIGTERM the built binary answers 503 on
// /readyz at once while its listeners keep accepting and proxying for
// shutdown_delay; a second SIGTERM ends the wait and stops it; with a
// short delay it closes the listeners on its own when the delay is over.
func TestBinaryShutdownDelay(t *testing.T) {
	be := startBackend(t, echoHandler)
	start := func(t *testing.T, delay string) (*exec.Cmd, int, int, *syncBuffer) {
		port, admin := freePort(t), freePort(t)
		path := writeConfig(t, fmt.Sprintf("shutdown_delay: %s\nadmin: 127.0.0.1:%d\napps:\n", delay, admin)+appYAML("web", []int{port}, []string{be.addr}, ""))
		cmd, out := runBinary(t, "-c", path)
		waitListening(t, port)
		waitFor(t, 10*time.Second, "/readyz 200", func() bool { return readyz(admin) == http.StatusOK })
		return cmd, port, admin, out
	}
	echo := func(t *testing.T, port int) {
		c := dialProxy(t, port)
		fmt.Fprintln(c, "hello")
		if got := readLine(t, c); got != "hello" {
			t.Fatalf("echo through the proxy: %q", got)
		}
		c.Close()
	}

	t.Run("accepts while not ready, second signal stops", func(t *testing.T) {
		proc, port, admin, out := start(t, "10m")
		proc.Process.Signal(syscall.SIGTERM)
		waitFor(t, 5*time.Second, "/readyz 503 after SIGTERM", func() bool { return readyz(admin) == http.StatusServiceUnavailable })
		for i := 0; i < 3; i++ {
			echo(t, port) // new clients are still served
		}
		proc.Process.Signal(syscall.SIGTERM)
		waitExit(t, proc, 10*time.Second, out)
		for _, want := range []string{"draining: /readyz answers 503", "shutdown_delay=10m0s", "second signal"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("log lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("listeners close when the delay is over", func(t *testing.T) {
		proc, port, admin, out := start(t, "300ms")
		held := dialProxy(t, port) // opened before the signal: must finish
		fmt.Fprintln(held, "before")
		readLine(t, held)
		proc.Process.Signal(syscall.SIGTERM)
		waitFor(t, 5*time.Second, "/readyz 503 after SIGTERM", func() bool {
			s := readyz(admin)
			return s == http.StatusServiceUnavailable || s == 0
		})
		waitFor(t, 10*time.Second, "the listener to close after the delay", func() bool { return refuses(port) })
		fmt.Fprintln(held, "after")
		if got := readLine(t, held); got != "after" {
			t.Fatalf("connection opened before SIGTERM: %q", got)
		}
		held.Close()
		waitExit(t, proc, 10*time.Second, out)
		if !stoppedWithoutCut.MatchString(out.String()) { // the probes during the delay drain too
			t.Errorf("log does not report the drain:\n%s", out)
		}
	})
}
