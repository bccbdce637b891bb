package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"sync"
	"time"
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

// selfSignedCert returns a certificate for dnsNames with common name cn,
// signed by its own new ECDSA P-256 key and valid from an hour ago for a
// day. It lives in memory only: nothing is written to disk.
func selfSignedCert(cn string, dnsNames ...string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     dnsNames,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("create certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
