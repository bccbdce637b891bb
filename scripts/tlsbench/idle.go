package main

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// idleResult is what idle prints.
type idleResult struct {
	Conns      int     `json:"conns"`
	Size       int     `json:"size"`
	KiBPerConn float64 `json:"kib_per_conn"`
}

func runIdle(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	addr := fs.String("addr", "", "proxy address, in front of an echo backend (required)")
	n := fs.Int("n", 2000, "connections to hold")
	size := fs.Int("size", 64, "bytes each connection echoes once before it idles")
	hold := fs.Duration("hold", 2*time.Second, "how long to hold them before measuring")
	pid := fs.Int("pid", 0, "the proxy's process ID (required)")
	fs.Parse(args)
	if *addr == "" || *pid == 0 || *n < 1 {
		return errors.New("idle needs -addr, -pid and -n >= 1")
	}
	r, err := idle(*addr, *n, *size, *hold, *pid)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

// idle opens n TLS connections, each echoing size bytes once, holds them
// for hold, and returns the growth of the RSS of pid's process tree per
// connection.
func idle(addr string, n, size int, hold time.Duration, pid int) (idleResult, error) {
	cfg := &tls.Config{ServerName: "a.bench.test", InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
	before := treeRSSKiB(pid)
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	msg, buf := make([]byte, size), make([]byte, size)
	for range n {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
		if err != nil {
			return idleResult{}, err
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(msg); err != nil {
			return idleResult{}, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return idleResult{}, fmt.Errorf("echo: %w", err)
		}
	}
	time.Sleep(hold)
	return idleResult{Conns: n, Size: size, KiBPerConn: float64(treeRSSKiB(pid)-before) / float64(n)}, nil
}

// treeRSSKiB sums VmRSS of pid and its descendants.
func treeRSSKiB(pid int) int64 {
	tree, _ := procTree(pid)
	var total int64
	for _, p := range tree {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
				kib, _ := strconv.ParseInt(f[1], 10, 64)
				total += kib
			}
		}
	}
	return total
}
