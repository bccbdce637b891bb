package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/michaeldbianchi/tcpproxy/internal/admin"
	"github.com/michaeldbianchi/tcpproxy/internal/upgrade"
)

// reload loads the config file again and applies it. An invalid file
// changes nothing: every error is logged and the old config keeps
// serving.
func (d *daemon) reload() {
	cfg, err := loadConfig(d.opts.configPath)
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
		return false
	}
	d.log.Info("upgrade: the new process is serving; this one stops accepting and drains", "new_pid", proc.Pid)
	return true
}

// requestUpgrade is `tcpproxy -upgrade`: it asks the proxy whose PID is
// in pidFile to upgrade (SIGUSR2) and waits until a new process has
// written its PID there, like `nginx -s` does for its signals.
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
	if err := syscall.Kill(old, syscall.SIGUSR2); err != nil {
		fmt.Fprintf(stderr, "tcpproxy: -upgrade: signal pid %d: %v\n", old, err)
		return 1
	}
	deadline := time.Now().Add(upgradeTimeout + 5*time.Second)
	for time.Now().Before(deadline) {
		if pid := readPID(); pid > 0 && pid != old && syscall.Kill(pid, 0) == nil {
			fmt.Fprintf(stdout, "upgraded: pid %d -> %d (the old process drains its connections)\n", old, pid)
			return 0
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Fprintf(stderr, "tcpproxy: -upgrade: no new process took over from pid %d; see its log\n", old)
	return 1
}

// fileWatcher reports changes to one file, including editors that write
// a new file and rename it over the old one.
type fileWatcher struct {
	w       *fsnotify.Watcher
	changes chan struct{}
	done    chan struct{}
}

// watchDebounce lets an editor finish a save (truncate, write, rename)
// before the file is read.
const watchDebounce = 100 * time.Millisecond

// watchFile watches path. It watches the directory, not the file: a
// rename-over replaces the inode a file watch would be attached to.
func watchFile(path string, log *slog.Logger) (*fileWatcher, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", path, err)
	}
	if err := w.Add(filepath.Dir(abs)); err != nil {
		w.Close()
		return nil, fmt.Errorf("watch %s: %w", filepath.Dir(abs), err)
	}
	fw := &fileWatcher{w: w, changes: make(chan struct{}, 1), done: make(chan struct{})}
	go fw.loop(abs, log)
	return fw, nil
}

func (fw *fileWatcher) loop(path string, log *slog.Logger) {
	defer close(fw.done)
	var timer <-chan time.Time
	for {
		select {
		case ev, ok := <-fw.w.Events:
			if !ok {
				return
			}
			// A Kubernetes ConfigMap volume swaps its "..data" symlink
			// instead of touching the file the config path names.
			name := filepath.Clean(ev.Name)
			if (name == path || filepath.Base(name) == "..data") && ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Rename) != 0 {
				timer = time.After(watchDebounce)
			}
		case err, ok := <-fw.w.Errors:
			if !ok {
				return
			}
			log.Warn("config watch", "err", err)
		case <-timer:
			timer = nil
			select {
			case fw.changes <- struct{}{}:
			default: // a reload is already pending
			}
		}
	}
}

// Close stops watching.
func (fw *fileWatcher) Close() error {
	err := fw.w.Close()
	<-fw.done
	return err
}
