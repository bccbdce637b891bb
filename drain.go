package main

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/michaeldbianchi/tcpproxy/internal/admin"
)

// drainState is whether an operator drained a target through the admin
// API (POST /apps/{app}/targets/{address}/drain): a drained target gets
// no new connection, exactly like weight: 0, while its open connections
// finish. It lives in the target's targetState, so it survives a reload
// that keeps the target, and is lost on restart: the config is the
// source of truth. The zero value is not drained.
type drainState struct {
	drained atomic.Bool
}

// on reports whether the target is drained.
func (d *drainState) on() bool { return d.drained.Load() }

// set drains (true) or readies (false) the target.
func (d *drainState) set(drain bool) { d.drained.Store(drain) }

// errAllDrained is the dial error when no target could be tried because
// every one with a weight is drained.
var errAllDrained = errors.New("no target can take connections (every target is drained or has weight 0)")

// setDrain drains or readies the target address of app in the running
// config. It takes the server's lock so that it cannot race a reload.
func (s *proxyServer) setDrain(app, address string, drain bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ft := s.apps[app]
	if ft == nil {
		return fmt.Errorf("no app %q: %w", app, admin.ErrNotFound)
	}
	for i, t := range ft.app.Targets {
		if t.Address == address {
			ft.targets[i].drain.set(drain)
			return nil
		}
	}
	return fmt.Errorf("app %q has no target %q: %w", app, address, admin.ErrNotFound)
}
