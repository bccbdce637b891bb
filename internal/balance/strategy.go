package balance

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync/atomic"
)

// Each strategy below reorders seg, the candidate peers of one tier in
// ascending index order, so that the best peer comes first. Weights are
// positive: drained peers never reach a tier.

// scratchPeers is how many peers the strategies that sort can rank in stack
// space; larger tiers fall back to a heap buffer.
const scratchPeers = 64

// pickWeighted returns the position in seg of a peer chosen at random with
// probability proportional to its weight.
func pickWeighted(seg []int, weight []int) int {
	total := 0
	for _, i := range seg {
		total += weight[i]
	}
	r := rand.IntN(total)
	for j, i := range seg {
		r -= weight[i]
		if r < 0 {
			return j
		}
	}
	return len(seg) - 1 // unreachable: r < total
}

// rotate moves s[k] to the front keeping the cyclic order, so failover
// continues from the first choice rather than always restarting at the
// lowest index (which would pile every failover onto one peer).
func rotate[T any](s []T, k int) {
	if k == 0 {
		return
	}
	slices.Reverse(s[:k])
	slices.Reverse(s[k:])
	slices.Reverse(s)
}

// swrr is nginx's smooth weighted round robin made lock-free: the whole
// cycle is computed once by New and an atomic counter walks it.
type swrr struct {
	seq  []int // one cycle of peer indexes; weights reduced by their gcd
	next *counter
}

// counter sits alone on its cache line: every Order writes it, and sharing
// the line with the read-only Pool fields would make each core's reads miss.
type counter struct {
	n atomic.Uint64
	_ [56]byte
}

