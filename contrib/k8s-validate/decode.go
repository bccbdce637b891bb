package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// manifest is the decoded objects of a multi-document manifest, by kind.
type manifest struct {
	objects     int
	summary     string // the memory arithmetic, set by check
	configMaps  []*corev1.ConfigMap
	deployments []*appsv1.Deployment
	pdbs        []*policyv1.PodDisruptionBudget
	services    []*corev1.Service
}

// decode splits data into its YAML documents and decodes each strictly
// into the API type its apiVersion and kind name. An unknown kind, an
// unknown or duplicate field, or a wrong type is an error.
func decode(data []byte) (*manifest, error) {
	m := &manifest{}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for doc := 1; ; doc++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", doc, err)
		}
		if len(bytes.TrimSpace(stripComments(raw))) == 0 {
			continue
		}
		if err := m.add(raw); err != nil {
			return nil, fmt.Errorf("document %d: %w", doc, err)
		}
		m.objects++
	}
	return m, nil
}

// add decodes one document.
func (m *manifest) add(raw []byte) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(raw, &tm); err != nil {
		return err
	}
	var obj any
	switch tm.APIVersion + " " + tm.Kind {
	case "v1 ConfigMap":
		o := &corev1.ConfigMap{}
		m.configMaps, obj = append(m.configMaps, o), o
	case "apps/v1 Deployment":
		o := &appsv1.Deployment{}
		m.deployments, obj = append(m.deployments, o), o
	case "policy/v1 PodDisruptionBudget":
		o := &policyv1.PodDisruptionBudget{}
		m.pdbs, obj = append(m.pdbs, o), o
	case "v1 Service":
		o := &corev1.Service{}
		m.services, obj = append(m.services, o), o
	default:
		return fmt.Errorf("unexpected object %s %q", tm.APIVersion, tm.Kind)
	}
	return strictDecode(tm.Kind, raw, obj)
}

// strictDecode decodes raw into obj the way the API server's strict field
// validation does: a key twice in a mapping, a field the type lacks, or a
// wrong type is an error naming the field's path.
func strictDecode(kind string, raw []byte, obj any) error {
	js, err := yaml.YAMLToJSONStrict(raw) // duplicate keys are errors
	if err != nil {
		return fmt.Errorf("%s: %w", kind, err)
	}
	strict, err := kjson.UnmarshalStrict(js, obj)
	if err != nil {
		return fmt.Errorf("%s: %w", kind, err)
	}
	if len(strict) > 0 {
		return fmt.Errorf("%s: %w", kind, errors.Join(strict...))
	}
	return nil
}

// stripComments drops comment-only lines, so that a document of only
// comments counts as empty.
func stripComments(b []byte) []byte {
	var out []byte
	for _, line := range bytes.Split(b, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out = append(out, line...)
		}
	}
	return out
}
