//go:build linux

package main

import (
	"bytes"
	"log/slog"
	"math"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// checkConfig runs -check on text and returns the exit code and the
// combined output, with the config's path written as "PATH".
func checkConfig(t *testing.T, text string) (int, string) {
	t.Helper()
	path := writeConfig(t, text)
	var stdout, stderr bytes.Buffer
	code := run([]string{"-check", "-c", path}, &stdout, &stderr)
	return code, strings.ReplaceAll(stdout.String()+stderr.String(), path, "PATH")
}

// TestCheckCatchesWhatFailsAtStart checks that -check refuses, with file,
// line and field, each config of issue #17 that it used to accept and
// that then failed to start or misbehaved, and accepts their valid
// neighbours, with warnings where the config is valid but surprising.
func TestCheckCatchesWhatFailsAtStart(t *testing.T) {
	app := func(extra string) string {
		return "apps:\n- name: a\n  ports: [9090]\n  targets: [\"127.0.0.1:1\"]\n" + extra
	}
	tests := []struct {
		name string
		yaml string
		code int
		want []string // each must appear in the output
	}{
		{"admin on an app's listener", "admin: 127.0.0.1:9090\n" + app("  listen: 127.0.0.1\n"), 1,
			[]string{`PATH:1: admin "127.0.0.1:9090": the same socket as app "a"'s listen address 127.0.0.1:9090 (line 4)`}},
		{"admin within an app's wildcard", "admin: \"[::1]:9090\"\n" + app(""), 1,
			[]string{`PATH:1: admin "[::1]:9090": the same socket as app "a"'s listen address :9090 (line 4)`}},
		{"admin beside an app of the other family", "admin: 127.0.0.1:9090\n" + app("  listen: \"::1\"\n"), 0,
			[]string{"config OK: 1 apps, 1 listeners, 1 targets, 1 routes"}},
		{"listen 127.1", app("  listen: 127.1\n"), 1,
			[]string{`PATH:5: app "a": listen "127.1": not an IP address as written (IPv4 is four decimal numbers without leading zeros, as in 127.0.0.1) nor a host name`}},
		{"listen 0177.0.0.1", app("  listen: 0177.0.0.1\n"), 1,
			[]string{`PATH:5: app "a": listen "0177.0.0.1": not an IP address as written`}},
		{"target port with a sign or leading zeros", "apps:\n- name: a\n  ports: [1]\n  targets:\n  - \"127.0.0.1:+21101\"\n  - \"127.0.0.1:021101\"\n  - \"127.0.0.1:21101\"\n", 1,
			[]string{`PATH:5: app "a": target "127.0.0.1:+21101": port "+21101" is not a plain decimal number`,
				`PATH:6: app "a": target "127.0.0.1:021101": port "021101" is not a plain decimal number`}},
		{"target written twice differently", "apps:\n- name: a\n  ports: [1]\n  targets:\n  - \"LocalHost:1\"\n  - \"localhost.:1\"\n  - \"[::1]:2\"\n  - \"[0:0::1]:2\"\n  - \"127.0.0.1:3\"\n  - \"[::ffff:127.0.0.1]:3\"\n", 1,
			[]string{`PATH:6: app "a": target "localhost.:1" listed twice (first at line 5`, `PATH:8: app "a": target "[0:0::1]:2" listed twice (first at line 7`,
				`PATH:10: app "a": target "[::ffff:127.0.0.1]:3" listed twice (first at line 9`}},
		{"target host 127.1", "apps:\n- name: a\n  ports: [1]\n  targets: [\"127.1:80\"]\n", 1,
			[]string{`PATH:4: app "a": target "127.1:80": host "127.1" is not an IP address as written`}},
		{"health_check interval 1ns", app("  health_check: {interval: 1ns}\n"), 1,
			[]string{`PATH:5: app "a": health_check.interval: 1ns is below the minimum of 100ms`}},
		{"health_check timeout over interval", app("  health_check:\n    interval: 1s\n    timeout: 2s\n"), 1,
			[]string{`PATH:7: app "a": health_check.timeout: 2s is longer than health_check.interval (1s)`}},
		{"health_check short interval, timeout left out", app("  health_check: {interval: 200ms}\n"), 0,
			[]string{"config OK"}},
		{"CIDR with host bits", app("  allow: [10.1.2.3/8, \"2001:db8::1/32\", 10.0.0.0/8]\n"), 0,
			[]string{`PATH:5: warning: app "a": allow "10.1.2.3/8" has host bits set: taken as 10.0.0.0/8`,
				`PATH:5: warning: app "a": allow "2001:db8::1/32" has host bits set: taken as 2001:db8::/32`, "config OK"}},
		{"listen [::1", app("  listen: \"[::1\"\n"), 1,
			[]string{`PATH:5: app "a": listen "[::1": unbalanced brackets`}},
		{"listen zoned IPv6", app("  listen: \"fe80::1%eth0\"\n"), 0,
			[]string{"config OK"}},
		{"listen zoned IPv6 in brackets", app("  listen: \"[fe80::1%2]\"\n"), 0,
			[]string{"config OK"}},
		{"listen bad zone", app("  listen: \"fe80::1%eth0/1\"\n"), 1,
			[]string{`PATH:5: app "a": listen "fe80::1%eth0/1": zone "eth0/1" is not an interface name or index`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := checkConfig(t, tt.yaml)
			if code != tt.code {
				t.Errorf("-check exit %d, want %d:\n%s", code, tt.code, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestCheckBinaryPrintsWarnings runs the built binary's -check on a
// valid config with a warning: exit 0, the warning on stderr, the
// summary on stdout.
func TestCheckBinaryPrintsWarnings(t *testing.T) {
	path := writeConfig(t, "apps:\n- name: a\n  ports: [1]\n  targets: [\"127.0.0.1:1\"]\n  deny: [192.0.2.7/24]\n")
	cmd := exec.Command(buildBinary(t), "-check", "-c", path)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("-check: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	if want := path + `:5: warning: app "a": deny "192.0.2.7/24" has host bits set: taken as 192.0.2.0/24` + "\n"; stderr.String() != want {
		t.Errorf("stderr = %q, want %q", stderr.String(), want)
	}
	if !strings.HasPrefix(stdout.String(), "config OK") {
		t.Errorf("stdout = %q", stdout.String())
	}
}

// TestNoFileLimitHugeMaxConnections checks that a max_connections too
// large to add up still warns that the open-files limit is too low,
// instead of overflowing into a small number that passes.
func TestNoFileLimitHugeMaxConnections(t *testing.T) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Max == math.MaxUint64 {
		t.Skip("no finite open-files limit to check against")
	}
	for _, conns := range [][]int{{math.MaxInt64}, {math.MaxInt64 / 2, math.MaxInt64/2 + 2}, {math.MaxInt64, math.MaxInt64}} {
		cfg := &config{}
		for _, n := range conns {
			cfg.Apps = append(cfg.Apps, &appConfig{Name: "a", Ports: []int{1}, MaxConnections: n})
		}
		var buf syncBuffer
		log := slog.New(slog.NewTextHandler(&buf, nil))
		if err := checkNoFileLimit(cfg, log, false); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(buf.String(), `msg="open files limit is below what max_connections implies"`) {
			t.Errorf("max_connections %v: no warning, log:\n%s", conns, buf.String())
		}
	}
}
