package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"syscall"
	"time"
)

// Accept backoff bounds: start small so that a brief descriptor
// shortage costs little, and stay short so that the proxy serves again
// soon after descriptors free up.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = 200 * time.Millisecond
)

var _ net.Listener = (*retryListener)(nil)

// retryListener keeps accepting through errors that pass. The library's
// accept loop ends for good on the first Accept error, so running out of
// descriptors (EMFILE, ENFILE) or a connection aborted before it was
// accepted would otherwise close the port until a restart. Here Accept
// backs off, logs at most once a second, and tries again.
type retryListener struct {
	*net.TCPListener
	log     *slog.Logger
	lastLog atomic.Int64 // unix nanos
	// fromFile is set on a fileListener's socket: see there.
	fromFile bool
}

func newRetryListener(ln net.Listener, log *slog.Logger) net.Listener {
	switch l := ln.(type) {
	case *net.TCPListener:
		return &retryListener{TCPListener: l, log: log}
	case fileListener:
		return &retryListener{TCPListener: l.TCPListener, log: log, fromFile: true}
	}
	return ln
}

// fileListener marks a listener made by net.FileListener: a socket an
// upgrade handed over, or a duplicate of a running route's (dupListener).
// Go accepts on it with the zero ListenConfig, so every connection it
// accepts gets Go's default keepalive (15 s), whatever the listening
// socket carries; the route sets each one's again (restoreKeepAlive).
type fileListener struct{ *net.TCPListener }

// Accept implements net.Listener.
func (l *retryListener) Accept() (net.Conn, error) {
	backoff := acceptBackoffMin
	for {
		c, err := l.TCPListener.AcceptTCP()
		if err == nil {
			return c, nil
		}
		if !temporaryAcceptError(err) {
			return nil, err
		}
		now := time.Now().UnixNano()
		if last := l.lastLog.Load(); now-last >= int64(time.Second) && l.lastLog.CompareAndSwap(last, now) {
			l.log.Error("accept failed, backing off", "err", unwrapOpError(err), "backoff", backoff.String())
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, acceptBackoffMax)
	}
}

// temporaryAcceptError reports whether an accept error passes by itself.
func temporaryAcceptError(err error) bool {
	return localResourceError(err) || errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPROTO)
}

// localResourceError reports whether err is this process or host running
// out of descriptors or memory: nothing a peer did, and it passes.
func localResourceError(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// listenFunc returns how the proxy opens a listening socket: a socket
// handed over by the process this one upgraded, if there is one for the
// address, else a new one, with SO_REUSEPORT if reusePort.
func listenFunc(reusePort bool, inherited func(addr string) net.Listener) func(network, addr string) (net.Listener, error) {
	lc := net.ListenConfig{
		KeepAlive: -1, // set per connection by the relay, with the app's period
	}
	if reusePort {
		lc.Control = setReusePort
	}
	return func(network, addr string) (net.Listener, error) {
		if inherited != nil {
			if ln := inherited(addr); ln != nil {
				if tl, ok := ln.(*net.TCPListener); ok {
					return fileListener{tl}, nil
				}
				return ln, nil
			}
		}
		return lc.Listen(context.Background(), network, addr)
	}
}

// setReusePort sets SO_REUSEPORT, so that several processes can listen
// on the same port and the kernel spreads connections among them.
func setReusePort(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, 0xf /* SO_REUSEPORT */, 1)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("set SO_REUSEPORT: %w", err)
	}
	return nil
}
