package main

import (
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"os"
	"syscall"
)

// descriptorsPerConn is what one relayed connection holds open: the
// client socket and the target socket (the relay keeps no pipes while
// idle).
const descriptorsPerConn = 2

// descriptorReserve is what the proxy may need besides its listeners
// and connections: admin, health probes, logs, the runtime. Below
// listeners + descriptorReserve the proxy still starts, and warns.
const descriptorReserve = 64

// checkNoFileLimit raises the soft open-files limit to the hard limit
// (Go does so at start too, but say it) and warns, with the figures,
// when the limit leaves little room for connections or is below what
// max_connections implies, which an operator raises with LimitNOFILE=
// in the systemd unit or ulimit -n. A tight limit is no reason to
// refuse: accept backs off while descriptors run out (listener.go). It
// refuses only a config whose listeners cannot all be opened, since the
// descriptors in use and the listeners add up to more than the limit
// (not after an upgrade, whose process holds its listeners already);
// explainNoFile tells the rest of such failures.
func checkNoFileLimit(cfg *config, log *slog.Logger, upgraded bool) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return nil // nothing to check against
	}
	if lim.Cur < lim.Max {
		raised := lim
		raised.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err == nil {
			lim = raised
		}
	}
	listeners, inUse := listenerCount(cfg), descriptorsInUse()
	if !upgraded && uint64(listeners+inUse) > uint64(lim.Cur) {
		return fmt.Errorf("%d listeners need more open files than the limit of %d allows (%d in use): raise it (ulimit -n, LimitNOFILE=) or split the config", listeners, lim.Cur, inUse)
	}
	if uint64(listeners+descriptorReserve) > uint64(lim.Cur) {
		fit := max(int(lim.Cur)-inUse-listeners, 0) / descriptorsPerConn
		log.Warn("open files limit is low", "limit", lim.Cur, "listeners", listeners, "in_use", inUse, "connections_fit", fit,
			"hint", "accept backs off while descriptors run out; raise LimitNOFILE= in the systemd unit, or ulimit -n")
	}
	if need := descriptorsNeeded(cfg, uint64(listeners+descriptorReserve)); need > uint64(lim.Cur) {
		log.Warn("open files limit is below what max_connections implies", "limit", lim.Cur, "needed", need,
			"hint", "raise LimitNOFILE= in the systemd unit, or ulimit -n")
	}
	return nil
}

// listenerCount is the number of distinct listen addresses: apps that
// share one by name share its socket.
func listenerCount(cfg *config) int {
	addrs := map[string]bool{}
	for _, a := range cfg.Apps {
		for _, addr := range a.listenAddrs() {
			addrs[addr] = true
		}
	}
	return len(addrs)
}

// descriptorsInUse counts the descriptors this process holds now (0 if
// /proc cannot tell).
func descriptorsInUse() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(ents) - 1 // less the one reading the directory
}

// explainNoFile turns a start that failed because the listeners could
// not all be opened (EMFILE) into an error that names the limit and
// what to do about it.
func explainNoFile(cfg *config, err error) error {
	var lim syscall.Rlimit
	if !errors.Is(err, syscall.EMFILE) || syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) != nil {
		return err
	}
	return fmt.Errorf("%d listeners need more open files than the limit of %d allows: raise it (ulimit -n, LimitNOFILE=) or split the config: %w", listenerCount(cfg), lim.Cur, err)
}

// descriptorsNeeded returns base plus descriptorsPerConn for every
// connection the apps' max_connections allow (none when an app is
// unlimited), saturating at the largest
// uint64 instead of wrapping around: a max_connections of
// 9223372036854775807 needs more descriptors than any limit, not fewer.
func descriptorsNeeded(cfg *config, base uint64) uint64 {
	need := base
	for _, a := range cfg.Apps {
		if a.MaxConnections <= 0 {
			return 0 // unlimited: no figure to warn about
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
