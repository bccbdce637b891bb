package upgrade

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// errInProgress is returned by Start while another Start of the same
// process runs.
var errInProgress = errors.New("upgrade already in progress")

// exitGrace is how long a child that closed the ready pipe without
// signalling gets to finish exiting before it is killed: its own exit
// status says more than our kill.
const exitGrace = time.Second

// self serializes the upgrades of this process. It is the package's only
// mutable global, because "one upgrade at a time" is a property of the
// process: two children started from the same listeners would both serve
// them, and nothing a caller could create twice can prevent that.
var self upgrader

// Start starts a new copy of the running binary and hands it the
// listeners, keyed by their listen address as the child will ask for them
// with Inherited.Listener.
//
// The binary is os.Executable() resolved now, so a file replaced on disk
// since this process started is the one that runs (replace it by rename;
// a retargeted symlink is not followed, because the kernel records the
// resolved path). The child gets the same arguments, stdout and stderr,
// and this environment plus the protocol's variables; stdin is /dev/null.
//
// Start returns once the child called Inherited.Ready. It fails if the
// child exits first, does not signal within timeout (timeout <= 0 means
// no limit but ctx), or ctx ends; a child that did not become ready is
// killed and reaped, and the listeners are untouched. ctx only bounds the
// wait: cancelling it after Start returned does not affect the child.
//
// On success the caller stops accepting (closing its listeners leaves the
// child's copies of the sockets open) and drains its connections. The
// returned process is not waited for; the caller may Wait on it. Once a
// Start succeeded, later calls fail: this process has handed its sockets
// over. While one Start runs, others return errInProgress.
func Start(ctx context.Context, listeners map[string]*net.TCPListener, timeout time.Duration) (*os.Process, error) {
	return self.start(ctx, listeners, timeout)
}

// upgrader lets one upgrade run at a time and none after a successful
// one.
type upgrader struct {
	mu       sync.Mutex
	running  bool
	handedTo int // pid of the child that took over; 0 if none did
}

func (u *upgrader) start(ctx context.Context, listeners map[string]*net.TCPListener, timeout time.Duration) (*os.Process, error) {
	if err := u.begin(); err != nil {
		return nil, err
	}
	proc, err := spawn(ctx, listeners, timeout)
	u.end(proc)
	return proc, err
}

func (u *upgrader) begin() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.running {
		return errInProgress
	}
	if u.handedTo != 0 {
		return fmt.Errorf("upgrade: listeners already handed to process %d", u.handedTo)
	}
	u.running = true
	return nil
}

func (u *upgrader) end(child *os.Process) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.running = false
	if child != nil {
		u.handedTo = child.Pid
	}
}

// spawn starts the child and waits for it to be ready.
func spawn(ctx context.Context, listeners map[string]*net.TCPListener, timeout time.Duration) (*os.Process, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("upgrade: %w", err)
	}
	path, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("upgrade: find executable: %w", err)
	}
	files, fdsVar, err := passListeners(listeners)
	if err != nil {
		return nil, err
	}
	rd, wr, err := os.Pipe()
	if err != nil {
		closeFiles(files)
		return nil, fmt.Errorf("upgrade: ready pipe: %w", err)
	}
	cmd := &exec.Cmd{
		Path:       path,
		Args:       slices.Clone(os.Args),
		Env:        childEnv(os.Environ(), fdsVar),
		Stdout:     os.Stdout,
		Stderr:     os.Stderr,
		ExtraFiles: append([]*os.File{wr}, files...),
	}
	err = cmd.Start()
	// Our copies go now: the pipe reads end-of-file only once every write
	// end is closed, and the socket duplicates would keep listeners open
	// after the caller closed them.
	wr.Close()
	closeFiles(files)
	defer rd.Close()
	if err != nil {
		return nil, fmt.Errorf("upgrade: start %s: %w", path, err)
	}
	if err := waitReady(ctx, rd, timeout); err != nil {
		return nil, abandon(cmd, err)
	}
	return cmd.Process, nil
}

