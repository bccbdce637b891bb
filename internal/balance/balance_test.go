package balance

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// fakeState is a State whose health and load tests set directly. Atomics
// let the concurrency test flip health while Order reads it.
type fakeState struct {
	down   []atomic.Bool
	active []atomic.Int64
}

func newState(n int) *fakeState {
	return &fakeState{down: make([]atomic.Bool, n), active: make([]atomic.Int64, n)}
}

func (f *fakeState) Usable(i int) bool  { return !f.down[i].Load() }
func (f *fakeState) Active(i int) int64 { return f.active[i].Load() }

func (f *fakeState) setDown(idx ...int) *fakeState {
	for _, i := range idx {
		f.down[i].Store(true)
	}
	return f
}

func (f *fakeState) setActive(a ...int64) *fakeState {
	for i, v := range a {
		f.active[i].Store(v)
	}
	return f
}

var strategies = []string{Random, RoundRobin, LeastConn, Hash}

// peers returns primaries named t0, t1, ... with the given weights.
func peers(weights ...int) []Peer {
	ps := make([]Peer, len(weights))
	for i, w := range weights {
		ps[i] = Peer{Name: fmt.Sprintf("t%d", i), Weight: w}
	}
	return ps
}

func mustNew(t testing.TB, strategy string, ps []Peer) *Pool {
	t.Helper()
	p, err := New(strategy, ps)
	if err != nil {
		t.Fatalf("New(%q): %v", strategy, err)
	}
	return p
}

// firstCounts calls Order n times and counts each peer's first places.
func firstCounts(p *Pool, s State, n int, key func(int) uint64) []int {
	counts := make([]int, len(p.weight))
	var buf [64]int
	for c := range n {
		order := p.Order(buf[:0], key(c), s)
		counts[order[0]]++
	}
	return counts
}

func noKey(int) uint64 { return 0 }

