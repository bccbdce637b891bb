package upgrade

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// readyByte is what the child writes on the ready pipe. Any byte would
// do; the parent only distinguishes "one byte" from end-of-file.
const readyByte = 'R'

// Inherited is what a process got from the parent that started it: the
// listening sockets by address, and the pipe to report readiness on.
// All methods are safe on a nil *Inherited and on one from a process
// started normally; they then do nothing. Methods may be called from
// several goroutines.
type Inherited struct {
	mu        sync.Mutex
	parent    bool
	ready     *os.File // write end of the ready pipe; nil without parent or once Ready ran
	listeners map[string]net.Listener
	readyDone bool
	readyErr  error
}

// FromEnv takes over the listeners a parent passed to this process. Call
// it once, early in main, before anything starts other processes or opens
// files, because the passed descriptors are not close-on-exec until then.
// It removes the protocol's environment variables, so processes started
// later (including a later upgrade) start clean.
//
// It returns an empty *Inherited (HasParent false) when the process was
// started normally. If a passed descriptor is unusable, all of them are
// closed, which tells the parent at once that this start failed. A
// malformed variable closes nothing, since its numbers cannot be trusted;
// the parent's timeout then ends the attempt.
func FromEnv() (*Inherited, error) {
	readyVal, hasReady := os.LookupEnv(envReadyFD)
	fdsVal, hasFDs := os.LookupEnv(envFDs)
	if err := errors.Join(os.Unsetenv(envReadyFD), os.Unsetenv(envFDs)); err != nil {
		return nil, fmt.Errorf("upgrade: clear environment: %w", err)
	}
	if !hasReady && !hasFDs {
		return &Inherited{}, nil
	}
	if !hasReady {
		return nil, fmt.Errorf("upgrade: %s is set but %s is not", envFDs, envReadyFD)
	}
	// Parse everything before touching a descriptor: a malformed
	// variable says nothing reliable about which numbers are ours.
	readyFD, err := parseFD(readyVal)
	if err != nil {
		return nil, fmt.Errorf("upgrade: %s: %w", envReadyFD, err)
	}
	passed, err := parseFDs(fdsVal)
	if err != nil {
		return nil, fmt.Errorf("upgrade: %s: %w", envFDs, err)
	}
	for _, p := range passed {
		if p.fd == readyFD {
			return nil, fmt.Errorf("upgrade: %s: fd %d is also the ready fd", envFDs, p.fd)
		}
	}

	// The ready pipe must not leak into processes this one starts: a
	// grandchild holding it open would hide our death from the parent.
	syscall.CloseOnExec(readyFD)
	in := &Inherited{
		parent:    true,
		ready:     os.NewFile(uintptr(readyFD), "upgrade-ready"),
		listeners: make(map[string]net.Listener, len(passed)),
	}
	for i, p := range passed {
		ln, err := fileListener(p)
		if err != nil {
			for _, rest := range passed[i+1:] {
				syscall.Close(rest.fd)
			}
			in.closeAll()
			return nil, err
		}
		in.listeners[p.addr] = ln
	}
	return in, nil
}

// HasParent reports whether this process was started by Start.
func (in *Inherited) HasParent() bool {
	return in != nil && in.parent
}