// passListeners duplicates the listeners in address order and returns
// the duplicates (ExtraFiles[1:]) and the value of envFDs describing them.
func passListeners(listeners map[string]*net.TCPListener) ([]*os.File, string, error) {
	addrs := slices.Sorted(maps.Keys(listeners))
	files := make([]*os.File, 0, len(addrs))
	pairs := make([]string, 0, len(addrs))
	for i, addr := range addrs {
		f, err := dupListener(addr, listeners[addr])
		if err != nil {
			closeFiles(files)
			return nil, "", err
		}
		files = append(files, f)
		// ExtraFiles[0] is the ready pipe, at firstFD.
		pairs = append(pairs, addr+"="+strconv.Itoa(firstFD+1+i))
	}
	return files, strings.Join(pairs, ","), nil
}

// dupListener duplicates ln's socket for the child.
//
// It avoids (*net.TCPListener).File: os/exec calls Fd on every file it
// passes, and Fd on a File from package net puts the socket in blocking
// mode. That flag belongs to the open file description, which the
// parent's listener shares, so the parent's Accept would then sit in
// accept(2), where closing the listener cannot stop it. A raw duplicate
// wrapped by os.NewFile has no such side effect.
func dupListener(addr string, ln *net.TCPListener) (*os.File, error) {
	if addr == "" || strings.ContainsAny(addr, ",\x00") {
		return nil, fmt.Errorf("upgrade: listener address %q cannot be passed", addr)
	}
	if ln == nil {
		return nil, fmt.Errorf("upgrade: listener %s is nil", addr)
	}
	rc, err := ln.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("upgrade: listener %s: %w", addr, err)
	}
	dup := -1
	var dupErr error
	err = rc.Control(func(fd uintptr) {
		// Close-on-exec, atomically: a process started concurrently by
		// another goroutine must not inherit it.
		r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_DUPFD_CLOEXEC, 0)
		if errno != 0 {
			dupErr = errno
			return
		}
		dup = int(r)
	})
	if err == nil {
		err = dupErr
	}
	if err != nil {
		return nil, fmt.Errorf("upgrade: dup listener %s: %w", addr, err)
	}
	return os.NewFile(uintptr(dup), addr), nil
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// childEnv returns environ without stale protocol variables (left by a
// parent whose child never called FromEnv) plus the current ones.
func childEnv(environ []string, fdsVar string) []string {
	env := make([]string, 0, len(environ)+2)
	for _, kv := range environ {
		if strings.HasPrefix(kv, envReadyFD+"=") || strings.HasPrefix(kv, envFDs+"=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, envReadyFD+"="+strconv.Itoa(firstFD), envFDs+"="+fdsVar)
}

// errPipeClosed means the child closed the ready pipe, normally by
// exiting, without signalling.
var errPipeClosed = errors.New("ready pipe closed")

// waitReady waits for the child's ready byte on rd.
func waitReady(ctx context.Context, rd *os.File, timeout time.Duration) error {
	if timeout > 0 {
		if err := rd.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			return fmt.Errorf("ready pipe deadline: %w", err)
		}
	}
	// A read takes no context, but an expired deadline interrupts it.
	stop := context.AfterFunc(ctx, func() { rd.SetReadDeadline(time.Now()) })
	defer stop()
	var b [1]byte
	n, err := rd.Read(b[:])
	switch {
	case n == 1:
		return nil
	case errors.Is(err, io.EOF):
		return errPipeClosed
	case errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("not ready within %s: %w", timeout, err)
	default:
		return fmt.Errorf("read ready pipe: %w", err)
	}
}

// abandon ends a child that did not become ready and says why.
func abandon(cmd *exec.Cmd, cause error) error {
	pid := cmd.Process.Pid
	if errors.Is(cause, errPipeClosed) {
		return fmt.Errorf("upgrade: child %d exited before it was ready: %w", pid, reap(cmd, exitGrace))
	}
	return fmt.Errorf("upgrade: child %d: %w (killed: %v)", pid, cause, reap(cmd, 0))
}

// reap waits up to grace for the child to exit, kills it if it has not,
// and returns its exit status. Waiting happens in a goroutine so that the
// grace period can end it; either way the child is reaped, not left a
// zombie.
func reap(cmd *exec.Cmd, grace time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	if grace > 0 {
		timer := time.NewTimer(grace)
		defer timer.Stop()
		select {
		case err := <-done:
			return exitStatus(err)
		case <-timer.C:
		}
	}
	// Kill can only fail because the child already exited; Wait reports
	// how.
	cmd.Process.Kill()
	return exitStatus(<-done)
}

// exitStatus turns a nil Wait result into a readable status.
func exitStatus(err error) error {
	if err == nil {
		return errors.New("exit status 0")
	}
	return err
}
