package balance

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Key hashes a client IP into a key for Order. It does not allocate. An
// IPv4 address and its IPv4-mapped IPv6 form give the same key, and the
// zone is ignored. Key is deterministic (no per-process seed) so that every
// proxy instance, and a restarted one, sends a client to the same target.
func Key(ip netip.Addr) uint64 {
	b := ip.As16()
	hi := binary.BigEndian.Uint64(b[:8])
	lo := binary.BigEndian.Uint64(b[8:])
	return mix64(hi ^ mix64(lo))
}

// mix64 is the splitmix64 finalizer: a bijection whose every output bit
// depends on every input bit, so nearby inputs (sequential keys, adjacent
// addresses) give unrelated outputs.
func mix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// hashSeeds derives each peer's hash seed from its name, so a peer keeps
// its clients when others are added, removed or reordered.
func hashSeeds(peers []Peer) ([]uint64, error) {
	seeds := make([]uint64, len(peers))
	seen := make(map[string]int, len(peers))
	for i, pe := range peers {
		if pe.Name == "" {
			return nil, fmt.Errorf("balance: peer %d: %s strategy needs a name", i, Hash)
		}
		if j, dup := seen[pe.Name]; dup {
			return nil, fmt.Errorf("balance: peers %d and %d: duplicate name %q (%s strategy needs unique names)",
				j, i, pe.Name, Hash)
		}
		seen[pe.Name] = i
		seeds[i] = mix64(fnv1a(pe.Name))
	}
	return seeds, nil
}

// fnv1a is 64-bit FNV-1a, spelled out because it must never change:
// seeds decide which target each client maps to.
func fnv1a(s string) uint64 {
	h := uint64(0xcbf29ce484222325)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 0x100000001b3
	}
	return h
}