// Listener returns the inherited listener for addr, or nil if none was
// passed for it. addr is the parent's key (the config's listen address,
// e.g. "127.0.0.1:5001" or ":5001"), or, for an address with a specific
// IP, any key whose socket is bound to that IP and port ("localhost:5001"
// in the parent's config, "127.0.0.1:5001" in this one's). A wildcard
// must match exactly: a socket bound to ":5001" is no substitute for
// "0.0.0.0:5001". The listener is removed from the set, so the caller
// owns it and Ready leaves it open. The returned value is a
// *net.TCPListener, ready to be passed to a later Start.
func (in *Inherited) Listener(addr string) net.Listener {
	if in == nil {
		return nil
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	key, ok := addr, in.listeners[addr] != nil
	if !ok {
		key, ok = in.boundTo(addr)
	}
	if !ok {
		return nil
	}
	ln := in.listeners[key]
	delete(in.listeners, key)
	return ln
}

// boundTo returns the key of an inherited listener bound to addr's
// specific IP and port.
func (in *Inherited) boundTo(addr string) (string, bool) {
	want, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil || want.IP == nil || want.IP.IsUnspecified() {
		return "", false
	}
	for key, ln := range in.listeners {
		if la, ok := ln.Addr().(*net.TCPAddr); ok && la.Port == want.Port && la.IP.Equal(want.IP) {
			return key, true
		}
	}
	return "", false
}

// Ready closes the inherited listeners nobody took (their ports left the
// config while the upgrade ran), then tells the parent this process
// serves, which lets the parent stop accepting. Call it once every
// configured listener is accepting. Later calls return the first call's
// result; Listener returns nil after Ready.
//
// An error writing to the parent (it died or gave up waiting) is returned
// for logging; this process keeps its listeners either way.
func (in *Inherited) Ready() error {
	if in == nil {
		return nil
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.readyDone {
		return in.readyErr
	}
	in.readyDone = true
	// Unused listeners go first so that, when Start returns in the
	// parent, the parent's copy is the last one and closing it frees the
	// port.
	errs := in.closeListeners()
	if in.ready != nil {
		if _, err := in.ready.Write([]byte{readyByte}); err != nil {
			errs = append(errs, fmt.Errorf("upgrade: tell parent ready: %w", err))
		}
		if err := in.ready.Close(); err != nil {
			errs = append(errs, fmt.Errorf("upgrade: close ready pipe: %w", err))
		}
		in.ready = nil
	}
	in.readyErr = errors.Join(errs...)
	return in.readyErr
}

// closeListeners closes and forgets the listeners nobody took.
// in.mu must be held.
func (in *Inherited) closeListeners() []error {
	var errs []error
	for addr, ln := range in.listeners {
		if err := ln.Close(); err != nil {
			errs = append(errs, fmt.Errorf("upgrade: close unused listener %s: %w", addr, err))
		}
	}
	in.listeners = nil
	return errs
}

// closeAll releases everything after a failed FromEnv. Closing the ready
// pipe without writing tells the parent at once that this start failed.
func (in *Inherited) closeAll() {
	in.closeListeners()
	in.ready.Close()
	in.ready = nil
}

// passedFD is one entry of envFDs.
type passedFD struct {
	addr string
	fd   int
}

// parseFDs parses "addr=fd,addr=fd". The fd follows the last '=', so an
// address could contain '='; it cannot contain ',' (Start refuses it).
func parseFDs(s string) ([]passedFD, error) {
	if s == "" {
		return nil, nil
	}
	var out []passedFD
	seenAddr := make(map[string]bool)
	seenFD := make(map[int]bool)
	for _, pair := range strings.Split(s, ",") {
		i := strings.LastIndexByte(pair, '=')
		if i <= 0 {
			return nil, fmt.Errorf("entry %q is not addr=fd", pair)
		}
		addr := pair[:i]
		fd, err := parseFD(pair[i+1:])
		if err != nil {
			return nil, fmt.Errorf("entry %q: %w", pair, err)
		}
		if seenAddr[addr] || seenFD[fd] {
			return nil, fmt.Errorf("entry %q: address or fd listed twice", pair)
		}
		seenAddr[addr], seenFD[fd] = true, true
		out = append(out, passedFD{addr: addr, fd: fd})
	}
	return out, nil
}

// parseFD parses a descriptor number. 0-2 are stdio and never passed.
func parseFD(s string) (int, error) {
	fd, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("fd %q: %w", s, err)
	}
	if fd < firstFD {
		return 0, fmt.Errorf("fd %d: below %d", fd, firstFD)
	}
	return fd, nil
}

// fileListener turns a passed descriptor into a listener and closes the
// descriptor: net.FileListener works on a duplicate, and the original,
// not being close-on-exec, would leak into every process we start.
func fileListener(p passedFD) (net.Listener, error) {
	f := os.NewFile(uintptr(p.fd), p.addr)
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("upgrade: inherited fd %d for %s: %w", p.fd, p.addr, err)
	}
	if _, ok := ln.(*net.TCPListener); !ok {
		ln.Close()
		return nil, fmt.Errorf("upgrade: inherited fd %d for %s is a %T, not a TCP listener", p.fd, p.addr, ln)
	}
	return ln, nil
}
