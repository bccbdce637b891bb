package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
)

// startDemoBackends serves `-demo`: an echo backend on every loopback
// target of cfg, each prefixing its replies with its own address so the
// spread is visible, except one target left dead so that failover shows.
// The dead one is the last loopback target of the first app that has
// two or more. It returns a function that stops the backends.
func startDemoBackends(cfg *config, log *slog.Logger) (stop func(), err error) {
	dead := ""
	for _, a := range cfg.Apps {
		var loop []string
		for _, t := range a.Targets {
			if isLoopbackTarget(t.Address) {
				loop = append(loop, t.Address)
			}
		}
		if len(loop) >= 2 {
			dead = loop[len(loop)-1]
			break
		}
	}

	var (
		lns []net.Listener
		wg  sync.WaitGroup
	)
	stop = func() {
		for _, ln := range lns {
			ln.Close()
		}
		wg.Wait()
	}
	started := map[string]bool{}
	for _, a := range cfg.Apps {
		for _, t := range a.Targets {
			addr := t.Address
			if !isLoopbackTarget(addr) || started[addr] || addr == dead {
				continue
			}
			started[addr] = true
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				stop()
				return nil, fmt.Errorf("demo backend %s: %w", addr, err)
			}
			lns = append(lns, ln)
			wg.Add(1)
			go func() {
				defer wg.Done()
				serveEcho(ln, addr)
			}()
			log.Info("demo backend up", "target", addr)
		}
	}
	if dead != "" {
		log.Info("demo backend left dead to show failover", "target", dead)
	}
	return stop, nil
}

// serveEcho answers each connection with "[name] " and then echoes
// everything it reads until the client closes.
func serveEcho(ln net.Listener, name string) {
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		go func() {
			defer c.Close()
			if _, err := io.WriteString(c, "["+name+"] "); err != nil {
				return
			}
			io.Copy(c, c)
		}()
	}
}

// isLoopbackTarget reports whether a target's host is on this machine's
// loopback, the only place the demo may start backends.
func isLoopbackTarget(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
