//go:build !linux

package relay

import "net"

// sendState is Linux-only (TCP_INFO, SIOCOUTQ); elsewhere a write in
// progress does not count as activity, and a stop never resets.
func sendState(c *net.TCPConn) (acked uint64, queued int, ok bool) { return 0, 0, false }
