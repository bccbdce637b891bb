//go:build linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// usage is one reading of the proxy's resources.
type usage struct {
	At         time.Time     `json:"-"`
	Goroutines int           `json:"goroutines"`
	FDs        int           `json:"fds"`
	RSSKiB     int64         `json:"rss_kib"`
	Active     int           `json:"active_connections"` // tcpproxy_active_connections
	CPU        time.Duration `json:"-"`                  // user+system since start
}

// measure reads the proxy's goroutines (go_goroutines), open
// descriptors (/proc/PID/fd), RSS (VmRSS) and CPU time.
func (p *proxyProc) measure() (usage, error) {
	u := usage{At: time.Now()}
	m, err := p.metrics()
	if err != nil {
		return u, err
	}
	g, ok := m["go_goroutines"]
	if !ok {
		return u, errors.New("no go_goroutines in /metrics")
	}
	u.Goroutines = int(g)
	u.Active = int(m[`tcpproxy_active_connections{app="soak"}`])
	pid := p.pid()
	d, err := os.Open(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return u, fmt.Errorf("count descriptors: %w", err)
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return u, fmt.Errorf("count descriptors: %w", err)
	}
	u.FDs = len(names)
	if u.RSSKiB, err = vmRSS(pid); err != nil {
		return u, err
	}
	if u.CPU, err = cpuTime(pid); err != nil {
		return u, err
	}
	return u, nil
}

// vmRSS is the VmRSS of pid, in KiB.
func vmRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read RSS: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// clockTick is USER_HZ, the unit of /proc/PID/stat times: 100 on every
// Linux architecture Go supports.
const clockTick = 100

// cpuTime is the user+system CPU time of pid.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read CPU time: %w", err)
	}
	// The command name in parentheses may hold spaces; fields count
	// from after it. utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("cannot parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("cannot parse /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	return time.Duration(ut+st) * time.Second / clockTick, nil
}

// sampler reads the proxy's resources at a fixed interval while the
// soak runs.
type sampler struct {
	proxy *proxyProc
	every time.Duration

	mu      sync.Mutex
	samples []usage
	errs    int
	lastErr error
}

// run samples until stop closes.
func (s *sampler) run(stop <-chan struct{}) {
	t := time.NewTicker(s.every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		u, err := s.proxy.measure()
		s.mu.Lock()
		if err != nil {
			s.errs++
			s.lastErr = err
		} else {
			s.samples = append(s.samples, u)
		}
		s.mu.Unlock()
	}
}

func (s *sampler) series() []usage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]usage(nil), s.samples...)
}

// peak is the largest of each reading over samples.
func peak(samples []usage) usage {
	var p usage
	for _, u := range samples {
		p.Goroutines = max(p.Goroutines, u.Goroutines)
		p.FDs = max(p.FDs, u.FDs)
		p.RSSKiB = max(p.RSSKiB, u.RSSKiB)
		p.Active = max(p.Active, u.Active)
	}
	return p
}

// rssGrowth judges whether RSS kept growing through the steady part of
// the run. It compares the largest RSS of the last quarter of [from, to]
// with the largest of the second quarter: the first quarter is left out
// because connections, buffers and the heap are still ramping up there.
// Maxima, not averages or last values, because the Go heap saw-tooths
// between collections and a maximum over a quarter catches its top in
// both. The bound, 1.15 × second-quarter max + 4 MiB, leaves room for
// the heap target moving with a burst of reconnects, while a leak that
// grows steadily (say a few KiB per connection at 200 connections a
// second) runs through it over a ten-minute run.
func rssGrowth(samples []usage, from, to time.Time) (q2, q4 int64, ok bool, err error) {
	span := to.Sub(from)
	for _, u := range samples {
		switch f := float64(u.At.Sub(from)) / float64(span); {
		case f >= 0.25 && f < 0.5:
			q2 = max(q2, u.RSSKiB)
		case f >= 0.75 && f <= 1:
			q4 = max(q4, u.RSSKiB)
		}
	}
	if q2 == 0 || q4 == 0 {
		return q2, q4, false, errors.New("too few RSS samples in the second or last quarter of the run")
	}
	return q2, q4, float64(q4) <= 1.15*float64(q2)+4096, nil
}
