package main

import (
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"time"
)

// A PROXY header names the client, so whoever sends one chooses the
// address that allow/deny, hash and the logs see. accept_proxy_protocol
// therefore needs proxy_protocol_from, the addresses of the load
// balancers allowed to send it (nginx's set_real_ip_from, Traefik's
// proxyProtocol.trustedIPs); there is no default. A connection from
// anywhere else is closed at accept, before a byte of it is read or a
// target dialed, counted as rejected with reason "untrusted_proxy", and
// logged at most once a second per app.

// resultUntrusted is the access log's result for a connection whose
// sender is outside proxy_protocol_from.
const resultUntrusted = "rejected: untrusted proxy"

// proxyProtocolFrom resolves proxy_protocol_from, and requires it of an
// app with accept_proxy_protocol: true.
func (v *validator) proxyProtocolFrom(app *appConfig, pick optionPicker, label string) {
	o, n, set := pick("proxy_protocol_from", func(o *appOptions) bool { return o.ProxyProtocolFrom != nil })
	if set {
		app.ProxyProtocolFrom = v.prefixes(*o.ProxyProtocolFrom, n, label+": proxy_protocol_from")
		if len(*o.ProxyProtocolFrom) == 0 {
			v.errorf(n, "%s: proxy_protocol_from: empty: list the addresses or CIDRs of the load balancers that send the header", label)
		}
	}
	_, an, _ := pick("accept_proxy_protocol", func(o *appOptions) bool { return o.AcceptProxy != nil })
	switch {
	case app.AcceptProxyProtocol && !set:
		v.errorf(an, "%s: accept_proxy_protocol: true needs proxy_protocol_from: the addresses or CIDRs of the load balancers that send the header (anyone else could choose the client address that allow/deny, hash and the logs see)", label)
	case set && !app.AcceptProxyProtocol && n != v.node("defaults", "proxy_protocol_from"):
		// Only where the app sets it: in defaults: it may serve other apps.
		v.warnf(n, "%s: proxy_protocol_from has no effect without accept_proxy_protocol: true", label)
	}
}

// sameProxyProtocolFrom reports apps sharing addr that trust different
// PROXY header senders: the sender is checked at accept, before the
// name that picks the app is read.
func (v *validator) sameProxyProtocolFrom(first, app *appConfig, addr string) {
	if first.AcceptProxyProtocol && app.AcceptProxyProtocol && !slices.Equal(first.ProxyProtocolFrom, app.ProxyProtocolFrom) {
		v.errorf(v.appNodes[app], "app %q: proxy_protocol_from differs from app %q on the shared listen address %s (the sender is checked at accept, before the app is known; set it in defaults:)", app.Name, first.Name, addr)
	}
}

// trustedSender reports whether peer, a client's own address, may send
// a PROXY header under from.
func trustedSender(from []netip.Prefix, peer netip.Addr) bool {
	peer = peer.Unmap()
	for _, p := range from {
		if p.Contains(peer) {
			return true
		}
	}
	return false
}

// untrusted reports whether the app takes PROXY headers and c's sender
// is not allowed to send one.
func (ft *failoverTarget) untrusted(c *net.TCPConn) bool {
	return ft.app.AcceptProxyProtocol && !trustedSender(ft.app.ProxyProtocolFrom, peerAddr(c.RemoteAddr()).Addr())
}

// countUntrusted counts and logs (rate-limited) a client closed because
// its sender is outside proxy_protocol_from.
func (ft *failoverTarget) countUntrusted(client netip.AddrPort) {
	st := ft.stats
	st.rejectedUntrusted.Add(1)
	st.logs.untrusted.log(ft.log, slog.LevelWarn, "untrusted PROXY protocol sender, closing it",
		"client", client.String(), "reason", "untrusted_proxy", "rejected_total", st.rejectedUntrusted.Load())
}

// rejectUntrustedAtAccept closes c, a client of a name-routed address
// whose sender is outside the address's proxy_protocol_from, before the
// library reads a byte of it. The app is not known yet, so the
// rejection is counted against, and logged for, the address's default
// app, or else the first app on the address in the config. It reports
// whether c was rejected.
func (t *routeTable) rejectUntrustedAtAccept(c *net.TCPConn) bool {
	ft := t.def
	if ft == nil {
		ft = t.first
	}
	if ft == nil || !ft.untrusted(c) {
		return false
	}
	start := time.Now()
	ft.stats.accepted.Add(1)
	ft.countUntrusted(peerAddr(c.RemoteAddr()))
	lingerClose(c)
	ft.accessLog(c, start, &connInfo{client: peerAddr(c.RemoteAddr()), result: resultUntrusted})
	return true
}
