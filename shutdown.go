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
	if reason == "upgraded" {
		d.handedOver()
	} else { // an upgrade hands the sockets on: nothing to delay
		d.notify("STOPPING=1") // sdnotify.go; not after an upgrade, when this is no longer the main process
		now = d.lameDuck(sigc)
	}
	d.log.Info("shutting down: listeners closed, draining connections", "reason", reason, "shutdown_timeout", d.shutdownTimeout.String(), "open", d.srv.active())
	ctx, cancel := context.WithTimeout(context.Background(), d.shutdownTimeout)
	defer cancel()
	if now {
		cancel()
	}
	go d.secondSignal(sigc, cancel)
	// The listeners close first, and the admin server stays up while the
	// connections drain (/readyz 503, /healthz and /metrics as usual): its
	// own shutdown never spends the drain's budget.
	d.srv.stopAccepting()
	tally := d.srv.conns.startTally() // abort.go
	if reason != "upgraded" {
		d.srv.abortDials()
	}
	_, cut := d.srv.shutdown(ctx)
	drained, aborted := tally.drained(cut)
	d.stopAdmin()
	if d.opts.pidFile != "" {
		upgrade.RemovePIDFile(d.opts.pidFile) // unless the new process wrote its own
	}
	d.log.Info("stopped", "drained", drained, "cut", cut, "dials_aborted", aborted)
}

// handedOver stops serving the admin and pprof sockets once an upgrade
// succeeded: the new process serves them now, and answering there too,
// with this process's 503, would make readiness flap.
func (d *daemon) handedOver() {
	if d.admin != nil {
		go d.admin.Shutdown(context.Background())
	}
	if d.pprofLn != nil {
		d.pprofLn.Close()
	}
}

// secondSignal calls cancel on the next SIGTERM/SIGINT: a second signal
// means "now", stop waiting for the drain. Others (a reload, an upgrade)
// are logged and dropped.
func (d *daemon) secondSignal(sigc <-chan os.Signal, cancel context.CancelFunc) {
	for sig := range sigc {
		if sig == syscall.SIGINT || sig == syscall.SIGTERM {
			d.log.Warn("second signal: closing remaining connections now", "signal", sig.String())
			cancel()
			return
		}
		d.log.Info("signal ignored while draining", "signal", sig.String())
	}
}

// adminShutdownTimeout bounds how long the admin server's last requests
// (a scrape, a probe) may take once the connections have drained.
const adminShutdownTimeout = time.Second

// stopAdmin shuts the admin server down, if there is one, after the
// drain: in-flight requests get adminShutdownTimeout; the process exits
// next, which ends any still open.
func (d *daemon) stopAdmin() {
	if d.admin == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), adminShutdownTimeout)
	defer cancel()
	d.admin.Shutdown(ctx)
}

// pendingStop reads the signals that arrived while the loop was busy (an
// upgrade can take a minute) and reports the first SIGTERM or SIGINT
// among them: it is the first stop signal, to drain for, not the second
// that cuts. Other signals that arrived meanwhile are logged and dropped.
func (d *daemon) pendingStop(sigc <-chan os.Signal) (os.Signal, bool) {
	var stop os.Signal
	for {
		select {
		case sig := <-sigc:
			if (sig == syscall.SIGTERM || sig == syscall.SIGINT) && stop == nil {
				stop = sig
			} else if stop == nil {
				d.log.Warn("signal ignored: it arrived during an upgrade", "signal", sig.String())
			}
		default:
			return stop, stop != nil
		}
	}
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
