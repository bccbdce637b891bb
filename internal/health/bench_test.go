package health

import (
	"testing"
	"time"
)

// The per-connection path on a healthy target must not allocate.
func BenchmarkUpTargetHotPath(b *testing.B) {
	tg := NewTarget("10.0.0.1:80", Policy{MaxFails: 1}, nil)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if !tg.Usable(now) || !tg.Acquire(now, false) {
			b.Fatal("up target refused")
		}
		tg.Success()
	}
}

// The same path with every core hammering one shared target, as all the
// listening ports of an app do.
func BenchmarkUpTargetHotPathParallel(b *testing.B) {
	tg := NewTarget("10.0.0.1:80", Policy{MaxFails: 1}, nil)
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !tg.Usable(now) || !tg.Acquire(now, false) {
				b.Error("up target refused")
				return
			}
			tg.Success()
		}
	})
}

func TestUpTargetHotPathDoesNotAllocate(t *testing.T) {
	tg := NewTarget("10.0.0.1:80", Policy{MaxFails: 1}, nil)
	now := time.Now()
	allocs := testing.AllocsPerRun(1000, func() {
		tg.Usable(now)
		tg.Acquire(now, false)
		tg.Success()
	})
	if allocs != 0 {
		t.Fatalf("hot path allocates %v times per connection", allocs)
	}
}
