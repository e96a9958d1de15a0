#!/usr/bin/env bash
# Task market benchmark on a local devnet (scripts/devnet.sh), issue 7.
#
# 1. Announce -> award latency: for each task's first attempt, the time from
#    "auction <id> announced" to "award accepted" in the requester's timeline
#    (GET /api/v1/tasks on every node), p50 and p99, next to the ping RTT the
#    nodes report (GET /api/v1/peers, rtt_last_ms of connected peers, at the
#    end of the run). Goal: p50 <= bid window + 6 x RTT p50. Measured once per
#    bid window (default 1000 ms, then 200 ms; the devnet is restarted with
#    ZEROSTATE_MARKET_BID_WINDOW_MS for each).
# 2. Throughput: 'zerostate load' (pow) at increasing rates on the devnet with
#    the last bid window: submitted, completed, failed, completed per second of
#    wall time (submission time + drain), latency, CPU of the node processes
#    and of the load client, and where the time of successful tasks goes
#    (before the auction, bid window, award delivery, execution + result
#    delivery, verification), from the timelines.
#
# Usage: scripts/bench-market.sh
#
# Environment (all optional):
#   ZEROSTATE_BIN            zerostate binary (else devnet.sh builds target/release/zerostate)
#   DEVNET_DIR               devnet directory (default: a new /tmp/zerostate-bench-market.*);
#                            raw data (task timelines, peers, load output) goes to DEVNET_DIR/results
#   BENCH_NODES              devnet size (default 10)
#   BENCH_DIFFICULTY         pow difficulty of every task (default 8)
#   BENCH_LATENCY_WINDOWS    bid windows of part 1, ms (default "1000 200"); the last one is
#                            also the bid window of part 2
#   BENCH_LATENCY_RATE       tasks/s of part 1 (default 5)
#   BENCH_LATENCY_DURATION   seconds of part 1 per bid window (default 20)
#   BENCH_RATES              tasks/s of part 2 (default "10 20 40 60 80"; empty: skip part 2)
#   BENCH_DURATION           seconds of part 2 per rate (default 15)
#   BENCH_DRAIN              'zerostate load --drain' (default 60)
#   BENCH_SETTLE             seconds to wait after 'up' before loading (default 5)
#   BENCH_REPORT_ONLY=1      run nothing: print the report again from DEVNET_DIR/results
#                            (same BENCH_LATENCY_WINDOWS and BENCH_RATES as the run)
# Other ZEROSTATE_* variables (e.g. ZEROSTATE_MARKET_PROVIDER_CAPACITY) reach the
# nodes through devnet.sh.
#
# Requires: bash, curl, jq (and what devnet.sh needs).
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
PROG="${0##*/}"
DEVNET="$SCRIPT_DIR/devnet.sh"

NODES="${BENCH_NODES:-10}"
DIFFICULTY="${BENCH_DIFFICULTY:-8}"
LAT_WINDOWS="${BENCH_LATENCY_WINDOWS:-1000 200}"
LAT_RATE="${BENCH_LATENCY_RATE:-5}"
LAT_DURATION="${BENCH_LATENCY_DURATION:-20}"
RATES="${BENCH_RATES-10 20 40 60 80}"
DURATION="${BENCH_DURATION:-15}"
DRAIN="${BENCH_DRAIN:-60}"
SETTLE="${BENCH_SETTLE:-5}"

die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
say() { printf '%s\n' "$*" >&2; }

for cmd in curl jq; do
    command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is required but not installed"
