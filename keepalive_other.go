//go:build !linux

package main

import (
	"errors"
	"net"
	"time"
)

// listenKeepAliveInherited is false where we have not checked that
// accepted sockets inherit the listening socket's keepalive settings:
// there every accepted connection gets its keepalive by itself.
const listenKeepAliveInherited = false

// setListenKeepAlive is Linux-only (see listenKeepAliveInherited).
func setListenKeepAlive(net.Listener, time.Duration) error {
	return errors.New("keepalive on the listening socket: Linux only")
}
