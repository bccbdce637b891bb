package main

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// tlsFiles writes, into a new temp dir, the files the TLS config tests
// name: good (a server certificate for 90 days), soon (5 days left),
// expired (a day ago), other.key (a key of no certificate here), ca.pem
// (the issuing CA), notpem.txt and empty.pem.
func tlsFiles(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	ca := newTestCA(t, "Test CA")
	ca.issue(t, "good.test", []string{"good.test"}, inDays(90), false).write(t, dir, "good")
	ca.issue(t, "soon.test", []string{"soon.test"}, inDays(5), false).write(t, dir, "soon")
	ca.issue(t, "expired.test", []string{"expired.test"}, inDays(-1), false).write(t, dir, "expired")
	writeFile(t, filepath.Join(dir, "other.key"), ca.issue(t, "x", nil, inDays(1), false).keyPEM)
	writeFile(t, filepath.Join(dir, "ca.pem"), ca.pem)
	writeFile(t, filepath.Join(dir, "notpem.txt"), []byte("hello\n"))
	writeFile(t, filepath.Join(dir, "empty.pem"), nil)
	return dir
}

// tlsApp is an app on 127.0.0.1:5432 with extra keys (indented two
// spaces); its first extra line is line 6 of the file.
func tlsApp(extra string) string {
	return "apps:\n- name: db\n  listen: 127.0.0.1\n  ports: [5432]\n  targets: [\"127.0.0.1:5433\"]\n" + extra
}

// loadTLSConfig writes text as config.yaml into dir (where the files
// tlsFiles wrote are) and loads it.
func loadTLSConfig(t *testing.T, dir, text string) (*config, error) {
	t.Helper()
	path := filepath.Join(dir, "config.yaml")
	writeFile(t, path, []byte(text))
	return loadConfig(path)
}

