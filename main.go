// Command tcpproxy is a configurable layer-4 (TCP) proxy and load
// balancer built on github.com/inetaf/tcpproxy. One YAML file declares
// apps; each app listens on several ports and forwards every connection
// to one of its targets, failing over to the others when a dial fails.
//
// Usage:
//
//	tcpproxy [-c config.yaml] [-watch] [-pid-file PATH] [-log-format text|json] [-log-level LEVEL] [-pprof ADDR] [-demo]
//	tcpproxy -check|-t [-c config.yaml]
//	tcpproxy -upgrade -pid-file PATH
//	tcpproxy -version
//	tcpproxy -h
//
// The default of -c is $TCPPROXY_CONFIG, else ./config.yaml.
//
// It builds and runs on Linux and other Unix systems. Linux-only, with a
// fallback elsewhere: the length of a retiring listener's accept queue
// and SO_REUSEPORT on an open socket for a reload that moves a port
// between addresses (listener_linux.go, listener_other.go), keepalive
// set once on the listening socket, which Linux copies to accepted ones
// (keepalive_linux.go; per connection elsewhere), and the relay's splice
// (internal/relay). The tests are Linux-only.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// options are the command-line flags, and the environment variables
// that stand in for them.
type options struct {
	configPath string
	check      bool
	demo       bool
	watch      bool
	upgrade    bool
	pidFile    string
	pprofAddr  string
	logFormat  string
	logLevel   string // -log-level: debug, info (the default), warn or error
	version    bool
	// adminToken is TCPPROXY_ADMIN_TOKEN; when set it overrides the
	// config's admin_token.
	adminToken string
}

// Environment variables read at start.
const (
	envConfig     = "TCPPROXY_CONFIG"      // default for -c; the flag wins
	envAdminToken = "TCPPROXY_ADMIN_TOKEN" // overrides admin_token
)

// usageHead and usageTail are what -h prints around the flag list.
const usageHead = `tcpproxy: a layer-4 (TCP) proxy and load balancer.

Usage:
  tcpproxy [-c config.yaml] [-watch] [-pid-file PATH] [-log-format text|json] [-log-level LEVEL] [-pprof ADDR] [-demo]
  tcpproxy -check [-c config.yaml]      (or -t: validate the config and exit)
  tcpproxy -upgrade -pid-file PATH      (upgrade the running proxy to the binary on disk)
  tcpproxy -version

Flags:
`

const usageTail = `
Environment:
  TCPPROXY_CONFIG       default for -c (a -c or -config flag wins)
  TCPPROXY_ADMIN_TOKEN  bearer token for the admin API's POST endpoints (overrides admin_token)

Signals:
  SIGHUP           reload the config; an invalid one is logged and the running config kept
  SIGUSR2          upgrade to the binary on disk, handing over the listening sockets
  SIGTERM, SIGINT  drain: /readyz answers 503, listeners keep accepting for shutdown_delay,
                   then close; open connections get shutdown_timeout to finish
                   (a second SIGTERM/SIGINT closes what is left at once)

Documentation: README.md
`

// parseFlags parses args. getenv supplies the environment (os.Getenv in
// production). On -h it writes the usage to help and returns
// flag.ErrHelp.
func parseFlags(args []string, getenv func(string) string, help io.Writer) (*options, error) {
	o := options{adminToken: getenv(envAdminToken)}
	fs := newFlagSet(&o, getenv)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(help, usageHead)
			fs.SetOutput(help)
			fs.PrintDefaults()
			fmt.Fprint(help, usageTail)
		}
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return nil, fmt.Errorf("-log-format %q: must be text or json", o.logFormat)
	}
	if _, ok := logLevels[o.logLevel]; !ok {
		return nil, fmt.Errorf("-log-level %q: must be debug, info, warn or error", o.logLevel)
	}
	if o.adminToken != "" && !bearerTokenRE.MatchString(o.adminToken) {
		return nil, errors.New(envAdminToken + ": must be a bearer token of letters, digits and -._~+/")
	}
	if o.upgrade && o.pidFile == "" {
		return nil, errors.New("-upgrade needs -pid-file to find the running proxy")
	}
	return &o, nil
}

// newFlagSet declares every flag into o. The default of -c is
// $TCPPROXY_CONFIG, else ./config.yaml.
func newFlagSet(o *options, getenv func(string) string) *flag.FlagSet {
	fs := flag.NewFlagSet("tcpproxy", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // run reports errors itself; -h goes to stdout
	fs.Usage = func() {}
	config := "config.yaml"
	if env := getenv(envConfig); env != "" {
		config = env
	}
	fs.StringVar(&o.configPath, "c", config, "config file `path`; its default is $TCPPROXY_CONFIG when set")
	fs.StringVar(&o.configPath, "config", config, "config file `path` (same as -c)")
	fs.BoolVar(&o.check, "check", false, "validate the config, print a summary or every error, and exit 0 or 1")
	fs.BoolVar(&o.check, "t", false, "same as -check (as nginx -t)")
	fs.BoolVar(&o.demo, "demo", false, "start in-process backends for the config's loopback targets (HTTPS behind SNI passthrough routes, echo elsewhere; one left dead), then proxy")
	fs.BoolVar(&o.watch, "watch", false, "reload the config whenever the file, or a certificate, key or CA file it names, changes (as on SIGHUP)")
	fs.BoolVar(&o.upgrade, "upgrade", false, "upgrade the running proxy named by -pid-file to the binary on disk, without dropping a connection, and exit 0 when done")
	fs.StringVar(&o.pidFile, "pid-file", "", "write the process ID to `path` once serving (rewritten by an upgraded process)")
	fs.StringVar(&o.pprofAddr, "pprof", "", "serve net/http/pprof on `addr` (e.g. 127.0.0.1:6060), for profiling; off by default")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: `text` or json")
	fs.StringVar(&o.logLevel, "log-level", "info", "lowest `level` logged: debug (with the per-connection lines access_log: false puts there), info, warn or error")
	fs.BoolVar(&o.version, "version", false, "print the version, commit, build date, Go version and platform, and exit")
	return fs
}

// run is main with its effects on the process made explicit, so that
// tests can call it. It returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	opts, err := parseFlags(args, os.Getenv, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "tcpproxy:", err)
		fmt.Fprintln(stderr, "run 'tcpproxy -h' for usage")
		return 2
	}
	if opts.version {
		currentBuild().write(stdout)
		return 0
	}
	if opts.upgrade {
		return requestUpgrade(opts.pidFile, stdout, stderr)
	}

	cfg, err := loadConfig(opts.configPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if opts.check {
		for _, w := range cfg.Warnings {
			fmt.Fprintln(stderr, w)
		}
		fmt.Fprintln(stdout, cfg.summary())
		return 0
	}
	log := newLogger(stderr, opts.logFormat, logLevels[opts.logLevel])
	return serve(opts, cfg, log)
}

// logLevels are the values of -log-level (default info).
var logLevels = map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}

// newLogger returns the process's logger: text or JSON lines on w, from
// level up.
func newLogger(w io.Writer, format string, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
