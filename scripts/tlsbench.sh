#!/usr/bin/env bash
# TLS termination benchmark: HAProxy (`bind ... ssl crt`), nginx (`listen
# ... ssl` in stream) and ours (`tls:`), one after the other on loopback,
# on the same ECDSA P-256 certificate (made here with openssl) in front of
# the same plain backends (the shared harness's `tcpbench serve`):
#
#   - new TLS 1.3 connections per second and the proxy's CPU per connection
#     (`tcpbench tlsrate -c 16`: dial, full handshake, 64-byte echo, close;
#     no session resumption);
#   - bulk MB/s through one terminated connection, each way, and the
#     proxy's CPU per GB (`tlsbench bulk`, scripts/tlsbench/: tcpbench's
#     throughput speaks plain TCP only);
#   - the proxy's memory per idle terminated connection (`tlsbench idle`:
#     2000 connections, each a handshake and a 64-byte echo, held 2 s;
#     RSS growth of the proxy's process tree).
#
# Besides, `direct` is tcpbench's own Go TLS echo server without a proxy
# (handshakes only), `ours-sni` terminates on a port routed by SNI (the
# library peeks the ClientHello first), and `ours-plain` is ours on plain
# TCP (spliced bulk, CPU per plain connection, idle memory) for scale.
#
#   scripts/tlsbench.sh --rounds 3       # what BENCHMARKS.md reports
#   scripts/tlsbench.sh --quick          # a smoke test
#
# Options: --rounds N (medians of N rounds), --duration D, --warmup D,
# --systems LIST (subset of "direct haproxy nginx ours ours-sni ours-plain"),
# --out DIR. Needs haproxy, nginx with the stream module, openssl and go;
# installs haproxy and nginx with apt-get if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bench_src=${BENCH_SRC:-../shared/bench}

host=127.0.0.1
echo_port=19001 sink_port=19002 source_port=19003 tls_echo_port=19004
declare -A first_port=([haproxy]=19101 [nginx]=19201 [ours]=19301 [ours-sni]=19401 [ours-plain]=19501)
rounds=1 duration=5s warmup=500ms idle_conns=2000 systems="direct haproxy nginx ours ours-sni ours-plain" out=
backend_pid= sut_pid=

die() {
	echo "tlsbench.sh: $*" >&2
	exit 1
}

while (($#)); do
	case $1 in
	--quick) duration=1s warmup=200ms; shift; continue ;;
	--rounds | --duration | --warmup | --systems | --out) (($# >= 2)) || die "$1 needs a value" ;;
	-h | --help) sed -n '2,28p' "$0"; exit 0 ;;
	*) die "unknown option $1" ;;
	esac
	case $1 in
	--rounds) rounds=$2 ;;
	--duration) duration=$2 ;;
	--warmup) warmup=$2 ;;
	--systems) systems=$2 ;;
	--out) out=$2 ;;
	esac
	shift 2
done

# tree PID: PID and its descendants.
tree() {
	local child
	echo "$1"
	for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do tree "$child"; done
}

# stop PID: SIGTERM to PID's tree, SIGKILL after 5 s.
stop() {
	local pids i pid
	mapfile -t pids < <(tree "$1")
	kill -TERM "${pids[@]}" 2>/dev/null || true
	for i in {1..50}; do
		kill -0 "${pids[@]}" 2>/dev/null || break
		sleep 0.1
	done
	for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"; done
	wait "$1" 2>/dev/null || true
}

cleanup() {
	if [[ -n $sut_pid ]]; then stop "$sut_pid"; fi
	if [[ -n $backend_pid ]]; then stop "$backend_pid"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

accepting() { (exec 3<>"/dev/tcp/$host/$1") 2>/dev/null; }

# wait_ports PID PORT...: until every PORT accepts; fails if PID exits or after 15 s.
wait_ports() {
	local pid=$1 port deadline=$((SECONDS + 15))
	shift
	for port; do
		until accepting "$port"; do
			kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)) || return 1
			sleep 0.1
		done
	done
}

