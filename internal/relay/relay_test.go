package relay

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// send writes n pseudo-random bytes derived from seed to w and returns
// their SHA-256.
func send(w io.Writer, n int64, seed uint64) ([32]byte, error) {
	h := sha256.New()
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	buf := make([]byte, 256<<10)
	for n > 0 {
		b := buf[:min(n, int64(len(buf)))]
		rng.Read(b)
		h.Write(b)
		if _, err := w.Write(b); err != nil {
			return [32]byte{}, err
		}
		n -= int64(len(b))
	}
	return [32]byte(h.Sum(nil)), nil
}

// recv reads r to EOF and returns the byte count and SHA-256.
func recv(r io.Reader) (int64, [32]byte, error) {
	h := sha256.New()
	n, err := io.CopyBuffer(h, struct{ io.Reader }{r}, make([]byte, 256<<10))
	return n, [32]byte(h.Sum(nil)), err
}

type sent struct {
	sum [32]byte
	err error
}

// sendAndClose sends n bytes on c, then half-closes it.
func sendAndClose(c *net.TCPConn, n int64, seed uint64) <-chan sent {
	ch := make(chan sent, 1)
	go func() {
		sum, err := send(c, n, seed)
		if err == nil {
			err = c.CloseWrite()
		}
		ch <- sent{sum, err}
	}()
	return ch
}

func TestRelayBytes(t *testing.T) {
	sizes := []struct {
		name string
		n    int64
	}{
		{"0", 0},
		{"1", 1},
		{"100", 100},
		{"64KiB+1", 64<<10 + 1},
		{"64MiB", 64 << 20},
	}
	modes := []struct {
		mode mode
		idle time.Duration
	}{
		{modeRelay, 0},
		{modeRelay, time.Minute},
		{modeRelayCopy, 0},
	}
	ln := listen(t)
	for _, m := range modes {
		for _, sz := range sizes {
			name := m.mode.String() + "/" + sz.name
			if m.idle > 0 {
				name = m.mode.String() + "-idle/" + sz.name
			}
			t.Run(name, func(t *testing.T) {
				if testing.Short() && sz.n > 1<<20 {
					t.Skip("large transfer in -short mode")
				}
				client, server, p := setup(t, ln, m.mode, newIdle(m.idle))
				// Both directions at once, each ended by a half-close.
				up := sendAndClose(client, sz.n, 1)
				down := sendAndClose(server, sz.n, 2)
				gotUp, upSum, err := recv(server)
				if err != nil {
					t.Fatalf("server read: %v", err)
				}
				gotDown, downSum, err := recv(client)
				if err != nil {
					t.Fatalf("client read: %v", err)
				}
				for _, c := range []struct {
					dir      string
					got      int64
					gotSum   [32]byte
					sent     sent
					relayedN func() int64
				}{
					{"client->server", gotUp, upSum, <-up, p.front.(*Conn).BytesRead},
					{"server->client", gotDown, downSum, <-down, p.back.(*Conn).BytesRead},
				} {
					if c.sent.err != nil {
						t.Fatalf("%s: send: %v", c.dir, c.sent.err)
					}
					if c.got != sz.n || c.gotSum != c.sent.sum {
						t.Errorf("%s: got %d bytes, want %d; checksum match %v", c.dir, c.got, sz.n, c.gotSum == c.sent.sum)
					}
					<-p.done // BytesRead is final once the relay is done
					if got := c.relayedN(); got != sz.n {
						t.Errorf("%s: BytesRead = %d, want %d", c.dir, got, sz.n)
					}
				}
				for i, err := range p.errs {
					if err != nil {
						t.Errorf("relay direction %d: %v", i, err)
					}
				}
			})
		}
	}
}

// TestHalfClose checks that the reply still flows after the client has
// shut down its sending side and the server has seen EOF.
func TestHalfClose(t *testing.T) {
	ln := listen(t)
	for _, m := range []mode{modeRelay, modeRelayCopy} {
		t.Run(m.String(), func(t *testing.T) {
			client, server, p := setup(t, ln, m, nil)
			req := []byte("GET / HTTP/1.0\r\n\r\n")
			if _, err := client.Write(req); err != nil {
				t.Fatal(err)
			}
			if err := client.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(server) // EOF proves the half-close was relayed
			if err != nil || !bytes.Equal(got, req) {
				t.Fatalf("server got %q, %v; want %q", got, err, req)
			}
			const replySize = 1<<20 + 3 // long enough to go bulk
			sum := sendAndClose(server, replySize, 3)
			n, gotSum, err := recv(client)
			if err != nil {
				t.Fatal(err)
			}
			s := <-sum
			if s.err != nil {
				t.Fatal(s.err)
			}
			if n != replySize || gotSum != s.sum {
				t.Fatalf("client got %d bytes (checksum match %v), want %d", n, gotSum == s.sum, replySize)
			}
			<-p.done
			front, back := p.relayConns(t)
			if front.BytesRead() != int64(len(req)) || back.BytesRead() != replySize {
				t.Errorf("BytesRead = %d, %d; want %d, %d", front.BytesRead(), back.BytesRead(), len(req), replySize)
			}
		})
	}
}

