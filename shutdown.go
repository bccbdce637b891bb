package main

import (
	"context"
	"os"
	"syscall"
	"time"

	"github.com/michaeldbianchi/tcpproxy/internal/upgrade"
)

// stop drains and stops the proxy after reason (a signal's name, or
// "upgraded"): lameDuck for shutdown_delay unless upgraded, then the
// listeners close and open connections get shutdown_timeout; a further
// SIGTERM/SIGINT closes them at once.
func (d *daemon) stop(reason string, sigc <-chan os.Signal) {
	now := false
	if reason != "upgraded" { // an upgrade hands the sockets on: nothing to delay
		now = d.lameDuck(sigc)
	}
	d.log.Info("shutting down: listeners closed, draining connections", "reason", reason, "shutdown_timeout", d.shutdownTimeout.String(), "open", d.srv.active())
	ctx, cancel := context.WithTimeout(context.Background(), d.shutdownTimeout)
	defer cancel()
	if now {
		cancel()
	}
	go func() {
		// A second signal means "now": stop waiting for the drain.
		for sig := range sigc {
			if sig == syscall.SIGINT || sig == syscall.SIGTERM {
				d.log.Warn("second signal: closing remaining connections now", "signal", sig.String())
				cancel()
				return
			}
		}
	}()
	if d.admin != nil {
		d.admin.Shutdown(ctx)
	}
	drained, cut := d.srv.shutdown(ctx)
	if d.opts.pidFile != "" {
		upgrade.RemovePIDFile(d.opts.pidFile) // unless the new process wrote its own
	}
	d.log.Info("stopped", "drained", drained, "cut", cut)
}

// lameDuck is the first phase of a drain on SIGTERM/SIGINT (HAProxy's
// grace): /readyz turns 503 at once, so that load balancers and
// kube-proxy stop sending new clients, while the listeners keep
// accepting for shutdown_delay, so that no client is refused while that
// news propagates. It returns early, reporting true, when a second
// SIGTERM/SIGINT asks to stop now.
func (d *daemon) lameDuck(sigc <-chan os.Signal) (now bool) {
	d.srv.ready.Store(false)
	if d.shutdownDelay <= 0 {
		return false
	}
	d.log.Info("draining: /readyz answers 503, listeners keep accepting for shutdown_delay",
		"shutdown_delay", d.shutdownDelay.String(), "open", d.srv.active())
	t := time.NewTimer(d.shutdownDelay)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return false
		case sig := <-sigc:
			if sig == syscall.SIGINT || sig == syscall.SIGTERM {
				d.log.Warn("second signal: closing listeners and remaining connections now", "signal", sig.String())
				return true
			}
			d.log.Info("signal ignored while draining", "signal", sig.String())
		}
	}
}
