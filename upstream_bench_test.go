package main

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
)

// This file measures costs of inetaf/tcpproxy that only an upstream
// change can remove (BENCHMARKS.md, "Upstream").

// clientHello returns the ClientHello crypto/tls sends for server name
// sni, with its default key shares, as the library's SNI route peeks it.
func clientHello(b testing.TB, sni string) []byte {
	b.Helper()
	c1, c2 := net.Pipe()
	defer c1.Close()
	go tls.Client(c1, &tls.Config{ServerName: sni, InsecureSkipVerify: true}).Handshake()
	buf := make([]byte, 16<<10)
	n, err := io.ReadAtLeast(c2, buf, 5)
	for err == nil && n < 5+(int(buf[3])<<8|int(buf[4])) {
		var m int
		m, err = c2.Read(buf[n:])
		n += m
	}
	c2.Close()
	if err != nil {
		b.Fatal(err)
	}
	return buf[:n]
}

// sniffConn feeds a peeked ClientHello to crypto/tls, as the library's
// sniSniffConn does.
type sniffConn struct {
	r io.Reader
	net.Conn
}

func (c sniffConn) Read(p []byte) (int, error) { return c.r.Read(p) }
func (sniffConn) Write([]byte) (int, error)    { return 0, io.EOF }

var errNameFound = errors.New("server name found")

// sniffServerName is the library's clientHelloServerName (sni.go) as it
// is, with abort false: GetConfigForClient returns (nil, nil), so the
// server handshake goes on, computing its key shares, until it fails for
// want of a certificate. abort true is the one-line upstream change:
// return an error once the name is known.
func sniffServerName(hello []byte, abort bool) (sni string) {
	tls.Server(sniffConn{r: bytes.NewReader(hello)}, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			sni = h.ServerName
			if abort {
				return nil, errNameFound
			}
			return nil, nil
		},
	}).Handshake()
	return sni
}

// BenchmarkLibrarySNISniff: the CPU the library's SNI route spends per
// connection to read the server name, and what the upstream change saves.
//
//	go test -run '^$' -bench LibrarySNISniff -benchmem -count 3 .
func BenchmarkLibrarySNISniff(b *testing.B) {
	hello := clientHello(b, "a.bench.test")
	for _, tc := range []struct {
		name  string
		abort bool
	}{{"library", false}, {"abort_after_name", true}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if sniffServerName(hello, tc.abort) != "a.bench.test" {
					b.Fatal("server name not found")
				}
			}
		})
	}
}
