package main

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// onSocket runs f on ln's socket descriptor and returns what went wrong:
// ln having no socket, the descriptor being closed, or f's error.
func onSocket(ln net.Listener, f func(fd int) error) error {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return fmt.Errorf("listener %T has no socket", ln)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	err = rc.Control(func(fd uintptr) { ferr = f(int(fd)) })
	return errors.Join(err, ferr)
}

// acceptQueueLen returns how many connections wait in ln's accept queue
// (TCP_INFO's tcpi_unacked, which Linux reports for a listening socket as
// its accept backlog), and false if the kernel would not say.
func acceptQueueLen(ln net.Listener) (int, bool) {
	var n int
	err := onSocket(ln, func(fd int) error {
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err == nil {
			n = int(info.Unacked)
		}
		return err
	})
	return n, err == nil
}

// enableReusePort sets SO_REUSEPORT on an open listening socket, so that
// a new socket with it can bind beside it (a reload moving a port from
// all interfaces to one address, or back) before it is closed.
func enableReusePort(ln net.Listener) error {
	err := onSocket(ln, func(fd int) error {
		return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return fmt.Errorf("set SO_REUSEPORT: %w", err)
	}
	return nil
}
