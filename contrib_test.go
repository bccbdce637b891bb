package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestKubernetesConfigMapIsValid: the config shipped in
// contrib/kubernetes.yaml's ConfigMap passes the proxy's own validation.
// (contrib/k8s-validate checks the Kubernetes objects themselves.)
func TestKubernetesConfigMapIsValid(t *testing.T) {
	data, err := os.ReadFile("contrib/kubernetes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var obj struct {
			Kind string            `yaml:"kind"`
			Data map[string]string `yaml:"data"`
		}
		err := dec.Decode(&obj)
		if errors.Is(err, io.EOF) {
			t.Fatal("contrib/kubernetes.yaml has no ConfigMap with a config.yaml")
		}
		if err != nil {
			t.Fatal(err)
		}
		if obj.Kind != "ConfigMap" || obj.Data["config.yaml"] == "" {
			continue
		}
		cfg, err := parseConfig("contrib/kubernetes.yaml (ConfigMap config.yaml)", []byte(obj.Data["config.yaml"]))
		if err != nil {
			t.Fatal(err)
		}
		if cfg.ShutdownDelay.String() != "5s" || cfg.Apps[0].MaxConnections == 0 {
			t.Errorf("shutdown_delay %v, max_connections %d: the manifest's comments say 5s and a limit", cfg.ShutdownDelay, cfg.Apps[0].MaxConnections)
		}
		return
	}
}

// TestSystemdUnitIsNotify: contrib/tcpproxy.service is a Type=notify
// unit that lets the upgraded process name itself the main one, reloads
// with SIGHUP to the main process, and no longer follows a PID file
// (#10 item 5; TestBinarySdNotify checks the messages).
func TestSystemdUnitIsNotify(t *testing.T) {
	data, err := os.ReadFile("contrib/tcpproxy.service")
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string][]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			keys[k] = append(keys[k], v)
		}
	}
	tests := []struct{ key, want string }{
		{"Type", "notify"},
		{"NotifyAccess", "all"},
		{"ExecReload", "/bin/kill -HUP $MAINPID"},
		{"KillSignal", "SIGTERM"},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			if !slices.Contains(keys[tt.key], tt.want) {
				t.Errorf("%s=%v, want %s", tt.key, keys[tt.key], tt.want)
			}
		})
	}
	if keys["PIDFile"] != nil {
		t.Errorf("PIDFile=%v: systemd follows MAINPID= now", keys["PIDFile"])
	}
	if !strings.Contains(string(data), "kill -s USR2") {
		t.Error("the unit does not say how to upgrade (kill -s USR2)")
	}
}
