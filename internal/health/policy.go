// Package health tracks whether the targets (backends) of an app may be sent
// new connections.
//
// Two sources feed one state machine per target:
//
//   - Passive accounting, like nginx's max_fails/fail_timeout: the proxy
//     reports the outcome of each dial with [Target.Success] and
//     [Target.Failure].
//   - Optional active checks, like HAProxy's "check inter rise fall": a
//     goroutine per target connects to it periodically (see [RunChecks]).
//
// The connection path only reads and CASes atomics, so a [Target] can be
// shared by every listening port of an app without a lock.
package health

import "time"

// Defaults of passive health (nginx's max_fails=1, fail_timeout=10s):
// what the config's max_fails and fail_timeout take when left out.
// DefaultFailTimeout is also what a zero [Policy.FailTimeout] means; a
// zero MaxFails means passive health off, in a Policy as in the config.
const (
	DefaultMaxFails    = 1
	DefaultFailTimeout = 10 * time.Second
)

// Policy is the passive-health configuration of a target.
type Policy struct {
	// MaxFails is the number of consecutive failed dials that mark a target
	// down. Zero or negative turns passive health off: [Target.Failure]
	// then does nothing.
	MaxFails int
	// FailTimeout is how long a passively downed target is skipped before
	// a single trial connection may test it again. It also bounds how long
	// a granted trial may stay unreported. Zero or negative means
	// DefaultFailTimeout.
	FailTimeout time.Duration
}

// withDefaults fills in an unset FailTimeout.
func (p Policy) withDefaults() Policy {
	if p.FailTimeout <= 0 {
		p.FailTimeout = DefaultFailTimeout
	}
	return p
}
