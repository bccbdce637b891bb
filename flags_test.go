package main

import (
	"errors"
	"flag"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestParseFlagsEnvironment(t *testing.T) {
	env := func(vars map[string]string) func(string) string {
		return func(k string) string { return vars[k] }
	}
	tests := []struct {
		name      string
		args      []string
		env       map[string]string
		wantPath  string
		wantCheck bool
		wantToken string
	}{
		{"default", nil, nil, "config.yaml", false, ""},
		{"TCPPROXY_CONFIG is the default", nil, map[string]string{envConfig: "/etc/tcpproxy/config.yaml"}, "/etc/tcpproxy/config.yaml", false, ""},
		{"-c wins over TCPPROXY_CONFIG", []string{"-c", "mine.yaml"}, map[string]string{envConfig: "/etc/x.yaml"}, "mine.yaml", false, ""},
		{"--config wins over TCPPROXY_CONFIG", []string{"--config", "mine.yaml"}, map[string]string{envConfig: "/etc/x.yaml"}, "mine.yaml", false, ""},
		{"-t is -check", []string{"-t"}, nil, "config.yaml", true, ""},
		{"-check", []string{"-check"}, nil, "config.yaml", true, ""},
		{"TCPPROXY_ADMIN_TOKEN", nil, map[string]string{envAdminToken: "s3cret"}, "config.yaml", false, "s3cret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseFlags(tt.args, env(tt.env), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if o.configPath != tt.wantPath || o.check != tt.wantCheck || o.adminToken != tt.wantToken {
				t.Errorf("config %q check %v token %q, want %q %v %q", o.configPath, o.check, o.adminToken, tt.wantPath, tt.wantCheck, tt.wantToken)
			}
		})
	}
	var help strings.Builder
	if _, err := parseFlags([]string{"-h"}, env(nil), &help); !errors.Is(err, flag.ErrHelp) || !strings.Contains(help.String(), "Usage:") {
		t.Errorf("-h: err %v, usage %q", err, help.String())
	}
}

// TestBinaryHelp: -h prints the synopsis, every flag, the environment
// and the signals on stdout, and exits 0.
func TestBinaryHelp(t *testing.T) {
	out, err := exec.Command(buildBinary(t), "-h").Output()
	if err != nil {
		t.Fatalf("-h: %v", err)
	}
	want := []string{"Usage:", "TCPPROXY_CONFIG", "TCPPROXY_ADMIN_TOKEN", "SIGHUP", "reload", "SIGUSR2", "upgrade", "SIGTERM, SIGINT", "drain", "shutdown_delay"}
	newFlagSet(&options{}, os.Getenv).VisitAll(func(f *flag.Flag) { want = append(want, "  -"+f.Name) })
	for _, w := range want {
		if !strings.Contains(string(out), w) {
			t.Errorf("-h output lacks %q", w)
		}
	}
	if t.Failed() {
		t.Log(string(out))
	}
}

// TestBinaryConfigFromEnvironment: TCPPROXY_CONFIG names the config,
// and -t checks it like -check.
func TestBinaryConfigFromEnvironment(t *testing.T) {
	good := writeConfig(t, "apps:\n"+appYAML("a", []int{1001}, []string{"127.0.0.1:1"}, ""))
	bad := writeConfig(t, "apps:\n- name: a\n  ports: [0]\n")
	tests := []struct {
		name, env string
		args      []string
		wantCode  int
		want      string
	}{
		{"from the environment", good, []string{"-t"}, 0, "config OK: 1 apps, 1 listeners, 1 targets"},
		{"bad from the environment", bad, []string{"-t"}, 1, "port 0 outside 1..65535"},
		{"the flag wins", bad, []string{"-t", "-c", good}, 0, "config OK"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(buildBinary(t), tt.args...)
			cmd.Env = append(os.Environ(), envConfig+"="+tt.env)
			out, err := cmd.CombinedOutput()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tt.wantCode || !strings.Contains(string(out), tt.want) {
				t.Errorf("exit %d, want %d; output lacks %q?\n%s", code, tt.wantCode, tt.want, out)
			}
		})
	}
}

// TestREADMEListsEveryFlag keeps README's flag table in step with the
// flags.
func TestREADMEListsEveryFlag(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	newFlagSet(&options{}, os.Getenv).VisitAll(func(f *flag.Flag) {
		if !strings.Contains(string(readme), "| `-"+f.Name) && !strings.Contains(string(readme), "`, `-"+f.Name) {
			t.Errorf("README's flag table lacks -%s", f.Name)
		}
	})
}
