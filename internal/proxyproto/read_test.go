package proxyproto

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// pair returns the two ends of a loopback TCP connection.
func pair(t *testing.T, host string) (client, server *net.TCPConn) {
	t.Helper()
	l := listen(t, host)
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept()
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// write sends chunks with a pause between them, as a slow client would.
func write(t *testing.T, c *net.TCPConn, pause time.Duration, chunks ...string) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		for i, chunk := range chunks {
			if i > 0 {
				time.Sleep(pause)
			}
			if _, err := c.Write([]byte(chunk)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	return done
}

// bytewise splits s into one-byte chunks.
func bytewise(s string) []string {
	chunks := make([]string, len(s))
	for i := range s {
		chunks[i] = s[i : i+1]
	}
	return chunks
}

// expectPayload checks that the next bytes on c are exactly payload and
// that nothing follows once the peer has closed its side.
func expectPayload(t *testing.T, c, peer *net.TCPConn, payload string) {
	t.Helper()
	if err := peer.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading payload: %v", err)
	}
	if string(got) != payload {
		t.Errorf("after the header the connection yielded %q, want %q", got, payload)
	}
}

func TestReadConsumesExactlyTheHeader(t *testing.T) {
	long := string(v2(0x21, famTCP4, -1, inet4("1.2.3.4", "5.6.7.8", 1111, 2222), tlv(0xE0, strings.Repeat("t", 1000))))
	longest := string(v2(0x21, famTCP4, -1, inet4("1.2.3.4", "5.6.7.8", 1111, 2222), make([]byte, v2MaxPayload-addrLenInet)))
	tests := []struct {
		name   string
		host   string
		chunks []string
		pause  time.Duration
		want   Header
		// payload is what follows the header in chunks.
		payload string
	}{
		{"v1 with payload in one write", "127.0.0.1",
			[]string{"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\nPROXY TCP4 payload"}, 0,
			Header{1, Proxy, ap("1.2.3.4:1111"), ap("5.6.7.8:2222")}, "PROXY TCP4 payload"},
		{"v1 on IPv6 loopback", "::1",
			[]string{"PROXY TCP6 2001:db8::1 2001:db8::2 1111 2222\r\nhello"}, 0,
			Header{1, Proxy, ap("[2001:db8::1]:1111"), ap("[2001:db8::2]:2222")}, "hello"},
		{"v1 UNKNOWN", "127.0.0.1", []string{"PROXY UNKNOWN\r\nhello"}, 0, Header{Version: 1, Command: Local}, "hello"},
		{"v2 with payload in one write", "127.0.0.1",
			[]string{string(v2(0x21, famTCP6, -1, inet6("2001:db8::1", "2001:db8::2", 1111, 2222))) + "\x00payload"}, 0,
			Header{2, Proxy, ap("[2001:db8::1]:1111"), ap("[2001:db8::2]:2222")}, "\x00payload"},
		{"v2 with long TLV grows the buffer", "127.0.0.1", []string{long + "payload"}, 0,
			Header{2, Proxy, ap("1.2.3.4:1111"), ap("5.6.7.8:2222")}, "payload"},
		{"v2 longest", "127.0.0.1", []string{longest + "payload"}, 0,
			Header{2, Proxy, ap("1.2.3.4:1111"), ap("5.6.7.8:2222")}, "payload"},
		{"v2 LOCAL", "127.0.0.1", []string{string(v2(0x20, famUnspec, -1)) + "payload"}, 0,
			Header{Version: 2, Command: Local}, "payload"},
		{"v1 one byte at a time", "127.0.0.1",
			append(bytewise("PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n"), "payload"), time.Millisecond,
			Header{1, Proxy, ap("1.2.3.4:1111"), ap("5.6.7.8:2222")}, "payload"},
		{"v2 one byte at a time", "127.0.0.1",
			append(bytewise(string(v2(0x21, famTCP4, -1, inet4("1.2.3.4", "5.6.7.8", 1111, 2222), tlv(1, "h2")))), "payload"), time.Millisecond,
			Header{2, Proxy, ap("1.2.3.4:1111"), ap("5.6.7.8:2222")}, "payload"},
		{"header and payload in one chunk after a pause", "127.0.0.1",
			[]string{"PROXY TCP4 1.2.3", ".4 5.6.7.8 1111 2222\r\npayload"}, 20 * time.Millisecond,
			Header{1, Proxy, ap("1.2.3.4:1111"), ap("5.6.7.8:2222")}, "payload"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.HasSuffix(strings.Join(tc.chunks, ""), tc.payload) {
				t.Fatalf("bad test case: chunks do not end in %q", tc.payload)
			}
			client, server := pair(t, tc.host)
			done := write(t, client, tc.pause, tc.chunks...)
			h, err := Read(server, time.Now().Add(10*time.Second))
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if h != tc.want {
				t.Errorf("Read = %+v, want %+v", h, tc.want)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			expectPayload(t, server, client, tc.payload)
		})
	}
}

func TestReadClearsDeadline(t *testing.T) {
	client, server := pair(t, "127.0.0.1")
	// The header is queued before Read starts, so Read finds it at once
	// however late a loaded machine runs this goroutine or a writer.
	if _, err := client.Write([]byte("PROXY UNKNOWN\r\n")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(300 * time.Millisecond)
	if _, err := Read(server, deadline); err != nil {
		t.Fatalf("Read: %v", err)
	}
	// The payload is sent once Read's deadline has passed (the clock is
	// what this waits for); a deadline left on the connection would fail
	// this read.
	time.Sleep(time.Until(deadline) + 50*time.Millisecond)
	if _, err := client.Write([]byte("late payload")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len("late payload"))
	if _, err := io.ReadFull(server, buf); err != nil {
		t.Fatalf("read after Read: %v", err)
	}
}

func TestReadErrors(t *testing.T) {
	tests := []struct {
		name      string
		chunks    []string // nil: send nothing
		close     bool     // close the client after the chunks
		timeout   time.Duration
		wantErr   error
		wantQuick bool // must fail well before the deadline
	}{
		{name: "no header", timeout: 100 * time.Millisecond, wantErr: os.ErrDeadlineExceeded},
		{name: "partial header then silence", chunks: []string{"PROXY TCP4 1.2.3.4 "},
			timeout: 100 * time.Millisecond, wantErr: os.ErrDeadlineExceeded},
		{name: "partial v2 header then silence", chunks: []string{string(v2(0x21, famTCP4, -1, inet4("1.2.3.4", "5.6.7.8", 1, 2)))[:20]},
			timeout: 100 * time.Millisecond, wantErr: os.ErrDeadlineExceeded},
		{name: "deadline already passed", chunks: []string{"PROXY UNKNOWN\r\n"},
			timeout: -time.Second, wantErr: os.ErrDeadlineExceeded},
		{name: "garbage", chunks: []string{"GET / HTTP/1.1\r\nHost: x\r\n\r\n"},
			timeout: 10 * time.Second, wantErr: errMalformed, wantQuick: true},
		{name: "garbage after a valid prefix", chunks: []string{"PROXY TCP4 1.2.3.4 ", "5.6.7.8 http"},
			timeout: 10 * time.Second, wantErr: errMalformed, wantQuick: true},
		{name: "v1 too long", chunks: []string{"PROXY UNKNOWN " + strings.Repeat("x", 200)},
			timeout: 10 * time.Second, wantErr: errMalformed, wantQuick: true},
		{name: "v2 closed within its TLVs", chunks: []string{string(v2(0x21, famTCP4, 0xffff, inet4("1.2.3.4", "5.6.7.8", 1, 2), make([]byte, 5000)))},
			close: true, timeout: 10 * time.Second, wantErr: io.ErrUnexpectedEOF, wantQuick: true},
		{name: "v2 TLVs then silence", chunks: []string{string(v2(0x21, famTCP4, 0xffff, inet4("1.2.3.4", "5.6.7.8", 1, 2), make([]byte, 5000)))},
			timeout: 100 * time.Millisecond, wantErr: os.ErrDeadlineExceeded},
		{name: "closed without a header", close: true,
			timeout: 10 * time.Second, wantErr: io.ErrUnexpectedEOF, wantQuick: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			client, server := pair(t, "127.0.0.1")
			if err := <-write(t, client, 10*time.Millisecond, tc.chunks...); err != nil {
				t.Fatal(err)
			}
			if tc.close {
				client.Close()
			}
			start := time.Now()
			h, err := Read(server, start.Add(tc.timeout))
			elapsed := time.Since(start)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Read = %+v, %v; want error %v", h, err, tc.wantErr)
			}
			if tc.wantQuick && elapsed > tc.timeout/2 {
				t.Errorf("Read took %v to fail, want well under the %v deadline", elapsed, tc.timeout)
			}
			if !tc.wantQuick && tc.timeout > 0 && elapsed < tc.timeout {
				t.Errorf("Read gave up after %v, before its %v deadline", elapsed, tc.timeout)
			}
			t.Log(err)
		})
	}
}

