package main

import (
	"bytes"
	"errors"
	"io"
	"os"
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
