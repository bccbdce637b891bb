package main

import (
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	psaapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
	"sigs.k8s.io/yaml"
)

// Memory per connection and at rest, measured (README.md, "Reliability"):
// the soak test's 2,000 streaming connections took the proxy's RSS from
// 14.6 to 52.0 MiB, 19.1 KiB each; an idle one costs 16.3 KiB.
const (
	baseMiB        = 15.0 // RSS at rest, rounded up from 14.6 MiB
	kibPerConn     = 19.1 // RSS per busy relayed connection
	maxLimitShare  = 0.75 // of the memory limit; the rest is GC headroom
	defaultTimeout = 10 * time.Second
)

// proxyConfig is what the checks need of tcpproxy's config.yaml; the
// proxy's own tests validate the whole file.
type proxyConfig struct {
	ShutdownDelay   string `json:"shutdown_delay"`
	ShutdownTimeout string `json:"shutdown_timeout"`
	Defaults        struct {
		MaxConnections *int `json:"max_connections"`
	} `json:"defaults"`
	Apps []struct {
		Name           string `json:"name"`
		MaxConnections *int   `json:"max_connections"`
	} `json:"apps"`
}

// report collects problems.
type report struct {
	problems []string
	sizing   string // the memory arithmetic, for the OK line
}

func (r *report) addf(format string, args ...any) {
	r.problems = append(r.problems, fmt.Sprintf(format, args...))
}

// check runs every check on m and returns what is wrong.
func (m *manifest) check() []string {
	r := &report{}
	if len(m.deployments) != 1 {
		r.addf("want exactly one Deployment, found %d", len(m.deployments))
		return r.problems
	}
	d := m.deployments[0]
	r.restricted(d)
	r.podRules(&d.Spec.Template.Spec)
	r.disruptionBudget(m, d)
	r.servicesMatch(m, d)
	if cfg, err := m.proxyConfig(d); err != nil {
		r.addf("%v", err)
	} else {
		r.gracePeriod(&d.Spec.Template.Spec, cfg)
		r.memory(&d.Spec.Template.Spec, cfg)
	}
	m.summary = r.sizing
	return r.problems
}

// restricted evaluates the pod template with the Pod Security admission
// controller's checks at the "restricted" level, latest version.
func (r *report) restricted(d *appsv1.Deployment) {
	ev, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		r.addf("pod security evaluator: %v", err)
		return
	}
	lv := psaapi.LevelVersion{Level: psaapi.LevelRestricted, Version: psaapi.LatestVersion()}
	res := policy.AggregateCheckResults(ev.EvaluatePod(lv, &d.Spec.Template.ObjectMeta, &d.Spec.Template.Spec))
	if !res.Allowed {
		r.addf("Deployment %s violates Pod Security %q: %s", d.Name, "restricted", res.ForbiddenDetail())
	}
}

// podRules: no service account token, no exec hook or probe (the image
// has nothing to exec but /tcpproxy), and requests and limits for CPU
// and memory on every container.
func (r *report) podRules(spec *corev1.PodSpec) {
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		r.addf("automountServiceAccountToken must be false: the proxy never talks to the API server")
	}
	for _, c := range spec.Containers {
		if l := c.Lifecycle; l != nil && (l.PreStop != nil || l.PostStart != nil) {
			r.addf("container %s: no lifecycle hooks: the image has no shell, and the drain on SIGTERM is the proxy's own (shutdown_delay)", c.Name)
		}
		for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
			if p != nil && p.Exec != nil {
				r.addf("container %s: exec probe %v: the image has nothing to run; use httpGet on /readyz or /healthz", c.Name, p.Exec.Command)
			}
		}
		for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			if _, ok := c.Resources.Requests[res]; !ok {
				r.addf("container %s: no %s request", c.Name, res)
			}
			if _, ok := c.Resources.Limits[res]; !ok {
				r.addf("container %s: no %s limit", c.Name, res)
			}
		}
	}
}

// disruptionBudget: a PodDisruptionBudget selects the Deployment's pods.
func (r *report) disruptionBudget(m *manifest, d *appsv1.Deployment) {
	for _, pdb := range m.pdbs {
		if selects(pdb.Spec.Selector, d.Spec.Template.Labels) {
			return
		}
	}
	r.addf("no PodDisruptionBudget selects the pods of Deployment %s", d.Name)
}

// servicesMatch: every Service selects the pods and targets named ports
// that the container declares.
func (r *report) servicesMatch(m *manifest, d *appsv1.Deployment) {
	ports := map[string]bool{}
	for _, c := range d.Spec.Template.Spec.Containers {
		for _, p := range c.Ports {
			ports[p.Name] = true
		}
	}
	for _, s := range m.services {
		if !labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) || len(s.Spec.Selector) == 0 {
			r.addf("Service %s does not select the pods of Deployment %s", s.Name, d.Name)
		}
		for _, p := range s.Spec.Ports {
			if name := p.TargetPort.StrVal; name != "" && !ports[name] {
				r.addf("Service %s: targetPort %q is not a port of the container", s.Name, name)
			}
		}
	}
}

// selects reports whether sel matches a pod with labels set.
func selects(sel *metav1.LabelSelector, set map[string]string) bool {
	s, err := metav1.LabelSelectorAsSelector(sel)
	return err == nil && sel != nil && !s.Empty() && s.Matches(labels.Set(set))
}

// proxyConfig reads tcpproxy's config.yaml from the ConfigMap that the
// Deployment mounts.
func (m *manifest) proxyConfig(d *appsv1.Deployment) (*proxyConfig, error) {
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.ConfigMap == nil {
			continue
		}
		for _, cm := range m.configMaps {
			if cm.Name != v.ConfigMap.Name {
				continue
			}
			var cfg proxyConfig
			if err := yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &cfg); err != nil {
				return nil, fmt.Errorf("ConfigMap %s: config.yaml: %w", cm.Name, err)
			}
			return &cfg, nil
		}
		return nil, fmt.Errorf("Deployment %s mounts ConfigMap %q, which the manifest does not define", d.Name, v.ConfigMap.Name)
	}
	return nil, fmt.Errorf("Deployment %s mounts no ConfigMap with the config", d.Name)
}
