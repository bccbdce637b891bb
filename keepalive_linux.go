package main

import (
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// listenKeepAliveInherited reports whether an accepted socket starts
// with its listening socket's SO_KEEPALIVE and TCP_KEEPIDLE: on Linux
// the accepted socket is a copy of the listening one, options included,
// and its keepalive timer starts at once when SO_KEEPALIVE is on.
const listenKeepAliveInherited = true

// setListenKeepAlive sets SO_KEEPALIVE, and TCP_KEEPIDLE to period
// rounded up to seconds, on ln's socket; period < 0 turns keepalive off.
func setListenKeepAlive(ln net.Listener, period time.Duration) error {
	err := onSocket(ln, func(fd int) error {
		if period < 0 {
			return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 0)
		}
		secs := int((period + time.Second - 1) / time.Second)
		return errors.Join(
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1),
			unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs))
	})
	if err != nil {
		return fmt.Errorf("set keepalive: %w", err)
	}
	return nil
}