func TestValid(t *testing.T) {
	for _, tc := range []struct {
		name string
		want bool
	}{
		{Random, true}, {RoundRobin, true}, {LeastConn, true}, {Hash, true},
		{"", true}, {"Random", false}, {"roundrobin", false}, {"wrr", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Valid(tc.name); got != tc.want {
				t.Errorf("Valid(%q) = %v, want %v", tc.name, got, tc.want)
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		strategy string
		peers    []Peer
		wantErr  string // "" for success
	}{
		{"ok", RoundRobin, peers(1, 2, 0), ""},
		{"default strategy", "", peers(1), ""},
		{"all drained", Random, peers(0, 0), ""},
		{"max weight", Hash, peers(MaxWeight), ""},
		{"unknown strategy", "fastest", peers(1), `unknown strategy "fastest"`},
		{"no peers", Random, nil, "no peers"},
		{"negative weight", LeastConn, peers(1, -1), "peer 1 (\"t1\"): weight -1 out of range 0..1000"},
		{"weight too large", Random, peers(MaxWeight + 1), "weight 1001 out of range 0..1000"},
		{"hash without name", Hash, []Peer{{Name: "a", Weight: 1}, {Weight: 1}}, "peer 1: hash strategy needs a name"},
		{"hash duplicate name", Hash, []Peer{{Name: "a", Weight: 1}, {Name: "a", Weight: 1}}, `duplicate name "a"`},
		{"names optional without hash", RoundRobin, []Peer{{Weight: 1}, {Weight: 1}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(tc.strategy, tc.peers)
			if tc.wantErr == "" {
				if err != nil || p == nil {
					t.Fatalf("New = %v, %v; want a Pool", p, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("New error = %v; want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestRoundRobinExact(t *testing.T) {
	for _, tc := range []struct {
		name    string
		weights []int
		calls   int
		want    []int
	}{
		{"equal", []int{1, 1, 1}, 300, []int{100, 100, 100}},
		{"1:2:3", []int{1, 2, 3}, 3000, []int{500, 1000, 1500}},
		{"gcd reduced 10:20:30", []int{10, 20, 30}, 3000, []int{500, 1000, 1500}},
		{"with drained", []int{2, 0, 1}, 300, []int{200, 0, 100}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := mustNew(t, RoundRobin, peers(tc.weights...))
			got := firstCounts(p, newState(len(tc.weights)), tc.calls, noKey)
			if !slices.Equal(got, tc.want) {
				t.Errorf("first choices = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestRoundRobinNginxSequence(t *testing.T) {
	p := mustNew(t, RoundRobin, peers(5, 1, 1))
	s := newState(3)
	want := "aabacaa"
	var got strings.Builder
	var buf [3]int
	for range 2 * len(want) {
		order := p.Order(buf[:0], 0, s)
		got.WriteByte("abc"[order[0]])
		// Failover rotates from the first choice in index order.
		if wantRest := []int{(order[0] + 1) % 3, (order[0] + 2) % 3}; !slices.Equal(order[1:], wantRest) {
			t.Fatalf("order %v: rest = %v, want %v", order, order[1:], wantRest)
		}
	}
	if got.String() != want+want {
		t.Errorf("sequence = %s, want %s", got.String(), want+want)
	}
}

// withinPoints fails unless counts split in proportion to weights within
// pp percentage points per peer.
func withinPoints(t *testing.T, counts, weights []int, pp float64) {
	t.Helper()
	total, wsum := 0, 0
	for i := range counts {
		total += counts[i]
		wsum += weights[i]
	}
	for i := range counts {
		got := 100 * float64(counts[i]) / float64(total)
		want := 100 * float64(weights[i]) / float64(wsum)
		if got < want-pp || got > want+pp {
			t.Errorf("peer %d: %.1f%% of first choices, want %.1f%% ± %.0f (counts %v)", i, got, want, pp, counts)
		}
	}
}

func TestWeightedDistribution(t *testing.T) {
	sequentialKeys := func(c int) uint64 { return uint64(c) }
	for _, tc := range []struct {
		name     string
		strategy string
		weights  []int
		down     []int
		key      func(int) uint64
		want     []int // expected shares by weight; weights if nil
	}{
		{"random 1:2:3", Random, []int{1, 2, 3}, nil, noKey, nil},
		{"random equal", Random, []int{1, 1, 1, 1}, nil, noKey, nil},
		{"idle least_conn 1:2:3", LeastConn, []int{1, 2, 3}, nil, noKey, nil},
		{"hash 1:2:3 over keys", Hash, []int{1, 2, 3}, nil, sequentialKeys, nil},
		// A down peer's share goes to the others by weight, not all to
		// its successor in the cycle.
		{"round_robin 5:1:1 heavy down", RoundRobin, []int{5, 1, 1}, []int{0}, noKey, []int{0, 1, 1}},
		{"round_robin 1:2:3 middle down", RoundRobin, []int{1, 2, 3}, []int{1}, noKey, []int{1, 0, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := mustNew(t, tc.strategy, peers(tc.weights...))
			s := newState(len(tc.weights)).setDown(tc.down...)
			want := tc.want
			if want == nil {
				want = tc.weights
			}
			withinPoints(t, firstCounts(p, s, 3000, tc.key), want, 5)
		})
	}
}

func TestLeastConn(t *testing.T) {
	for _, tc := range []struct {
		name      string
		weights   []int
		active    []int64
		wantOrder []int // exact order, if set
		wantFirst []int // peers that may come first, if wantOrder is not set
	}{
		{"least loaded first, rest by load", []int{1, 1, 1}, []int64{5, 2, 7}, []int{1, 0, 2}, nil},
		{"weighted ratio", []int{1, 3}, []int64{2, 5}, []int{1, 0}, nil}, // 2/1 > 5/3
		{"heavy but full", []int{1, 3}, []int64{1, 4}, []int{0, 1}, nil}, // 1/1 < 4/3
		{"negative count is zero", []int{1, 1}, []int64{-3, 1}, []int{0, 1}, nil},
		{"ties spread", []int{1, 1, 1, 1}, []int64{0, 3, 0, 3}, nil, []int{0, 2}},
		{"weighted tie", []int{1, 2}, []int64{1, 2}, nil, []int{0, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := mustNew(t, LeastConn, peers(tc.weights...))
			s := newState(len(tc.weights)).setActive(tc.active...)
			var buf [8]int
			if tc.wantOrder != nil {
				for range 50 {
					if got := p.Order(buf[:0], 0, s); !slices.Equal(got, tc.wantOrder) {
						t.Fatalf("Order = %v, want %v", got, tc.wantOrder)
					}
				}
				return
			}
			counts := firstCounts(p, s, 3000, noKey)
			want := make([]int, len(tc.weights))
			for _, i := range tc.wantFirst {
				want[i] = tc.weights[i]
			}
			withinPoints(t, counts, want, 5)
		})
	}
}

func TestLeastConnRestOrderedByLoad(t *testing.T) {
	p := mustNew(t, LeastConn, peers(1, 1, 1, 1, 1))
	s := newState(5).setActive(4, 1, 1, 9, 2)
	var buf [5]int
	seen := map[string]bool{}
	for range 200 {
		got := p.Order(buf[:0], 0, s)
		seen[fmt.Sprint(got)] = true
	}
	// Ties (1 and 2) come in cyclic order from the random first choice.
	want := map[string]bool{"[1 2 4 0 3]": true, "[2 1 4 0 3]": true}
	if !maps.Equal(seen, want) {
		t.Errorf("orders seen = %v, want %v", seen, want)
	}
}

func TestHashSticky(t *testing.T) {
	ps := peers(1, 2, 1, 3)
	p := mustNew(t, Hash, ps)
	again := mustNew(t, Hash, ps) // another proxy instance
	s := newState(len(ps))
	var a, b [4]int
	for k := range uint64(200) {
		key := mix64(k)
		first := slices.Clone(p.Order(a[:0], key, s))
		for _, q := range []*Pool{p, again} {
			if got := q.Order(b[:0], key, s); !slices.Equal(got, first) {
				t.Fatalf("key %d: Order = %v then %v", k, first, got)
			}
		}
		// Failover is consistent: without the first choice, the rest keep
		// their order.
		down := newState(len(ps)).setDown(first[0])
		if got := p.Order(b[:0], key, down); !slices.Equal(got, first[1:]) {
			t.Fatalf("key %d: with %d down Order = %v, want %v", k, first[0], got, first[1:])
		}
	}
}

// firstByName maps each of n keys to the name of its first choice.
func firstByName(t *testing.T, ps []Peer, n int) []string {
	t.Helper()
	p := mustNew(t, Hash, ps)
	s := newState(len(ps))
	names := make([]string, n)
	var buf [16]int
	for k := range n {
		names[k] = ps[p.Order(buf[:0], Key(netip.AddrFrom4([4]byte{10, 0, byte(k >> 8), byte(k)})), s)[0]].Name
	}
	return names
}

func TestHashMovement(t *testing.T) {
	const keys = 1000
	four := peers(1, 1, 1, 1)
	five := append(slices.Clone(four), Peer{Name: "t4", Weight: 1})
	before := firstByName(t, four, keys)

	t.Run("add one of 5", func(t *testing.T) {
		after := firstByName(t, five, keys)
		moved := 0
		for k := range keys {
			if after[k] != before[k] {
				moved++
				if after[k] != "t4" {
					t.Fatalf("key %d moved from %s to %s, not to the new target", k, before[k], after[k])
				}
			}
		}
		t.Logf("%d of %d keys moved", moved, keys)
		if moved < keys*12/100 || moved > keys*28/100 {
			t.Errorf("%d of %d keys moved, want about 1/5", moved, keys)
		}
	})
	t.Run("remove one", func(t *testing.T) {
		// Removing t1 also shifts the others' positions: names keep them.
		three := []Peer{four[0], four[2], four[3]}
		after := firstByName(t, three, keys)
		for k := range keys {
			if (before[k] == "t1") != (after[k] != before[k]) {
				t.Fatalf("key %d: %s before, %s after removing t1", k, before[k], after[k])
			}
		}
	})
	t.Run("reorder", func(t *testing.T) {
		after := firstByName(t, []Peer{four[3], four[1], four[0], four[2]}, keys)
		if !slices.Equal(after, before) {
			t.Error("reordering the targets moved keys")
		}
	})
}

func TestTiers(t *testing.T) {
	// Peers: 0 and 1 primaries, 2 drained primary, 3 and 4 backups,
	// 5 drained backup.
	ps := []Peer{
		{Name: "p0", Weight: 1}, {Name: "p1", Weight: 2}, {Name: "p2", Weight: 0},
		{Name: "b3", Weight: 1, Backup: true}, {Name: "b4", Weight: 3, Backup: true},
		{Name: "b5", Weight: 0, Backup: true},
	}
	for _, tc := range []struct {
		name  string
		down  []int
		tiers [][]int // the order must be these sets, in this order
	}{
		{"all up", nil, [][]int{{0, 1}, {3, 4}}},
		{"one primary down", []int{0}, [][]int{{1}, {3, 4}}},
		{"primaries down", []int{0, 1}, [][]int{{3, 4}}},
		{"primaries and a backup down", []int{0, 1, 3}, [][]int{{4}}},
		{"a backup down", []int{4}, [][]int{{0, 1}, {3}}},
		{"everything down", []int{0, 1, 2, 3, 4, 5}, [][]int{{0, 1}, {3, 4}}},
	} {
		for _, strategy := range strategies {
			t.Run(tc.name+"/"+strategy, func(t *testing.T) {
				p := mustNew(t, strategy, ps)
				s := newState(len(ps)).setDown(tc.down...)
				var buf [8]int
				for k := range uint64(100) {
					got := p.Order(buf[:0], mix64(k), s)
					rest := got
					for _, want := range tc.tiers {
						if len(rest) < len(want) {
							t.Fatalf("Order = %v, want tiers %v", got, tc.tiers)
						}
						head := slices.Sorted(slices.Values(rest[:len(want)]))
						if !slices.Equal(head, want) {
							t.Fatalf("Order = %v, want tiers %v", got, tc.tiers)
						}
						rest = rest[len(want):]
					}
					if len(rest) != 0 {
						t.Fatalf("Order = %v, want tiers %v", got, tc.tiers)
					}
				}
			})
		}
	}
}

// TestLargeTier covers tiers too big for the stack scratch space, which
// sort differently.
func TestLargeTier(t *testing.T) {
	const n = 3 * scratchPeers
	ps := make([]Peer, n)
	s := newState(n)
	for i := range ps {
		ps[i] = Peer{Name: fmt.Sprintf("10.0.%d.%d:80", i/256, i%256), Weight: 1 + i%4}
		s.active[i].Store(int64((i * 37) % n)) // distinct
	}
	t.Run(LeastConn, func(t *testing.T) {
		p := mustNew(t, LeastConn, ps)
		got := p.Order(nil, 0, s)
		if err := checkOrder(got, ps); err != nil || len(got) != n {
			t.Fatalf("Order = %v (%v)", got, err)
		}
		for j := 1; j < n; j++ {
			a, b := got[j-1], got[j]
			if s.Active(a)*int64(ps[b].Weight) > s.Active(b)*int64(ps[a].Weight) {
				t.Fatalf("peer %d (%d/%d) before peer %d (%d/%d)",
					a, s.Active(a), ps[a].Weight, b, s.Active(b), ps[b].Weight)
			}
		}
	})
	t.Run(Hash, func(t *testing.T) {
		p := mustNew(t, Hash, ps)
		for k := range uint64(20) {
			got := p.Order(nil, k, s)
			if err := checkOrder(got, ps); err != nil || len(got) != n {
				t.Fatalf("Order = %v (%v)", got, err)
			}
			for j := 1; j < n; j++ {
				a, b := got[j-1], got[j]
				if score(k, p.seed[a], ps[a].Weight) < score(k, p.seed[b], ps[b].Weight) {
					t.Fatalf("key %d: peer %d before higher-scoring peer %d", k, a, b)
				}
			}
		}
	})
}

func TestAllDrained(t *testing.T) {
	for _, strategy := range strategies {
		t.Run(strategy, func(t *testing.T) {
			p := mustNew(t, strategy, []Peer{{Name: "a"}, {Name: "b", Backup: true}})
			if got := p.Order(nil, 1, newState(2)); len(got) != 0 {
				t.Errorf("Order = %v, want empty", got)
			}
		})
	}
}

// checkOrder fails unless order lists distinct weighted peers with no
// backup before a primary.
func checkOrder(order []int, ps []Peer) error {
	seen := make(map[int]bool, len(order))
	backups := false
	for _, i := range order {
		switch {
		case i < 0 || i >= len(ps) || ps[i].Weight == 0:
			return fmt.Errorf("order %v: peer %d is not a weighted peer", order, i)
		case seen[i]:
			return fmt.Errorf("order %v: peer %d repeated", order, i)
		case backups && !ps[i].Backup:
			return fmt.Errorf("order %v: primary %d after a backup", order, i)
		}
		seen[i] = true
		backups = backups || ps[i].Backup
	}
	return nil
}

// randomPeers returns n peers, some drained and some backups.
func randomPeers(r *rand.Rand, n int) []Peer {
	ps := make([]Peer, n)
	for i := range ps {
		ps[i] = Peer{Name: fmt.Sprintf("10.0.0.%d:80", i), Weight: r.IntN(4), Backup: r.IntN(3) == 0}
	}
	return ps
}

func TestOrderInvariants(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, strategy := range strategies {
		t.Run(strategy, func(t *testing.T) {
			for range 200 {
				ps := randomPeers(r, 1+r.IntN(20))
				p := mustNew(t, strategy, ps)
				s := newState(len(ps))
				s.setActive(func() []int64 {
					a := make([]int64, len(ps))
					for i := range a {
						a[i] = r.Int64N(5)
					}
					return a
				}()...)
				for i := range ps {
					s.down[i].Store(r.IntN(2) == 0)
				}
				weighted := 0
				for _, pe := range ps {
					if pe.Weight > 0 {
						weighted++
					}
				}
				order := p.Order(nil, r.Uint64(), s)
				if err := checkOrder(order, ps); err != nil {
					t.Fatal(err)
				}
				if len(order) > weighted || (weighted > 0 && len(order) == 0) {
					t.Fatalf("order %v for %d weighted peers", order, weighted)
				}
			}
		})
	}
}

func TestConcurrentOrder(t *testing.T) {
	ps := randomPeers(rand.New(rand.NewPCG(3, 4)), 16)
	for _, strategy := range strategies {
		t.Run(strategy, func(t *testing.T) {
			p := mustNew(t, strategy, ps)
			s := newState(len(ps))
			var flips sync.WaitGroup
			stop := make(chan struct{})
			flips.Go(func() {
				r := rand.New(rand.NewPCG(5, 6))
				for {
					select {
					case <-stop:
						return
					default:
						i := r.IntN(len(ps))
						s.down[i].Store(!s.down[i].Load())
						s.active[i].Add(r.Int64N(3) - 1)
					}
				}
			})
			var callers sync.WaitGroup
			errs := make(chan error, 8)
			for g := range 8 {
				callers.Go(func() {
					var buf [16]int
					for k := range 2000 {
						order := p.Order(buf[:0], uint64(g*10000+k), s)
						if err := checkOrder(order, ps); err != nil {
							errs <- err
							return
						}
					}
				})
			}
			callers.Wait()
			close(stop)
			flips.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
		})
	}
}

func TestOrderDoesNotAllocate(t *testing.T) {
	ps := make([]Peer, 16)
	for i := range ps {
		ps[i] = Peer{Name: fmt.Sprintf("10.0.0.%d:80", i), Weight: 1 + i%3, Backup: i >= 12}
	}
	for _, strategy := range strategies {
		t.Run(strategy, func(t *testing.T) {
			p := mustNew(t, strategy, ps)
			s := newState(len(ps)).setDown(1, 5)
			key := uint64(0)
			allocs := testing.AllocsPerRun(100, func() {
				var buf [16]int
				key++
				if len(p.Order(buf[:0], key, s)) == 0 {
					t.Fatal("empty order")
				}
			})
			if allocs != 0 {
				t.Errorf("Order allocates %.1f times per call", allocs)
			}
		})
	}
}

func TestKey(t *testing.T) {
	v4 := netip.MustParseAddr("192.0.2.1")
	for _, tc := range []struct {
		name string
		a, b netip.Addr
		same bool
	}{
		{"same address", v4, netip.MustParseAddr("192.0.2.1"), true},
		{"v4-mapped v6", v4, netip.MustParseAddr("::ffff:192.0.2.1"), true},
		{"zone ignored", netip.MustParseAddr("fe80::1%eth0"), netip.MustParseAddr("fe80::1"), true},
		{"adjacent v4", v4, netip.MustParseAddr("192.0.2.2"), false},
		{"v6", netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Key(tc.a) == Key(tc.b); got != tc.same {
				t.Errorf("Key(%v) == Key(%v) is %v, want %v", tc.a, tc.b, got, tc.same)
			}
		})
	}
	if n := testing.AllocsPerRun(100, func() { Key(v4) }); n != 0 {
		t.Errorf("Key allocates %.1f times per call", n)
	}
}

// TestHashStableAcrossReleases pins Key and the hash order. If it fails,
// the change remaps clients: proxy instances running different versions
// would disagree on where a client goes, and an upgrade moves every client.
func TestHashStableAcrossReleases(t *testing.T) {
	ps := []Peer{
		{Name: "10.0.0.1:80", Weight: 1}, {Name: "10.0.0.2:80", Weight: 2},
		{Name: "10.0.0.3:80", Weight: 3}, {Name: "10.0.0.4:80", Weight: 4},
	}
	p := mustNew(t, Hash, ps)
	for _, tc := range []struct {
		addr  string
		key   uint64
		order []int
	}{
		{"192.0.2.1", 0xd0a2398e4643ddf4, []int{1, 2, 0, 3}},
		{"192.0.2.2", 0x1d94365611e7ed83, []int{3, 1, 2, 0}},
		{"2001:db8::1", 0x188e3d1b99f69ff0, []int{1, 3, 2, 0}},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			key := Key(netip.MustParseAddr(tc.addr))
			if key != tc.key {
				t.Errorf("Key = %#x, want %#x", key, tc.key)
			}
			if got := p.Order(nil, key, newState(len(ps))); !slices.Equal(got, tc.order) {
				t.Errorf("Order = %v, want %v", got, tc.order)
			}
		})
	}
}
