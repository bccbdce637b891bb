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

	// Subscribe before listening so that a signal sent as soon as the
	// ports accept is not lost.
	sigc := make(chan os.Signal, 4)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGUSR2)
	defer signal.Stop(sigc)

	// Watch before listening, so that a change made as soon as the ports
	// accept is not missed.
	var (
		changes <-chan struct{}
		watcher *fileWatcher
	)
	if opts.watch {
		if watcher, err = watchFile(opts.configPath, log); err != nil {
			log.Error("cannot watch the config file", "err", err)
		} else {
			defer watcher.Close()
			changes = watcher.changes
		}
	}
	var certs *certWatcher
	if opts.watch {
		certs = watchCerts(cfg, log)
		defer certs.Close()
	}

	if err := checkNoFileLimit(cfg, log, inherited.HasParent()); err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	var pprofLn net.Listener
	if opts.pprofAddr != "" {
		if pprofLn, err = servePprof(opts.pprofAddr, inherited.Listener(pprofKey(opts.pprofAddr)), log); err != nil {
			log.Error("cannot start", "err", err)
			return 1
		}
	}
	d := &daemon{opts: opts, log: log, startCfg: cfg, shutdownTimeout: cfg.ShutdownTimeout, shutdownDelay: cfg.ShutdownDelay, pprofLn: pprofLn}
	d.adminToken.Store(&cfg.AdminToken)
	d.certs = certs
	if d.srv, err = startProxyServer(cfg, log, prodEnv(listenFunc(cfg.ReusePort, inherited.Listener))); err != nil {
		log.Error("cannot start", "err", explainNoFile(cfg, err))
		return 1
	}
	// The load at start is the first successful one: the status page's
	// "config loaded" and the last-reload metric start from it.
	d.reloads.loaded(time.Now())
	if cfg.Admin != "" {
		if err := d.startAdmin(inherited); err != nil {
			log.Error("cannot start", "err", err)
			d.srv.shutdown(context.Background())
			return 1
		}
	}
	// The PID file and systemd first, the previous process last: it may
	// exit at once, and then the service must already be this process.
	if opts.pidFile != "" {
		if err := upgrade.WritePIDFile(opts.pidFile); err != nil {
			log.Warn("write pid file", "err", err)
		}
	}
	d.notifyReady(inherited.HasParent()) // sdnotify.go
	if err := inherited.Ready(); err != nil {
		log.Warn("signal readiness to the previous process", "err", err)
	}
	log.Info("listening", "version", currentBuild().Version, "pid", os.Getpid(), "upgraded", inherited.HasParent())

	reason := ""
	for reason == "" {
		select {
		case <-changes:
			d.reloadNotifying(func() { d.reloadFromWatch(watcher) })
		case <-d.certs.Changes():
			d.reloadNotifying(d.reload)
		case sig := <-sigc:
			switch sig {
			case syscall.SIGHUP:
				d.reloadNotifying(d.reload)
			case syscall.SIGUSR2:
				upgraded := d.upgrade()
				if sig, ok := d.pendingStop(sigc); ok {
					log.Info("stop signal during the upgrade: draining", "signal", sig.String(), "upgraded", upgraded)
					reason = sig.String()
				}
				if upgraded {
					reason = "upgraded"
				}
			default:
				reason = sig.String()
			}
		}
	}

	d.stop(reason, sigc)
	return 0
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
