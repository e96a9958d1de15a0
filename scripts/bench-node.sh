#!/usr/bin/env bash
# Measures one node (release build) on this machine and prints three figures:
#   - time from process start to /ready returning 200
#   - idle resident memory after the node has settled
#   - /metrics response time over many sequential requests (median, p90, p99, max)
#
# Usage: scripts/bench-node.sh [RUNS_FOR_START=10] [METRICS_REQUESTS=500]
# Uses ZEROSTATE_BIN if set, else builds target/release/zerostate.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${1:-10}
REQUESTS=${2:-500}
SETTLE=${SETTLE_SECS:-10}

if [ -z "${ZEROSTATE_BIN:-}" ]; then
    cargo build --release --locked --bin zerostate >&2
    ZEROSTATE_BIN=target/release/zerostate
fi
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start_node() { # $1 = data dir
    NO_COLOR=1 "$ZEROSTATE_BIN" node --data-dir "$1" --http 127.0.0.1:0 \
        --listen /ip4/127.0.0.1/tcp/0 --listen /ip4/127.0.0.1/udp/0/quic-v1 \
        >"$1.log" 2>&1 &
    pid=$!
}

wait_ready() { # $1 = data dir; prints the HTTP address
    local http=""
    while :; do
        if [ -z "$http" ] && [ -s "$1/node.json" ]; then http=$(jq -r .http "$1/node.json"); fi
        if [ -n "$http" ] && curl -fs -o /dev/null "http://$http/ready"; then
            echo "$http"; return
        fi
        sleep 0.005
    done
}

# Keys exist before timing, so start-to-ready excludes key generation (a one-time cost).
"$ZEROSTATE_BIN" keygen --data-dir "$work/node" >/dev/null 2>&1
times=()
for _ in $(seq "$RUNS"); do
    t0=$(date +%s%N)
    start_node "$work/node"
    http=$(wait_ready "$work/node")
    t1=$(date +%s%N)
    times+=($(( (t1 - t0) / 1000 )))
    kill -TERM "$pid"; wait "$pid" || true; pid=""
    rm -f "$work/node/node.json"
done
printf 'start_to_ready_ms: %s\n' "$(printf '%s\n' "${times[@]}" | sort -n \
    | awk '{a[NR]=$1} END {printf "median %.1f, min %.1f, max %.1f (n=%d)", a[int((NR+1)/2)]/1000, a[1]/1000, a[NR]/1000, NR}')"

start_node "$work/node"
http=$(wait_ready "$work/node")
sleep "$SETTLE"
rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
awk -v kb="$rss_kb" -v s="$SETTLE" 'BEGIN { printf "idle_rss_mib: %.1f (after %ss idle, no peers)\n", kb / 1024, s }'
bytes=$(curl -fs "http://$http/metrics" | wc -c)
for _ in $(seq "$REQUESTS"); do
    curl -fs -o /dev/null -w '%{time_total}\n' "http://$http/metrics"
done | sort -n | awk -v b="$bytes" '{a[NR]=$1*1000} END {
    printf "metrics_response_ms: median %.3f, p90 %.3f, p99 %.3f, max %.3f (n=%d, body %d bytes, curl time_total incl. connect)\n",
        a[int(NR*0.5)], a[int(NR*0.9)], a[int(NR*0.99)], a[NR], NR, b }'
