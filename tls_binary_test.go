package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// peerCN handshakes with the proxy on port for a.test, trusting ca, and
// returns the common name of the certificate it showed.
func peerCN(t *testing.T, port int, x *tlsTest) string {
	t.Helper()
	c, err := dialTLSProxy(t, port, &tls.Config{ServerName: "a.test", RootCAs: x.ca.pool})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName
}

// httpGet returns the body of a GET on the admin address.
func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestBinaryTLSReload: on SIGHUP with an unchanged config the built
// binary re-reads its certificate files: new connections get the new
// certificate while one made with the old works on; a bad replacement
// (a key of another certificate) keeps the last good certificate
// serving and the log says why. /metrics and /status show the handshakes
// and the certificate's names and expiry.
func TestBinaryTLSReload(t *testing.T) {
	x := newTLSTest(t)
	be := startBackend(t, namedHandler("A"))
	port, admin := freePort(t), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	path := writeConfig(t, "admin: "+admin+"\napps:\n"+appYAML("web", []int{port}, []string{be.addr}, tlsKeys([][2]string{{x.aCert, x.aKey}})))
	proc, out := startBinary(t, port, "-c", path)
	defer func() {
		if t.Failed() {
			t.Log(out)
		}
	}()
	old, err := dialTLSProxy(t, port, &tls.Config{ServerName: "a.test", RootCAs: x.ca.pool})
	if err != nil {
		t.Fatal(err)
	}
	echoCheck(t, old, "A", 1000)

	x.ca.issue(t, "a.test v2", []string{"a.test"}, inDays(60), false).write(t, x.dir, "a")
	reloadBinary(t, proc, out, 1)
	if cn := peerCN(t, port, x); cn != "a.test v2" {
		t.Fatalf("after the reload a new connection got %q, want the new certificate", cn)
	}
	if _, err := old.Write([]byte("x")); err != nil {
		t.Fatalf("the connection made with the old certificate: %v", err)
	}
	if b := make([]byte, 1); readFull(old, b) != nil || b[0] != 'x' {
		t.Fatal("the connection made with the old certificate stopped echoing after the reload")
	}

	writeFile(t, x.aKey, x.b.keyPEM) // a key that is not the certificate's
	reloadBinary(t, proc, out, 2)
	if !strings.Contains(out.String(), `msg="config reload failed, keeping the running config"`) || !strings.Contains(out.String(), "private key does not match public key") {
		t.Fatalf("the bad key's reload failure is not logged")
	}
	if cn := peerCN(t, port, x); cn != "a.test v2" {
		t.Fatalf("after a bad replacement a new connection got %q, want the last good certificate", cn)
	}

	// The server counts a handshake when the client's Finished arrives,
	// which may be after the client's side returned.
	for _, re := range []string{
		`tcpproxy_tls_handshakes_total\{app="web",result="ok",side="client"\} 3\n`,
		`tcpproxy_tls_handshakes_total\{app="web",result="failure",side="client"\} 0\n`,
		`tcpproxy_tls_certificate_not_after_timestamp_seconds\{app="web",subject="CN=a.test v2"\} \d\.\d+e\+09\n`,
	} {
		waitFor(t, 5*time.Second, "/metrics to show "+re, func() bool {
			return regexp.MustCompile(re).MatchString(httpGet(t, "http://"+admin+"/metrics"))
		})
	}
	status := binaryStatus(t, admin)
	tlsStatus := status["apps"].([]any)[0].(map[string]any)["tls"].(map[string]any)
	cert := tlsStatus["certificates"].([]any)[0].(map[string]any)
	if cert["subject"] != "CN=a.test v2" || fmt.Sprint(cert["names"]) != "[a.test]" || !strings.HasPrefix(cert["not_after"].(string), inDays(60).UTC().Format("2006-01-02")) {
		t.Errorf("/status certificate = %v", cert)
	}
}

// TestBinaryTLSWatch: with -watch, renewed certificate files are picked
// up without a signal, whether certbot swaps its live/ symlink to a new
// archive/ file or the file is written in place.
func TestBinaryTLSWatch(t *testing.T) {
	x := newTLSTest(t)
	be := startBackend(t, namedHandler("A"))
	live, archive := filepath.Join(x.dir, "live"), filepath.Join(x.dir, "archive")
	for _, d := range []string{live, archive} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// certbot's layout: live/cert.pem -> ../archive/certN.pem
	link := func(n int, kind string) {
		tmp := filepath.Join(live, "."+kind+".tmp")
		os.Remove(tmp)
		if err := os.Symlink(fmt.Sprintf("../archive/%s%d.pem", kind, n), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(live, kind+".pem")); err != nil {
			t.Fatal(err)
		}
	}
	issue := func(n int) issued {
		c := x.ca.issue(t, fmt.Sprintf("a.test v%d", n), []string{"a.test"}, inDays(90), false)
		writeFile(t, filepath.Join(archive, fmt.Sprintf("cert%d.pem", n)), c.certPEM)
		writeFile(t, filepath.Join(archive, fmt.Sprintf("privkey%d.pem", n)), c.keyPEM)
		return c
	}
	issue(1)
	link(1, "cert")
	link(1, "privkey")
	port := freePort(t)
	path := writeConfig(t, "apps:\n"+appYAML("web", []int{port}, []string{be.addr},
		tlsKeys([][2]string{{filepath.Join(live, "cert.pem"), filepath.Join(live, "privkey.pem")}})))
	_, out := startBinary(t, port, "-watch", "-c", path)
	defer func() {
		if t.Failed() {
			t.Log(out)
		}
	}()
	if cn := peerCN(t, port, x); cn != "a.test v1" {
		t.Fatalf("at start: %q", cn)
	}
	tests := []struct {
		name   string
		renew  func()
		wantCN string
	}{
		{"symlink swap", func() { issue(2); link(2, "privkey"); link(2, "cert") }, "a.test v2"},
		{"written in place", func() {
			c := x.ca.issue(t, "a.test v3", []string{"a.test"}, inDays(90), false)
			writeFile(t, filepath.Join(archive, "privkey2.pem"), c.keyPEM)
			writeFile(t, filepath.Join(archive, "cert2.pem"), c.certPEM)
		}, "a.test v3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.renew()
			waitFor(t, 10*time.Second, "the renewed certificate", func() bool { return peerCN(t, port, x) == tt.wantCN })
		})
	}
}

