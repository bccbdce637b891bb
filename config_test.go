package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadConfigSeedFormat(t *testing.T) {
	// Exactly as users of the original program write it.
	path := writeConfig(t, `apps:
- name: five-thousand
  ports: [5001, 5200]
  targets:
  - 127.0.0.1:9001
  - 127.0.0.1:9002
`)
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Apps) != 1 {
		t.Fatalf("apps = %d, want 1", len(cfg.Apps))
	}
	a := cfg.Apps[0]
	if a.Name != "five-thousand" || len(a.Ports) != 2 || a.Ports[0] != 5001 || a.Ports[1] != 5200 {
		t.Errorf("app = %+v", a)
	}
	if len(a.Targets) != 2 || a.Targets[0] != (targetConfig{Address: "127.0.0.1:9001", Weight: 1}) {
		t.Errorf("targets = %+v", a.Targets)
	}
	if a.DialTimeout != 3*time.Second || cfg.ShutdownTimeout != 10*time.Second || a.Listen != "" || a.Balance != "random" {
		t.Errorf("defaults not applied: dial_timeout %v shutdown_timeout %v listen %q balance %q", a.DialTimeout, cfg.ShutdownTimeout, a.Listen, a.Balance)
	}
	if got := a.listenAddrs(); got[0] != ":5001" || got[1] != ":5200" {
		t.Errorf("listenAddrs = %v", got)
	}
	if got, want := cfg.summary(), "config OK: 1 apps, 2 listeners, 2 targets, 2 routes"; got != want {
		t.Errorf("summary = %q, want %q", got, want)
	}
}

func TestLoadConfigDefaultsAndOverrides(t *testing.T) {
	path := writeConfig(t, `shutdown_timeout: 2s
defaults:
  listen: 127.0.0.1
  dial_timeout: 500ms
  balance: least_conn
  max_fails: 3
  fail_timeout: 30s
  health_check: {interval: 2s}
  max_connections: 10
  max_attempts: 2
  allow: [10.0.0.0/8, "::1", 192.168.1.7]
  deny: ["2001:db8::/32"]
apps:
- name: a
  ports: [7001]
  targets: [127.0.0.1:1]
- name: b
  listen: "::1"
  dial_timeout: 1s
  balance: hash
  max_connections: 0
  allow: []
  ports: [7002]
  targets:
  - address: 127.0.0.1:2
    weight: 3
  - {address: "[::1]:3", backup: true, weight: 0}
`)
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	a, b := cfg.Apps[0], cfg.Apps[1]
	if cfg.ShutdownTimeout != 2*time.Second {
		t.Errorf("shutdown_timeout = %v", cfg.ShutdownTimeout)
	}
	if a.Listen != "127.0.0.1" || a.DialTimeout != 500*time.Millisecond || a.Balance != "least_conn" || a.MaxFails != 3 ||
		a.FailTimeout != 30*time.Second || a.MaxConnections != 10 || a.MaxAttempts != 2 {
		t.Errorf("app a did not take the defaults: %+v", a)
	}
	if a.HealthCheck == nil || *a.HealthCheck != (healthCheckConfig{Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3}) {
		t.Errorf("health_check = %+v", a.HealthCheck)
	}
	wantAllow := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("192.168.1.7/32")}
	if len(a.Allow) != 3 || a.Allow[0] != wantAllow[0] || a.Allow[1] != wantAllow[1] || a.Allow[2] != wantAllow[2] {
		t.Errorf("allow = %v", a.Allow)
	}
	if b.Listen != "::1" || b.DialTimeout != time.Second || b.Balance != "hash" || b.MaxConnections != 0 || len(b.Allow) != 0 || len(b.Deny) != 1 {
		t.Errorf("app b did not override: %+v", b)
	}
	if b.Targets[0] != (targetConfig{Address: "127.0.0.1:2", Weight: 3}) || b.Targets[1] != (targetConfig{Address: "[::1]:3", Weight: 0, Backup: true}) {
		t.Errorf("targets = %+v", b.Targets)
	}
	if got := b.listenAddrs()[0]; got != "[::1]:7002" {
		t.Errorf("listen addr = %q", got)
	}
}