// TestTLSConfigErrors: every problem of tls: and target_tls: is
// reported at load, with file, line and app.
func TestTLSConfigErrors(t *testing.T) {
	dir := tlsFiles(t)
	tests := []struct {
		name  string
		extra string
		want  []string // substrings; ":N:" pins the line
	}{
		{"missing file", "  tls:\n    certificates:\n    - {cert: nope.pem, key: good.key}\n",
			[]string{`config.yaml:8: app "db": tls.certificates[0]: cert: ` + dir + "/nope.pem: file not found"}},
		{"key of another certificate", "  tls:\n    certificates:\n    - {cert: good.pem, key: other.key}\n",
			[]string{`:8: app "db": tls.certificates[0]: cert ` + dir + "/good.pem and key " + dir + "/other.key: private key does not match public key"}},
		{"a device", "  tls:\n    certificates:\n    - {cert: /dev/zero, key: good.key}\n", []string{`:8: app "db": tls.certificates[0]: cert: /dev/zero is not a regular file`}},
		{"a directory", "  tls:\n    certificates:\n    - {cert: good.pem, key: .}\n", []string{`:8: app "db": tls.certificates[0]: key: ` + dir + " is not a regular file"}},
		{"empty", "  tls:\n    certificates: [{cert: good.pem, key: good.key}]\n    client_ca: empty.pem\n", []string{`:8: app "db": tls.client_ca: ` + dir + "/empty.pem is empty"}},
		{"not PEM", "  tls:\n    certificates:\n    - {cert: notpem.txt, key: good.key}\n",
			[]string{`:8: app "db": tls.certificates[0]: cert`, "failed to find any PEM data in certificate input"}},
		{"expired", "  tls:\n    certificates:\n    - {cert: good.pem, key: good.key}\n    - cert: expired.pem\n      key: expired.key\n",
			[]string{`:9: app "db": tls.certificates[1]: certificate "CN=expired.test" expired on `}},
		{"no certificates", "  tls: {min_version: \"1.3\"}\n", []string{`:6: app "db": tls: needs certificates`}},
		{"cert without key", "  tls:\n    certificates:\n    - {cert: good.pem}\n", []string{`:8: app "db": tls.certificates[0]: needs both cert and key`}},
		{"self_signed with a file", "  tls:\n    certificates:\n    - {cert: good.pem, key: good.key, self_signed: [a.test]}\n", []string{`:8: app "db": tls.certificates[0]: self_signed stands alone`}},
		{"self_signed IP", "  tls:\n    certificates:\n    - self_signed: [a.test, 10.0.0.1]\n", []string{`:8: app "db": tls.certificates[0]: self_signed "10.0.0.1": an IP address`}},
		{"min_version", "  tls:\n    certificates: [{cert: good.pem, key: good.key}]\n    min_version: \"1.1\"\n", []string{`:8: app "db": tls.min_version "1.1": must be "1.2" or "1.3"`}},
		{"min_version unquoted", "  tls:\n    certificates: [{cert: good.pem, key: good.key}]\n    min_version: 1.0\n", []string{`:8: app "db": tls.min_version "1.0"`}},
		{"alpn", "  tls:\n    certificates: [{cert: good.pem, key: good.key}]\n    alpn: [h2, http/1, h2]\n",
			[]string{`:8: app "db": tls.alpn "http/1": not a registered ALPN protocol ID`, `:8: app "db": tls.alpn "h2" listed twice`}},
		{"client_ca not a certificate", "  tls:\n    certificates: [{cert: good.pem, key: good.key}]\n    client_ca: good.key\n", []string{`:8: app "db": tls.client_ca: ` + dir + "/good.key holds no PEM certificate"}},
		{"unknown key", "  tls:\n    certs: [{cert: good.pem, key: good.key}]\n", []string{`:7: unknown key "certs" in tls`}},
		{"unknown certificate key", "  tls:\n    certificates: [{crt: good.pem, key: good.key}]\n", []string{`:7: unknown key "crt" in tls.certificates`}},
		{"http_host", "  http_host: [www.test]\n  tls:\n    certificates: [{cert: good.pem, key: good.key}]\n", []string{`:8: app "db": tls: an app routed by http_host receives plain HTTP`}},
		{"target cert without key", "  target_tls: {cert: good.pem}\n", []string{`:6: app "db": target_tls: cert and key go together`}},
		{"target wildcard name", "  target_tls: {server_name: \"*.db.test\"}\n", []string{`:6: app "db": target_tls.server_name "*.db.test": a wildcard cannot be verified against`}},
		{"target ca missing", "  target_tls:\n    ca: nope.pem\n", []string{`:7: app "db": target_tls.ca: ` + dir + "/nope.pem: file not found"}},
		{"target client expired", "  target_tls: {cert: expired.pem, key: expired.key}\n", []string{`:6: app "db": target_tls: certificate "CN=expired.test" expired`}},
		{"unknown target key", "  target_tls: {verify: true}\n", []string{`:6: unknown key "verify" in target_tls`}},
		{"all at once", "  tls:\n    certificates: [{cert: nope.pem, key: good.key}]\n    min_version: \"1.4\"\n    alpn: [h9]\n  target_tls: {ca: nope.pem}\n",
			[]string{":7:", "nope.pem: file not found", `:8: app "db": tls.min_version "1.4"`, `:9: app "db": tls.alpn "h9"`, `:10: app "db": target_tls.ca`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadTLSConfig(t, dir, tlsApp(tt.extra))
			if err == nil {
				t.Fatal("loaded; want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestTLSConfigValid: what a valid tls:/target_tls: loads to, defaults
// included, and the warnings a load gives: a certificate expiring
// within 14 days, insecure_skip_verify.
func TestTLSConfigValid(t *testing.T) {
	dir := tlsFiles(t)
	tests := []struct {
		name  string
		text  string
		check func(t *testing.T, a *appConfig)
		warn  []string
	}{
		{"defaults of tls", tlsApp("  tls:\n    certificates: [{cert: good.pem, key: good.key}]\n"), func(t *testing.T, a *appConfig) {
			if a.TLS.MinVersion != tls.VersionTLS12 || a.TLS.ALPN != nil || a.TLS.ClientCAPEM != nil || a.TargetTLS != nil {
				t.Errorf("tls = %+v, target_tls = %+v", a.TLS, a.TargetTLS)
			}
			if c := a.TLS.Certificates[0]; c.Cert != filepath.Join(dir, "good.pem") || len(c.CertPEM) == 0 || len(c.KeyPEM) == 0 {
				t.Errorf("certificate %s %s, read %d+%d bytes; want the file next to the config", c.Cert, c.Key, len(c.CertPEM), len(c.KeyPEM))
			}
		}, nil},
		{"every key", tlsApp("  tls:\n    certificates:\n    - {cert: good.pem, key: good.key}\n    - {cert: soon.pem, key: soon.key}\n    min_version: 1.3\n    alpn: [h2, http/1.1]\n    client_ca: ca.pem\n" +
			"  target_tls: {server_name: db.internal, ca: ca.pem, cert: good.pem, key: good.key}\n"), func(t *testing.T, a *appConfig) {
			if len(a.TLS.Certificates) != 2 || a.TLS.MinVersion != tls.VersionTLS13 || !slices.Equal(a.TLS.ALPN, []string{"h2", "http/1.1"}) || a.TLS.ClientCAPEM == nil {
				t.Errorf("tls = %+v", a.TLS)
			}
			if tt := a.TargetTLS; tt.ServerName != "db.internal" || tt.CAPEM == nil || tt.Client == nil || tt.InsecureSkipVerify {
				t.Errorf("target_tls = %+v", tt)
			}
		}, []string{`config.yaml:9: warning: app "db": tls.certificates[1]: certificate "CN=soon.test" expires on `}},
		{"in defaults", "defaults:\n  tls:\n    certificates: [{self_signed: [a.test]}]\n  target_tls: {insecure_skip_verify: true}\n" + strings.TrimPrefix(tlsApp(""), ""), func(t *testing.T, a *appConfig) {
			if a.TLS == nil || a.TargetTLS == nil || !a.TargetTLS.InsecureSkipVerify || a.TLS.Certificates[0].SelfSigned[0] != "a.test" {
				t.Errorf("tls = %+v, target_tls = %+v", a.TLS, a.TargetTLS)
			}
		}, []string{`config.yaml:4: warning: app "db": target_tls.insecure_skip_verify: true: the targets' certificates are not verified`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := loadTLSConfig(t, dir, tt.text)
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, cfg.Apps[0])
			var warns []string
			for _, w := range cfg.Warnings {
				warns = append(warns, w.String())
			}
			if len(warns) != len(tt.warn) {
				t.Fatalf("warnings %q, want %d", warns, len(tt.warn))
			}
			for i, w := range tt.warn {
				if !strings.HasPrefix(warns[i], dir+"/"+w) {
					t.Errorf("warning %q, want it to start with %q", warns[i], w)
				}
			}
		})
	}
}

// TestTLSConfigRereadsFiles: each load reads the files again, so a
// reload with an unchanged config picks up renewed certificates, and the
// app counts as changed; self_signed stays the same across loads.
func TestTLSConfigRereadsFiles(t *testing.T) {
	dir := tlsFiles(t)
	text := tlsApp("  tls:\n    certificates: [{cert: good.pem, key: good.key}, {self_signed: [a.test]}]\n")
	first, err := loadTLSConfig(t, dir, text)
	if err != nil {
		t.Fatal(err)
	}
	again, err := loadTLSConfig(t, dir, text)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(first.Apps[0].TLS.Certificates, again.Apps[0].TLS.Certificates, func(a, b certPEM) bool {
		return string(a.CertPEM) == string(b.CertPEM) && string(a.KeyPEM) == string(b.KeyPEM)
	}) {
		t.Fatal("two loads of the same files differ")
	}
	renewed := newTestCA(t, "Other CA").issue(t, "good.test", []string{"good.test"}, inDays(60), false)
	renewed.write(t, dir, "good")
	third, err := loadTLSConfig(t, dir, text)
	if err != nil {
		t.Fatal(err)
	}
	if got := third.Apps[0].TLS.Certificates[0].CertPEM; string(got) != string(renewed.certPEM) {
		t.Fatal("a load after the files changed did not read the new certificate")
	}
	if _, err := os.Stat(filepath.Join(dir, "a.test.pem")); err == nil {
		t.Fatal("self_signed wrote a file")
	}
}
