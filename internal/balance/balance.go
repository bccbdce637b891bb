// Package balance decides, for each client connection of an app, the order
// in which the proxy tries the app's targets: the strategy's first choice,
// then failover through the other targets, each once.
//
// Order is on the per-connection hot path, so it takes no lock and does not
// allocate: round-robin state is a single atomic counter, randomness comes
// from math/rand/v2's lock-free runtime source, and scratch space lives on
// the stack.
package balance

import (
	"errors"
	"fmt"
)

// Strategy names as written in the config (`balance:` key).
const (
	// Random picks the first target at random in proportion to weight;
	// failover continues in index order from it. It is the default.
	Random = "random"
	// RoundRobin cycles through the targets by smooth weighted round robin,
	// as nginx does; failover continues in index order from the pick.
	RoundRobin = "round_robin"
	// LeastConn picks the target with the fewest active connections per
	// unit of weight, ties drawn at random by weight; failover follows the
	// same ratio.
	LeastConn = "least_conn"
	// Hash picks by client key with weighted rendezvous hashing, so a
	// client sticks to a target while the target set is unchanged;
	// failover follows descending score, so it is sticky too.
	Hash = "hash"
)

// MaxWeight is the largest Peer.Weight New accepts. The bound keeps the
// precomputed round-robin sequence (at most MaxWeight entries per peer)
// small and the least_conn products far from overflow.
const MaxWeight = 1000

// Valid reports whether strategy names a strategy New accepts. The empty
// string is valid and means Random, so an unset config key gets the default.
func Valid(strategy string) bool {
	_, ok := parseStrategy(strategy)
	return ok
}

// Peer is the static config of one target.
type Peer struct {
	// Name identifies the target stably across config changes, normally
	// its address. Hash requires it (non-empty and unique) because it seeds
	// the target's hash: seeding by position would remap clients whenever
	// the list is reordered or a target is removed.
	Name string
	// Weight is the target's relative share of new connections, 0 to
	// MaxWeight. 0 means drained: the target is never chosen. Note that the
	// zero Peer is therefore drained; configs should default Weight to 1.
	Weight int
	// Backup targets get connections only after the usable primaries: as
	// failover when the primaries fail to dial, and first when no primary
	// is usable.
	Backup bool
}

// State is the live view of the targets that the caller passes to Order.
// Indexes are positions in the peers given to New. Its methods are called
// concurrently from every connection and must not block.
//
// Pass a pointer to a long-lived value, such as the app's target table:
// Order's calls through the interface make the value escape to the heap,
// so a State built per connection costs an allocation per connection.
type State interface {
	// Usable reports whether peer i may take a new connection now.
	Usable(i int) bool
	// Active returns the current number of active connections of peer i.
	// Only least_conn calls it.
	Active(i int) int64
}

type strategy uint8

const (
	strategyRandom strategy = iota
	strategyRoundRobin
	strategyLeastConn
	strategyHash
)

func parseStrategy(name string) (strategy, bool) {
	switch name {
	case Random, "":
		return strategyRandom, true
	case RoundRobin:
		return strategyRoundRobin, true
	case LeastConn:
		return strategyLeastConn, true
	case Hash:
		return strategyHash, true
	}
	return 0, false
}

// Pool chooses the order of targets for one app. It is immutable after New
// apart from the round-robin counters; on a config change build a new Pool.
// It is safe for concurrent use.
type Pool struct {
	strategy strategy
	weight   []int    // by peer index
	seed     []uint64 // by peer index; hash only
	primary  tier
	backup   tier
}

// tier is the peers of one class (primary or backup) that have a weight.
type tier struct {
	members    []int // peer indexes, ascending
	sameWeight bool  // all members have one weight
	rr         *swrr // round_robin only
}