install_missing() {
	if command -v haproxy >/dev/null && command -v nginx >/dev/null && [[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]]; then
		return
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y haproxy nginx libnginx-mod-stream || { apt-get update && apt-get install -y haproxy nginx libnginx-mod-stream; }
}

# The three TLS ports of a system: P -> echo, P+1 -> sink, P+2 -> source.
backends=("$echo_port" "$sink_port" "$source_port")

haproxy_config() {
	local p=$1 i
	printf 'global\n    maxconn 4000\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n'
	for i in 0 1 2; do
		printf '\nlisten tls%d\n    bind %s:%d ssl crt %s/haproxy.pem\n    server s%d %s:%d\n' \
			"$i" "$host" "$((p + i))" "$work" "$i" "$host" "${backends[i]}"
	done
}

nginx_config() {
	local p=$1 dir=$2 i module=/usr/lib/nginx/modules/ngx_stream_module.so
	[[ -e $module ]] && echo "load_module $module;"
	cat <<EOF
daemon off;
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4000; }
stream {
    proxy_timeout 1h;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
EOF
	for i in 0 1 2; do
		echo "    server { listen $host:$((p + i)) ssl; proxy_pass $host:${backends[i]}; }"
	done
	echo "}"
}

# ours_config PORT KIND: KIND tls (own ports), sni (each port shared by
# name, the app chosen by SNI terminating) or plain.
ours_config() {
	local p=$1 kind=$2 names=(echo sink source) i
	echo "apps:"
	for i in 0 1 2; do
		echo "  - name: ${names[i]}"
		echo "    listen: $host"
		echo "    ports: [$((p + i))]"
		echo "    targets: [\"$host:${backends[i]}\"]"
		if [[ $kind == sni ]]; then echo "    sni: [a.bench.test]"; fi
		if [[ $kind != plain ]]; then echo "    tls: {certificates: [{cert: $work/cert.pem, key: $work/key.pem}]}"; fi
	done
}

# start SYSTEM: starts it in the background, sets sut_pid, waits for its ports.
start() {
	local sys=$1 p=${first_port[$1]:-} dir=$work/$1 cmd
	[[ $sys != direct ]] || return 0
	mkdir -p "$dir"
	case $sys in
	haproxy) haproxy_config "$p" >"$dir/haproxy.cfg"; cmd=(haproxy -db -f "$dir/haproxy.cfg") ;;
	nginx) nginx_config "$p" "$dir" >"$dir/nginx.conf"; cmd=(nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf") ;;
	ours) ours_config "$p" tls >"$dir/ours.yaml"; cmd=("$work/tcpproxy" -c "$dir/ours.yaml") ;;
	ours-sni) ours_config "$p" sni >"$dir/ours.yaml"; cmd=("$work/tcpproxy" -c "$dir/ours.yaml") ;;
	ours-plain) ours_config "$p" plain >"$dir/ours.yaml"; cmd=("$work/tcpproxy" -c "$dir/ours.yaml") ;;
	*) die "unknown system $sys" ;;
	esac
	"${cmd[@]}" >"$dir/output.log" 2>&1 &
	sut_pid=$!
	wait_ports "$sut_pid" "$p" "$((p + 1))" "$((p + 2))" || {
		tail -n 20 "$dir/output.log" >&2
		die "$sys did not come up: ${cmd[*]}"
	}
}

# measure SYSTEM CASE COMMAND...: runs COMMAND (printing JSON) and files
# its result.
measure() {
	local sys=$1 case=$2 json
	shift 2
	if json=$("$@"); then
		printf '{"round":%d,"system":"%s","case":"%s","result":%s}\n' "$round" "$sys" "$case" "$json" >>"$raw"
		echo "  $sys $case: $json" >&2
	else
		echo "tlsbench.sh: $sys $case failed" >&2
	fi
}

