package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/michaeldbianchi/tcpproxy/internal/upgrade"
)

// upgradeTimeout bounds how long a new binary may take to start serving
// before the upgrade is abandoned and the old process carries on.
const upgradeTimeout = time.Minute

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
		pid, _ := upgrade.ReadPIDFile(pidFile)
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
