// Command k8s-validate checks contrib/kubernetes.yaml offline, since
// schema downloads are not possible where CI runs: every object is
// decoded strictly into the Kubernetes API types (k8s.io/api; unknown
// and duplicate fields are errors), the Deployment's pod template is
// evaluated against Pod Security "restricted" with the admission
// controller's own checks (k8s.io/pod-security-admission), and the rules
// of shipping tcpproxy are checked: no exec hooks (the image has no
// shell), a PodDisruptionBudget, requests and limits, a grace period
// above shutdown_delay + shutdown_timeout, and a max_connections that
// fits the memory limit.
//
//	cd contrib/k8s-validate && go run . [../kubernetes.yaml]
//
// It is a module of its own so that the proxy's go.mod does not grow by
// the Kubernetes libraries.
package main

import (
	"fmt"
	"os"
)

func main() {
	path := "../kubernetes.yaml"
	if len(os.Args) > 1 {
		path = os.Args[1]
	}
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "k8s-validate:", err)
		os.Exit(2)
	}
	m, err := decode(data)
	if err != nil {
		fmt.Fprintf(os.Stderr, "k8s-validate: %s: %v\n", path, err)
		os.Exit(1)
	}
	problems := m.check()
	for _, p := range problems {
		fmt.Fprintf(os.Stderr, "%s: %s\n", path, p)
	}
	if len(problems) > 0 {
		os.Exit(1)
	}
	fmt.Printf("%s: OK: %d objects decoded strictly; Pod Security %q passes; %s\n", path, m.objects, "restricted", m.summary)
}