done
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "BENCH_NODES must be a positive integer"
for v in $LAT_WINDOWS; do [[ "$v" =~ ^[1-9][0-9]*$ ]] || die "bad bid window '$v'"; done
read -r -a WINDOWS <<<"$LAT_WINDOWS"
((${#WINDOWS[@]} > 0)) || die "BENCH_LATENCY_WINDOWS is empty"
read -r -a RATE_LIST <<<"$RATES"

if [[ -z "${DEVNET_DIR:-}" ]]; then
    DEVNET_DIR="$(mktemp -d /tmp/zerostate-bench-market.XXXXXX)"
fi
export DEVNET_DIR
RES="$DEVNET_DIR/results"
mkdir -p "$RES"
TICKS_PER_SEC="$(getconf CLK_TCK 2>/dev/null || echo 100)"
TIMEFORMAT='%U %S' # bash 'time': user and system CPU seconds of the load client

table() {
    if command -v column >/dev/null 2>&1; then column -t -s $'\t'; else cat; fi
}
now_ms() { date +%s%3N; }
api() { curl --noproxy '*' -fsS --max-time 10 "$@"; }

# --- devnet ------------------------------------------------------------------

UP=0
NAMES=() HTTPS=() PIDS=() PEERS=() DIRS=()
BIN=""

devnet_down() {
    if ((UP == 1)); then
        UP=0
        "$DEVNET" down >>"$RES/devnet.log" 2>&1 || say "warning: devnet.sh down failed (see $RES/devnet.log)"
    fi
}
trap devnet_down EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# devnet_up WINDOW_MS: a fresh devnet whose nodes use a bid window of WINDOW_MS.
devnet_up() {
    local window="$1"
    say "== devnet up: $NODES nodes, bid window $window ms ($DEVNET_DIR)"
    UP=1
    ZEROSTATE_MARKET_BID_WINDOW_MS="$window" "$DEVNET" up "$NODES" >>"$RES/devnet.log" 2>&1 ||
        die "devnet.sh up failed (see $RES/devnet.log)"
    mapfile -t NAMES < <(jq -r '.[].name' "$DEVNET_DIR/nodes.json")
    mapfile -t HTTPS < <(jq -r '.[].http' "$DEVNET_DIR/nodes.json")
    mapfile -t PIDS < <(jq -r '.[].pid' "$DEVNET_DIR/nodes.json")
    mapfile -t PEERS < <(jq -r '.[].peer_id' "$DEVNET_DIR/nodes.json")
    mapfile -t DIRS < <(jq -r '.[].data_dir' "$DEVNET_DIR/nodes.json")
    BIN="$(jq -r '.[0].bin' "$DEVNET_DIR/nodes.json")"
    sleep "$SETTLE"
}

# node_ticks: utime + stime of every node process, in clock ticks.
node_ticks() {
    local pid stat total=0
    local -a f=()
    for pid in "${PIDS[@]}"; do
        if { read -r stat <"/proc/$pid/stat"; } 2>/dev/null; then
            read -r -a f <<<"${stat##*) }" # f[0] is field 3; utime is 14, stime 15
            total=$((total + f[11] + f[12]))
        fi
    done
    printf '%s\n' "$total"
}

# fetch_tasks T0 T1 OUT: the tasks every node submitted between T0 and T1
# (Unix ms) as one JSON array, each with .node and .requester (peer id) added.
fetch_tasks() {
    local t0="$1" t1="$2" out="$3" i offset n oldest page dir="$RES/pages"
    rm -rf -- "$dir"
    mkdir -p "$dir"
    for i in "${!NAMES[@]}"; do
        offset=0
        while :; do
            page="$dir/${NAMES[i]}-$offset.json"
            api "http://${HTTPS[i]}/api/v1/tasks?offset=$offset&limit=500" |
                jq -c --arg node "${NAMES[i]}" --arg peer "${PEERS[i]}" \
                    '{node: $node, requester: $peer, tasks: .items}' >"$page"
            n="$(jq '.tasks | length' "$page")"
            oldest="$(jq '.tasks[-1].submitted_ms // 0' "$page")"
            ((n == 500 && oldest >= t0)) || break
            offset=$((offset + 500))
        done
    done
    jq -s --argjson t0 "$t0" --argjson t1 "$t1" '
        [.[] | .node as $n | .requester as $r | .tasks[]
         | select(.submitted_ms >= $t0 and .submitted_ms <= $t1)
         | . + {node: $n, requester: $r}]' "$dir"/*.json >"$out"
}

# fetch_peers OUT: [{from, to, rtt}] of every connected peer with a ping RTT,
# as every node reports it; plus .connected counts per node in OUT.counts.
fetch_peers() {
    local out="$1" i dir="$RES/peers"
    rm -rf -- "$dir"
    mkdir -p "$dir"
    for i in "${!NAMES[@]}"; do
        api "http://${HTTPS[i]}/api/v1/peers?limit=500" |
            jq -c --arg from "${PEERS[i]}" --arg node "${NAMES[i]}" '
                {node: $node,
                 connected: [.items[] | select(.connected)] | length,
                 rtts: [.items[] | select(.connected and .rtt_last_ms != null)
                        | {from: $from, to: .peer_id, rtt: .rtt_last_ms}]}' \
                >"$dir/${NAMES[i]}.json"
    done
    jq -s '{rtts: [.[].rtts[]], connected: [.[].connected]}' "$dir"/*.json >"$out"
}

# fetch_errors OUT: zerostate_economic_task_errors_total summed over the nodes,
# as "labels<TAB>count" lines (counters since the devnet started).
fetch_errors() {
    local out="$1" i
    for i in "${!NAMES[@]}"; do
        api "http://${HTTPS[i]}/metrics" || true
    done | awk '$1 ~ /^zerostate_economic_task_errors_total\{/ {
            sub(/^zerostate_economic_task_errors_total/, "", $1); sum[$1] += $2 }
        END { for (k in sum) if (sum[k] > 0) printf "%s\t%d\n", k, sum[k] }' | sort >"$out"
}

# run_load LABEL RATE DURATION WINDOW: one 'zerostate load' run over all nodes;
# writes RES/LABEL.{run,tasks,peers}.json.
run_load() {
    local label="$1" rate="$2" duration="$3" window="$4" pre="$RES/$1"
    local -a dirs=()
    local d t0 t1 c0 c1 rc summary client_cpu
    for d in "${DIRS[@]}"; do dirs+=(--data-dir "$d"); done
    say "-- $label: pow difficulty $DIFFICULTY at $rate/s for ${duration}s (bid window $window ms) ..."
    c0="$(node_ticks)"
    t0="$(now_ms)"
    if { time env -u ZEROSTATE_API_TOKEN "$BIN" load "${dirs[@]}" --rate "$rate" \
        --duration "$duration" --kind pow --difficulty "$DIFFICULTY" --drain "$DRAIN" \
        >"$pre.load.out" 2>"$pre.load.err"; } 2>"$pre.time"; then
        rc=0
    else
        rc=$?
    fi
    t1="$(now_ms)"
    c1="$(node_ticks)"
    summary="$(grep '^summary:' "$pre.load.out" || true)"
    [[ -n "$summary" ]] || die "$label: 'zerostate load' printed no summary (exit $rc; see $pre.load.err)"
    say "   $summary (exit $rc, $(((t1 - t0) / 1000)) s)"
    client_cpu="$(awk '{ printf "%.2f", $1 + $2 }' "$pre.time")"
    fetch_tasks "$t0" "$t1" "$pre.tasks.json"
    fetch_peers "$pre.peers.json"
    jq -n --arg name "$label" --arg summary "$summary" \
        --argjson rate "$rate" --argjson duration "$duration" --argjson window "$window" \
        --argjson t0 "$t0" --argjson t1 "$t1" --argjson rc "$rc" \
        --argjson node_ticks "$((c1 - c0))" --argjson hz "$TICKS_PER_SEC" \
        --argjson client_cpu "$client_cpu" '
        {label: $name, rate: $rate, duration: $duration, window: $window, t0: $t0, t1: $t1,
         rc: $rc, wall_s: (($t1 - $t0) / 1000), node_cpu_s: ($node_ticks / $hz),
         client_cpu_s: $client_cpu,
         load: ($summary | ltrimstr("summary: ") | split(" ")
                | map(split("=") | {(.[0]): (.[1] | tonumber? // null)}) | add)}' >"$pre.run.json"
}

# --- analysis ----------------------------------------------------------------

# shellcheck disable=SC2016 # jq code, not shell expansions
JQ_DEFS='
def q($p): if length == 0 then null
    else sort | .[([((($p * length) | ceil) - 1), 0] | max)] end;
def mean: if length == 0 then null else add / length end;
def r0: if . == null then "-" else round end;
def r1: if . == null then "-" else (. * 10 | round) / 10 end;
def r2: if . == null then "-" else (. * 100 | round) / 100 end;
def is_announce: test("^auction \\S+ announced$");
# The timeline entries of auction $a: its announcement up to the next one.
def segment($a):
    .timeline as $tl
    | ([range(0; $tl | length) | select($tl[.][1] == "auction \($a) announced")] | .[0]) as $i
    | if $i == null then [] else
        ([range($i + 1; $tl | length) | select($tl[.][1] | is_announce)] | .[0] // ($tl | length)) as $j
        | $tl[$i:$j]
      end;
def at($s; $re): [$s[] | select(.[1] | test($re)) | .[0]] | .[0];
def phases($a):
    segment($a) as $s
    | {announced: at($s; "^auction \\S+ announced$"),
       closed: at($s; "^auction \\S+ closed: "),
       accepted: at($s; "^award accepted"),
       received: at($s; "^result received "),
       verified: at($s; "^result verified"),
       winner: ([$s[] | .[1] | capture("closed: (?<w>\\S+) wins at") | .w] | .[0]),
       exec_ms: ([$s[] | .[1] | capture("executed in (?<ms>[0-9]+) ms") | .ms | tonumber] | .[0])};
def counts: group_by(.) | map("\(.[0])=\(length)") | join(" ");
'

# latency_row LABEL: one JSON object of part 1 figures.
latency_row() {
    local pre="$RES/$1"
    jq -n "$JQ_DEFS"'
        $run[0] as $run | $peers[0] as $peers | $tasks[0] as $tasks
        | ($peers.rtts | map({key: "\(.from) \(.to)", value: .rtt}) | from_entries) as $rtt
        | [$tasks[] | select(.attempts | length > 0)
           | phases(.attempts[0].auction_id)
             + {requester, outcome: .attempts[0].outcome}] as $first
        | ($first | map(select(.announced != null and .accepted != null))) as $ok
        | ($ok | map(.accepted - .announced)) as $a2a
        | ($peers.rtts | map(.rtt)) as $rtts
        | ($ok | map(select(.winner != null) | $rtt["\(.requester) \(.winner)"] // empty)) as $pair
        | ($rtts | q(0.5)) as $rtt50
        | ($a2a | q(0.5)) as $p50
        | {window: $run.window, rate: $run.rate, duration: $run.duration, load: $run.load,
           tasks: ($tasks | length), awarded: ($ok | length),
           not_awarded: ($first | map(select(.accepted == null)
                | if .received != null then "award_event_after_result"
                  else (.outcome // "running") end) | counts),
           a2a_p50: $p50, a2a_p99: ($a2a | q(0.99)), a2a_mean: ($a2a | mean),
           bid_mean: ($ok | map(.closed - .announced) | mean),
           award_p50: ($ok | map(.accepted - .closed) | q(0.5)),
           award_p99: ($ok | map(.accepted - .closed) | q(0.99)),
           rtt_n: ($rtts | length), rtt_p50: $rtt50, rtt_p99: ($rtts | q(0.99)),
           pair_rtt_n: ($pair | length), pair_rtt_p50: ($pair | q(0.5)), pair_rtt_p99: ($pair | q(0.99)),
           connected_min: ($peers.connected | min), connected_max: ($peers.connected | max),
           goal: (if $rtt50 == null then null else $run.window + 6 * $rtt50 end)}
        | .met = (if .goal == null or .a2a_p50 == null then "n/a"
                  elif .a2a_p50 <= .goal then "yes" else "NO" end)' \
        --slurpfile run "$pre.run.json" --slurpfile peers "$pre.peers.json" \
        --slurpfile tasks "$pre.tasks.json"
}

# throughput_row LABEL: one JSON object of part 2 figures.
throughput_row() {
    local pre="$RES/$1"
    jq -n "$JQ_DEFS"'
        $run[0] as $run | $tasks[0] as $tasks
        | [$tasks[] | select(.status == "success")
           | phases(.attempts[-1].auction_id)
             + {submitted: .submitted_ms, finished: .finished_ms}] as $s
        | ($s | map(select(.announced != null and .closed != null and .accepted != null
                           and .received != null and .verified != null
                           and .accepted <= .received))) as $full
        | ($s | map(.verified - .submitted)) as $lat
        | {rate: $run.rate, duration: $run.duration, window: $run.window, load: $run.load,
           wall_s: $run.wall_s, rc: $run.rc,
           per_s: (($run.load.completed // 0) / $run.wall_s),
           offered_per_s: (($run.load.submitted // 0) / $run.duration),
           node_cpu_pct: (100 * $run.node_cpu_s / $run.wall_s),
           client_cpu_pct: (100 * $run.client_cpu_s / $run.wall_s),
           cpu_ms_per_task: (if ($run.load.completed // 0) > 0
                             then 1000 * $run.node_cpu_s / $run.load.completed else null end),
           tasks: ($tasks | length), success: ($s | length),
           retried: ($tasks | map(select(.attempts | length > 1)) | length),
           auctions: ([$tasks[].attempts[]] | length),
           zero_bid: ([$tasks[].attempts[] | select(.bids | length == 0)] | length),
           bids_mean: ([$tasks[].attempts[].bids | length] | mean),
           lat_p50: ($lat | q(0.5)), lat_p99: ($lat | q(0.99)), lat_mean: ($lat | mean),
           n: ($full | length), award_after_result: ($s | map(select(.accepted == null)) | length),
           pre: ($full | map(.announced - .submitted) | mean),
           bid: ($full | map(.closed - .announced) | mean),
           award: ($full | map(.accepted - .closed) | mean),
           exec: ($full | map(.received - .accepted) | mean),
           exec_reported: ($full | map(.exec_ms // empty) | mean),
           verify: ($full | map(.verified - .received) | mean),
           total: ($full | map(.verified - .submitted) | mean),
           attempt_errors: ([$tasks[].attempts[].outcome
                             | select(. != null and . != "success")] | counts),
           failed: ([$tasks[] | select(.status != "success" and .status != "running")
                     | "\(.status):\(.attempts[-1].outcome // "-")"] | counts)}' \
        --slurpfile run "$pre.run.json" --slurpfile tasks "$pre.tasks.json"
}

# --- run -----------------------------------------------------------------------

START_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"
LAT_LABELS=()
TPUT_LABELS=()
ERR_FILES=()
last=$((${#WINDOWS[@]} - 1))
if [[ -n "${BENCH_REPORT_ONLY:-}" ]]; then
    for w in "${WINDOWS[@]}"; do
        [[ ! -f "$RES/latency-$w.run.json" ]] || LAT_LABELS+=("latency-$w")
        [[ ! -f "$RES/errors-$w.tsv" ]] || ERR_FILES+=("$w")
    done
    for r in "${RATE_LIST[@]+"${RATE_LIST[@]}"}"; do
        [[ ! -f "$RES/rate-$r.run.json" ]] || TPUT_LABELS+=("rate-$r")
    done
    ((${#LAT_LABELS[@]} > 0)) || die "no results in $RES"
    BIN="${ZEROSTATE_BIN:-$(jq -r '.[0].bin' "$DEVNET_DIR/nodes.json" 2>/dev/null || echo zerostate)}"
    START_DATE="$(date -u -d "@$(jq '.t0 / 1000 | floor' "$RES/${LAT_LABELS[0]}.run.json")" '+%Y-%m-%d %H:%M UTC')"
fi
for idx in "${!WINDOWS[@]}"; do
    [[ -z "${BENCH_REPORT_ONLY:-}" ]] || break
    w="${WINDOWS[idx]}"
    devnet_up "$w"
    run_load "latency-$w" "$LAT_RATE" "$LAT_DURATION" "$w"
    LAT_LABELS+=("latency-$w")
    if ((idx == last)); then
        for r in "${RATE_LIST[@]+"${RATE_LIST[@]}"}"; do
            run_load "rate-$r" "$r" "$DURATION" "$w"
            TPUT_LABELS+=("rate-$r")
        done
    fi
    fetch_errors "$RES/errors-$w.tsv"
    ERR_FILES+=("$w")
    devnet_down
done

# --- report --------------------------------------------------------------------

for l in "${LAT_LABELS[@]}"; do latency_row "$l"; done | jq -s '.' >"$RES/latency.json"
for l in "${TPUT_LABELS[@]+"${TPUT_LABELS[@]}"}"; do throughput_row "$l"; done |
    jq -s '.' >"$RES/throughput.json"

capacity="${ZEROSTATE_MARKET_PROVIDER_CAPACITY:-2 (default)}"
{
    printf '== zerostate task market benchmark (%s) ==\n' "$START_DATE"
    printf 'machine: %s cores, %s; binary: %s\n' "$(nproc 2>/dev/null || echo '?')" \
        "$(uname -sr)" "$("$BIN" --version 2>/dev/null || echo "$BIN")"
    printf 'devnet: %s nodes on 127.0.0.1 (scripts/devnet.sh), provider capacity %s, kind pow difficulty %s\n' \
        "$NODES" "$capacity" "$DIFFICULTY"
    printf 'raw data: %s (timeline timestamps have 1 ms resolution)\n' "$RES"
    printf '\n-- 1. announce -> award accepted (first attempt of each task; ms; load %s/s for %ss) --\n' \
        "$LAT_RATE" "$LAT_DURATION"
    jq -r "$JQ_DEFS"'
        (["bid_window", "tasks", "awarded", "p50", "p99", "mean", "ann->closed",
          "closed->accepted p50/p99", "rtt p50/p99 (n)", "winner rtt p50/p99", "goal", "met"] | @tsv),
        (.[] | [.window, .tasks, .awarded, (.a2a_p50 | r1), (.a2a_p99 | r1), (.a2a_mean | r1),
                (.bid_mean | r1), "\(.award_p50 | r1)/\(.award_p99 | r1)",
                "\(.rtt_p50 | r2)/\(.rtt_p99 | r2) (\(.rtt_n))",
                "\(.pair_rtt_p50 | r2)/\(.pair_rtt_p99 | r2)",
                "<=\(.goal | r2)", .met] | @tsv)' "$RES/latency.json" | table
    jq -r "$JQ_DEFS"'.[] | "  window \(.window): goal p50 <= \(.window) + 6 x \(.rtt_p50 | r2) = \(.goal | r2) ms; "
        + "measured p50 \(.a2a_p50) ms (\(if .a2a_p50 == null then "-" else .a2a_p50 - .window end) over the window) -> \(.met); "
        + "connected peers per node \(.connected_min)..\(.connected_max); "
        + "not awarded on first attempt: \(if .not_awarded == "" then "none" else .not_awarded end); "
        + "load: submitted=\(.load.submitted) completed=\(.load.completed) failed=\(.load.failed) "
        + "p50_ms=\(.load.p50_ms) p99_ms=\(.load.p99_ms)"' "$RES/latency.json"
    if ((${#TPUT_LABELS[@]} > 0)); then
        printf '\n-- 2. throughput (pow difficulty %s, bid window %s ms, %ss per rate; load = submit-to-verified as polled by zerostate load) --\n' \
            "$DIFFICULTY" "${WINDOWS[last]}" "$DURATION"
        jq -r "$JQ_DEFS"'
            (["rate/s", "submitted", "completed", "failed", "running", "refused", "wall_s",
              "completed/s", "load p50/p99", "timeline p50/p99", "retried", "node_cpu", "cpu ms/task",
              "client_cpu"] | @tsv),
            (.[] | [.rate, .load.submitted, .load.completed, .load.failed, .load.running,
                    .load.refused, (.wall_s | r1), (.per_s | r1),
                    "\(.load.p50_ms)/\(.load.p99_ms)", "\(.lat_p50)/\(.lat_p99)", .retried,
                    "\(.node_cpu_pct | r0)%", (.cpu_ms_per_task | r1),
                    "\(.client_cpu_pct | r0)%"] | @tsv)' \
            "$RES/throughput.json" | table
        printf '  (completed/s = completed / wall time of the load run (submitting + drain); timeline = submitted -> verified\n'
        printf '   in the requester timelines; node_cpu = CPU of all node processes, %% of one core over the wall time\n'
        printf '   (%s cores = %s%%); cpu ms/task = node CPU seconds / completed tasks)\n' \
            "$(nproc 2>/dev/null || echo '?')" "$((100 * $(nproc 2>/dev/null || echo 1)))"
        printf '\n-- where the time goes: mean ms of successful tasks (their last auction), from the requester timelines --\n'
        jq -r "$JQ_DEFS"'
            (["rate/s", "n", "submit->announce", "bid window", "award delivery",
              "exec+result (exec)", "verify", "total", "no award event",
              "auctions (0 bids)", "bids/auction"] | @tsv),
            (.[] | [.rate, .n, (.pre | r1), (.bid | r1), (.award | r1),
                    "\(.exec | r1) (\(.exec_reported | r1))", (.verify | r1), (.total | r1),
                    .award_after_result, "\(.auctions) (\(.zero_bid))", (.bids_mean | r1)] | @tsv)' \
            "$RES/throughput.json" | table
        printf '  (submit->announce includes earlier failed auctions of re-auctioned tasks; exec = execution time\n'
        printf '   the provider reports; no award event = "award accepted" missing because the result was verified first)\n'
        jq -r '
            (map(select(.per_s != null)) | max_by(.per_s)) as $best
            | ([.[] | select(.per_s < 0.9 * .offered_per_s or (.load.failed // 0) > 0
                             or .retried > 0)] | .[0]) as $sat
            | "  peak: \($best.per_s * 10 | round / 10) completed/s at \($best.rate)/s offered; "
              + (if $sat == null then "every rate ran clean (no failed or re-auctioned task, completed/s >= 90% of submitted/s)"
                 else "first rate with failed or re-auctioned tasks or completed/s < 90% of submitted/s: \($sat.rate)/s ("
                      + "\($sat.per_s * 10 | round / 10)/s completed of \($sat.offered_per_s * 10 | round / 10)/s submitted, "
                      + "\($sat.load.failed) failed, \($sat.retried) re-auctioned)" end)' \
            "$RES/throughput.json"
        jq -r '.[] | select(.attempt_errors != "" or .failed != "")
            | "  rate \(.rate): failed attempts: \(if .attempt_errors == "" then "none" else .attempt_errors end); failed tasks: \(if .failed == "" then "none" else .failed end)"' \
            "$RES/throughput.json"
    fi
    printf '\n-- zerostate_economic_task_errors_total, summed over the nodes, per devnet --\n'
    for w in "${ERR_FILES[@]}"; do
        if [[ -s "$RES/errors-$w.tsv" ]]; then
            sed "s/^/  bid window $w ms: /" "$RES/errors-$w.tsv"
        else
            printf '  bid window %s ms: none\n' "$w"
        fi
    done
} | tee "$RES/report.txt"
