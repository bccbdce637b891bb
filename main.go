// Command tcpproxy is a configurable layer-4 (TCP) proxy and load
// balancer built on github.com/inetaf/tcpproxy. One YAML file declares
// apps; each app listens on several ports and forwards every connection
// to one of its targets, failing over to the others when a dial fails.
//
// Usage:
//
//	tcpproxy [-c config.yaml] [-check] [-demo] [-log-format text|json] [-version]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// version is set at link time (-ldflags "-X main.version=v1.2.3"); a
// binary built by `go install module@version` reports the module version.
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// options are the command-line flags.
type options struct {
	configPath string
	check      bool
	demo       bool
	logFormat  string
	version    bool
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	var o options
	fs := flag.NewFlagSet("tcpproxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.configPath, "c", "config.yaml", "config file `path`")
	fs.StringVar(&o.configPath, "config", "config.yaml", "config file `path` (same as -c)")
	fs.BoolVar(&o.check, "check", false, "validate the config, print a summary or every error, and exit 0 or 1")
	fs.BoolVar(&o.demo, "demo", false, "start in-process echo backends for the config's loopback targets (one left dead), then proxy")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: `text` or json")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return nil, fmt.Errorf("-log-format %q: must be text or json", o.logFormat)
	}
	return &o, nil
}

// run is main with its effects on the process made explicit, so that
// tests can call it. It returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	opts, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "tcpproxy:", err)
		return 2
	}
	if opts.version {
		fmt.Fprintln(stdout, "tcpproxy", buildVersion())
		return 0
	}

	cfg, err := loadConfig(opts.configPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if opts.check {
		fmt.Fprintln(stdout, cfg.summary())
		return 0
	}

	log := newLogger(stderr, opts.logFormat)
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
	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigc)

	srv, err := newProxyServer(cfg, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	if err := srv.start(); err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	log.Info("listening", "version", buildVersion(), "pid", os.Getpid())

	sig := <-sigc
	log.Info("shutting down: listeners closed, draining connections", "signal", sig.String(), "shutdown_timeout", cfg.ShutdownTimeout.String(), "open", srv.active())
	ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	go func() {
		// A second signal means "now": stop waiting for the drain.
		if sig, ok := <-sigc; ok {
			log.Warn("second signal: closing remaining connections now", "signal", sig.String())
			cancel()
		}
	}()
	drained, cut := srv.shutdown(ctx)
	log.Info("stopped", "drained", drained, "cut", cut)
	return 0
}

func newLogger(w io.Writer, format string) *slog.Logger {
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, nil))
	}
	return slog.New(slog.NewTextHandler(w, nil))
}

// buildVersion is the version this binary reports.
func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