// newSWRR costs O(len(members) × cycle) time and O(cycle) memory, where the
// cycle is at most MaxWeight × len(members): negligible for app-sized
// target lists, and paid once per config load rather than per connection.
func newSWRR(members []int, weight []int) *swrr {
	g := 0
	for _, i := range members {
		g = gcd(g, weight[i])
	}
	w := make([]int, len(members))
	total := 0
	for j, i := range members {
		w[j] = weight[i] / g
		total += w[j]
	}
	// nginx: every peer gains its weight, the highest (first on ties) is
	// chosen and pays back the total. This spreads a heavy peer's turns out
	// (5,1,1 gives a a b a c a a) instead of sending them back to back.
	cur := make([]int, len(members))
	seq := make([]int, 0, total)
	for range total {
		best := 0
		for j := range cur {
			cur[j] += w[j]
			if cur[j] > cur[best] {
				best = j
			}
		}
		cur[best] -= total
		seq = append(seq, members[best])
	}
	return &swrr{seq: seq, next: new(counter)}
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// pick returns the position in seg of the next peer in the cycle. When that
// peer is not a candidate it picks among the candidates at random by
// weight; stepping on to the next candidate in the cycle instead would hand
// a down peer's whole share to whichever peer follows it in the cycle.
func (r *swrr) pick(seg []int, weight []int) int {
	n := r.next.n.Add(1) - 1
	if j, ok := slices.BinarySearch(seg, r.seq[n%uint64(len(r.seq))]); ok {
		return j
	}
	return pickWeighted(seg, weight)
}

// load is one peer's active connections and weight, for least_conn.
type load struct {
	active uint64 // at most maxActive
	weight uint64 // at most MaxWeight
	peer   int
}

// maxActive caps the active count so that active*weight cannot overflow
// (MaxWeight < 2^10); no real peer comes near it.
const maxActive = 1 << 53

// lighter reports whether a carries fewer connections per unit of weight
// than b, comparing cross products to stay exact without floats.
func (a load) lighter(b load) bool { return a.active*b.weight < b.active*a.weight }

// same reports whether a and b carry equal connections per unit of weight.
func (a load) same(b load) bool { return a.active*b.weight == b.active*a.weight }

func cmpLoad(a, b load) int {
	switch {
	case a.lighter(b):
		return -1
	case b.lighter(a):
		return 1
	}
	return 0
}

// orderLeastConn sorts seg by active connections per unit of weight. Among
// the least loaded the first is drawn at random by weight, so idle peers
// share new connections by weight instead of all going to the lowest
// index; the other ties follow in cyclic order from it.
func orderLeastConn(seg []int, weight []int, s State) {
	var buf [scratchPeers]load
	loads := buf[:0]
	if len(seg) > len(buf) {
		loads = make([]load, 0, len(seg))
	}
	// Snapshot once: counts move under us, and a sort needs stable keys.
	for _, i := range seg {
		a := uint64(min(max(s.Active(i), 0), maxActive))
		loads = append(loads, load{active: a, weight: uint64(weight[i]), peer: i})
	}
	least := 0
	for j := 1; j < len(loads); j++ {
		if loads[j].lighter(loads[least]) {
			least = j
		}
	}
	tied := uint64(0)
	for _, l := range loads {
		if l.same(loads[least]) {
			tied += l.weight
		}
	}
	r := rand.Uint64N(tied)
	for j, l := range loads {
		if !l.same(loads[least]) {
			continue
		}
		if r < l.weight {
			least = j
			break
		}
		r -= l.weight
	}
	rotate(loads, least)
	if len(loads) > scratchPeers {
		slices.SortStableFunc(loads, cmpLoad)
	} else {
		// Insertion sort, inlined: loads change slowly between
		// connections, so its branches predict well (unlike hash's random
		// scores, see orderHash).
		for i := 1; i < len(loads); i++ {
			x := loads[i]
			j := i
			for ; j > 0 && x.lighter(loads[j-1]); j-- {
				loads[j] = loads[j-1]
			}
			loads[j] = x
		}
	}
	for j, l := range loads {
		seg[j] = l.peer
	}
}

// ranked is one peer's rendezvous score for one key, for hash.
type ranked struct {
	score float64
	peer  int
}

// byScoreDesc puts the highest score first; equal scores (practically
// impossible with distinct names) keep index order.
func byScoreDesc(a, b ranked) int {
	switch {
	case a.score > b.score:
		return -1
	case a.score < b.score:
		return 1
	}
	return 0
}

// orderHash sorts seg by descending weighted rendezvous score. A peer's
// score depends only on the key, its name and its weight, so adding or
// removing a peer moves only the keys that peer wins or loses, and the
// failover order for a key is as stable as its first choice.
//
// sameWeight says all of seg's peers have one weight; the order then
// depends on u alone and the logarithms can be skipped.
func orderHash(seg []int, weight []int, seed []uint64, key uint64, sameWeight bool) {
	var buf [scratchPeers]ranked
	rs := buf[:0]
	if len(seg) > len(buf) {
		rs = make([]ranked, 0, len(seg))
	}
	for _, i := range seg {
		var sc float64
		if sameWeight {
			sc = float64(draw(key, seed[i])) // monotone in score's u
		} else {
			sc = score(key, seed[i], weight[i])
		}
		rs = append(rs, ranked{score: sc, peer: i})
	}
	if len(rs) > scratchPeers {
		slices.SortStableFunc(rs, byScoreDesc)
		for j, r := range rs {
			seg[j] = r.peer
		}
		return
	}
	// Each peer's place is the number of peers ahead of it (higher score,
	// or equal and earlier). This is O(n²) but compiles to branch-free
	// compares, which beats insertion sort's mispredicted branches on
	// random scores up to about 32 peers and the generic sort up to 64.
	for i, x := range rs {
		r := 0
		for _, y := range rs[:i] {
			if y.score >= x.score {
				r++
			}
		}
		for _, y := range rs[i+1:] {
			if y.score > x.score {
				r++
			}
		}
		seg[r] = x.peer
	}
}

// score is the weighted rendezvous score -w/ln(u), u uniform in (0,1)
// drawn from (key, peer). It is the exponential-race form of weighted
// highest-random-weight: peer i wins with probability w_i/Σw exactly.
func score(key, seed uint64, weight int) float64 {
	// Plus a half keeps u strictly inside (0,1), so ln(u) < 0.
	u := (float64(draw(key, seed)) + 0.5) * 0x1p-52
	return float64(weight) / -math.Log(u)
}

// draw is the pseudo-random 52-bit integer of one (key, peer) pair; 52 bits
// convert to float64 exactly.
func draw(key, seed uint64) uint64 { return mix64(key^seed) >> 12 }
