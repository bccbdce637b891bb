//go:build linux

package main

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// entryKind is the way a client connection goes into the proxy. Beside
// the plain ports, the soak's config has a port shared by two apps that
// TLS server names route (SNI), and a port behind a make-believe load
// balancer: its clients send a PROXY header, as the load balancer would.
// Every backend checks what arrives before frame 0 against the entry
// the client took, so a connection routed to the wrong app, or a header
// lost or altered on the way, is counted as misrouted.
type entryKind uint8

const (
	entryPlain entryKind = iota // one of the plain ports: frames only
	// entrySNIA carries a ClientHello for sniNameA; its app, soak-sni-a,
	// sends nothing before it.
	entrySNIA
	// entrySNIB carries a ClientHello for sniNameB; its app, soak-sni-b,
	// sends a PROXY v1 header with the client's address before it.
	entrySNIB
	// entryProxy sends a PROXY v1 header naming a made-up client;
	// soak-pp trusts 127.0.0.1 to send it (proxy_protocol_from) and sends
	// it on to the backend unchanged (proxy_protocol: 1).
	entryProxy
	numEntries
)

// The TLS server names of the two SNI-routed apps.
const (
	sniNameA = "a.soak.test"
	sniNameB = "b.soak.test"
)

func (k entryKind) String() string {
	return [...]string{"plain", "SNI " + sniNameA, "SNI " + sniNameB, "PROXY header"}[k]
}

// entries is how the soak's clients pick an entry, and what each
// backend expects from a connection's entry.
type entries struct {
	plain     []string // plain proxy addresses
	sni, pp   string   // the SNI-routed and the PROXY-protocol address
	hello     [2][]byte
	made      [numEntries]atomic.Int64 // connections dialed, by entry
	mu        sync.Mutex
	preambles map[uint64][]byte // what the backend must see before frame 0, by conn id
}

func newEntries(plain []string, sni, pp string) (*entries, error) {
	e := &entries{plain: plain, sni: sni, pp: pp, preambles: map[uint64][]byte{}}
	for i, name := range []string{sniNameA, sniNameB} {
		h, err := clientHello(name)
		if err != nil {
			return nil, err
		}
		e.hello[i] = h
	}
	return e, nil
}

// pick returns the entry of a client's n-th connection: two in five go
// to the plain ports, one in five to each other entry.
func (e *entries) pick(n int) (string, entryKind) {
	switch k := entryKind(max(n%5-1, 0)); k {
	case entryPlain:
		return e.plain[n%len(e.plain)], k
	case entrySNIA, entrySNIB:
		return e.sni, k
	default:
		return e.pp, k
	}
}

// start writes the entry's preamble on c, the client's connection id,
// and records what the backend must see before frame 0.
func (e *entries) start(c *net.TCPConn, k entryKind, id uint64, deadline time.Time) error {
	e.made[k].Add(1)
	var send, want []byte
	local := c.LocalAddr().(*net.TCPAddr)
	remote := c.RemoteAddr().(*net.TCPAddr)
	switch k {
	case entrySNIA:
		send, want = e.hello[0], e.hello[0]
	case entrySNIB:
		send = e.hello[1]
		want = append(fmt.Appendf(nil, "PROXY TCP4 127.0.0.1 127.0.0.1 %d %d\r\n", local.Port, remote.Port), send...)
	case entryProxy:
		// A client address of the load balancer's: made up, never dialed.
		send = fmt.Appendf(nil, "PROXY TCP4 127.77.%d.%d 127.0.0.1 %d 443\r\n", id>>8&0xff, id&0xff, 1024+id%60000)
		want = send
	}
	e.mu.Lock()
	e.preambles[id] = want
	e.mu.Unlock()
	if len(send) == 0 {
		return nil
	}
	if err := c.SetWriteDeadline(deadline); err != nil {
		return fmt.Errorf("set write deadline: %w", err)
	}
	if _, err := c.Write(send); err != nil {
		return fmt.Errorf("write the %v preamble: %w", k, err)
	}
	return nil
}

// forget drops what start recorded, once the client is done.
func (e *entries) forget(id uint64) {
	e.mu.Lock()
	delete(e.preambles, id)
	e.mu.Unlock()
}

