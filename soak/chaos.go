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
	// edges adds listen changes and failing reloads (reloadLoop).
	edges    bool
	heldPort int // a port the soak listens on, for failing reloads

	kills, resets, reloads, toggles, failedReloads atomic.Int64

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
// SIGHUP, every reloadEvery. With edges, each successful reload also
// moves app soak's listen host on to the next of listenHosts, and every
// third reload is one that must fail (failingReload).
func (c *chaos) reloadLoop() {
	applied := 0 // successful reloads: they alternate the target sets
	for n := 1; c.wait(c.plan.reloadEvery); n++ {
		if c.edges && n%3 == 2 {
			if !c.failingReload(applied + 1) {
				return
			}
			continue
		}
		applied++
		cfg := c.configFor(applied)
		members := c.sets[applied%2]
		var ts *targetSet
		at, err := c.proxy.reload(cfg, func(sent time.Time) { ts = c.run.world.sending(members, sent) })
		if err != nil {
			c.fail("%v", err)
			return
		}
		c.run.world.applied(ts, at)
		c.reloads.Add(1)
		c.run.event("reloaded: targets %v, soak listen %q", cfg.targets, cfg.listen)
	}
}

// listenHosts are the listen hosts app soak goes through with edges, one
// step a successful reload, so that every change between 127.0.0.1,
// unset (every interface) and localhost comes once a round. Its clients
// dial 127.0.0.1 throughout and must never be refused, reset or served
// by the old config.
var listenHosts = [...]string{"127.0.0.1", "", "localhost", "127.0.0.1", "localhost", ""}

// configFor is the config of the k-th successful reload (0: the first
// config).
func (c *chaos) configFor(k int) proxyConfig {
	cfg := c.base
	cfg.targets = c.targets(c.sets[k%2])
	if c.edges {
		cfg.listen = listenHosts[k%len(listenHosts)]
	}
	return cfg
}

// failingReload writes what would be the next reload's config, with a
// port the soak holds added to app soak-pp, and signals SIGHUP: the
// proxy cannot bind that port, so the reload must fail and leave
// everything as it was. The world is not told of the config's target
// set: a connection that reaches it is misrouted. It reports whether the
// loop may go on.
func (c *chaos) failingReload(next int) bool {
	before, err := c.proxy.listening()
	if err != nil {
		c.fail("failing reload: %v", err)
		return false
	}
	cfg := c.configFor(next)
	cfg.heldPort = c.heldPort
	if err := c.proxy.reloadFailing(cfg); err != nil {
		c.fail("%v", err)
		return false
	}
	after, err := c.proxy.listening()
	if err != nil {
		c.fail("after a failed reload: %v", err)
		return false
	}
	if after != before {
		c.fail("a failed reload changed the listeners: before %s; after %s", before, after)
		return false
	}
	c.failedReloads.Add(1)
	c.run.event("failed reload as expected (held port %d, soak listen %q, targets %v)", c.heldPort, cfg.listen, cfg.targets)
	return true
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
