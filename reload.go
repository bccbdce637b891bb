package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/michaeldbianchi/tcpproxy/internal/admin"
	"github.com/michaeldbianchi/tcpproxy/internal/upgrade"
)

// reload loads the config file again and applies it. An invalid file
// changes nothing: every error is logged and the old config keeps
// serving.
func (d *daemon) reload() {
	cfg, err := loadConfig(d.opts.configPath)
	d.apply(cfg, err)
}

// reloadFromWatch is reload for a change -watch saw. A file that would
// remove apps is applied only once it has been stable for
// watchRemoveSettle: a writer that pauses mid-write must not make apps
// vanish because the part written so far is valid YAML.
func (d *daemon) reloadFromWatch(fw *fileWatcher) {
	cfg, err := loadConfig(d.opts.configPath)
	if err == nil && d.srv.removesApps(cfg) {
		if wait := watchRemoveSettle - fw.stableFor(); wait > 0 {
			d.log.Info("config file changed and would remove apps: waiting for it to settle", "wait", wait.Round(time.Millisecond).String())
			fw.recheckAfter(wait)
			return
		}
	}
	d.apply(cfg, err)
}

// apply makes a loaded config the running one, or logs why it is not.
func (d *daemon) apply(cfg *config, err error) {
	if err == nil {
		var sum reloadSummary
		if sum, err = d.srv.apply(cfg); err == nil {
			d.srv.reloads.success.Add(1)
			d.srv.reloads.lastSuccess.Store(time.Now().UnixNano())
			d.shutdownTimeout = cfg.ShutdownTimeout
			d.shutdownDelay = cfg.ShutdownDelay
			d.adminToken.Store(&cfg.AdminToken)
			d.certs.set(cfg)
			d.log.Info("config reloaded", sum.logAttrs()...)
			cfg.logWarnings(d.log)
			if cfg.Admin != d.startCfg.Admin || cfg.AdminPublic != d.startCfg.AdminPublic || cfg.ReusePort != d.startCfg.ReusePort {
				d.log.Warn("admin, admin_public and reuse_port take effect on restart or upgrade, not on reload")
			}
			return
		}
	}
	d.srv.reloads.failure.Add(1)
	for _, line := range strings.Split(err.Error(), "\n") {
		d.log.Error("config reload failed, keeping the running config", "err", line)
	}
}

// startAdmin serves the admin endpoints, on the socket the previous
// process handed over if this one is an upgrade.
func (d *daemon) startAdmin(inherited *upgrade.Inherited) error {
	addr := d.startCfg.Admin
	ln := inherited.Listener(adminKey(addr))
	if ln == nil {
		var err error
		if ln, err = net.Listen(listenNetwork(addr), addr); err != nil {
			return fmt.Errorf("admin: listen on %s: %w", addr, unwrapOpError(err))
		}
	}
	d.adminLn = ln
	d.admin = admin.New(admin.Options{
		Snapshot: d.srv.snapshot,
		Ready:    d.srv.ready.Load,
		Log:      d.log,
		Build:    currentBuild().metrics(),
		Token:    d.token,
		SetDrain: d.srv.setDrain,
	})
	go func() {
		if err := d.admin.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
			d.log.Error("admin server stopped", "err", err)
		}
	}()
	d.log.Info("admin listening", "addr", ln.Addr().String())
	return nil
}

// adminKey names the admin listener among the sockets an upgrade hands
// over, apart from the app ports.
func adminKey(addr string) string { return "admin " + addr }

// upgrade starts the binary on disk as a new process that takes over
// every listening socket. On success this process stops accepting (the
// sockets stay open in the new one, so no connection is refused) and
// the caller drains it; on failure it carries on serving.
func (d *daemon) upgrade() bool {
	lns := d.srv.listeners()
	if tl, ok := d.adminLn.(*net.TCPListener); ok {
		lns[adminKey(d.startCfg.Admin)] = tl
	}
	if tl, ok := d.pprofLn.(*net.TCPListener); ok {
		lns[pprofKey(d.opts.pprofAddr)] = tl
	}
	d.log.Info("upgrade: starting the new binary", "listeners", len(lns))
	proc, err := upgrade.Start(context.Background(), lns, upgradeTimeout)
	if err != nil {
		d.log.Error("upgrade failed, carrying on", "err", err)
		if d.opts.pidFile != "" {
			upgrade.WritePIDFile(d.opts.pidFile) // tells a waiting `tcpproxy -upgrade` (see requestUpgrade)
		}
		return false
	}
	d.log.Info("upgrade: the new process is serving; this one stops accepting and drains", "new_pid", proc.Pid)
	return true
}

// requestUpgrade is `tcpproxy -upgrade`: it asks the proxy whose PID is
// in pidFile to upgrade (SIGUSR2) and waits until a new process has
// written its PID there, like `nginx -s` does for its signals. A proxy
// whose upgrade failed writes its own PID there again (a new file, by
// rename), which ends the wait at once with the failure.
func requestUpgrade(pidFile string, stdout, stderr io.Writer) int {
	readPID := func() int {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return 0
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return pid
	}
	old := readPID()
	if old <= 0 {
		fmt.Fprintf(stderr, "tcpproxy: -upgrade: no PID in %s\n", pidFile)
		return 1
	}
	before, _ := os.Stat(pidFile)
	if err := syscall.Kill(old, syscall.SIGUSR2); err != nil {
		fmt.Fprintf(stderr, "tcpproxy: -upgrade: signal pid %d: %v\n", old, err)
		return 1
	}
	deadline := time.Now().Add(upgradeTimeout + 5*time.Second)
	for time.Now().Before(deadline) {
		pid := readPID()
		if pid > 0 && pid != old && syscall.Kill(pid, 0) == nil {
			fmt.Fprintf(stdout, "upgraded: pid %d -> %d (the old process drains its connections)\n", old, pid)
			return 0
		}
		if now, err := os.Stat(pidFile); pid == old && err == nil && before != nil && !os.SameFile(before, now) {
			fmt.Fprintf(stderr, "tcpproxy: -upgrade: the upgrade failed; pid %d carries on serving; see its log\n", old)
			return 1
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Fprintf(stderr, "tcpproxy: -upgrade: no new process took over from pid %d; see its log\n", old)
	return 1
}
