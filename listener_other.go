//go:build !linux

package main

import (
	"errors"
	"net"
)

// acceptQueueLen is Linux-only; elsewhere a retiring listener closes
// after its grace period, and connections still in its queue are reset.
func acceptQueueLen(net.Listener) (int, bool) { return 0, false }

// enableReusePort is Linux-only; elsewhere a reload that moves a port
// between all interfaces and one address fails while the old socket is
// open, and changes nothing.
func enableReusePort(net.Listener) error {
	return errors.New("SO_REUSEPORT beside an open socket: Linux only")
}
