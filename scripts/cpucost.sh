#!/usr/bin/env bash
# CPU cost of a proxy: user+sys time of its process (from /proc/PID/stat)
# per GB relayed and per 1,000 connections, for ours and the harness's
# naive Go proxy, measured with the harness's tcpbench on loopback.
#
#   scripts/cpucost.sh [seconds per figure, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
harness_dir=${BENCH_DIR:-../shared/bench}
tmp=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

(cd "$harness_dir" && go build -o "$tmp/tcpbench" .)
go build -o "$tmp/tcpproxy" .
cat >"$tmp/config.yaml" <<EOF
apps:
  - {name: echo, listen: 127.0.0.1, ports: [18401], targets: ["127.0.0.1:17401"]}
  - {name: sink, listen: 127.0.0.1, ports: [18402], targets: ["127.0.0.1:17402"]}
EOF
"$tmp/tcpbench" serve -echo 127.0.0.1:17401 -sink 127.0.0.1:17402 -source 127.0.0.1:17403 >/dev/null 2>&1 &
pids+=($!)

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

measure() { # name, command...
	local name=$1
	shift
	"$@" >/dev/null 2>&1 &
	local pid=$!
	pids+=("$pid")
	for _ in $(seq 100); do
		(exec 3<>/dev/tcp/127.0.0.1/18401) 2>/dev/null && break
		sleep 0.1
	done
	local t0 t1 out bytes conns
	t0=$(ticks "$pid")
	out=$("$tmp/tcpbench" throughput -addr 127.0.0.1:18402 -streams 1 -dir up -duration "${secs}s" -json 2>/dev/null)
	t1=$(ticks "$pid")
	bytes=$(grep -o '"bytes":[0-9]*' <<<"$out" | cut -d: -f2)
	local gb_ms
	gb_ms=$(awk -v t="$((t1 - t0))" -v hz="$hz" -v b="$bytes" 'BEGIN{printf "%.0f", t*1000/hz/(b/1e9)}')
	t0=$(ticks "$pid")
	out=$("$tmp/tcpbench" connrate -addr 127.0.0.1:18401 -c 32 -duration "${secs}s" -json 2>/dev/null)
	t1=$(ticks "$pid")
	conns=$(grep -o '"conns":[0-9]*' <<<"$out" | cut -d: -f2)
	local kc_ms
	kc_ms=$(awk -v t="$((t1 - t0))" -v hz="$hz" -v c="$conns" 'BEGIN{printf "%.0f", t*1000/hz/(c/1000)}')
	printf '| %-6s | %8s | %15s |\n' "$name" "$gb_ms" "$kc_ms"
	kill "$pid"
	wait "$pid" 2>/dev/null || true
}

echo "| proxy  | CPU ms/GB | CPU ms/1k conns |"
echo "|--------|----------:|----------------:|"
measure ours "$tmp/tcpproxy" -c "$tmp/config.yaml"
measure naive "$tmp/tcpbench" proxy -listen 127.0.0.1:18401 -target 127.0.0.1:17401 -listen 127.0.0.1:18402 -target 127.0.0.1:17402