func TestLoadConfigOperationsKeys(t *testing.T) {
	path := writeConfig(t, `admin: 0.0.0.0:9090
admin_public: true
reuse_port: true
defaults:
  access_log: true
  keepalive: -1s
apps:
- name: a
  ports: [1]
  targets: [a:1]
  proxy_protocol: 2
  accept_proxy_protocol: true
  proxy_protocol_from: [10.0.0.0/8]
  idle_timeout: 1h
  keepalive: 30s
- name: b
  ports: [2]
  targets: [a:1]
`)
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	a, b := cfg.Apps[0], cfg.Apps[1]
	if cfg.Admin != "0.0.0.0:9090" || !cfg.AdminPublic || !cfg.ReusePort {
		t.Errorf("top level = %+v", cfg)
	}
	if !a.AccessLog || a.ProxyProtocol != 2 || !a.AcceptProxyProtocol || a.IdleTimeout != time.Hour || a.KeepAlive != 30*time.Second {
		t.Errorf("app a = %+v", a)
	}
	if !b.AccessLog || b.ProxyProtocol != 0 || b.AcceptProxyProtocol || b.IdleTimeout != 0 || b.KeepAlive != -time.Second {
		t.Errorf("app b = %+v", b)
	}
	for _, ok := range []string{"127.0.0.1:9090", "[::1]:9090", "localhost:9090"} {
		if err := checkAdminAddr(ok, false); err != nil {
			t.Errorf("admin %s: %v", ok, err)
		}
	}
}

func TestLoadConfigShippedExample(t *testing.T) {
	cfg, err := loadConfig("config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Apps) < 2 {
		t.Fatalf("the shipped config.yaml should show several apps, has %d", len(cfg.Apps))
	}
}