// TestBytesReadConcurrent reads the counter while bytes move, for the
// race detector, and checks it only grows.
func TestBytesReadConcurrent(t *testing.T) {
	ln := listen(t)
	client, server, p := setup(t, ln, modeRelay, nil)
	front, _ := p.relayConns(t)
	const n = 8 << 20
	up := sendAndClose(client, n, 4)
	stop := make(chan struct{})
	scraped := make(chan error, 1)
	go func() {
		var last int64
		for {
			v := front.BytesRead()
			if v < last || v > n {
				scraped <- errors.New("BytesRead went backwards or past the total")
				return
			}
			last = v
			select {
			case <-stop:
				scraped <- nil
				return
			default:
			}
		}
	}()
	got, _, err := recv(server)
	close(stop)
	if err != nil || got != n {
		t.Fatalf("server got %d bytes, %v", got, err)
	}
	if s := <-up; s.err != nil {
		t.Fatal(s.err)
	}
	if err := <-scraped; err != nil {
		t.Fatal(err)
	}
	if front.BytesRead() != n {
		t.Fatalf("BytesRead = %d, want %d", front.BytesRead(), n)
	}
}

// TestReset checks that a reset by the peer ends WriteTo with the error.
func TestReset(t *testing.T) {
	ln := listen(t)
	client, server, p := setup(t, ln, modeRelay, nil)
	if err := client.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	client.Close() // sends RST
	// The relay half-closes towards the server, which then hangs up and
	// so ends the other direction.
	if _, err := io.ReadAll(server); err != nil {
		t.Fatal(err)
	}
	server.Close()
	<-p.done
	if !errors.Is(p.errs[0], syscall.ECONNRESET) {
		t.Fatalf("client->server relay error = %v, want ECONNRESET", p.errs[0])
	}
}

// TestDeadlinesUntouchedWithoutIdle shows that a nil Idle leaves deadlines
// alone: a deadline set by the caller still applies. With an Idle, WriteTo
// owns the deadline and replaces it.
func TestDeadlinesUntouchedWithoutIdle(t *testing.T) {
	ln := listen(t)
	for _, tc := range []struct {
		name         string
		idle         *Idle
		wantDeadline bool
	}{
		{"nil idle", nil, true},
		{"idle", newIdle(time.Hour), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			peer, c := connPair(t, ln)
			if err := c.SetReadDeadline(aLongTimeAgo); err != nil {
				t.Fatal(err)
			}
			rc := New(c, tc.idle)
			res := make(chan error, 1)
			go func() {
				_, err := rc.WriteTo(io.Discard)
				res <- err
			}()
			if !tc.wantDeadline {
				// WriteTo must be waiting on its own deadline, not
				// failing on ours; EOF ends it.
				peer.Write([]byte("x"))
				peer.CloseWrite()
			}
			err := <-res
			if got := errors.Is(err, os.ErrDeadlineExceeded); got != tc.wantDeadline {
				t.Fatalf("WriteTo error = %v; deadline exceeded %v, want %v", err, got, tc.wantDeadline)
			}
		})
	}
}

// TestCloseReadAfterEOF checks that CloseRead and CloseWrite make no
// system call once WriteTo has read EOF (on a closed socket, one would
// fail), and that CloseRead still shuts the socket down before that.
func TestCloseReadAfterEOF(t *testing.T) {
	ln := listen(t)
	peer, sock := connPair(t, ln)
	c := New(sock, nil)
	if _, err := peer.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := peer.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if n, err := c.WriteTo(&got); err != nil || n != 5 || got.String() != "hello" {
		t.Fatalf("WriteTo = %d, %v, %q; want 5, nil, hello", n, err, got.String())
	}
	sock.Close()
	if err := c.CloseRead(); err != nil {
		t.Errorf("CloseRead after EOF: %v, want nil and no system call", err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Errorf("CloseWrite after EOF: %v, want nil and no system call (the close sends the FIN)", err)
	}

	_, sock2 := connPair(t, ln)
	c2 := New(sock2, nil)
	sock2.Close()
	if err := c2.CloseRead(); err == nil {
		t.Error("CloseRead before EOF on a closed socket: nil, want the shutdown's error")
	}
}
