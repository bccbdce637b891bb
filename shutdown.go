package main

import (
	"os"
	"syscall"
	"time"
)

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
