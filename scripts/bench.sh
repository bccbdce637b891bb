#!/usr/bin/env bash
# Builds tcpproxy and runs the shared comparison harness: a direct
# connection, HAProxy (mode tcp), nginx (stream), a naive Go proxy and
# ours, one after the other on loopback. Arguments go to compare.sh, e.g.
#
#   scripts/bench.sh --rounds 3        # what BENCHMARKS.md reports
#   scripts/bench.sh --quick           # a smoke test of under a minute
#
# compare.sh installs haproxy and nginx with apt-get if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
harness=${BENCH_HARNESS:-../shared/bench/compare.sh}
if [ ! -x "$harness" ] && [ ! -f "$harness" ]; then
	echo "bench: $harness not found (set BENCH_HARNESS)" >&2
	exit 1
fi
go build -o tcpproxy .
exec bash "$harness" --ours './tcpproxy -c {config}' "$@"
