package relay

import (
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// Run with: go test -run '^$' -bench . -benchmem ./internal/relay
//
// Medians of 5 runs on a loaded 2-vCPU VM (absolute MB/s swing 2x with
// the load; compare within one run):
//
//	Throughput  plain       784 MB/s  1223 CPU-us/MiB
//	            relay       830 MB/s  1095 CPU-us/MiB
//	            relay-idle  916 MB/s  1012 CPU-us/MiB
//	            userspace   583 MB/s  1780 CPU-us/MiB
//	PingPong    plain 40.3 us, relay 39.1 us, relay-idle 39.4 us, userspace 42.9 us
//
// The chunk-size figures are in wait.go next to smallSize and maxChunk.
//
// stream is a Stream over the plain socket: what a terminated TLS side
// costs the relay without the crypto (a copy through a 16 KiB buffer
// instead of splice). Medians of 5 at -benchtime 20x, one run:
// relay-idle 2201 MB/s 685 CPU-us/MiB, stream 1016 MB/s 1522 CPU-us/MiB.

var benchModes = []struct {
	name string
	mode mode
	idle time.Duration
}{
	{"plain", modePlain, 0},
	{"relay", modeRelay, 0},
	{"relay-idle", modeRelay, time.Minute},
	{"userspace", modeUserspace, 0},
	{"stream", modeStream, time.Minute},
}

// BenchmarkThroughput streams 64 MiB per op one way, client -> server.
// The client sends with sendfile and the server drains into /dev/null with
// splice, so the endpoints copy nothing and the relay's cost shows. Besides
// MB/s it reports the process's CPU time per MiB, which is steadier than
// wall time on a small, shared machine.
func BenchmarkThroughput(b *testing.B) {
	for _, bm := range benchModes {
		b.Run(bm.name, func(b *testing.B) {
			benchStream(b, bm.mode, newIdle(bm.idle))
		})
	}
}

func benchStream(b *testing.B, m mode, idle *Idle) {
	const size = 64 << 20
	src, err := os.CreateTemp(b.TempDir(), "payload")
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	if err := src.Truncate(size); err != nil {
		b.Fatal(err)
	}
	sink, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()

	ln := listen(b)
	client, server, _ := setup(b, ln, m, idle)
	total := int64(b.N) * size
	drained := make(chan error, 1)
	go func() {
		n, err := sink.ReadFrom(io.LimitReader(server, total))
		if err == nil && n < total {
			err = io.ErrUnexpectedEOF
		}
		drained <- err
	}()
	b.SetBytes(size)
	cpu := cpuTime(b)
	b.ResetTimer()
	for range b.N {
		if _, err := src.Seek(0, io.SeekStart); err != nil {
			b.Fatal(err)
		}
		if _, err := client.ReadFrom(src); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-drained; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuTime(b)-cpu).Microseconds())/float64(total>>20), "cpu-us/MiB")
}

// cpuTime is the user+system CPU time used by the process so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPingPong is one round trip of a 64-byte message through the
// relay to an echo server.
func BenchmarkPingPong(b *testing.B) {
	for _, bm := range benchModes {
		b.Run(bm.name, func(b *testing.B) {
			benchPingPong(b, bm.mode, newIdle(bm.idle), 64)
		})
	}
}

func benchPingPong(b *testing.B, m mode, idle *Idle, size int) {
	ln := listen(b)
	client, server, _ := setup(b, ln, m, idle)
	go echo(server, size)
	msg := make([]byte, size)
	b.SetBytes(int64(2 * size))
	cpu := cpuTime(b)
	b.ResetTimer()
	for range b.N {
		if _, err := client.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(client, msg); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuTime(b)-cpu).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

func echo(c net.Conn, size int) {
	buf := make([]byte, size)
	for {
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

// BenchmarkChunkCost compares the two ways WriteTo moves one chunk that is
// already queued: read+write through a buffer, or SIOCINQ plus splice in
// and out. step-ns is the time of that step alone; the ns/op around it
// includes sending and draining the chunk. It is what smallSize is based
// on.
func BenchmarkChunkCost(b *testing.B) {
	for _, size := range []int{512, 4 << 10, 16 << 10, 32 << 10, 64 << 10} {
		for _, how := range []string{"copy", "splice"} {
			b.Run(fmt.Sprintf("%d/%s", size, how), func(b *testing.B) {
				benchChunk(b, size, how == "splice")
			})
		}
	}
}

func benchChunk(b *testing.B, size int, splice bool) {
	ln := listen(b)
	peerA, a := connPair(b, ln)
	dst, peerB := connPair(b, ln)
	rc, err := a.SyscallConn()
	if err != nil {
		b.Fatal(err)
	}
	var fd uintptr
	rc.Control(func(s uintptr) { fd = s })
	msg, out, buf := make([]byte, size), make([]byte, size), make([]byte, size)
	wt := &waiter{lr: io.LimitedReader{R: a}}
	queued := func() int {
		if err := wt.ioctlInq(fd); err != nil {
			b.Fatal(err)
		}
		return int(wt.inq)
	}
	var step time.Duration
	b.SetBytes(int64(size))
	b.ResetTimer()
	for range b.N {
		if _, err := peerA.Write(msg); err != nil {
			b.Fatal(err)
		}
		for spin := 0; queued() < size; spin++ { // let the whole chunk land
			if spin > 1e6 {
				b.Fatalf("only %d of %d bytes arrived", wt.inq, size)
			}
			runtime.Gosched()
		}
		start := time.Now()
		if splice {
			wt.lr.N = int64(queued())
			_, err = dst.ReadFrom(&wt.lr)
		} else {
			var n int
			if n, err = syscall.Read(int(fd), buf); err == nil {
				_, err = dst.Write(buf[:n])
			}
		}
		step += time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(peerB, out); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(step.Nanoseconds())/float64(b.N), "step-ns")
}
