//go:build linux

package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proxyConfig is the part of the proxy's YAML config the soak varies.
type proxyConfig struct {
	admin           string
	ports           []int
	sniPort         int // shared by soak-sni-a and soak-sni-b, routed by TLS server name
	ppPort          int // soak-pp: clients send a PROXY header (see entry.go)
	targets         []string
	dialTimeout     time.Duration
	failTimeout     time.Duration
	shutdownTimeout time.Duration

	// listen is app soak's listen host; "" leaves the key unset (every
	// interface). The other apps listen on 127.0.0.1.
	listen string
	// heldPort, when not 0, is a port the soak holds itself, added to
	// soak-pp: the proxy cannot bind it and the reload must fail.
	heldPort int
	// bulkPort is soak-bulk's port (0: no such app): one target,
	// bulkTarget, that streams to slow readers under idleTimeout.
	bulkPort    int
	bulkTarget  string
	idleTimeout time.Duration
}

func (c proxyConfig) yaml() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# written by the soak test\nadmin: %s\nshutdown_timeout: %s\n", c.admin, c.shutdownTimeout)
	fmt.Fprintf(&b, "defaults:\n  dial_timeout: %s\n  fail_timeout: %s\n", c.dialTimeout, c.failTimeout)
	ports := make([]string, len(c.ports))
	for i, p := range c.ports {
		ports[i] = strconv.Itoa(p)
	}
	const loopback = "listen: 127.0.0.1"
	b.WriteString("apps:\n")
	soakListen := ""
	if c.listen != "" {
		soakListen = "listen: " + c.listen
	}
	c.app(&b, "soak", strings.Join(ports, ", "), soakListen)
	c.app(&b, "soak-sni-a", strconv.Itoa(c.sniPort), loopback+"\n    sni: ["+sniNameA+"]")
	c.app(&b, "soak-sni-b", strconv.Itoa(c.sniPort), loopback+"\n    sni: ["+sniNameB+"]\n    proxy_protocol: 1")
	ppPorts := strconv.Itoa(c.ppPort)
	if c.heldPort != 0 {
		ppPorts += ", " + strconv.Itoa(c.heldPort)
	}
	c.app(&b, "soak-pp", ppPorts, loopback+"\n    accept_proxy_protocol: true\n    proxy_protocol_from: [127.0.0.1]\n    proxy_protocol: 1")
	if c.bulkPort != 0 {
		fmt.Fprintf(&b, "  - name: soak-bulk\n    ports: [%d]\n    %s\n    idle_timeout: %s\n    targets: [%q]\n", c.bulkPort, loopback, c.idleTimeout, c.bulkTarget)
	}
	return b.Bytes()
}

// app writes one app of the config, with every target of c.
func (c proxyConfig) app(b *bytes.Buffer, name, ports, extra string) {
	fmt.Fprintf(b, "  - name: %s\n    ports: [%s]\n", name, ports)
	if extra != "" {
		fmt.Fprintf(b, "    %s\n", extra)
	}
	b.WriteString("    targets:\n")
	for _, t := range c.targets {
		fmt.Fprintf(b, "      - %q\n", t)
	}
}

// proxyProc is the proxy under test, run as a child process with its
// log in a file.
type proxyProc struct {
	cfgPath, logPath string
	admin            string        // admin address; a reload does not change it
	shutdownTimeout  time.Duration // from the first config
	cmd              *exec.Cmd
	exited           chan struct{} // closed when the process has exited
	waitErr          error         // set before exited closes
	http             *http.Client
}

// startProxy writes cfg into dir, starts bin on it and waits until it is
// ready (/readyz answers 200).
func startProxy(bin, dir string, cfg proxyConfig) (*proxyProc, error) {
	p := &proxyProc{
		cfgPath:         filepath.Join(dir, "tcpproxy.yaml"),
		logPath:         filepath.Join(dir, "tcpproxy.log"),
		admin:           cfg.admin,
		shutdownTimeout: cfg.shutdownTimeout,
		exited:          make(chan struct{}),
		// No keep-alive: an idle scrape connection would hold a goroutine
		// and a descriptor in the proxy and blur the leak check.
		http: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}},
	}
	if err := p.writeConfig(cfg); err != nil {
		return nil, err
	}
	logf, err := os.Create(p.logPath)
	if err != nil {
		return nil, fmt.Errorf("proxy log: %w", err)
	}
	defer logf.Close() // the child has its own descriptor
	p.cmd = exec.Command(bin, "-c", p.cfgPath)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the proxy %s: %w", bin, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		select {
		case <-p.exited:
			return nil, fmt.Errorf("the proxy exited at start (%v); its log:\n%s", p.waitErr, p.logTail(50))
		default:
		}
		if code, _, err := p.get("/readyz"); err == nil && code == http.StatusOK {
			return p, nil
		}
		if time.Now().After(deadline) {
			p.kill()
			return nil, fmt.Errorf("the proxy was not ready within 15s; its log:\n%s", p.logTail(50))
		}
	}
}

// writeConfig replaces the config file atomically, so a reload never
// reads half of it.
func (p *proxyProc) writeConfig(cfg proxyConfig) error {
	tmp := p.cfgPath + ".tmp"
	if err := os.WriteFile(tmp, cfg.yaml(), 0o644); err != nil {
		return fmt.Errorf("write proxy config: %w", err)
	}
	if err := os.Rename(tmp, p.cfgPath); err != nil {
		return fmt.Errorf("write proxy config: %w", err)
	}
	return nil
}

func (p *proxyProc) pid() int { return p.cmd.Process.Pid }

