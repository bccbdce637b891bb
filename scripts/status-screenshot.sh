#!/usr/bin/env bash
# Renders the admin status page of the demo into docs/status.png, so a
# person can look at it: builds the binary, runs `tcpproxy -demo` on the
# shipped config.yaml (admin on 127.0.0.1:9090), sends some traffic so the
# dead target and the rates show, drains one target through the admin API,
# holds a few connections open, and screenshots http://127.0.0.1:9090/
# with headless Chromium (Debian's chromium package, installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/status.png}

if ! command -v chromium >/dev/null; then
	apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi

tmp=$(mktemp -d)
held=()
trap 'kill "$pid" "${held[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"' EXIT
go build -o "$tmp/tcpproxy" .
TCPPROXY_ADMIN_TOKEN=demo "$tmp/tcpproxy" -demo -c config.yaml >"$tmp/log" 2>&1 &
pid=$!
for _ in $(seq 100); do
	curl -fsS -o /dev/null http://127.0.0.1:9090/readyz 2>/dev/null && break
	sleep 0.1
done
# Some traffic: the demo's dead target (9003) fails a dial and turns red.
for _ in $(seq 30); do
	printf 'hello\n' | timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5001; cat >&3; head -c 1 <&3 >/dev/null' || true
	printf 'hello\n' | timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/6001; cat >&3; head -c 1 <&3 >/dev/null' || true
done
# Take one target out of rotation, as an operator would.
curl -fsS -X POST -H 'Authorization: Bearer demo' \
	http://127.0.0.1:9090/apps/six-thousand/targets/127.0.0.1:9002/drain
echo
# A few open connections, so the max_connections meter moves.
for _ in $(seq 3); do
	timeout 60 bash -c 'exec 3<>/dev/tcp/127.0.0.1/6001; sleep 60' &
	held+=($!)
done
# More traffic for a second or two: the rates cover the last 10 s.
for _ in $(seq 20); do
	printf 'hello\n' | timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5001; cat >&3; head -c 1 <&3 >/dev/null' || true
	sleep 0.1
done
mkdir -p "$(dirname "$out")"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
	--disable-background-networking --disable-component-update --disable-sync \
	--user-data-dir="$tmp/chrome" --hide-scrollbars --window-size=1200,900 \
	--screenshot="$PWD/$out" http://127.0.0.1:9090/ 2>/dev/null
echo "wrote $out"
