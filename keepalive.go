package main

import (
	"log/slog"
	"net"
	"time"

	"github.com/michaeldbianchi/tcpproxy/internal/relay"
)

// keepAlivePeriod is the keepalive an app's connections get: its
// keepalive setting with 0 meaning relay.DefaultKeepAlivePeriod, and
// -1 for off.
func keepAlivePeriod(d time.Duration) time.Duration {
	switch {
	case d < 0:
		return -1
	case d == 0:
		return relay.DefaultKeepAlivePeriod
	}
	return d
}

// targetDialer returns the dialer of an app's targets. Go sets the
// keepalive on the new socket right after connect (SO_KEEPALIVE and
// TCP_KEEPIDLE, as relay.SetKeepAlive does); a socket without it needs
// no system call at all, since a new socket has keepalive off.
func targetDialer(app *appConfig) net.Dialer {
	d := net.Dialer{Timeout: app.DialTimeout, KeepAlive: -1}
	if p := keepAlivePeriod(app.KeepAlive); p > 0 {
		d.KeepAliveConfig = net.KeepAliveConfig{Enable: true, Idle: p, Interval: -1, Count: -1}
	}
	return d
}

// noteKeepAlive records the keepalive of one more app on t's address:
// while every app there agrees, the listening socket carries it (see
// setListenKeepAlive) and accepted connections need no system call.
func (t *routeTable) noteKeepAlive(app *appConfig) {
	p := keepAlivePeriod(app.KeepAlive)
	if t.first.app == app {
		t.keepAlive = p
	} else if p != t.keepAlive {
		t.keepAliveMixed = true
	}
}

// markKeepAliveAtAccept tells each app of gen whether its clients come
// with its keepalive already set: when every address it listens on
// agrees on it, and the kernel copies a listening socket's keepalive to
// accepted ones (Linux).
func markKeepAliveAtAccept(gen []*failoverTarget, tables map[string]*routeTable) {
	for _, ft := range gen {
		ft.keepAliveAtAccept = listenKeepAliveInherited
		for _, addr := range ft.app.listenAddrs() {
			if tables[addr].keepAliveMixed {
				ft.keepAliveAtAccept = false
			}
		}
	}
}

// restoreKeepAlive gives c, accepted from a fileListener, the keepalive
// of its address's apps, which Go's accept replaced with its default.
// Where the apps disagree, the session sets each app's own.
func restoreKeepAlive(c *net.TCPConn, t *routeTable, log *slog.Logger) {
	if t.keepAliveMixed || !listenKeepAliveInherited {
		return
	}
	if err := relay.SetKeepAlive(c, t.keepAlive); err != nil {
		log.Debug("cannot set keepalive on an accepted connection", "err", err)
	}
}

// applyKeepAlive gives ln the keepalive of t, when t's apps agree on
// one, for the connections accepted from now on. A failure is logged:
// those connections keep what the socket had.
func applyKeepAlive(ln net.Listener, t *routeTable, log *slog.Logger) {
	if t.keepAliveMixed || !listenKeepAliveInherited {
		return
	}
	if err := setListenKeepAlive(ln, t.keepAlive); err != nil {
		log.Error("cannot set keepalive on the listening socket", "err", err)
	}
}
