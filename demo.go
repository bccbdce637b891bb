package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// startDemoBackends serves `-demo`: a backend on every loopback target
// of cfg, except one target left dead so that failover shows. The dead
// one is the last loopback target of the first app that has two or more.
// Targets of apps on an address routed by TLS server name get an HTTPS
// backend (see serveTLSDemo), unless the app terminates TLS; the others
// an echo backend that prefixes
// its replies with its own address, so the spread is visible. It returns
// a function that stops the backends.
func startDemoBackends(cfg *config, log *slog.Logger) (stop func(), err error) {
	dead := demoDeadTarget(cfg)
	tlsTargets := demoTLSTargets(cfg)
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
			serve, kind := serveEcho, "echo"
			if tlsTargets[addr] {
				serve, kind = serveTLSDemo, "https"
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				serve(ln, addr)
			}()
			log.Info("demo backend up", "target", addr, "kind", kind)
		}
	}
	if dead != "" {
		log.Info("demo backend left dead to show failover", "target", dead)
	}
	return stop, nil
}

// demoDeadTarget returns the target -demo leaves dead: the last loopback
// target of the first app that has two or more; "" if none has.
func demoDeadTarget(cfg *config) string {
	for _, a := range cfg.Apps {
		var loop []string
		for _, t := range a.Targets {
			if isLoopbackTarget(t.Address) {
				loop = append(loop, t.Address)
			}
		}
		if len(loop) >= 2 {
			return loop[len(loop)-1]
		}
	}
	return ""
}

// demoTLSTargets returns the targets of every app on a listen address
// that some app routes by TLS server name, unless the app terminates TLS
// itself: TLS passes through to them.
func demoTLSTargets(cfg *config) map[string]bool {
	sniAddrs := map[string]bool{}
	for _, a := range cfg.Apps {
		for _, addr := range a.listenAddrs() {
			sniAddrs[addr] = sniAddrs[addr] || len(a.SNI) > 0
		}
	}
	out := map[string]bool{}
	for _, a := range cfg.Apps {
		for _, addr := range a.listenAddrs() {
			if sniAddrs[addr] && a.TLS == nil {
				for _, t := range a.Targets {
					out[t.Address] = true
				}
			}
		}
	}
	return out
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

// serveTLSDemo serves HTTPS with a self-signed certificate whose subject
// names this backend, made at start and never written to disk. Each
// request is answered with the backend's address and the server name the
// client asked for, so curl shows which backend the SNI route chose and
// openssl s_client shows it in the certificate's subject.
func serveTLSDemo(ln net.Listener, name string) {
	cert, err := selfSignedCert("tcpproxy demo backend "+name, "localhost")
	if err != nil {
		ln.Close()
		return
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from demo backend %s (server name %q)\n", name, r.TLS.ServerName)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          stdlog.New(io.Discard, "", 0), // handshakes the demo's users abort
	}
	srv.Serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}}))
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

// selfSignedCert returns a certificate for dnsNames with common name cn,
// signed by its own new ECDSA P-256 key and valid from an hour ago for a
// day. It lives in memory only: nothing is written to disk.
func selfSignedCert(cn string, dnsNames ...string) (tls.Certificate, error) {
	der, key, err := newSelfSigned(cn, dnsNames, 24*time.Hour)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