// TestBinaryTLSCheck: -check refuses an expired certificate and warns
// of one that expires within 14 days.
func TestBinaryTLSCheck(t *testing.T) {
	x := newTLSTest(t)
	tests := []struct {
		name     string
		notAfter time.Time
		exit     int
		want     string
	}{
		{"expired", inDays(-2), 1, `app "web": tls.certificates[0]: certificate "CN=a.test" expired on `},
		{"expires in 3 days", inDays(3), 0, `warning: app "web": tls.certificates[0]: certificate "CN=a.test" expires on `},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert, key := x.ca.issue(t, "a.test", []string{"a.test"}, tt.notAfter, false).write(t, t.TempDir(), "a")
			path := writeConfig(t, "apps:\n"+appYAML("web", []int{5432}, []string{"127.0.0.1:5433"}, tlsKeys([][2]string{{cert, key}})))
			out, err := exec.Command(buildBinary(t), "-check", "-c", path).CombinedOutput()
			exit := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				exit = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if exit != tt.exit || !strings.Contains(string(out), path+":9: "+tt.want) {
				t.Fatalf("exit %d, output:\n%s\nwant exit %d and %q", exit, out, tt.exit, tt.want)
			}
		})
	}
}

// TestTLSWithOpenSSLAndCurl: real TLS clients other than Go's against a
// terminating app: openssl s_client verifies the chain and reads what
// the plain backend sent; curl speaks HTTPS to a plain HTTP backend
// through the proxy, with the ALPN protocol the app offers.
func TestTLSWithOpenSSLAndCurl(t *testing.T) {
	x := newTLSTest(t)
	greeter := startBackend(t, func(c net.Conn) { io.WriteString(c, "hello from the plain backend\n") })
	web := startBackend(t, func(c net.Conn) {
		buf := make([]byte, 4096)
		c.Read(buf) // the request: one read is enough for curl's
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n")
	})
	gport, wport := freePort(t), freePort(t)
	startProxy(t, "apps:\n"+
		appYAML("greet", []int{gport}, []string{greeter.addr}, tlsKeys([][2]string{{x.aCert, x.aKey}}, "min_version: \"1.3\""))+
		appYAML("web", []int{wport}, []string{web.addr}, tlsKeys([][2]string{{x.aCert, x.aKey}}, "alpn: [http/1.1]")))
	t.Run("openssl s_client", func(t *testing.T) {
		if _, err := exec.LookPath("openssl"); err != nil {
			t.Skip("openssl not installed")
		}
		cmd := exec.Command("openssl", "s_client", "-connect", fmt.Sprintf("127.0.0.1:%d", gport), "-servername", "a.test",
			"-CAfile", x.caPath, "-verify_return_error", "-ign_eof")
		cmd.Stdin = strings.NewReader("")
		out, err := cmd.CombinedOutput()
		for _, want := range []string{"hello from the plain backend", "Verify return code: 0 (ok)", "TLSv1.3", "CN=a.test"} {
			if !strings.Contains(strings.ReplaceAll(string(out), "CN = ", "CN="), want) {
				t.Errorf("openssl output lacks %q (err %v):\n%s", want, err, out)
			}
		}
	})
	t.Run("openssl s_client, TLS 1.2 refused by min_version", func(t *testing.T) {
		if _, err := exec.LookPath("openssl"); err != nil {
			t.Skip("openssl not installed")
		}
		cmd := exec.Command("openssl", "s_client", "-connect", fmt.Sprintf("127.0.0.1:%d", gport), "-servername", "a.test", "-tls1_2")
		cmd.Stdin = strings.NewReader("")
		out, err := cmd.CombinedOutput()
		if err == nil || strings.Contains(string(out), "hello from the plain backend") {
			t.Fatalf("a TLS 1.2 client got through min_version 1.3 (err %v):\n%s", err, out)
		}
	})
	t.Run("curl", func(t *testing.T) {
		if _, err := exec.LookPath("curl"); err != nil {
			t.Skip("curl not installed")
		}
		out, err := exec.Command("curl", "-sS", "-v", "--max-time", "10", "--cacert", x.caPath,
			"--resolve", fmt.Sprintf("a.test:%d:127.0.0.1", wport), fmt.Sprintf("https://a.test:%d/", wport)).CombinedOutput()
		if err != nil || !strings.HasSuffix(string(out), "\nhello\n") {
			t.Fatalf("curl: %v\n%s", err, out)
		}
		if !regexp.MustCompile(`ALPN.*(accepted|server accepted).*http/1\.1`).Match(out) {
			t.Errorf("curl did not settle on http/1.1 by ALPN:\n%s", out)
		}
	})
}

// readFull is io.ReadFull without the count.
func readFull(r io.Reader, b []byte) error {
	_, err := io.ReadFull(r, b)
	return err
}
