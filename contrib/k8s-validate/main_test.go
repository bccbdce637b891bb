package main

import (
	"os"
	"strings"
	"testing"
)

func shipped(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../kubernetes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestShippedManifestPasses(t *testing.T) {
	m, err := decode([]byte(shipped(t)))
	if err != nil {
		t.Fatal(err)
	}
	if p := m.check(); len(p) != 0 {
		t.Fatalf("problems:\n%s", strings.Join(p, "\n"))
	}
	if m.objects != 4 || !strings.Contains(m.summary, "max_connections 8000") {
		t.Errorf("%d objects, summary %q", m.objects, m.summary)
	}
}

// TestBrokenManifests: each edit of the shipped manifest is caught, with
// a message that says what is wrong.
func TestBrokenManifests(t *testing.T) {
	tests := []struct {
		name, old, new, want string
	}{
		{"unknown field", "readOnlyRootFilesystem: true", "readOnlyRootFilesystm: true", `unknown field "spec.template.spec.containers[0].securityContext.readOnlyRootFilesystm"`},
		{"wrong type", "replicas: 3", "replicas: three", "cannot unmarshal"},
		{"duplicate field", "replicas: 3", "replicas: 3\n  replicas: 4", `key "replicas" already set`},
		{"unknown kind", "kind: PodDisruptionBudget", "kind: PodDisruptionBudgets", `unexpected object policy/v1 "PodDisruptionBudgets"`},
		{"no seccomp profile", "seccompProfile: {type: RuntimeDefault}", "seccompProfile: {type: Unconfined}", `violates Pod Security "restricted": seccompProfile`},
		{"privilege escalation", "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", "allowPrivilegeEscalation != false"},
		{"capabilities kept", "capabilities: {drop: [ALL]}", "capabilities: {drop: [NET_RAW]}", "unrestricted capabilities"},
		{"root allowed", "runAsNonRoot: true", "runAsNonRoot: false", "runAsNonRoot != true"},
		{"token mounted", "automountServiceAccountToken: false", "automountServiceAccountToken: true", "automountServiceAccountToken must be false"},
		{"preStop sleep", "          volumeMounts:", "          lifecycle:\n            preStop: {exec: {command: [sleep, \"5\"]}}\n          volumeMounts:", "no lifecycle hooks"},
		{"no limits", `limits: {cpu: "2", memory: 256Mi}`, `limits: {memory: 256Mi}`, "no cpu limit"},
		{"no budget", "  selector:\n    matchLabels: {app: tcpproxy}\n---\napiVersion: v1\nkind: Service", "  selector:\n    matchLabels: {app: other}\n---\napiVersion: v1\nkind: Service", "no PodDisruptionBudget selects"},
		{"grace too short", "terminationGracePeriodSeconds: 35", "terminationGracePeriodSeconds: 25", "terminationGracePeriodSeconds 25s must be above shutdown_delay + shutdown_timeout = 25s"},
		{"no shutdown_delay", "    shutdown_delay: 5s\n", "", "shutdown_delay is 0s"},
		{"too many connections", "max_connections: 8000", "max_connections: 20000", "max_connections 20000: 15 MiB + 20000 x 19.1 KiB = 388.0 MiB, 152% of the 256 MiB memory limit: above 75%"},
		{"unlimited", "      max_connections: 8000\n", "", "app postgres: set max_connections"},
		{"service port", "targetPort: postgres", "targetPort: pg", `targetPort "pg" is not a port of the container`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := shipped(t)
			if !strings.Contains(text, tt.old) {
				t.Fatalf("the shipped manifest lacks %q", tt.old)
			}
			text = strings.Replace(text, tt.old, tt.new, 1)
			m, err := decode([]byte(text))
			var got string
			if err != nil {
				got = err.Error()
			} else {
				got = strings.Join(m.check(), "\n")
			}
			if !strings.Contains(got, tt.want) {
				t.Errorf("got:\n%s\nwant it to contain %q", got, tt.want)
			}
		})
	}
}
