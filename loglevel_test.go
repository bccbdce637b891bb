package main

import (
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBinaryLogLevel: -log-level debug shows the per-connection lines
// that access_log: false puts at debug, info (the default) hides them,
// warn and error hide the lines below them, and a bad level is a usage
// error (#10 item 7).
func TestBinaryLogLevel(t *testing.T) {
	be := startBackend(t, echoHandler)
	dead := deadAddr(t)
	tests := []struct {
		name      string
		args      []string
		want, not []string
	}{
		{"debug", []string{"-log-level", "debug"}, []string{"level=DEBUG msg=connection app=echo", "level=INFO msg=listening", `level=ERROR msg="all targets failed"`}, nil},
		{"info is the default", nil, []string{"level=INFO msg=listening", `level=ERROR msg="all targets failed"`}, []string{"level=DEBUG"}},
		{"warn", []string{"-log-level", "warn"}, []string{`level=ERROR msg="all targets failed"`, `level=WARN msg="target down"`}, []string{"level=DEBUG", "level=INFO"}},
		{"error", []string{"-log-level", "error"}, []string{`level=ERROR msg="all targets failed"`}, []string{"level=DEBUG", "level=INFO", "level=WARN"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port, deadPort := freePort(t), freePort(t)
			path := writeConfig(t, "apps:\n"+appYAML("echo", []int{port}, []string{be.addr}, "")+appYAML("dead", []int{deadPort}, []string{dead}, ""))
			cmd, out := runBinary(t, append([]string{"-c", path}, tt.args...)...)
			waitListening(t, port)
			heldEcho(t, port, "hi").Close()
			c := dialProxy(t, deadPort)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			c.Read(make([]byte, 1)) // EOF once every target failed
			cmd.Process.Signal(syscall.SIGTERM)
			waitExit(t, cmd, 10*time.Second, out)
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("log lacks %q", w)
				}
			}
			for _, n := range tt.not {
				if strings.Contains(out.String(), n) {
					t.Errorf("log has %q", n)
				}
			}
			if t.Failed() {
				t.Log(out)
			}
		})
	}
	t.Run("bad level", func(t *testing.T) {
		out, err := exec.Command(buildBinary(t), "-log-level", "verbose").CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
			t.Fatalf("exit %v, want 2", err)
		}
		if want := `-log-level "verbose": must be debug, info, warn or error`; !strings.Contains(string(out), want) {
			t.Errorf("output %q lacks %q", out, want)
		}
	})
	t.Run("json", func(t *testing.T) {
		port := freePort(t)
		path := writeConfig(t, "apps:\n"+appYAML("echo", []int{port}, []string{be.addr}, ""))
		cmd, out := runBinary(t, "-c", path, "-log-format", "json", "-log-level", "debug")
		waitListening(t, port)
		heldEcho(t, port, "hi").Close()
		cmd.Process.Signal(syscall.SIGTERM)
		waitExit(t, cmd, 10*time.Second, out)
		if want := fmt.Sprintf(`"level":"DEBUG","msg":"connection","app":"echo","port":%d`, port); !strings.Contains(out.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	})
}
