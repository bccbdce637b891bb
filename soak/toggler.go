//go:build linux

package main

import (
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"
)

// toggler is the fourth target, which never serves. It is either
// refusing (nothing listens on its port: a dial fails at once) or
// black-holing (a socket listens with backlog 0 and its accept queue is
// full of connections nobody accepts, so the kernel drops further SYNs
// and a dial hangs until the proxy's dial_timeout).
type toggler struct {
	port int

	mu      sync.Mutex
	fd      int        // the black hole's listening socket, or -1
	fillers []net.Conn // the never-accepted connections filling its queue
	toggles int
}

func newToggler(port int) *toggler { return &toggler{port: port, fd: -1} }

// addr is the target address.
func (t *toggler) addr() string { return fmt.Sprintf("127.0.0.1:%d", t.port) }

// toggle switches mode and returns the new one's name.
func (t *toggler) toggle() (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.toggles++
	if t.fd >= 0 {
		t.refuseLocked()
		return "refusing", nil
	}
	if err := t.blackHoleLocked(); err != nil {
		t.refuseLocked()
		return "", err
	}
	return "black-holing", nil
}

// refuse stops black-holing, for good at the end of the run.
func (t *toggler) refuse() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.refuseLocked()
}

func (t *toggler) refuseLocked() {
	if t.fd >= 0 {
		syscall.Close(t.fd) // resets the queued connections
		t.fd = -1
	}
	for _, c := range t.fillers {
		c.Close()
	}
	t.fillers = nil
}

// blackHoleLocked listens with backlog 0 (net.Listen would use
// somaxconn), then dials until a dial times out: by then the accept
// queue is full and SYNs are dropped. On Linux one queued connection
// fills a backlog-0 queue; the loop does not rely on that.
func (t *toggler) blackHoleLocked() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("black hole: socket: %w", err)
	}
	t.fd = fd
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
		return fmt.Errorf("black hole: SO_REUSEADDR: %w", err)
	}
	sa := &syscall.SockaddrInet4{Port: t.port, Addr: [4]byte{127, 0, 0, 1}}
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		err = syscall.Bind(fd, sa)
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("black hole: bind %s: %w", t.addr(), err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		return fmt.Errorf("black hole: listen: %w", err)
	}
	for range 8 {
		c, err := net.DialTimeout("tcp", t.addr(), 300*time.Millisecond)
		if isTimeout(err) {
			return nil // SYNs are dropped: a black hole
		}
		if err != nil {
			return fmt.Errorf("black hole: fill the accept queue: %w", err)
		}
		t.fillers = append(t.fillers, c)
	}
	return fmt.Errorf("black hole: %d connections queued and dials still complete", len(t.fillers))
}