// TestLoadConfigErrors checks that every kind of problem is reported
// with the file, the line it stands on and the app.
func TestLoadConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // substrings, each must appear; ":N:" pins the line
	}{
		{"no apps", "shutdown_timeout: 1s\n", []string{":1: no apps"}},
		{"empty apps", "apps: []\n", []string{":1: no apps"}},
		{"missing name", "apps:\n- ports: [1]\n  targets: [a:1]\n", []string{":2:", "app #1: missing name"}},
		{"duplicate name", "apps:\n- name: a\n  ports: [1]\n  targets: [a:1]\n- name: a\n  ports: [2]\n  targets: [a:1]\n",
			[]string{`:5: app "a": duplicate app name (first used at line 2)`}},
		{"no ports", "apps:\n- name: a\n  targets: [a:1]\n", []string{`:2: app "a": no ports`}},
		{"empty ports", "apps:\n- name: a\n  ports: []\n  targets: [a:1]\n", []string{`:3: app "a": no ports`}},
		{"port out of range", "apps:\n- name: a\n  ports:\n  - 80\n  - 70000\n  - 0\n  targets: [a:1]\n",
			[]string{`:5: app "a": port 70000 outside 1..65535`, `:6: app "a": port 0 outside 1..65535`}},
		{"port not a number", "apps:\n- name: a\n  ports: [http]\n  targets: [a:1]\n", []string{`:3: "http" must be an integer`}},
		{"same port twice in one app", "apps:\n- name: a\n  ports: [80, 80]\n  targets: [a:1]\n",
			[]string{`:3: app "a": listen address :80 is already used at line 3 (within the app)`}},
		{"same port across apps", "apps:\n- name: a\n  ports: [80]\n  targets: [a:1]\n- name: b\n  ports:\n  - 80\n  targets: [a:1]\n",
			[]string{`:7: app "b": listen address :80 is already used at line 3 (also used by app "a")`}},
		{"wildcard and specific host clash", "apps:\n- name: a\n  ports: [80]\n  targets: [a:1]\n- name: b\n  listen: 0.0.0.0\n  ports: [80]\n  targets: [a:1]\n",
			[]string{`:7: app "b": listen address 0.0.0.0:80 is already used at line 3`}},
		{"different hosts do not clash", "apps:\n- name: a\n  listen: 127.0.0.1\n  ports: [80]\n  targets: [a:1]\n- name: b\n  listen: 127.0.0.2\n  ports: [80]\n  targets: [a:1]\n- name: c\n  ports: [x]\n  targets: [a:1]\n",
			[]string{`:11: "x" must be an integer`}},
		{"no targets", "apps:\n- name: a\n  ports: [1]\n", []string{`:2: app "a": no targets`}},
		{"bad targets", "apps:\n- name: a\n  ports: [1]\n  targets:\n  - nohost\n  - host:99999\n  - :80\n  - host:http\n",
			[]string{`:5: app "a": target "nohost": not "host:port"`, `:6: app "a": target "host:99999": port "99999" outside 1..65535`,
				`:7: app "a": target ":80": missing host`, `:8: app "a": target "host:http"`}},
		{"bad durations", "shutdown_timeout: soon\ndefaults:\n  dial_timeout: 3\napps:\n- name: a\n  ports: [1]\n  targets: [a:1]\n  fail_timeout: -1s\n",
			[]string{`:1: shutdown_timeout: "soon" is not a duration`, `:3: app "a": dial_timeout: "3" is not a duration`, `:8: app "a": fail_timeout: -1s must be greater than zero`}},
		{"unknown keys", "apps:\n- name: a\n  ports: [1]\n  tagets: [a:1]\nlisten: x\n",
			[]string{`:4: unknown key "tagets" in app`, `:5: unknown key "listen" in top level`, `:2: app "a": no targets`}},
		{"invalid yaml", "apps:\n- name: a\n   ports: [1\n", []string{"invalid YAML", "line 3"}},
		{"not a list", "apps: web\n", []string{`:1:`, "must be a list of apps"}},
		{"balance", "apps:\n- name: a\n  ports: [1]\n  targets: [a:1]\n  balance: fastest\n",
			[]string{`:5: app "a": balance "fastest": must be one of random, round_robin, least_conn, hash`}},
		{"negative numbers", "defaults:\n  max_fails: -1\n  max_connections: -2\n  max_attempts: -3\napps:\n- name: a\n  ports: [1]\n  targets: [a:1]\n",
			[]string{`:2: app "a": max_fails -1`, `:3: app "a": max_connections -2`, `:4: app "a": max_attempts -3`}},
		{"health check", "apps:\n- name: a\n  ports: [1]\n  targets: [a:1]\n  health_check:\n    interval: 0s\n    timeout: x\n    rise: 0\n    fall: -1\n    every: 1s\n",
			[]string{`:6: app "a": health_check.interval: 0s must be greater than zero`, `:7: app "a": health_check.timeout: "x" is not a duration`,
				`:8: app "a": health_check.rise 0`, `:9: app "a": health_check.fall -1`, `:10: unknown key "every" in health_check`}},
		{"allow and deny", "apps:\n- name: a\n  ports: [1]\n  targets: [a:1]\n  allow:\n  - 10.0.0.0/33\n  - 10.1.0.0/16\n  deny: [not-an-ip]\n",
			[]string{`:6: app "a": allow: "10.0.0.0/33" is not an IP address or CIDR`, `:8: app "a": deny: "not-an-ip" is not an IP address or CIDR`}},
		{"duplicate target", "apps:\n- name: a\n  ports: [1]\n  targets:\n  - a:1\n  - {address: a:1}\n",
			[]string{`:6: app "a": target "a:1" listed twice (first at line 5`}},
		{"admin without host", "admin: \":9090\"\napps:\n- name: a\n  ports: [1]\n  targets: [a:1]\n", []string{`:1: admin ":9090": no host means every interface`}},
		{"admin not loopback", "admin: 0.0.0.0:9090\napps:\n- name: a\n  ports: [1]\n  targets: [a:1]\n", []string{`:1: admin "0.0.0.0:9090": not a loopback address: set admin_public: true`}},
		{"admin bad port", "admin: 127.0.0.1:http\napps:\n- name: a\n  ports: [1]\n  targets: [a:1]\n", []string{`:1: admin "127.0.0.1:http": port "http" is not a plain decimal number`}},
		{"operations keys", "defaults:\n  proxy_protocol: 3\n  keepalive: often\n  idle_timeout: -1s\n  access_log: yes please\n  accept_proxy_protocol: 1\napps:\n- name: a\n  ports: [1]\n  targets: [a:1]\n",
			[]string{`:2: app "a": proxy_protocol 3: must be 1, 2 or 0 (none)`, `:3: app "a": keepalive: "often" is not a duration`, `:4: app "a": idle_timeout: -1s must not be negative`,
				`:5: "yes please" must be true or false`, `:6: "1" must be true or false`}},
		{"target mapping", "apps:\n- name: a\n  ports: [1]\n  targets:\n  - address: a:1\n    weight: 1001\n  - address: a:2\n    wieght: 2\n  - address: a:3\n    weight: heavy\n  - [a:4]\n",
			[]string{`:6: app "a": target "a:1": weight 1001 outside 0..1000`, `:8: unknown key "wieght" in target`, `:10: "heavy" must be an integer`, `:11: a target is a "host:port" string`}},
		{"bad names", "apps:\n- name: a\n  ports: [443]\n  targets: [a:1]\n  sni:\n  - 10.0.0.1\n  - a..b\n  - " + strings.Repeat("x", 64) + ".test\n  - a.*.test\n  - \"*\"\n  - ok.test\n  - OK.test.\n  http_host: [\"[::1]\", \"" + strings.Repeat("abcdefghi.", 26) + "\"]\n",
			[]string{`:6: app "a": sni "10.0.0.1": an IP address`, `:7: app "a": sni "a..b": empty label`, `:8: app "a": sni "xxxx`, `longer than 63 characters`,
				`:9: app "a": sni "a.*.test": '*' only stands as the whole leftmost label`, `:10: app "a": sni "*": '*'`,
				`:12: app "a": sni "OK.test." listed twice (first at line 11)`, `:13: app "a": http_host "[::1]": an IP address`, `longer than 253 characters`}},
		{"name twice on one address", "apps:\n- name: a\n  ports: [443]\n  targets: [a:1]\n  sni: [a.test]\n- name: b\n  ports: [443, 444]\n  targets: [a:1]\n  sni: [b.test, A.Test]\n",
			[]string{`:9: app "b": sni a.test is already routed to app "a" on :443 (line 5)`}},
		{"two defaults on a shared address", "apps:\n- name: a\n  ports: [443]\n  targets: [a:1]\n- name: b\n  ports: [443]\n  targets: [a:1]\n- name: c\n  ports: [443]\n  targets: [a:1]\n  sni: [c.test]\n",
			[]string{`:6: app "b": listen address :443 is already used at line 3 (also used by app "a")`}},
		{"named app on another socket of the port", "apps:\n- name: a\n  ports: [443]\n  targets: [a:1]\n- name: b\n  listen: 127.0.0.1\n  ports: [443]\n  targets: [a:1]\n  sni: [b.test]\n",
			[]string{`:7: app "b": listen address 127.0.0.1:443 is already used at line 3`}},
		{"shared address settings differ", "apps:\n- name: a\n  ports: [443]\n  targets: [a:1]\n  sni: [a.test]\n- name: b\n  ports: [443]\n  targets: [a:1]\n  accept_proxy_protocol: true\n  preread_timeout: 1s\n",
			[]string{`:6: app "b": accept_proxy_protocol differs from app "a"`, `:6: app "b": preread_timeout 1s differs from app "a"'s 5s`}},
		{"one socket spelled two ways (localhost from the hosts file)", "apps:\n- name: a\n  listen: localhost\n  ports: [80]\n  targets: [a:1]\n- name: b\n  listen: 127.0.0.1\n  ports: [80]\n  targets: [a:1]\n",
			[]string{`:8: app "b": listen address 127.0.0.1:80 is already used at line 4 (also used by app "a")`}},
		{"duplicate key", "apps:\n- name: a\n  ports: [1]\n  targets: [a:1]\n  ports: [2]\n",
			[]string{`:5: mapping key "ports" already defined at line 3`}},
		{"preread_timeout", "defaults:\n  preread_timeout: 0s\napps:\n- name: a\n  ports: [1]\n  targets: [a:1]\n", []string{`:2: app "a": preread_timeout: 0s must be greater than zero`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, tt.yaml)
			_, err := loadConfig(path)
			if err == nil {
				t.Fatalf("loadConfig succeeded, want errors %q", tt.want)
			}
			msg := err.Error()
			for _, w := range tt.want {
				if strings.HasPrefix(w, ":") {
					w = path + w
				}
				if !strings.Contains(msg, w) {
					t.Errorf("error does not contain %q; got:\n%s", w, msg)
				}
			}
			for _, line := range strings.Split(msg, "\n") {
				if !strings.HasPrefix(line, path) {
					t.Errorf("error line does not name the file: %q", line)
				}
			}
		})
	}
}