// check compares the preamble a backend read before frame 0 of
// connection id with what its entry must deliver; "" if it matches or
// the client is gone.
func (e *entries) check(id uint64, got []byte) string {
	e.mu.Lock()
	want, ok := e.preambles[id]
	e.mu.Unlock()
	if !ok || bytes.Equal(got, want) {
		return ""
	}
	return fmt.Sprintf("conn %d: the backend got %s before frame 0, want %s", id, describePreamble(got), describePreamble(want))
}

// describePreamble names a preamble for a failure line.
func describePreamble(p []byte) string {
	if len(p) == 0 {
		return "nothing"
	}
	desc := ""
	if i := bytes.IndexByte(p, '\n'); bytes.HasPrefix(p, []byte("PROXY ")) && i > 0 {
		desc, p = fmt.Sprintf("%q", p[:i+1]), p[i+1:]
	}
	if len(p) > 0 {
		desc = fmt.Sprintf("%s a %d-byte TLS record", desc, len(p))
	}
	return desc
}

// readPreamble reads what comes before frame 0 on a backend's
// connection: an optional PROXY v1 line, then an optional TLS record
// (the ClientHello). The first byte of frame 0 is handed to v. Frames
// start with a connection id far below 2^56, so their first byte is 0,
// neither 'P' nor a TLS handshake record's 0x16.
func readPreamble(c *net.TCPConn, v *verifier, deadline time.Time) ([]byte, error) {
	if err := c.SetReadDeadline(deadline); err != nil {
		return nil, fmt.Errorf("set read deadline: %w", err)
	}
	var pre []byte
	first, err := readByte(c)
	if err == nil && first == 'P' {
		if pre, err = readProxyLine(c); err == nil {
			first, err = readByte(c)
		}
	}
	if err == nil && first == 0x16 {
		var rec []byte
		if rec, err = readTLSRecord(c); err == nil {
			pre = append(pre, rec...)
			first, err = readByte(c)
		}
	}
	if err != nil {
		return pre, err
	}
	v.space()[0] = first
	_, err = v.consume(1)
	return pre, err
}

// readByte reads one byte from c.
func readByte(c *net.TCPConn) (byte, error) {
	var b [1]byte
	_, err := io.ReadFull(c, b[:])
	return b[0], err
}

// readProxyLine reads the rest of a PROXY v1 line whose 'P' was read,
// a byte at a time so that nothing behind it is taken.
func readProxyLine(c *net.TCPConn) ([]byte, error) {
	line := []byte{'P'}
	for line[len(line)-1] != '\n' {
		if len(line) >= 108 { // the longest v1 header
			return line, errors.New("PROXY line longer than 108 bytes")
		}
		b, err := readByte(c)
		if err != nil {
			return line, err
		}
		line = append(line, b)
	}
	return line, nil
}

// readTLSRecord reads the rest of a TLS record whose first byte (0x16)
// was read.
func readTLSRecord(c *net.TCPConn) ([]byte, error) {
	rec := make([]byte, 5)
	rec[0] = 0x16
	if _, err := io.ReadFull(c, rec[1:]); err != nil {
		return rec, err
	}
	rec = append(rec, make([]byte, int(rec[3])<<8|int(rec[4]))...)
	_, err := io.ReadFull(c, rec[5:])
	return rec, err
}

// clientHello returns the TLS ClientHello record that crypto/tls sends
// for server name sni: what the proxy routes by.
func clientHello(sni string) ([]byte, error) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	go tls.Client(c1, &tls.Config{ServerName: sni, InsecureSkipVerify: true}).Handshake()
	defer c2.Close()
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	head := make([]byte, 5)
	if _, err := io.ReadFull(c2, head); err != nil {
		return nil, fmt.Errorf("ClientHello for %s: %w", sni, err)
	}
	rec := append(head, make([]byte, int(head[3])<<8|int(head[4]))...)
	if _, err := io.ReadFull(c2, rec[5:]); err != nil {
		return nil, fmt.Errorf("ClientHello for %s: %w", sni, err)
	}
	return rec, nil
}

// misrouted counts a connection whose backend saw another entry's
// preamble: the proxy routed it to the wrong app, or lost or altered a
// header on the way.
func (l *ledger) misrouted(desc string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.c.Misrouted++
	l.detailLocked(time.Now(), "misrouted: %s", desc)
}
