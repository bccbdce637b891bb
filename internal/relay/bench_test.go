package relay

import (
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// Run with: go test -run '^$' -bench . -benchmem ./internal/relay
// Figures are in wait.go next to smallSize and maxChunk.

var benchModes = []struct {
	name string
	mode mode
	idle time.Duration
}{
	{"plain", modePlain, 0},
	{"relay", modeRelay, 0},
	{"relay-idle", modeRelay, time.Minute},
	{"userspace", modeUserspace, 0},
}

// BenchmarkThroughput streams 64 MiB per op one way, client -> server.
// The client sends with sendfile and the server drains into /dev/null with
// splice, so the endpoints copy nothing and the relay's cost shows. Besides
// MB/s it reports the process's CPU time per MiB, which is steadier than
// wall time on a small, shared machine.
func BenchmarkThroughput(b *testing.B) {
	for _, bm := range benchModes {
		b.Run(bm.name, func(b *testing.B) {
			benchStream(b, bm.mode, NewIdle(bm.idle))
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
			benchPingPong(b, bm.mode, NewIdle(bm.idle), 64)
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
