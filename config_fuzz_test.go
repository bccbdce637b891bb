package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// FuzzParseConfig feeds the config loader any bytes: it must return an
// error or a valid config, never panic or hang. Seeds are the shipped
// config.yaml and the corpus in testdata/fuzz/FuzzParseConfig.
func FuzzParseConfig(f *testing.F) {
	if b, err := os.ReadFile("config.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("apps:\n- name: a\n  ports: [1]\n  targets: [a:1]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := parseConfig("fuzz.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if len(cfg.Apps) == 0 {
			t.Fatal("a config without apps was accepted")
		}
		for _, a := range cfg.Apps {
			if a.Name == "" || len(a.Ports) == 0 || len(a.Targets) == 0 {
				t.Fatalf("an invalid app was accepted: %+v", a)
			}
			for _, p := range a.Ports {
				if p < 1 || p > 65535 {
					t.Fatalf("port %d accepted", p)
				}
			}
		}
	})
}

// TestLoadConfigLarge loads a config with 10,000 apps and one with
// 60,000 ports: both load (the test's own timeout bounds the time), and
// starting the second where the open-files limit is lower fails with a
// message that says so.
func TestLoadConfigLarge(t *testing.T) {
	var apps strings.Builder
	apps.WriteString("apps:\n")
	for i := 0; i < 10000; i++ {
		fmt.Fprintf(&apps, "- name: app%d\n  ports: [%d]\n  targets: [\"10.0.%d.%d:80\"]\n", i, 1+i, i/256, i%256)
	}
	cfg, err := parseConfig("apps.yaml", []byte(apps.String()))
	if err != nil || len(cfg.Apps) != 10000 {
		t.Fatalf("10,000 apps: %v", err)
	}

	var ports strings.Builder
	ports.WriteString("apps:\n- name: wide\n  targets: [\"127.0.0.1:1\"]\n  ports:\n")
	for p := 1; p <= 60000; p++ {
		fmt.Fprintf(&ports, "  - %d\n", p)
	}
	path := writeConfig(t, ports.String())
	cfg, err = loadConfig(path)
	if err != nil || len(cfg.Apps[0].Ports) != 60000 {
		t.Fatalf("60,000 ports: %v", err)
	}
	cmd := exec.Command("bash", "-c", `ulimit -n 20000 && exec "$0" -c "$1"`, buildBinary(t), path)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "60000 listeners need more open files than the limit of 20000 allows") {
		t.Fatalf("starting 60,000 listeners under a 20,000 limit: %v\n%s", err, out)
	}
}
