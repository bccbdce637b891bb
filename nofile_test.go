//go:build linux

package main

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBinaryTightDescriptorLimit: under ulimit -n 64 or 32 a config with
// one listener starts, warns with the figures and serves; only listeners
// that cannot all be opened refuse the start, with the limit named
// (#10 item 4).
func TestBinaryTightDescriptorLimit(t *testing.T) {
	be := startBackend(t, echoHandler)
	tests := []struct {
		nofile, listeners int
		starts            bool
	}{
		{64, 1, true},
		{32, 1, true},
		{32, 40, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("ulimit -n %d, %d listeners", tt.nofile, tt.listeners), func(t *testing.T) {
			ports := distinctPorts(t, tt.listeners)
			path := writeConfig(t, "apps:\n"+appYAML("tight", ports, []string{be.addr}, ""))
			cmd, out := ulimitBinary(t, tt.nofile, "-c", path)
			defer func() {
				if t.Failed() {
					t.Logf("proxy log:\n%s", out)
				}
			}()
			if !tt.starts {
				done := make(chan error, 1)
				go func() { done <- cmd.Wait() }()
				var err error
				select {
				case err = <-done:
				case <-time.After(10 * time.Second):
					t.Fatal("the proxy did not exit")
				}
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 1 {
					t.Fatalf("exit %v, want status 1", err)
				}
				want := fmt.Sprintf("%d listeners need more open files than the limit of %d allows", tt.listeners, tt.nofile)
				if !strings.Contains(out.String(), want) {
					t.Errorf("log lacks %q", want)
				}
				return
			}
			waitListening(t, ports[0])
			for i := range 3 {
				c := heldEcho(t, ports[0], fmt.Sprint("hello ", i))
				c.Close()
			}
			want := fmt.Sprintf(`level=WARN msg="open files limit is low" limit=%d listeners=1 in_use=`, tt.nofile)
			if !strings.Contains(out.String(), want) || !strings.Contains(out.String(), " connections_fit=") {
				t.Errorf("log lacks %q with the figures", want)
			}
		})
	}
}

// TestExplainNoFile: a start that failed for want of descriptors (the
// listeners could not all be opened) names the limit; other errors pass
// unchanged.
func TestExplainNoFile(t *testing.T) {
	cfg := &config{Apps: []*appConfig{{Name: "a", Ports: []int{1, 2}}, {Name: "b", Ports: []int{2}, SNI: []string{"b.test"}}}}
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"EMFILE", fmt.Errorf("app %q: listen on :2: %w", "a", syscall.EMFILE), "2 listeners need more open files than the limit of "},
		{"other", fmt.Errorf("app %q: listen on :2: %w", "a", syscall.EADDRINUSE), `app "a": listen on :2: address already in use`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := explainNoFile(cfg, tt.err)
			if !strings.HasPrefix(got.Error(), tt.want) || !errors.Is(got, tt.err) {
				t.Errorf("got %q, want it to start with %q and wrap the error", got, tt.want)
			}
		})
	}
}

// distinctPorts returns n loopback ports that were free a moment ago,
// all different (freePort, called n times, may return one twice).
func distinctPorts(t *testing.T, n int) []int {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close() // all open at once: the kernel hands out distinct ports
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	return ports
}