// TestLoadConfigDuplicateKeyOnly: a duplicate key is reported alone, not
// with the "no apps" the half-decoded model would suggest.
func TestLoadConfigDuplicateKeyOnly(t *testing.T) {
	_, err := loadConfig(writeConfig(t, "apps:\n- name: a\n  ports: [1]\n  targets: [a:1]\napps: []\n"))
	if err == nil || strings.Count(err.Error(), "\n") != 0 || !strings.Contains(err.Error(), `mapping key "apps" already defined at line 1`) {
		t.Fatalf("err = %v, want the duplicate key alone", err)
	}
}

func TestLoadConfigFileProblems(t *testing.T) {
	dir := t.TempDir()
	binary := filepath.Join(dir, "binary.yaml")
	if err := os.WriteFile(binary, []byte{0x7f, 'E', 'L', 'F', 0, 1, 2}, 0o644); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty.yaml")
	if err := os.WriteFile(empty, []byte("  \n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "nope.yaml"), "config file not found"},
		{"directory", dir, "is a directory"},
		{"empty", empty, "config file is empty"},
		{"binary", binary, "not a YAML text file"},
		// Reading it fails even for root, unlike a file with mode 000.
		{"unreadable", "/proc/self/mem", "cannot read config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadConfig(tt.path)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), tt.path) {
				t.Fatalf("err = %v, want %q prefixed by the path", err, tt.want)
			}
		})
	}
}
