package main

import "math/bits"

// descriptorsNeeded returns base plus descriptorsPerConn for every
// connection the apps' max_connections allow, saturating at the largest
// uint64 instead of wrapping around: a max_connections of
// 9223372036854775807 needs more descriptors than any limit, not fewer.
func descriptorsNeeded(cfg *config, base uint64) uint64 {
	need := base
	for _, a := range cfg.Apps {
		if a.MaxConnections <= 0 {
			continue
		}
		hi, per := bits.Mul64(uint64(a.MaxConnections), descriptorsPerConn)
		sum, carry := bits.Add64(need, per, 0)
		if hi != 0 || carry != 0 {
			return ^uint64(0)
		}
		need = sum
	}
	return need
}