// TestPeekerDoesNotSpin guards the assumption that returning false after
// a peek that found bytes waits for the next arrival rather than spinning
// on data that is already queued.
func TestPeekerDoesNotSpin(t *testing.T) {
	client, server := pair(t, "127.0.0.1")
	header := "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n"
	chunks := []string{header[:10], header[10:20], header[20:30], header[30:]}
	done := write(t, client, 20*time.Millisecond, chunks...)

	rc, err := server.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	p := peeker{buf: make([]byte, peekLen)}
	calls := 0
	err = rc.Read(func(fd uintptr) bool {
		calls++
		return p.onReadable(fd)
	})
	if err != nil || p.err != nil {
		t.Fatalf("Read: %v, %v", err, p.err)
	}
	if p.n != len(header) {
		t.Errorf("peeked header length %d, want %d", p.n, len(header))
	}
	// Expect one call at the start and about one per arrival, plus the
	// odd extra for an edge already pending; a spinning callback would
	// run thousands of times in the pauses.
	if limit := 2 + 4*len(chunks); calls > limit {
		t.Errorf("callback ran %d times for %d chunks, want at most %d", calls, len(chunks), limit)
	}
	t.Logf("%d callbacks for %d chunks", calls, len(chunks))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestReadLongV2Header reads version 2 headers whose payload (address
// block and TLVs) is over 4,096 bytes, up to the 65,535 the protocol
// allows, in one write and in pieces, and checks that exactly the
// header is consumed and that Read buffers a bounded amount of it.
func TestReadLongV2Header(t *testing.T) {
	addrs := inet4("1.2.3.4", "5.6.7.8", 1111, 2222)
	want := Header{2, Proxy, ap("1.2.3.4:1111"), ap("5.6.7.8:2222")}
	for _, size := range []int{4097, 20000, 65535} {
		hdr := string(v2(0x21, famTCP4, -1, addrs, make([]byte, size-addrLenInet)))
		for _, pieces := range []int{1, 5} {
			t.Run(fmt.Sprintf("payload %d in %d pieces", size, pieces), func(t *testing.T) {
				chunks := split([]byte(hdr+"payload"), pieces)
				client, server := pair(t, "127.0.0.1")
				done := make(chan error, 1)
				go func() { // converts nothing, so allocations are Read's
					for _, chunk := range chunks {
						time.Sleep(5 * time.Millisecond)
						if _, err := client.Write(chunk); err != nil {
							done <- err
							return
						}
					}
					done <- nil
				}()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				h, err := Read(server, time.Now().Add(10*time.Second))
				runtime.ReadMemStats(&after)
				if err != nil {
					t.Fatalf("Read: %v", err)
				}
				if h != want {
					t.Errorf("Read = %+v, want %+v", h, want)
				}
				// The header is read in pieces, not buffered whole.
				if got := after.TotalAlloc - before.TotalAlloc; got > 16<<10 {
					t.Errorf("Read allocated %d bytes for a %d-byte header, want at most 16 KiB", got, len(hdr))
				}
				if err := <-done; err != nil {
					t.Fatal(err)
				}
				expectPayload(t, server, client, "payload")
			})
		}
	}
}

// split cuts s into n pieces of about equal length.
func split(s []byte, n int) [][]byte {
	var out [][]byte
	for i := range n {
		out = append(out, s[i*len(s)/n:(i+1)*len(s)/n])
	}
	return out
}