func (p *proxyProc) get(path string) (int, []byte, error) {
	resp, err := p.http.Get("http://" + p.admin + path)
	if err != nil {
		return 0, nil, fmt.Errorf("admin %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, fmt.Errorf("admin %s: %w", path, err)
	}
	return resp.StatusCode, body, nil
}

// metrics scrapes /metrics into series name (with labels, as printed)
// to value.
func (p *proxyProc) metrics() (map[string]float64, error) {
	code, body, err := p.get("/metrics")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("admin /metrics: status %d", code)
	}
	return parseMetrics(body), nil
}

// parseMetrics reads the Prometheus text format, enough for the series
// the soak reads: `name{labels} value` lines, comments skipped.
func parseMetrics(text []byte) map[string]float64 {
	m := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m
}

// The proxy's reload counts, as /metrics prints them.
const (
	reloadsOK     = `tcpproxy_config_reloads_total{result="success"}`
	reloadsFailed = `tcpproxy_config_reloads_total{result="failure"}`
)

// reload writes cfg and signals SIGHUP, then waits until the proxy's
// count of successful reloads moves, and returns when it saw that.
func (p *proxyProc) reload(cfg proxyConfig, sent func(time.Time)) (time.Time, error) {
	ok, at, err := p.sighup(cfg, sent)
	if err == nil && !ok {
		err = errors.New("the proxy refused the config")
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("reload: %w", err)
	}
	return at, nil
}

// reloadFailing writes cfg, which the proxy must refuse, and signals
// SIGHUP, then waits until the proxy's count of failed reloads moves.
// It is an error if its count of successful ones moved instead.
func (p *proxyProc) reloadFailing(cfg proxyConfig) error {
	ok, _, err := p.sighup(cfg, func(time.Time) {})
	if err == nil && ok {
		err = errors.New("the proxy counted a reload that must fail as a success")
	}
	if err != nil {
		return fmt.Errorf("failing reload: %w", err)
	}
	return nil
}

// sighup writes cfg, tells sent the time just before it signals SIGHUP,
// and waits up to 5 s for one of the proxy's reload counts to move. It
// reports whether the reload succeeded, and when the soak saw it.
func (p *proxyProc) sighup(cfg proxyConfig, sent func(time.Time)) (bool, time.Time, error) {
	m, err := p.metrics()
	if err != nil {
		return false, time.Time{}, err
	}
	okBefore, failedBefore := m[reloadsOK], m[reloadsFailed]
	if err := p.writeConfig(cfg); err != nil {
		return false, time.Time{}, err
	}
	sent(time.Now())
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		return false, time.Time{}, fmt.Errorf("SIGHUP: %w", err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		m, err := p.metrics()
		switch {
		case err != nil:
		case m[reloadsOK] > okBefore:
			return true, time.Now(), nil
		case m[reloadsFailed] > failedBefore:
			return false, time.Now(), nil
		}
	}
	return false, time.Time{}, errors.New("neither of the proxy's reload counts moved within 5s")
}

// listening returns what the proxy says it listens on, from /status:
// each app's listen host and ports, and every listen address, as one
// comparable string.
func (p *proxyProc) listening() (string, error) {
	code, body, err := p.get("/status")
	if err != nil {
		return "", err
	}
	if code != http.StatusOK {
		return "", fmt.Errorf("admin /status: status %d", code)
	}
	var st struct {
		Apps []struct {
			Name   string `json:"name"`
			Listen string `json:"listen"`
			Ports  []int  `json:"ports"`
		} `json:"apps"`
		Listeners []struct {
			Listen string `json:"listen"`
		} `json:"listeners"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return "", fmt.Errorf("admin /status: %w", err)
	}
	var out []string
	for _, a := range st.Apps {
		out = append(out, fmt.Sprintf("%s@%s%v", a.Name, a.Listen, a.Ports))
	}
	for _, l := range st.Listeners {
		out = append(out, l.Listen)
	}
	sort.Strings(out)
	return strings.Join(out, " "), nil
}

// stop sends SIGTERM and waits up to timeout for the exit. It returns
// the exit code, or an error if the proxy had to be killed.
func (p *proxyProc) stop(timeout time.Duration) (int, error) {
	select {
	case <-p.exited:
		return p.exitCode(), errors.New("the proxy had already exited")
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return -1, fmt.Errorf("SIGTERM: %w", err)
	}
	select {
	case <-p.exited:
		return p.exitCode(), nil
	case <-time.After(timeout):
		p.kill()
		return -1, fmt.Errorf("the proxy did not exit within %v of SIGTERM; killed", timeout)
	}
}

func (p *proxyProc) exitCode() int {
	var ee *exec.ExitError
	if errors.As(p.waitErr, &ee) {
		return ee.ExitCode()
	}
	if p.waitErr != nil {
		return -1
	}
	return 0
}

// kill ends the process at once, for error paths.
func (p *proxyProc) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Kill()
	<-p.exited
}

// running reports whether the process is alive.
func (p *proxyProc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// logTail returns the last n lines of the proxy's log.
func (p *proxyProc) logTail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", p.logPath, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d earlier lines in %s)", len(lines)-n, p.logPath)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// logCounts counts the log's lines by level and notes panics.
func (p *proxyProc) logCounts() (errs, warns int, panics []string) {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return 0, 0, nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.Contains(line, "level=ERROR"):
			errs++
		case strings.Contains(line, "level=WARN"):
			warns++
		}
		if strings.Contains(line, "panic") || strings.HasPrefix(line, "fatal error") {
			panics = append(panics, line)
		}
	}
	return errs, warns, panics
}
