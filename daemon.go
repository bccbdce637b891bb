package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/michaeldbianchi/tcpproxy/internal/admin"
	"github.com/michaeldbianchi/tcpproxy/internal/stats"
	"github.com/michaeldbianchi/tcpproxy/internal/upgrade"
)

// daemon is the running process: the proxy, its admin server, and what
// a reload or an upgrade needs to know.
type daemon struct {
	opts            *options
	log             *slog.Logger
	startCfg        *config // process-wide settings are those of the start
	srv             *proxyServer
	admin           *admin.Server
	adminLn         net.Listener
	pprofLn         net.Listener // -pprof's socket, handed over on upgrade like the others
	shutdownTimeout time.Duration
	shutdownDelay   time.Duration
	adminToken      atomic.Pointer[string] // admin_token of the running config
	certs           *certWatcher           // -watch of the TLS files; nil without (tlswatch.go)
	reloads         reloadCounts           // written by the reload path alone (reload.go)
}

// serve runs the proxy until it is stopped or upgraded, and returns the
// exit status.
func serve(opts *options, cfg *config, log *slog.Logger) int {
	inherited, err := upgrade.FromEnv()
	if err != nil {
		log.Error("cannot take over listeners from the previous process", "err", err)
		return 1
	}
	logConfig(log, cfg)
	if opts.demo {
		stopDemo, err := startDemoBackends(cfg, log)
		if err != nil {
			log.Error("demo backends", "err", err)
			return 1
		}
		defer stopDemo()
	}
	// Subscribe and watch before listening, so that a signal sent or a
	// change made as soon as the ports accept is not lost.
	sigc := make(chan os.Signal, 4)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGUSR2)
	defer signal.Stop(sigc)
	w := startWatches(opts, cfg, log)
	defer w.Close()

	d, err := startDaemon(opts, cfg, log, inherited)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	d.certs = w.certs
	d.announce(inherited)
	d.stop(d.loop(sigc, w), sigc)
	return 0
}

// watches are -watch's: the config file (config is nil without -watch
// or if the file cannot be watched) and the TLS files it names (certs,
// nil without -watch).
type watches struct {
	config *fileWatcher
	certs  *certWatcher
}

// startWatches starts -watch's watchers, if opts asks for them.
func startWatches(opts *options, cfg *config, log *slog.Logger) *watches {
	w := &watches{}
	if !opts.watch {
		return w
	}
	var err error
	if w.config, err = watchFile(opts.configPath, log); err != nil {
		log.Error("cannot watch the config file", "err", err)
	}
	w.certs = watchCerts(cfg, log)
	return w
}

// configChanges fires when the config file changed; nil without.
func (w *watches) configChanges() <-chan struct{} {
	if w.config == nil {
		return nil
	}
	return w.config.changes
}

// Close stops the watchers.
func (w *watches) Close() error {
	if w.config != nil {
		w.config.Close()
	}
	return w.certs.Close()
}

// startDaemon checks the descriptor limit, then opens the pprof, proxy
// and admin sockets (those the previous process handed over, after an
// upgrade). On error, nothing is left open but the pprof socket, which
// the exit closes.
func startDaemon(opts *options, cfg *config, log *slog.Logger, inherited *upgrade.Inherited) (*daemon, error) {
	if err := checkNoFileLimit(cfg, log, inherited.HasParent()); err != nil {
		return nil, err
	}
	d := &daemon{opts: opts, log: log, startCfg: cfg, shutdownTimeout: cfg.ShutdownTimeout, shutdownDelay: cfg.ShutdownDelay}
	d.adminToken.Store(&cfg.AdminToken)
	if opts.pprofAddr != "" {
		var err error
		if d.pprofLn, err = servePprof(opts.pprofAddr, inherited.Listener(pprofKey(opts.pprofAddr)), log); err != nil {
			return nil, err
		}
	}
	var err error
	if d.srv, err = startProxyServer(cfg, log, prodEnv(listenFunc(cfg.ReusePort, inherited.Listener))); err != nil {
		return nil, explainNoFile(cfg, err)
	}
	// The load at start is the first successful one: the status page's
	// "config loaded" and the last-reload metric start from it.
	d.reloads.loaded(time.Now())
	if cfg.Admin != "" {
		if err := d.startAdmin(inherited); err != nil {
			d.srv.shutdown(context.Background())
			return nil, err
		}
	}
	return d, nil
}

// announce tells that this process serves: the PID file and systemd
// first, the previous process last (it may exit at once, and then the
// service must already be this process), then the log.
func (d *daemon) announce(inherited *upgrade.Inherited) {
	if d.opts.pidFile != "" {
		if err := upgrade.WritePIDFile(d.opts.pidFile); err != nil {
			d.log.Warn("write pid file", "err", err)
		}
	}
	d.notifyReady(inherited.HasParent()) // sdnotify.go
	if err := inherited.Ready(); err != nil {
		d.log.Warn("signal readiness to the previous process", "err", err)
	}
	d.log.Info("listening", "version", currentBuild().Version, "pid", os.Getpid(), "upgraded", inherited.HasParent())
}

// loop reloads and upgrades as signals and watchers ask until a stop
// signal or a successful upgrade, and returns why it stopped.
func (d *daemon) loop(sigc <-chan os.Signal, w *watches) (reason string) {
	for reason == "" {
		select {
		case <-w.configChanges():
			d.reloadNotifying(func() { d.reloadFromWatch(w.config) })
		case <-d.certs.Changes():
			d.reloadNotifying(d.reload)
		case sig := <-sigc:
			reason = d.onSignal(sig, sigc)
		}
	}
	return reason
}

// onSignal acts on sig: SIGHUP reloads, SIGUSR2 upgrades, any other
// stops. It returns why the process stops, or "" if it serves on.
func (d *daemon) onSignal(sig os.Signal, sigc <-chan os.Signal) (reason string) {
	switch sig {
	case syscall.SIGHUP:
		d.reloadNotifying(d.reload)
	case syscall.SIGUSR2:
		upgraded := d.upgrade()
		if sig, ok := d.pendingStop(sigc); ok {
			d.log.Info("stop signal during the upgrade: draining", "signal", sig.String(), "upgraded", upgraded)
			reason = sig.String()
		}
		if upgraded {
			reason = "upgraded"
		}
	default:
		reason = sig.String()
	}
	return reason
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
		Snapshot: d.snapshot,
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

// snapshot is the server's state and the reload counts, for the admin
// server.
func (d *daemon) snapshot() stats.Snapshot {
	snap := d.srv.snapshot()
	snap.Reloads = d.reloads.stats()
	return snap
}

// servePprof serves the runtime profiles on addr (on ln if the process
// this one upgraded handed its socket over), on a mux of its own so that
// they never appear on the admin address by accident.
func servePprof(addr string, ln net.Listener, log *slog.Logger) (net.Listener, error) {
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", addr); err != nil {
			return nil, fmt.Errorf("pprof: listen on %s: %w", addr, unwrapOpError(err))
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	go http.Serve(ln, mux)
	log.Info("pprof listening", "addr", ln.Addr().String())
	return ln, nil
}

// pprofKey names the -pprof listener among the sockets an upgrade hands
// over.
func pprofKey(addr string) string { return "pprof " + addr }
