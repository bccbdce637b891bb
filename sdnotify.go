package main

import (
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// The sd_notify protocol of systemd's Type=notify units, in the few
// lines it takes (no library): each state is one datagram of
// "KEY=VALUE" lines sent to the unix socket named by $NOTIFY_SOCKET (a
// leading "@" names an abstract socket, which Go's net package
// understands). Without the variable nothing is sent. The variable is
// left set: an upgraded process, started with this environment, needs
// it to tell systemd it is the main process now.
//
//   - READY=1 once every listener accepts (and the PID file is written);
//     after an upgrade "MAINPID=<pid>\nREADY=1", sent by the new process
//     before it tells the old one to stop accepting, so systemd follows
//     the new process before the old one exits. The unit needs
//     NotifyAccess=all for that: the new process is not yet the main one.
//   - "RELOADING=1\nMONOTONIC_USEC=<now>" when a reload starts, READY=1
//     when it is done (applied or refused).
//   - STOPPING=1 on SIGTERM/SIGINT; never from a process that handed its
//     sockets to a new one, which is no longer the service's main process.

// sdNotify sends state to the service manager, if there is one.
func sdNotify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify %s: %w", addr, err)
	}
	return nil
}

// notify sends state and logs a failure: the service manager's view is
// worth a warning, not a stop.
func (d *daemon) notify(state string) {
	if err := sdNotify(state); err != nil {
		d.log.Warn("cannot notify the service manager", "err", err)
	}
}

// notifyReady says the process serves; an upgraded one says it is the
// service's main process now.
func (d *daemon) notifyReady(upgraded bool) {
	if upgraded {
		d.notify(fmt.Sprintf("MAINPID=%d\nREADY=1", os.Getpid()))
		return
	}
	d.notify("READY=1")
}

// reloadNotifying runs reload (d.reload, or -watch's) between
// RELOADING=1 and READY=1.
func (d *daemon) reloadNotifying(reload func()) {
	d.notify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", monotonicUsec()))
	reload()
	d.notify("READY=1")
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, which systemd
// compares with its own to match a RELOADING=1 to the reload it asked
// for.
func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return time.Now().UnixMicro() // no better clock; systemd only warns
	}
	return ts.Nano() / 1000
}
