#!/usr/bin/env bash
# System calls per connection, as BENCHMARKS.md counts them: strace -f -c
# on a running proxy during `tcpbench connrate -c 4` for 3 s, divided by
# the connect(2) calls (one dial per connection). Loopback only.
#
#   scripts/syscalls.sh                 # ours, built from this checkout
#   scripts/syscalls.sh haproxy         # HAProxy (mode tcp) for scale
#
# Needs strace and the shared harness (../shared/bench, or BENCH_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
system=${1:-ours}
bench=${BENCH_DIR:-../shared/bench}
tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
(cd "$bench" && go build -o "$tmp/tcpbench" .)
"$tmp/tcpbench" serve -echo 127.0.0.1:27001 >/dev/null 2>&1 &
pids+=($!)
case $system in
ours)
	go build -o "$tmp/tcpproxy" .
	printf 'apps:\n  - name: echo\n    ports: [28001]\n    targets: ["127.0.0.1:27001"]\n' >"$tmp/c.yaml"
	"$tmp/tcpproxy" -c "$tmp/c.yaml" -log-level warn >/dev/null 2>&1 &
	;;
haproxy)
	printf 'defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\nlisten echo\n  bind 127.0.0.1:28001\n  server s1 127.0.0.1:27001\n' >"$tmp/h.cfg"
	haproxy -db -f "$tmp/h.cfg" >/dev/null 2>&1 &
	;;
*) echo "usage: $0 [ours|haproxy]" >&2; exit 2 ;;
esac
pid=$!
pids+=("$pid")
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/28001) 2>/dev/null && break; sleep 0.1; done
sleep 0.3
strace -f -c -p "$pid" -o "$tmp/strace" 2>/dev/null &
st=$!
sleep 1
"$tmp/tcpbench" connrate -addr 127.0.0.1:28001 -c 4 -warmup 0 -duration 3s
sleep 0.5
kill -INT "$st"
wait "$st" || true
n=$(awk '$NF=="connect"{print $4}' "$tmp/strace")
echo "$system: $n connections; system calls per connection (calls, errors):"
awk -v n="$n" 'NR>2 && $NF!="total" && $1 ~ /^[0-9.]+$/ {
	errs = (NF == 6) ? $5 : 0
	printf "%-16s %7.2f %6.2f\n", $NF, $4/n, errs/n; tot += $4
} END { printf "%-16s %7.2f\n", "total", tot/n }' "$tmp/strace" | sort -k2 -nr
