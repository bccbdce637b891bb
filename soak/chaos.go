//go:build linux

package main

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// chaosPlan is how often each disturbance strikes.
type chaosPlan struct {
	killGap     [2]time.Duration // time between a restart and the next kill, uniform in [min, max]
	downFor     [2]time.Duration // how long a killed backend stays down
	reloadEvery time.Duration
	toggleEvery time.Duration
}

// chaos disturbs the proxy while traffic flows: it kills and restarts
// stable backends one at a time, reloads the config between two target
// sets, and flips the toggler between refusing and black-holing.
type chaos struct {
	run      *runEnv
	plan     chaosPlan
	backends []*backend
	toggler  *toggler
	proxy    *proxyProc
	base     proxyConfig
	sets     [2][]int      // stable backends of each target set
	stop     chan struct{} // closed to end the chaos, before the traffic ends

	kills, resets, reloads, toggles atomic.Int64

	mu   sync.Mutex
	errs []string // chaos that could not be carried out
}

// start runs the three disturbances until the soak stops; wait returns
// once they have, with every backend up again and the toggler refusing.
func (c *chaos) start() (wait func()) {
	var wg sync.WaitGroup
	for _, f := range []func(){c.killLoop, c.reloadLoop, c.toggleLoop} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f()
		}()
	}
	return wg.Wait
}

func (c *chaos) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	c.mu.Lock()
	c.errs = append(c.errs, msg)
	c.mu.Unlock()
	c.run.event("chaos failed: %s", msg)
}

func (c *chaos) failures() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.errs...)
}

// wait sleeps d; false means the soak is stopping.
func (c *chaos) wait(d time.Duration) bool {
	select {
	case <-c.stop:
		return false
	case <-time.After(d):
		return true
	}
}

// killLoop kills one stable backend at a time: only this goroutine
// kills, and it restarts each victim before choosing the next, so at
// least two of the three are always up.
func (c *chaos) killLoop() {
	r := splitmix(c.run.seed ^ 0x6b696c6c)
	for c.wait(between(&r, c.plan.killGap)) {
		b := c.backends[r.next()%uint64(len(c.backends))]
		reset := r.next()%2 == 0
		how := "closed"
		if reset {
			how = "reset"
			c.resets.Add(1)
		}
		c.kills.Add(1)
		c.run.event("kill %s (connections %s)", backendName(b.idx), how)
		b.kill(reset)
		down := c.wait(between(&r, c.plan.downFor))
		if err := b.start(); err != nil {
			c.fail("restart %s: %v", backendName(b.idx), err)
			return
		}
		c.run.event("restart %s", backendName(b.idx))
		if !down {
			return
		}
	}
}

// reloadLoop rewrites the config with the other target set and sends
// SIGHUP, every reloadEvery.
func (c *chaos) reloadLoop() {
	for n := 1; c.wait(c.plan.reloadEvery); n++ {
		members := c.sets[n%2]
		cfg := c.base
		cfg.targets = c.targets(members)
		var ts *targetSet
		at, err := c.proxy.reload(cfg, func(sent time.Time) { ts = c.run.world.sending(members, sent) })
		if err != nil {
			c.fail("%v", err)
			return
		}
		c.run.world.applied(ts, at)
		c.reloads.Add(1)
		c.run.event("reloaded: targets %v", cfg.targets)
	}
}

// targets is the config's target list for a set: its stable backends
// and the toggler.
func (c *chaos) targets(members []int) []string {
	var out []string
	for _, i := range members {
		out = append(out, c.backends[i].addr)
	}
	return append(out, c.toggler.addr())
}

func (c *chaos) toggleLoop() {
	defer c.toggler.refuse()
	for c.wait(c.plan.toggleEvery) {
		mode, err := c.toggler.toggle()
		if err != nil {
			c.fail("toggle %s: %v", c.toggler.addr(), err)
			return
		}
		c.toggles.Add(1)
		c.run.event("toggler %s", mode)
	}
}
