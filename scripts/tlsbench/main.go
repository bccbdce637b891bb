// Command tlsbench is the part of scripts/tlsbench.sh that the shared
// tcpbench tool lacks: bulk throughput through a TLS-terminating proxy
// (tcpbench's throughput speaks plain TCP), and the table of results.
//
//	tlsbench bulk -addr A -dir up|down [-streams 1 -duration 5s -warmup 500ms -pid PID -sni a.bench.test]
//	tlsbench idle -addr A -pid PID [-n 2000 -size 64 -hold 2s]
//	tlsbench table -in raw.jsonl
//
// bulk opens -streams TLS 1.3 connections to addr (the certificate is not
// verified: the benchmark's is self-signed), then writes (-dir up, to a
// sink behind the proxy) or reads (-dir down, from a source) for -warmup
// plus -duration, and prints one JSON object: plaintext MB/s (10^6 bytes)
// over the last -duration and, with -pid, the CPU time of that process
// and its descendants per 10^9 bytes.
//
// idle opens -n TLS connections to addr (an echo behind the proxy), each
// echoing -size bytes once, holds them for -hold and prints how much the
// RSS of the proxy's process tree grew per connection.
package main

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: tlsbench bulk|idle|table ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "bulk":
		err = runBulk(os.Args[2:])
	case "idle":
		err = runIdle(os.Args[2:])
	case "table":
		err = runTable(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tlsbench:", err)
		os.Exit(1)
	}
}

// bulkResult is what bulk prints.
type bulkResult struct {
	Dir     string  `json:"dir"`
	Streams int     `json:"streams"`
	Seconds float64 `json:"seconds"`
	Bytes   int64   `json:"bytes"`
	MBps    float64 `json:"mb_per_s"`
	CPUms   float64 `json:"cpu_ms,omitempty"`
	CPUmsGB float64 `json:"cpu_ms_per_gb,omitempty"`
}

func runBulk(args []string) error {
	fs := flag.NewFlagSet("bulk", flag.ExitOnError)
	addr := fs.String("addr", "", "proxy address (required)")
	dir := fs.String("dir", "up", "up: write to a sink behind -addr; down: read from a source")
	streams := fs.Int("streams", 1, "parallel connections")
	duration := fs.Duration("duration", 5*time.Second, "measured time")
	warmup := fs.Duration("warmup", 500*time.Millisecond, "time under load before measuring")
	pid := fs.Int("pid", 0, "if set, report the CPU time of this process tree in the measured window")
	sni := fs.String("sni", "a.bench.test", "server name sent")
	fs.Parse(args)
	if *addr == "" || *streams < 1 || (*dir != "up" && *dir != "down") {
		return errors.New("bulk needs -addr, -streams >= 1 and -dir up or down")
	}
	r, err := bulk(*addr, *sni, *dir, *streams, *warmup, *duration, *pid)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

// bulk moves data for warmup+duration over streams TLS connections and
// counts what moved in the last duration.
func bulk(addr, sni, dir string, streams int, warmup, duration time.Duration, pid int) (bulkResult, error) {
	cfg := &tls.Config{ServerName: sni, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
	var conns []*tls.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range streams {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
		if err != nil {
			return bulkResult{}, err
		}
		conns = append(conns, c)
	}
	var moved atomic.Int64
	var stopped atomic.Bool
	var wg sync.WaitGroup
	errc := make(chan error, streams)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 256<<10)
			for !stopped.Load() {
				var n int
				var err error
				if dir == "up" {
					n, err = c.Write(buf)
				} else {
					n, err = c.Read(buf)
				}
				moved.Add(int64(n))
				if err != nil && !stopped.Load() {
					errc <- err
					return
				}
			}
		}()
	}
	time.Sleep(warmup)
	start, before, cpu0 := time.Now(), moved.Load(), treeCPUms(pid)
	time.Sleep(duration)
	elapsed, n, cpu := time.Since(start), moved.Load()-before, treeCPUms(pid)-cpu0
	stopped.Store(true)
	for _, c := range conns {
		c.Close()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return bulkResult{}, fmt.Errorf("a stream ended early: %w", err)
	default:
	}
	r := bulkResult{Dir: dir, Streams: streams, Seconds: elapsed.Seconds(), Bytes: n, MBps: float64(n) / 1e6 / elapsed.Seconds()}
	if pid != 0 && n > 0 {
		r.CPUms, r.CPUmsGB = cpu, cpu/(float64(n)/1e9)
	}
	return r, nil
}

// treeCPUms sums user+system CPU time of pid and its descendants, in
// milliseconds (utime and stime in /proc/PID/stat count 1/100 s); 0 for
// pid 0.
func treeCPUms(pid int) float64 {
	if pid == 0 {
		return 0
	}
	tree, ticks := procTree(pid)
	var total int64
	for _, p := range tree {
		total += ticks[p]
	}
	return float64(total) * 10
}
