package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/michaeldbianchi/tcpproxy/internal/admin"
)

// benchProxy runs an in-process proxy for a benchmark, logging to w.
func benchProxy(b *testing.B, yamlText string, w io.Writer) *proxyServer {
	b.Helper()
	cfg, err := parseConfig("bench.yaml", []byte(yamlText))
	if err != nil {
		b.Fatal(err)
	}
	srv, err := startProxyServer(cfg, slog.New(slog.NewTextHandler(w, nil)), prodEnv(listenFunc(false, nil)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.shutdown(ctx)
	})
	return srv
}

// exchange dials addr, echoes 64 bytes and closes: one short connection.
func exchange(b *testing.B, addr string, buf []byte) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.Write(buf); err != nil {
		b.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf); err != nil {
		b.Fatal(err)
	}
	c.Close()
}

// BenchmarkConnection runs the full accept→dial→relay→close path over
// loopback, one 64-byte echo per connection, and reports allocations per
// connection: "direct" is the client and backend alone, so the proxy's
// share is the difference. With access_log on, every connection also
// writes a log line to a file.
//
//	go test -run '^$' -bench BenchmarkConnection -benchmem
func BenchmarkConnection(b *testing.B) {
	be := startBackend(b, echoHandler)
	logFile, err := os.Create(filepath.Join(b.TempDir(), "access.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer logFile.Close()
	cases := []struct {
		name  string
		extra string
		log   io.Writer
	}{
		{"direct", "", nil},
		{"proxy", "", io.Discard},
		{"proxy_access_log_file", "access_log: true", logFile},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			addr := be.addr
			if tc.log != nil {
				port := freePort(b)
				benchProxy(b, "apps:\n"+appYAML("bench", []int{port}, []string{be.addr}, tc.extra), tc.log)
				addr = fmt.Sprintf("127.0.0.1:%d", port)
			}
			buf := make([]byte, 64)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				exchange(b, addr, buf)
			}
		})
	}
}

// BenchmarkThroughput streams through the proxy to a sink, with and
// without the admin server scraped every 100 ms, to show that metrics
// cost the relay nothing measurable (the relay counts bytes either way).
//
//	go test -run '^$' -bench BenchmarkThroughput -benchtime 20x -count 5
func BenchmarkThroughput(b *testing.B) {
	sink := startBackend(b, func(c net.Conn) { io.Copy(io.Discard, c) })
	for _, scraped := range []bool{false, true} {
		name := "metrics_off"
		if scraped {
			name = "metrics_scraped"
		}
		b.Run(name, func(b *testing.B) {
			port := freePort(b)
			srv := benchProxy(b, "apps:\n"+appYAML("bulk", []int{port}, []string{sink.addr}, ""), io.Discard)
			if scraped {
				h := admin.New(admin.Options{Snapshot: srv.snapshot}).Handler()
				stop := make(chan struct{})
				defer close(stop)
				go func() {
					t := time.NewTicker(100 * time.Millisecond)
					defer t.Stop()
					for {
						select {
						case <-stop:
							return
						case <-t.C:
							h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/metrics", nil))
						}
					}
				}()
			}
			const size = 64 << 20
			buf := make([]byte, 1<<20)
			b.SetBytes(size)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
				if err != nil {
					b.Fatal(err)
				}
				for n := 0; n < size; n += len(buf) {
					if _, err := c.Write(buf); err != nil {
						b.Fatal(err)
					}
				}
				c.Close()
			}
		})
	}
}

// BenchmarkBlackholeFailover measures connect-to-first-byte over
// sequential connections to an app with 3 targets, one black-holed, with
// dial_timeout 1s: all healthy (the reference), passive health on (the
// default), and passive health off (max_fails: 0), where every connection
// whose random first choice is the black hole waits out dial_timeout.
//
//	go test -run '^$' -bench 'BlackholeFailover/(all_healthy|passive_on)' -benchtime 2000x
//	go test -run '^$' -bench 'BlackholeFailover/passive_off' -benchtime 300x
func BenchmarkBlackholeFailover(b *testing.B) {
	cases := []struct {
		name, extra string
		hole        bool
	}{
		{"all_healthy", "", false},
		{"passive_on", "", true},
		{"passive_off", "max_fails: 0", true},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			targets := []string{startBackend(b, namedHandler("a")).addr, startBackend(b, namedHandler("b")).addr}
			if tc.hole {
				targets = append(targets, blackholeAddr(b))
			} else {
				targets = append(targets, startBackend(b, namedHandler("c")).addr)
			}
			port := freePort(b)
			benchProxy(b, "apps:\n"+appYAML("hole", []int{port}, targets, "dial_timeout: 1s\n"+tc.extra), io.Discard)
			addr := fmt.Sprintf("127.0.0.1:%d", port)
			times := make([]time.Duration, 0, b.N)
			one := make([]byte, 1)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				start := time.Now()
				c, err := net.Dial("tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, one); err != nil {
					b.Fatal(err)
				}
				times = append(times, time.Since(start))
				c.Close()
			}
			b.StopTimer()
			slices.Sort(times)
			pct := func(p float64) float64 { return float64(times[int(p*float64(len(times)-1))].Microseconds()) }
			b.ReportMetric(pct(0.50), "p50-µs")
			b.ReportMetric(pct(0.99), "p99-µs")
			b.ReportMetric(float64(times[len(times)-1].Microseconds()), "max-µs")
		})
	}
}
