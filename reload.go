package main

import (
	"strings"
	"sync/atomic"
	"time"

	"github.com/michaeldbianchi/tcpproxy/internal/stats"
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
			d.reloads.succeeded(time.Now())
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
	d.reloads.failed()
	for _, line := range strings.Split(err.Error(), "\n") {
		d.log.Error("config reload failed, keeping the running config", "err", line)
	}
}

// reloadCounts counts config loads after the first. The reload path
// (daemon.apply) alone writes them; the admin server reads them.
type reloadCounts struct {
	success, failure atomic.Int64
	lastSuccess      atomic.Int64 // unix nanos
}

// loaded records a config put in force at now: the one of the start, or
// a reload's.
func (r *reloadCounts) loaded(now time.Time) { r.lastSuccess.Store(now.UnixNano()) }

// succeeded records a reload that put its config in force at now.
func (r *reloadCounts) succeeded(now time.Time) {
	r.success.Add(1)
	r.loaded(now)
}

// failed records a reload that kept the running config.
func (r *reloadCounts) failed() { r.failure.Add(1) }

// stats returns the counts for metrics and status.
func (r *reloadCounts) stats() stats.Reloads {
	s := stats.Reloads{Success: r.success.Load(), Failure: r.failure.Load()}
	if t := r.lastSuccess.Load(); t != 0 {
		s.LastSuccess = time.Unix(0, t)
	}
	return s
}