// New returns a Pool that orders peers by the named strategy. It fails on
// an unknown strategy, on no peers, on a weight outside 0..MaxWeight, and,
// for Hash, on a missing or duplicate Name. Peers that are all drained are
// accepted: Order then returns nothing.
func New(strategyName string, peers []Peer) (*Pool, error) {
	st, ok := parseStrategy(strategyName)
	if !ok {
		return nil, fmt.Errorf("balance: unknown strategy %q (want %s, %s, %s or %s)",
			strategyName, Random, RoundRobin, LeastConn, Hash)
	}
	if len(peers) == 0 {
		return nil, errors.New("balance: no peers")
	}
	p := &Pool{strategy: st, weight: make([]int, len(peers))}
	for i, pe := range peers {
		if pe.Weight < 0 || pe.Weight > MaxWeight {
			return nil, fmt.Errorf("balance: peer %d (%q): weight %d out of range 0..%d",
				i, pe.Name, pe.Weight, MaxWeight)
		}
		p.weight[i] = pe.Weight
		if pe.Weight == 0 {
			continue
		}
		if pe.Backup {
			p.backup.members = append(p.backup.members, i)
		} else {
			p.primary.members = append(p.primary.members, i)
		}
	}
	p.primary.sameWeight = sameWeight(p.primary.members, p.weight)
	p.backup.sameWeight = sameWeight(p.backup.members, p.weight)
	switch st {
	case strategyRoundRobin:
		p.primary.rr = newSWRR(p.primary.members, p.weight)
		p.backup.rr = newSWRR(p.backup.members, p.weight)
	case strategyHash:
		seeds, err := hashSeeds(peers)
		if err != nil {
			return nil, err
		}
		p.seed = seeds
	}
	return p, nil
}

// sameWeight reports whether all members have one weight, which lets hash
// skip its logarithms.
func sameWeight(members []int, weight []int) bool {
	for _, i := range members {
		if weight[i] != weight[members[0]] {
			return false
		}
	}
	return true
}

// Order appends to dst[:0] the indexes of the peers to try for one
// connection, best first, each at most once, and returns it. key identifies
// the client for Hash (see Key) and is ignored otherwise.
//
// The order is: the usable primaries, then the usable backups (a client
// whose every primary fails to dial still gets a backup); if no primary is
// usable, the usable backups; if nothing is usable, every weighted primary
// then every weighted backup, since trying a target marked down beats
// refusing the client. Drained peers (weight 0) never appear. The result is
// empty only if every peer is drained.
//
// In every case but the last the first index was usable when Order looked,
// so a caller that must recognise the everything-down case (to force its
// dials) can test s.Usable(order[0]).
//
// Order does not allocate if cap(dst) is at least the number of peers and
// no tier has more than 64 peers.
func (p *Pool) Order(dst []int, key uint64, s State) []int {
	dst = dst[:0]
	dst = p.appendTier(dst, &p.primary, key, s, true)
	if len(dst) > 0 {
		return p.appendTier(dst, &p.backup, key, s, true)
	}
	dst = p.appendTier(dst, &p.backup, key, s, true)
	if len(dst) > 0 {
		return dst
	}
	dst = p.appendTier(dst, &p.primary, key, s, false)
	return p.appendTier(dst, &p.backup, key, s, false)
}

// appendTier appends the members of t (only the usable ones if onlyUsable)
// in strategy order. Usable is called once per member, so a peer flapping
// meanwhile cannot be appended twice.
func (p *Pool) appendTier(dst []int, t *tier, key uint64, s State, onlyUsable bool) []int {
	start := len(dst)
	for _, i := range t.members {
		if !onlyUsable || s.Usable(i) {
			dst = append(dst, i)
		}
	}
	seg := dst[start:]
	if len(seg) < 2 {
		return dst
	}
	// A switch rather than an interface keeps seg (the caller's buffer)
	// from escaping to the heap through a dynamic call.
	switch p.strategy {
	case strategyRandom:
		rotate(seg, pickWeighted(seg, p.weight))
	case strategyRoundRobin:
		rotate(seg, t.rr.pick(seg, p.weight))
	case strategyLeastConn:
		orderLeastConn(seg, p.weight, s)
	case strategyHash:
		orderHash(seg, p.weight, p.seed, key, t.sameWeight)
	}
	return dst
}
