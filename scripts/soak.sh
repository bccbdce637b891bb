#!/usr/bin/env bash
# Soak and chaos test of the proxy: builds the binary into a temp dir and
# runs `go run ./soak` against it, passing every argument on.
#
#   scripts/soak.sh                  # ten minutes, 2000 long-lived conns, 200 short/s
#   scripts/soak.sh -duration 60s    # the CI version
#   scripts/soak.sh -duration 60s -seed 42 -json -v
#
# Prints a summary table and exits with the soak's status: 0 on PASS,
# 1 on FAIL (the reasons and the end of the proxy's log are printed).
# All traffic stays on 127.0.0.1. See soak/main.go for what it does.
set -euo pipefail
cd "$(dirname "$0")/.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/tcpproxy" .

status=0
go run ./soak -proxy "$tmp/tcpproxy" "$@" || status=$?
exit "$status"
