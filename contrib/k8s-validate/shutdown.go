package main

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// gracePeriod: terminationGracePeriodSeconds is above shutdown_delay +
// shutdown_timeout, so that the kubelet's SIGKILL never cuts a drain.
func (r *report) gracePeriod(spec *corev1.PodSpec, cfg *proxyConfig) {
	delay, err := duration(cfg.ShutdownDelay, 0)
	if err != nil {
		r.addf("shutdown_delay: %v", err)
	}
	timeout, err := duration(cfg.ShutdownTimeout, defaultTimeout)
	if err != nil {
		r.addf("shutdown_timeout: %v", err)
	}
	if delay <= 0 {
		r.addf("shutdown_delay is %v: set it (5s) so that no client is refused while the endpoint removal propagates", delay)
	}
	grace := 30 * time.Second // Kubernetes' default
	if spec.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
	}
	if grace <= delay+timeout {
		r.addf("terminationGracePeriodSeconds %v must be above shutdown_delay + shutdown_timeout = %v", grace, delay+timeout)
	}
}

// memory: the apps' max_connections, at the measured memory per
// connection, fit in maxLimitShare of the container's memory limit.
func (r *report) memory(spec *corev1.PodSpec, cfg *proxyConfig) {
	if len(spec.Containers) == 0 {
		return
	}
	lim, ok := spec.Containers[0].Resources.Limits[corev1.ResourceMemory]
	if !ok {
		return // reported by podRules
	}
	limitMiB := float64(lim.Value()) / (1 << 20)
	total := 0
	for _, a := range cfg.Apps {
		n := cfg.Defaults.MaxConnections
		if a.MaxConnections != nil {
			n = a.MaxConnections
		}
		if n == nil || *n == 0 {
			r.addf("app %s: set max_connections, or memory use is unbounded", a.Name)
			continue
		}
		total += *n
	}
	need := baseMiB + float64(total)*kibPerConn/1024
	r.sizing = fmt.Sprintf("max_connections %d: %.0f MiB + %d x %.1f KiB = %.1f MiB, %.0f%% of the %.0f MiB memory limit",
		total, baseMiB, total, kibPerConn, need, 100*need/limitMiB, limitMiB)
	if need > maxLimitShare*limitMiB {
		r.addf("%s: above %.0f%% of it; lower max_connections or raise the limit", r.sizing, 100*maxLimitShare)
	}
}

// duration parses a Go duration, def when s is empty.
func duration(s string, def time.Duration) (time.Duration, error) {
	if s == "" {
		return def, nil
	}
	return time.ParseDuration(s)
}
