package balance

import (
	"fmt"
	"net/netip"
	"testing"
)

// BenchmarkOrder/<strategy>/<targets>/<weights> measures Order as the proxy
// calls it: a stack buffer per connection, a pointer State, all targets up.
// "mixed" weights cycle 1,2,3; hash is cheaper with equal weights because
// it can skip the logarithms.
func BenchmarkOrder(b *testing.B) {
	for _, strategy := range strategies {
		for _, n := range []int{3, 16} {
			for _, weights := range []string{"equal", "mixed"} {
				b.Run(fmt.Sprintf("%s/%d/%s", strategy, n, weights), func(b *testing.B) {
					ps := make([]Peer, n)
					for i := range ps {
						ps[i] = Peer{Name: fmt.Sprintf("10.0.0.%d:80", i), Weight: 1}
						if weights == "mixed" {
							ps[i].Weight += i % 3
						}
					}
					p := mustNew(b, strategy, ps)
					s := newState(n)
					for i := range n {
						s.active[i].Store(int64(i * 7 % 5))
					}
					b.ReportAllocs()
					key := uint64(0)
					for b.Loop() {
						var buf [16]int
						key++
						if len(p.Order(buf[:0], mix64(key), s)) != n {
							b.Fatal("short order")
						}
					}
				})
			}
		}
	}
}

func BenchmarkKey(b *testing.B) {
	for _, addr := range []string{"192.0.2.1", "2001:db8::1"} {
		b.Run(addr, func(b *testing.B) {
			ip := netip.MustParseAddr(addr)
			b.ReportAllocs()
			var sink uint64
			for b.Loop() {
				sink += Key(ip)
			}
			_ = sink
		})
	}
}
