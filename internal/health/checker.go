package health

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// Defaults of the active checks: what a zero or negative [Check] field
// means, and what the config's health_check takes for a key left out.
// Rise and fall are HAProxy's.
const (
	DefaultInterval = 5 * time.Second
	// DefaultTimeout bounds a probe, or the interval does if it is
	// shorter.
	DefaultTimeout = time.Second
	DefaultRise    = 2
	DefaultFall    = 3
)

// The shortest interval and timeout the config accepts: shorter ones
// burn CPU and mark live targets down.
const (
	MinInterval = 100 * time.Millisecond
	MinTimeout  = 10 * time.Millisecond
)

// jitterPercent is how far each probe interval is randomly stretched or
// shrunk, so that probes of many targets started together drift apart.
const jitterPercent = 15

// Check is the active-check configuration.
type Check struct {
	// Interval is the mean time between the end of one probe and the start
	// of the next. Zero or negative means DefaultInterval.
	Interval time.Duration
	// Timeout bounds one probe (a TCP connect). Zero or negative means
	// DefaultTimeout or Interval, whichever is shorter.
	Timeout time.Duration
	// Rise is the number of consecutive successful probes that mark a
	// target up. Zero or negative means DefaultRise.
	Rise int
	// Fall is the number of consecutive failed probes that mark a target
	// down. Zero or negative means DefaultFall.
	Fall int
}

// withDefaults fills in unset fields, so a zero Check is a usable one.
func (c Check) withDefaults() Check {
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.Timeout <= 0 {
		c.Timeout = min(DefaultTimeout, c.Interval)
	}
	if c.Rise <= 0 {
		c.Rise = DefaultRise
	}
	if c.Fall <= 0 {
		c.Fall = DefaultFall
	}
	return c
}

// DialFunc performs one probe of addr and reports whether it succeeded. It
// must return promptly once ctx is done.
type DialFunc func(ctx context.Context, addr string) error

// RunChecks starts one goroutine per target that probes it with dial every
// c.Interval (jittered, with a random initial offset) and feeds the results
// to Target.probeResult. A nil dial opens a TCP connection and closes it.
//
// The goroutines stop when ctx is cancelled; wait blocks until all of them
// have exited. On exit each goroutine releases a target its checks had
// marked down to the passive logic (one trial connection allowed at once),
// so that turning checks off cannot leave a target down forever.
func RunChecks(ctx context.Context, c Check, targets []*Target, dial DialFunc) (wait func()) {
	c = c.withDefaults()
	if dial == nil {
		dial = dialTCP
	}
	var wg sync.WaitGroup
	for _, t := range targets {
		if t == nil {
			continue
		}
		p := prober{target: t, check: c, dial: dial}
		wg.Go(func() { p.run(ctx) })
	}
	return wg.Wait
}

// prober runs the active checks of one target.
type prober struct {
	target *Target
	check  Check
	dial   DialFunc
}

func (p prober) run(ctx context.Context) {

	// A random first delay spreads the probes of targets started together
	// over a whole interval.
	timer := time.NewTimer(rand.N(p.check.Interval))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		err := p.probe(ctx)
		if ctx.Err() != nil {
			// The probe was cut short by shutdown; it says nothing about the
			// target.
			return
		}
		p.target.probeResult(time.Now(), p.check, err)
		timer.Reset(jitter(p.check.Interval))
	}
}

func (p prober) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, p.check.Timeout)
	defer cancel()
	if err := p.dial(ctx, p.target.addr); err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	return nil
}

// jitter returns d randomly shifted by up to ±jitterPercent.
func jitter(d time.Duration) time.Duration {
	spread := d * jitterPercent / 100
	if spread <= 0 {
		return d
	}
	return d - spread + rand.N(2*spread+1)
}

// dialTCP is the default probe: a TCP connect, closed at once.
func dialTCP(ctx context.Context, addr string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	// The connect is the check; a failed close says nothing about health.
	_ = conn.Close()
	return nil
}