bench() {
	local sys=$1 p=${first_port[$1]:-} t=(-duration "$duration" -warmup "$warmup" ${sut_pid:+-pid "$sut_pid"})
	case $sys in
	direct)
		measure "$sys" tlsrate "$work/tcpbench" tlsrate -addr "$host:$tls_echo_port" -c 16 -sni a.bench.test "${t[@]}" -json
		;;
	ours-plain)
		measure "$sys" idle "$work/tcpbench" idle -addr "$host:$p" -n "$idle_conns" -hold 2s -pid "$sut_pid" -json
		measure "$sys" up1 "$work/tcpbench" throughput -addr "$host:$((p + 1))" -dir up -streams 1 "${t[@]}" -json
		measure "$sys" down1 "$work/tcpbench" throughput -addr "$host:$((p + 2))" -dir down -streams 1 "${t[@]}" -json
		measure "$sys" connrate "$work/tcpbench" connrate -addr "$host:$p" -c 16 "${t[@]}" -json
		;;
	ours-sni)
		measure "$sys" tlsrate "$work/tcpbench" tlsrate -addr "$host:$p" -c 16 -sni a.bench.test "${t[@]}" -json
		;;
	*)
		measure "$sys" idle "$work/tlsbench" idle -addr "$host:$p" -n "$idle_conns" -pid "$sut_pid"
		measure "$sys" tlsrate "$work/tcpbench" tlsrate -addr "$host:$p" -c 16 -sni a.bench.test "${t[@]}" -json
		measure "$sys" up1 "$work/tlsbench" bulk -addr "$host:$((p + 1))" -dir up "${t[@]}"
		measure "$sys" down1 "$work/tlsbench" bulk -addr "$host:$((p + 2))" -dir down "${t[@]}"
		;;
	esac
}

[[ " $systems " != *" haproxy "* && " $systems " != *" nginx "* ]] || install_missing
command -v openssl >/dev/null || die "openssl is needed to make the certificate"
work=$(mktemp -d /tmp/tlsbench.XXXXXX)
out=${out:-$work/results}
raw=$work/raw.jsonl
mkdir -p "$out"
(cd "$bench_src" && GOWORK=off go build -o "$work/tcpbench" .) || die "cannot build tcpbench from $bench_src"
go build -o "$work/tcpproxy" . && go build -o "$work/tlsbench" ./scripts/tlsbench

# One ECDSA P-256 certificate for all three, valid two days.
openssl ecparam -name prime256v1 -genkey -noout -out "$work/key.pem" 2>/dev/null
openssl req -x509 -new -key "$work/key.pem" -out "$work/cert.pem" -days 2 -subj /CN=a.bench.test \
	-addext subjectAltName=DNS:a.bench.test 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" >"$work/haproxy.pem"

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
"$work/tcpbench" serve -echo "$host:$echo_port" -sink "$host:$sink_port" -source "$host:$source_port" \
	-tls "$host:$tls_echo_port" >"$work/backends.log" 2>&1 &
backend_pid=$!
wait_ports "$backend_pid" "$echo_port" "$sink_port" "$source_port" "$tls_echo_port" || die "backends did not come up"

for ((round = 1; round <= rounds; round++)); do
	for sys in $systems; do
		echo "== round $round/$rounds: $sys" >&2
		start "$sys"
		bench "$sys"
		if [[ -n $sut_pid ]]; then
			stop "$sut_pid"
			sut_pid=
		fi
	done
done

{
	echo "$(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), Linux $(uname -r), $(go env GOVERSION)," \
		"HAProxy $(haproxy -v | awk '{print $3; exit}'), nginx $(nginx -v 2>&1 | sed 's#.*/##'), $(openssl version | cut -d' ' -f1-2);" \
		"$duration per figure after $warmup warm-up, medians of $rounds round(s)"
	echo
	"$work/tlsbench" table -in "$raw"
} | tee "$out/results.md"
cp "$raw" "$out/raw.jsonl"
echo "results: $out (logs and configs: $work)" >&2
