#!/usr/bin/env bash
# Run a local ZeroState devnet: N nodes on 127.0.0.1, all bootstrapping from
# node 1, plus the files a local Prometheus needs to scrape them.
#
# See `scripts/devnet.sh help`.
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd -- "$SCRIPT_DIR/.." && pwd -P)"
PROG="${0##*/}"

DEVNET_DIR="${DEVNET_DIR:-$REPO_ROOT/.devnet}"
DEVNET_TIMEOUT="${DEVNET_TIMEOUT:-60}"
DEVNET_STOP_TIMEOUT="${DEVNET_STOP_TIMEOUT:-10}"
DEVNET_SCRAPE_INTERVAL="${DEVNET_SCRAPE_INTERVAL:-5s}"
RULES_FILE="${DEVNET_RULES_FILE:-$REPO_ROOT/config/prometheus/rules.yml}"
LOG_TAIL_LINES=40
# The tasks 'load' submits: pow and matmul in turn, small enough to run in
# milliseconds, so the rate is limited by the market, not by the CPU.
LOAD_KIND=mixed
LOAD_DIFFICULTY=12
LOAD_MATMUL_N=64

usage() {
    cat <<EOF
Usage: $PROG <command> [args]

Run a local ZeroState devnet on 127.0.0.1.

Commands:
  up [N]    Start N nodes (default 3). Node 1 starts first; nodes 2..N
            bootstrap from it. Waits until every node's /ready returns 200,
            then writes nodes.json, targets.json (Prometheus file_sd),
            prometheus.yml (scrapes targets.json) and prometheus-http-sd.yml
            (finds the nodes through node 1's /api/v1/sd) into the devnet
            directory.
  status    Show each node: process alive, /ready, connected peers, peer id,
            metrics URL.
            Exits 0 if every node is alive and ready, 1 otherwise.
  down      SIGTERM the devnet's nodes (only pids that are still this
            devnet's zerostate processes), SIGKILL what is left after
            ${DEVNET_STOP_TIMEOUT}s. Safe to run repeatedly.
  kill N    Crash drill: SIGKILL node N (1 = node-1), once its recorded pid
            is verified to still be that node's zerostate process, and wait
            until it is gone. Its data dir, node.json and log stay.
  restart N Restart node N from DEVNET_DIR/node-N with the same ports and
            peer id (from node-N/$PORTS_FILE, which 'up' writes, or from
            node-N/node.json), whether it is stopped, was killed or still
            runs (then SIGTERM, SIGKILL after ${DEVNET_STOP_TIMEOUT}s). It bootstraps from node 1
            (node 1 from node 2), or if that one is down from the first
            running node. Retries for a few seconds while a port is still in
            use; waits for its /ready, then prints its peer id and addresses.
            The log is appended to node-N/node.log.
  load [--rate R] [--duration SECONDS] [--drain SECONDS]
            Run 'zerostate load' against the running devnet, one --data-dir
            per running node: submit R tasks per second (default 2, may be
            fractional) for SECONDS (default 30), round-robin over the nodes;
            kinds $LOAD_KIND (pow difficulty $LOAD_DIFFICULTY, matmul n $LOAD_MATMUL_N).
            Every node is requester and provider (never of its own tasks).
            Prints a progress line every second, then 'summary: ...'; waits
            up to --drain seconds (default 60) after SECONDS for tasks to end. Exits with zerostate's
            status: 0 if no task failed and none is still running, else 1.
  help      Show this text.

Environment:
  ZEROSTATE_BIN           zerostate binary to run. If unset, 'up' runs
                          'cargo build --release --bin zerostate' in the repo
                          and uses target/release/zerostate; 'load' uses
                          target/release/zerostate as it is and builds it only
                          if it does not exist. 'restart' runs the binary the
                          devnet was started with, unless ZEROSTATE_BIN is set.
  DEVNET_DIR              devnet directory (default: <repo>/.devnet, now
                          $DEVNET_DIR). Node i uses DEVNET_DIR/node-i as its
                          data dir and DEVNET_DIR/node-i/node.log as its log;
                          DEVNET_DIR/node-i/devnet.pid records its pid and
                          start time.
  DEVNET_TIMEOUT          seconds 'up' and 'restart' wait for the nodes
                          (default 60)
  DEVNET_STOP_TIMEOUT     seconds 'down' and 'restart' wait before SIGKILL
                          (default 10)
  DEVNET_SCRAPE_INTERVAL  Prometheus scrape and rule evaluation interval
                          (default 5s)
  DEVNET_RULES_FILE       rules file the generated Prometheus configs load
                          (default: <repo>/config/prometheus/rules.yml)
  ZEROSTATE_LOG_FILTER    node log filter (default info; RUST_LOG wins)
  ZEROSTATE_CONFIG        optional config file passed through to the nodes

'up', 'down', 'kill' and 'restart' hold an exclusive lock on
DEVNET_DIR/devnet.lock (flock) while they run; another of them on the same
directory fails at once. 'status' and 'load' take no lock; 'load' ignores
ZEROSTATE_API_TOKEN (each node's token is read from its data dir).

Requires: bash, curl, jq, flock (util-linux).
EOF
}

die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
info() { printf '%s\n' "$*"; }

need() {
    local cmd
    for cmd in "$@"; do
        command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is required but not installed"
    done
}

# --- process helpers ---------------------------------------------------------

# Every node directory holds PID_FILE, "PID STARTTIME", written by 'up' when it
# launches the node: STARTTIME is field 22 of /proc/PID/stat (clock ticks since
# boot), which stays the same across exec and differs for any later process
# that gets the same pid.
PID_FILE=devnet.pid
LOCK_FILE=devnet.lock

# proc_start PID: set PROC_START to PID's start time (field 22 of
# /proc/PID/stat). Fails if PID does not exist or is a zombie. No subshell, so
# it can be called right after launching a process.
proc_start() {
    local stat
    local -a fields=()
    PROC_START=""
    [[ "$1" =~ ^[0-9]+$ ]] || return 1
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    # Field 2 (comm) is in parentheses and may itself contain spaces and ')'.
    read -r -a fields <<<"${stat##*) }"
    # fields[0] is field 3 (state), so field 22 is fields[19].
    [[ "${fields[0]:-}" != [ZX] && "${fields[19]:-}" =~ ^[0-9]+$ ]] || return 1
    PROC_START="${fields[19]}"
}

# record_pid DATA_DIR PID: write "PID STARTTIME" to DATA_DIR/PID_FILE.
# Fails (writing nothing) if PID is gone.
record_pid() {
    local dir="$1" pid="$2"
    proc_start "$pid" || return 1
    printf '%s %s\n' "$pid" "$PROC_START" >"$dir/$PID_FILE.tmp" &&
        mv -f -- "$dir/$PID_FILE.tmp" "$dir/$PID_FILE"
}

# cmdline_is_node PID DATA_DIR [BIN]
# True if PID is a live (non-zombie) `zerostate node` process using DATA_DIR:
# argv[0] must be BIN (or, if BIN is unknown or "-", a file named zerostate*),
# argv[1] must be `node`, and the arguments must contain `--data-dir DATA_DIR`.
cmdline_is_node() {
    local pid="$1" data_dir="$2" bin="${3:-}"
    [[ "$bin" != - ]] || bin=""
    local -a argv=()
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    if [[ -r "/proc/$pid/cmdline" ]]; then
        mapfile -d '' -t argv 2>/dev/null <"/proc/$pid/cmdline" || return 1
    else
        return 1
    fi
    ((${#argv[@]} >= 2)) || return 1 # zombies and kernel threads have none
    if [[ -n "$bin" ]]; then
        [[ "${argv[0]}" == "$bin" ]] || return 1
    else
        [[ "${argv[0]##*/}" == zerostate* ]] || return 1
    fi
    [[ "${argv[1]}" == node ]] || return 1
    local i
    for ((i = 2; i < ${#argv[@]}; i++)); do
        if [[ "${argv[i]}" == "--data-dir=$data_dir" ]]; then
            return 0
        fi
        if [[ "${argv[i]}" == --data-dir ]] && ((i + 1 < ${#argv[@]})) &&
            [[ "${argv[i + 1]}" == "$data_dir" ]]; then
            return 0
        fi
    done
    return 1
}

# pid_is_node PID DATA_DIR [BIN]
# True if PID is still the node 'up' started in DATA_DIR. Pids get reused, so
# this is checked before every signal: the command line must match
# (cmdline_is_node) and, if DATA_DIR/PID_FILE exists (it does for every devnet
# started by this version of the script), it must record this PID and the
# process's current start time must equal the recorded one. The start time is
# read after the command line: if it still matches, the process whose command
# line was read is the one 'up' launched.
pid_is_node() {
    local pid="$1" data_dir="$2" rec_pid="" rec_start="" _rest
    cmdline_is_node "$@" || return 1
    [[ -e "$data_dir/$PID_FILE" ]] || return 0 # devnet from an older devnet.sh
    read -r rec_pid rec_start _rest 2>/dev/null <"$data_dir/$PID_FILE" || true
    [[ "$rec_pid" == "$pid" && -n "$rec_start" ]] || return 1
    proc_start "$pid" && [[ "$PROC_START" == "$rec_start" ]]
}

# adopt_pid DATA_DIR PID BIN: true if PID is DATA_DIR's node. If it is not the
# recorded pid (the node reported a pid of its own in node.json, so the
# launcher forked) but its command line is this node's, record PID instead.
adopt_pid() {
    local dir="$1" pid="$2" bin="$3"
    pid_is_node "$pid" "$dir" "$bin" && return 0
    cmdline_is_node "$pid" "$dir" "$bin" && record_pid "$dir" "$pid" &&
        pid_is_node "$pid" "$dir" "$bin"
}

# pid_has_cmdline PID: true if PID is a live process other than a zombie.
# (/proc files report size 0, so read it rather than test -s.)
pid_has_cmdline() {
    [[ "$1" =~ ^[0-9]+$ ]] || return 1
    [[ -n "$(tr -d '\0' 2>/dev/null <"/proc/$1/cmdline")" ]]
}

# launched_alive PID STARTTIME: true if PID exists, is not a zombie and still
# has the start time read right after this script launched it. Used for the
# launch pids, which may still be env/setsid/nohup on the way to exec'ing the
# node (so their command line says nothing yet). bash reaps its background
# children as soon as they exit, so a launch pid can be reused by an unrelated
# process while this script runs; the start time tells them apart. An empty
# STARTTIME (the process was already gone when it was read) never matches.
launched_alive() {
    [[ -n "${2:-}" ]] || return 1
    proc_start "$1" && [[ "$PROC_START" == "$2" ]]
}

# lock_devnet COMMAND: take an exclusive lock on DEVNET_DIR/LOCK_FILE (which
# must exist as a directory) for the rest of this script's life, or fail at
# once if another devnet.sh holds it. The lock is on fd 9, which the nodes do
# not inherit (start_node closes it), so it is released when this script exits.
lock_devnet() {
    local cmd="$1" lock="$DEVNET_DIR/$LOCK_FILE" holder="" h_pid="" h_start="" h_cmd=""
    need flock
    { exec 9>>"$lock"; } 2>/dev/null || die "cannot open the lock file $lock"
    if ! flock -n -x 9; then
        # Name the holder if the last devnet.sh that took the lock still runs.
        read -r h_pid h_start h_cmd 2>/dev/null <"$lock" || true
        if [[ -n "$h_cmd" ]] && launched_alive "$h_pid" "$h_start"; then
            holder=", held by pid $h_pid ($h_cmd)"
        fi
        die "another devnet.sh command is running on $DEVNET_DIR (lock $lock$holder); wait for it to finish (the lock is released when it exits)"
    fi
    # "PID STARTTIME COMMAND" of the holder, for the message above (the lock is
    # on the open file, not on its content).
    if proc_start "$$"; then
        printf '%s %s %s %s\n' "$$" "$PROC_START" "$PROG" "$cmd" >"$lock" 2>/dev/null || true
    fi
}

# The devnet's nodes as lines "name<TAB>pid<TAB>data_dir<TAB>bin", from
# nodes.json, or if that is missing (an 'up' that died half-way) from the
# node.json files the nodes wrote themselves. No field may be empty (read
# collapses adjacent tabs): an unknown bin is "-".
list_nodes() {
    if [[ -f "$DEVNET_DIR/nodes.json" ]]; then
        jq -r '.[] | [.name, (.pid | tostring), .data_dir, (.bin // "-")] | @tsv' \
            "$DEVNET_DIR/nodes.json"
        return
    fi
    local f dir
    for f in "$DEVNET_DIR"/node-*/node.json; do
        [[ -f "$f" ]] || continue
        dir="${f%/node.json}"
        jq -r --arg name "${dir##*/}" --arg dir "$dir" \
            '[$name, (.pid | tostring), $dir, "-"] | @tsv' "$f" 2>/dev/null || true
    done
}

# stop_pids TIMEOUT (lines "name<TAB>pid<TAB>data_dir<TAB>bin" on stdin)
# SIGTERM each pid that is still its node, wait up to TIMEOUT seconds, then
# SIGKILL the survivors. Prints one line per node. Returns 1 if any survive.
stop_pids() {
    local timeout="$1"
    local -a names=() pids=() dirs=() bins=() pending=()
    local name pid dir bin _rest i
    while IFS=$'\t' read -r name pid dir bin _rest; do
        [[ -n "$name" ]] || continue
        names+=("$name") pids+=("$pid") dirs+=("$dir") bins+=("$bin")
    done

    for i in "${!names[@]}"; do
        if pid_is_node "${pids[i]}" "${dirs[i]}" "${bins[i]}"; then
            if kill -TERM "${pids[i]}" 2>/dev/null; then
                pending+=("$i")
                continue
            fi
        fi
        if pid_has_cmdline "${pids[i]}"; then
            info "  ${names[i]} (pid ${pids[i]}): pid now belongs to another process, left alone"
        else
            info "  ${names[i]} (pid ${pids[i]}): not running"
        fi
    done
    ((${#pending[@]} > 0)) || return 0

    local deadline=$((SECONDS + timeout)) still
    while :; do
        still=()
        for i in "${pending[@]}"; do
            if pid_is_node "${pids[i]}" "${dirs[i]}" "${bins[i]}"; then
                still+=("$i")
            else
                info "  ${names[i]} (pid ${pids[i]}): stopped (SIGTERM)"
            fi
        done
        pending=("${still[@]+"${still[@]}"}")
        ((${#pending[@]} > 0)) || return 0
        ((SECONDS < deadline)) || break
        sleep 0.2
    done

    local rc=0
    for i in "${pending[@]}"; do
        if pid_is_node "${pids[i]}" "${dirs[i]}" "${bins[i]}"; then
            kill -KILL "${pids[i]}" 2>/dev/null || true
            sleep 0.2
            if pid_is_node "${pids[i]}" "${dirs[i]}" "${bins[i]}"; then
                info "  ${names[i]} (pid ${pids[i]}): STILL RUNNING after SIGKILL"
                rc=1
            else
                info "  ${names[i]} (pid ${pids[i]}): killed (SIGKILL after ${timeout}s)"
            fi
        else
            info "  ${names[i]} (pid ${pids[i]}): stopped (SIGTERM)"
        fi
    done
    return "$rc"
}

# table: align tab-separated lines into columns (plain tabs without `column`).
table() {
    if command -v column >/dev/null 2>&1; then
        column -t -s $'\t'
    else
        cat
    fi
}

# http_code URL: the HTTP status of GET URL, or 000 if nothing answered.
http_code() {
    curl --noproxy '*' -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true
}

# connected_peers METRICS_URL: the node's zerostate_p2p_connection_pool_size
# (peers with an established connection), or "-" if it cannot be read.
connected_peers() {
    local v
    v="$(curl --noproxy '*' -s --max-time 2 "$1" 2>/dev/null |
        awk '$1 == "zerostate_p2p_connection_pool_size" { print $2; exit }')" || true
    printf '%s\n' "${v:--}"
}

# --- up ----------------------------------------------------------------------

LAUNCHED=()     # "name<TAB>pid<TAB>starttime" of the processes this run started
STARTED=()      # "name<TAB>pid<TAB>data_dir<TAB>bin" of nodes whose own pid differs
UP_DONE=0

# EXIT trap of 'up': if it did not finish, stop everything it started. A
# launched pid is only signalled while it still has the start time recorded at
# launch (launched_alive), so it is the process this run started even if it
# has not exec'd the node yet, and never an unrelated process that reused the
# pid after bash reaped the launched one.
cleanup_failed_up() {
    local rc=$? entry name pid start rest deadline
    local -a signalled=()
    ((UP_DONE == 0)) || return 0
    for entry in "${LAUNCHED[@]+"${LAUNCHED[@]}"}"; do
        IFS=$'\t' read -r name pid start rest <<<"$entry"
        if launched_alive "$pid" "$start" && kill -TERM "$pid" 2>/dev/null; then
            signalled+=("$entry")
        fi
    done
    if ((${#signalled[@]} + ${#STARTED[@]} > 0)); then
        info "Stopping the nodes this run started:" >&2
    fi
    deadline=$((SECONDS + 5))
    for entry in "${signalled[@]+"${signalled[@]}"}"; do
        IFS=$'\t' read -r name pid start rest <<<"$entry"
        while launched_alive "$pid" "$start" && ((SECONDS < deadline)); do sleep 0.1; done
        if launched_alive "$pid" "$start"; then
            kill -KILL "$pid" 2>/dev/null || true
            info "  $name (pid $pid): killed (SIGKILL)" >&2
        else
            info "  $name (pid $pid): stopped (SIGTERM)" >&2
        fi
    done
    if ((${#STARTED[@]} > 0)); then
        printf '%s\n' "${STARTED[@]}" | stop_pids 5 >&2 || true
    fi
    exit "$((rc == 0 ? 1 : rc))"
}

show_log_tail() {
    local name="$1" log="$2"
    printf '\n--- last %d lines of %s (%s) ---\n' "$LOG_TAIL_LINES" "$name" "$log" >&2
    tail -n "$LOG_TAIL_LINES" "$log" >&2 2>/dev/null || printf '(no log)\n' >&2
    printf -- '--- end of %s log ---\n\n' "$name" >&2
}

# resolve_bin [always|if-missing]: print the absolute path of the zerostate
# binary: ZEROSTATE_BIN if set, else target/release/zerostate (under
# CARGO_TARGET_DIR if set). 'always' (what 'up' does) runs cargo build first so
# the devnet runs the current source; 'if-missing' builds only when the binary
# does not exist yet, and otherwise uses it as it is.
resolve_bin() {
    local build="${1:-always}" bin
    if [[ -n "${ZEROSTATE_BIN:-}" ]]; then
        bin="$(command -v -- "$ZEROSTATE_BIN" 2>/dev/null)" ||
            die "ZEROSTATE_BIN=$ZEROSTATE_BIN: not found or not executable"
    else
        bin="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/zerostate"
        [[ "$bin" == /* ]] || bin="$REPO_ROOT/$bin"
        if [[ "$build" == always || ! -e "$bin" ]]; then
            need cargo
            info "Building zerostate (cargo build --release --bin zerostate) ..." >&2
            (cd "$REPO_ROOT" && cargo build --release --bin zerostate) >&2 9>&- ||
                die "cargo build failed"
        fi
    fi
    [[ -x "$bin" && -f "$bin" ]] || die "$bin is not an executable file"
    # An absolute, canonical path: pid_is_node compares it with argv[0].
    (cd -- "$(dirname -- "$bin")" && printf '%s/%s\n' "$(pwd -P)" "$(basename -- "$bin")")
}

# start_node INDEX [BOOTSTRAP_ADDR [TCP_ADDR QUIC_ADDR HTTP_ADDR]]: start node
# INDEX in the background and record it in LAUNCHED and in its PID_FILE. The
# node listens on TCP_ADDR and QUIC_ADDR (multiaddrs without /p2p) and serves
# HTTP on HTTP_ADDR (host:port); each defaults to port 0 on 127.0.0.1 ('up'),
# 'restart' passes the ports the node had. An empty BOOTSTRAP_ADDR means none.
# Sets NODE_PID and NODE_START (the start time, empty if the process was
# already gone).
start_node() {
    local idx="$1" bootstrap="${2:-}"
    local tcp="${3:-/ip4/127.0.0.1/tcp/0}" quic="${4:-/ip4/127.0.0.1/udp/0/quic-v1}"
    local http="${5:-127.0.0.1:0}"
    local dir="$DEVNET_DIR/node-$idx"
    local -a args=(node
        --data-dir "$dir"
        --listen "$tcp"
        --listen "$quic"
        --http "$http")
    [[ -z "$bootstrap" ]] || args+=(--bootstrap "$bootstrap")
    mkdir -p "$dir"
    # setsid + nohup: the node gets its own session and outlives this script
    # and its terminal. This script runs without job control, so the
    # background job is no process group leader and setsid execs in place
    # rather than forking: $! is the node's pid (node.json's pid is used once
    # it exists). The flags above win over ZEROSTATE_* variables; the ones the
    # script owns are cleared so nothing leaks in from the caller's shell.
    # NO_COLOR keeps ANSI colour codes out of the log files. 9>&-: the node
    # must not inherit the devnet lock (see lock_devnet).
    env -u ZEROSTATE_LISTEN -u ZEROSTATE_BOOTSTRAP -u ZEROSTATE_HTTP \
        -u ZEROSTATE_DATA_DIR \
        ZEROSTATE_ALLOW_PRIVATE_ADDRS=true \
        ZEROSTATE_LOG_FILTER="${ZEROSTATE_LOG_FILTER:-info}" \
        ZEROSTATE_METRICS_ANNOUNCE_URL="http://${http%:*}:0/metrics" \
        NO_COLOR=1 \
        setsid nohup "$BIN" "${args[@]}" </dev/null >>"$dir/node.log" 2>&1 9>&- &
    NODE_PID=$!
    # Read the start time at once (a builtin read, no fork): the pid stays
    # the same through the execs, and the start time identifies this process
    # from here on, after bash has reaped it and its pid may be reused.
    proc_start "$NODE_PID" || true
    NODE_START=$PROC_START
    [[ -z "$NODE_START" ]] || record_pid "$dir" "$NODE_PID" || true
    disown "$NODE_PID" 2>/dev/null || true # no job-status chatter from bash
    LAUNCHED+=("$(printf 'node-%s\t%s\t%s' "$idx" "$NODE_PID" "$NODE_START")")
}

# node_json_pid INDEX: the pid node INDEX wrote into its node.json (empty if none).
node_json_pid() {
    jq -r '.pid // empty' "$DEVNET_DIR/node-$1/node.json" 2>/dev/null || true
}

# node_json_state INDEX LAUNCH_PID LAUNCH_START [STALE_PID]: 0 if node INDEX
# has written a node.json with a peer id, an HTTP address and a TCP listen
# address, 1 if not yet, 2 if the launched process has exited (and node.json
# names no other process of this node). A node.json whose pid is STALE_PID
# (the previous process's, on 'restart') does not count.
node_json_state() {
    local idx="$1" launch_pid="$2" launch_start="$3" stale="${4:-}"
    local dir="$DEVNET_DIR/node-$idx" f="$DEVNET_DIR/node-$idx/node.json" pid
    if [[ -f "$f" ]] && jq -e --arg stale "$stale" '
            (.peer_id | type == "string") and (.http | type == "string")
            and any(.listen_addrs[]?; test("/tcp/[0-9]+(/p2p/[^/]+)?$"))
            and ($stale == "" or (.pid | tostring) != $stale)' \
            "$f" >/dev/null 2>&1; then
        return 0
    fi
    if ! launched_alive "$launch_pid" "$launch_start"; then
        pid="$(node_json_pid "$idx")"
        if [[ -z "$pid" || "$pid" == "$stale" ]] || ! adopt_pid "$dir" "$pid" "$BIN"; then
            return 2
        fi
    fi
    return 1
}

# wait_node_json INDEX LAUNCH_PID LAUNCH_START DEADLINE: wait until node INDEX
# has written a node.json with a peer id, an HTTP address and a TCP listen
# address. Fails (with the log tail) if the process exits or the deadline passes.
wait_node_json() {
    local idx="$1" launch_pid="$2" launch_start="$3" deadline="$4" rc
    local dir="$DEVNET_DIR/node-$idx" f="$DEVNET_DIR/node-$idx/node.json"
    while :; do
        rc=0
        node_json_state "$idx" "$launch_pid" "$launch_start" || rc=$?
        ((rc != 0)) || return 0
        if ((rc == 2)); then
            show_log_tail "node-$idx" "$dir/node.log"
            die "node-$idx exited before it wrote $f"
        fi
        if ((SECONDS >= deadline)); then
            show_log_tail "node-$idx" "$dir/node.log"
            die "node-$idx did not write a node.json with a TCP listen address within ${DEVNET_TIMEOUT}s"
        fi
        sleep 0.2
    done
}

# bootstrap_addr INDEX: node INDEX's TCP listen address with /p2p/<peer id>.
bootstrap_addr() {
    jq -r '
        .peer_id as $id
        | [.listen_addrs[] | select(test("/tcp/[0-9]+(/p2p/[^/]+)?$"))][0]
        | if test("/p2p/") then . else . + "/p2p/" + $id end' \
        "$DEVNET_DIR/node-$1/node.json"
}

# --- ports ---------------------------------------------------------------------

# Each node directory holds PORTS_FILE, written by 'up' once the node is ready:
# {"peer_id", "tcp", "quic", "http"}, its peer id, TCP and QUIC listen
# multiaddrs (without /p2p) and HTTP host:port. 'restart' starts the node on
# these again (node.json only lives as long as the node keeps it).
PORTS_FILE=ports.json
# node.json -> PORTS_FILE
PORTS_JQ='{
    peer_id: .peer_id,
    tcp: ([.listen_addrs[]? | sub("/p2p/[^/]+$"; "") | select(test("/tcp/[1-9][0-9]*$"))][0]),
    quic: ([.listen_addrs[]? | sub("/p2p/[^/]+$"; "") | select(test("/udp/[1-9][0-9]*/quic-v1$"))][0]),
    http: .http
}'

# read_ports FILE: set PORT_PEER, PORT_TCP, PORT_QUIC (empty if unknown) and
# PORT_HTTP from FILE, a PORTS_FILE or a node.json. Fails if FILE is missing or
# lacks the peer id, the TCP address or the HTTP address.
read_ports() {
    local f="$1" filter='.' line=""
    PORT_PEER="" PORT_TCP="" PORT_QUIC="" PORT_HTTP=""
    [[ -f "$f" ]] || return 1
    [[ "${f##*/}" != node.json ]] || filter="$PORTS_JQ"
    line="$(jq -r "$filter"' | select((.peer_id | type) == "string"
            and (.tcp | type) == "string" and (.http | type) == "string")
        | [.peer_id, .tcp, (.quic // "-"), .http] | @tsv' "$f" 2>/dev/null)" || line=""
    [[ -n "$line" ]] || return 1
    IFS=$'\t' read -r PORT_PEER PORT_TCP PORT_QUIC PORT_HTTP <<<"$line"
    [[ "$PORT_QUIC" != - ]] || PORT_QUIC=""
    [[ -n "$PORT_PEER" && -n "$PORT_TCP" && -n "$PORT_HTTP" ]]
}

# load_ports INDEX: read_ports from node INDEX's PORTS_FILE, or if that is
# missing or incomplete, from its node.json. Sets PORTS_FROM to the file used.
load_ports() {
    local dir="$DEVNET_DIR/node-$1"
    PORTS_FROM="$dir/$PORTS_FILE"
    read_ports "$PORTS_FROM" && return 0
    PORTS_FROM="$dir/node.json"
    read_ports "$PORTS_FROM"
}

# write_ports INDEX: write PORT_* (as read_ports sets them) to node INDEX's PORTS_FILE.
write_ports() {
    local f="$DEVNET_DIR/node-$1/$PORTS_FILE"
    jq -n --arg peer "$PORT_PEER" --arg tcp "$PORT_TCP" --arg quic "$PORT_QUIC" \
        --arg http "$PORT_HTTP" \
        '{peer_id: $peer, tcp: $tcp, quic: (if $quic == "" then null else $quic end), http: $http}' \
        >"$f.tmp" && mv -f -- "$f.tmp" "$f"
}

# peer_addr INDEX: node INDEX's TCP address with /p2p/<peer id>, from
# load_ports (empty if unknown). Run it in $(...): it sets PORT_*.
peer_addr() {
    load_ports "$1" || return 0
    printf '%s/p2p/%s\n' "$PORT_TCP" "$PORT_PEER"
}

# devnet_running: true if any node recorded in DEVNET_DIR is still running.
devnet_running() {
    local name pid dir bin _rest
    while IFS=$'\t' read -r name pid dir bin _rest; do
        [[ -n "$name" ]] || continue
        if pid_is_node "$pid" "$dir" "$bin"; then
            RUNNING_DESC="$name (pid $pid)"
            return 0
        fi
    done < <(list_nodes)
    return 1
}

yaml_str() { jq -rn --arg s "$1" '$s | @json'; }

# write_prometheus_config FILE NOTE: write DEVNET_DIR/FILE, a Prometheus config
# with the devnet's scrape interval and rules and one job, `zerostate`, whose
# target discovery is read from stdin (YAML at the job's indentation). NOTE
# ends the header comment's first line.
write_prometheus_config() {
    local file="$1" note="$2"
    {
        cat <<EOF
# Generated by scripts/devnet.sh for the devnet in this directory$note.
global:
  scrape_interval: $DEVNET_SCRAPE_INTERVAL
  evaluation_interval: $DEVNET_SCRAPE_INTERVAL

rule_files:
  - $(yaml_str "$RULES_FILE")

scrape_configs:
  - job_name: zerostate
EOF
        cat
    } >"$DEVNET_DIR/$file.tmp"
    mv -f "$DEVNET_DIR/$file.tmp" "$DEVNET_DIR/$file"
}

write_outputs() {
    local n="$1" i dir entries=()
    for ((i = 1; i <= n; i++)); do
        dir="$DEVNET_DIR/node-$i"
        entries+=("$(jq -c \
            --argjson index "$i" --arg name "node-$i" --arg data_dir "$dir" \
            --arg log "$dir/node.log" --arg bin "$BIN" '
            .peer_id as $id
            | {
                index: $index,
                name: $name,
                peer_id: $id,
                multiaddrs: [.listen_addrs[]? | if test("/p2p/") then . else . + "/p2p/" + $id end],
                http: .http,
                metrics_url: ("http://" + .http + "/metrics"),
                pid: .pid,
                version: .version,
                data_dir: $data_dir,
                log: $log,
                bin: $bin
              }' "$dir/node.json")")
    done

    printf '%s\n' "${entries[@]}" | jq -s '.' >"$DEVNET_DIR/nodes.json.tmp"
    mv -f "$DEVNET_DIR/nodes.json.tmp" "$DEVNET_DIR/nodes.json"

    # Prometheus file_sd: one group per node so each target gets its own
    # `node` label. (No `peer_id` target label: economic metrics carry their
    # own peer_id label, which a target label would rename to exported_peer_id.)
    jq '[.[] | {targets: [.http], labels: {devnet: "zerostate", node: .name}}]' \
        "$DEVNET_DIR/nodes.json" >"$DEVNET_DIR/targets.json.tmp"
    mv -f "$DEVNET_DIR/targets.json.tmp" "$DEVNET_DIR/targets.json"

    write_prometheus_config prometheus.yml "" <<EOF
    file_sd_configs:
      - files:
          - $(yaml_str "$DEVNET_DIR/targets.json")
EOF

    # The alternative to file_sd: Prometheus asks node 1 for every node's metrics
    # endpoint (GET /api/v1/sd lists node 1 and each peer that announced its
    # metrics.announce_url, which every devnet node does).
    local sd_url
    sd_url="http://$(jq -r '.[0].http' "$DEVNET_DIR/nodes.json")/api/v1/sd"
    write_prometheus_config prometheus-http-sd.yml \
        ": the same scrape job as prometheus.yml, with targets found through node 1" <<EOF
    http_sd_configs:
      - url: $(yaml_str "$sd_url")
        refresh_interval: $DEVNET_SCRAPE_INTERVAL
    relabel_configs:
      - source_labels: [__meta_zerostate_peer_id]
        target_label: node_peer_id
EOF
}

print_summary() {
    local env_prefix=""
    [[ "$DEVNET_DIR" == "$REPO_ROOT/.devnet" ]] || env_prefix="DEVNET_DIR=$(printf '%q' "$DEVNET_DIR") "
    info ""
    info "Devnet is up in $DEVNET_DIR"
    info ""
    {
        printf 'NODE\tPEER ID\tMETRICS\n'
        jq -r '.[] | [.name, .peer_id, .metrics_url] | @tsv' "$DEVNET_DIR/nodes.json"
    } | table
    info ""
    info "Node details: $DEVNET_DIR/nodes.json   logs: $DEVNET_DIR/node-<i>/node.log"
    info ""
    info "Scrape it with Prometheus:"
    info "  prometheus --config.file=$DEVNET_DIR/prometheus.yml \\"
    info "    --storage.tsdb.path=$DEVNET_DIR/prometheus-data \\"
    info "    --web.listen-address=127.0.0.1:9090"
    info "  (or --config.file=$DEVNET_DIR/prometheus-http-sd.yml: the nodes found through node 1's /api/v1/sd)"
    info ""
    info "Check it:  ${env_prefix}$SCRIPT_DIR/devnet.sh status"
    info "Load it:   ${env_prefix}$SCRIPT_DIR/devnet.sh load [--rate R] [--duration SECONDS] [--drain SECONDS]"
    info "Crash it:  ${env_prefix}$SCRIPT_DIR/devnet.sh kill N"
    info "Restart:   ${env_prefix}$SCRIPT_DIR/devnet.sh restart N   (same ports and peer id)"
    info "Stop it:   ${env_prefix}$SCRIPT_DIR/devnet.sh down"
}

cmd_up() {
    local n="${1:-3}"
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "up: node count must be a positive integer, got '$n'"
    [[ "$DEVNET_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "DEVNET_TIMEOUT must be a positive integer (seconds)"
    [[ "$DEVNET_SCRAPE_INTERVAL" =~ ^([0-9]+(ms|s|m|h|d|w|y))+$ ]] ||
        die "DEVNET_SCRAPE_INTERVAL must be a Prometheus duration such as 5s, got '$DEVNET_SCRAPE_INTERVAL'"
    need curl jq setsid nohup

    mkdir -p "$DEVNET_DIR"
    DEVNET_DIR="$(cd -- "$DEVNET_DIR" && pwd -P)"
    # Held until this script exits: no other 'up' or 'down' can delete or
    # signal this devnet's nodes meanwhile.
    lock_devnet up

    RUNNING_DESC=""
    if devnet_running; then
        die "a devnet is still running in $DEVNET_DIR ($RUNNING_DESC). Stop it first: $PROG down"
    fi

    BIN="$(resolve_bin always)"
    "$BIN" node --help >/dev/null 2>&1 || die "'$BIN node --help' failed; is this a zerostate binary?"

    # Stale state from an earlier devnet (nothing of it is running).
    rm -rf -- "$DEVNET_DIR"/node-[0-9]*
    rm -f -- "$DEVNET_DIR"/nodes.json "$DEVNET_DIR"/targets.json "$DEVNET_DIR"/prometheus.yml \
        "$DEVNET_DIR"/prometheus-http-sd.yml

    trap cleanup_failed_up EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    local deadline=$((SECONDS + DEVNET_TIMEOUT)) i boot
    local -a launch_pids=() launch_starts=()

    info "Starting node-1 ..."
    start_node 1
    launch_pids[1]=$NODE_PID launch_starts[1]=$NODE_START
    wait_node_json 1 "${launch_pids[1]}" "${launch_starts[1]}" "$deadline"
    boot="$(bootstrap_addr 1)"
    info "  bootstrap address: $boot"

    if ((n > 1)); then
        info "Starting node-2 .. node-$n ..."
        for ((i = 2; i <= n; i++)); do
            start_node "$i" "$boot"
            launch_pids[i]=$NODE_PID launch_starts[i]=$NODE_START
        done
        for ((i = 2; i <= n; i++)); do
            wait_node_json "$i" "${launch_pids[i]}" "${launch_starts[i]}" "$deadline"
        done
    fi

    # From here on, use the pid each node reported itself.
    local -a pids=()
    for ((i = 1; i <= n; i++)); do
        pids[i]="$(node_json_pid "$i")"
        [[ -n "${pids[i]}" ]] || pids[i]=${launch_pids[i]}
        if [[ "${pids[i]}" != "${launch_pids[i]}" ]]; then
            # The launcher forked: record the node's own pid (if it is not
            # this node, the /ready loop below reports it as exited).
            adopt_pid "$DEVNET_DIR/node-$i" "${pids[i]}" "$BIN" || true
            STARTED+=("$(printf 'node-%s\t%s\t%s\t%s' "$i" "${pids[i]}" "$DEVNET_DIR/node-$i" "$BIN")")
        fi
    done

    info "Waiting for /ready on all $n nodes (up to ${DEVNET_TIMEOUT}s in total) ..."
    local -a ready=()
    local all http code
    while :; do
        all=1
        for ((i = 1; i <= n; i++)); do
            [[ "${ready[i]:-0}" == 1 ]] && continue
            if ! pid_is_node "${pids[i]}" "$DEVNET_DIR/node-$i" "$BIN"; then
                show_log_tail "node-$i" "$DEVNET_DIR/node-$i/node.log"
                die "node-$i (pid ${pids[i]}) exited before it became ready"
            fi
            http="$(jq -r '.http' "$DEVNET_DIR/node-$i/node.json")"
            code="$(http_code "http://$http/ready")"
            if [[ "$code" == 200 ]]; then
                ready[i]=1
                info "  node-$i ready"
            else
                all=0
            fi
        done
        ((all == 1)) && break
        if ((SECONDS >= deadline)); then
            for ((i = 1; i <= n; i++)); do
                if [[ "${ready[i]:-0}" != 1 ]]; then
                    http="$(jq -r '.http' "$DEVNET_DIR/node-$i/node.json")"
                    info "node-$i: GET http://$http/ready -> $(http_code "http://$http/ready")" >&2
                    show_log_tail "node-$i" "$DEVNET_DIR/node-$i/node.log"
                fi
            done
            die "not every node became ready within ${DEVNET_TIMEOUT}s"
        fi
        sleep 0.5
    done

    # Re-read node.json now: listen addresses (e.g. QUIC) may have been added.
    write_outputs "$n"
    # The ports each node got, for 'restart'.
    for ((i = 1; i <= n; i++)); do
        read_ports "$DEVNET_DIR/node-$i/node.json" ||
            die "cannot save node-$i's ports: its node.json has no peer id, TCP or HTTP address"
        write_ports "$i" || die "cannot write $DEVNET_DIR/node-$i/$PORTS_FILE"
        [[ -n "$PORT_QUIC" ]] ||
            printf '%s: warning: node-%s has no QUIC listen address yet; restart will give it a new QUIC port\n' "$PROG" "$i" >&2
    done
    UP_DONE=1
    trap - EXIT INT TERM
    print_summary
}

# --- status / down -----------------------------------------------------------

require_devnet() {
    if [[ ! -d "$DEVNET_DIR" ]]; then
        info "No devnet in $DEVNET_DIR (directory does not exist). Start one with: $PROG up"
        exit 1
    fi
    DEVNET_DIR="$(cd -- "$DEVNET_DIR" && pwd -P)"
}

cmd_status() {
    need curl jq
    require_devnet
    if [[ ! -f "$DEVNET_DIR/nodes.json" ]]; then
        info "No devnet in $DEVNET_DIR (no nodes.json). Start one with: $PROG up"
        exit 1
    fi
    local name pid dir bin peer url http alive code ready peers all_up=1
    local rows=$'NODE\tPID\tPROCESS\tREADY\tPEERS\tPEER ID\tMETRICS\n'
    while IFS=$'\t' read -r name pid dir bin peer http url; do
        if pid_is_node "$pid" "$dir" "$bin"; then
            alive=alive
            code="$(http_code "http://$http/ready")"
            case "$code" in
                200) ready=ready ;;
                000) ready="no answer"; all_up=0 ;;
                *) ready="not ready ($code)"; all_up=0 ;;
            esac
        else
            alive=dead ready=- all_up=0
        fi
        peers=-
        [[ "$alive" != alive ]] || peers="$(connected_peers "$url")"
        rows+="$(printf '%s\t%s\t%s\t%s\t%s\t%s\t%s' \
            "$name" "$pid" "$alive" "$ready" "$peers" "$peer" "$url")"$'\n'
    done < <(jq -r '.[] | [.name, (.pid | tostring), .data_dir, (.bin // "-"),
                           .peer_id, .http, .metrics_url] | @tsv' "$DEVNET_DIR/nodes.json")
    printf '%s' "$rows" | table
    if ((all_up == 1)); then
        info "All nodes are up."
        return 0
    fi
    info "Some nodes are not up (logs: $DEVNET_DIR/node-<i>/node.log)."
    return 1
}

cmd_down() {
    need jq
    [[ "$DEVNET_STOP_TIMEOUT" =~ ^[0-9]+$ ]] || die "DEVNET_STOP_TIMEOUT must be a whole number of seconds"
    if [[ ! -d "$DEVNET_DIR" ]]; then
        info "No devnet in $DEVNET_DIR; nothing to stop."
        return 0
    fi
    DEVNET_DIR="$(cd -- "$DEVNET_DIR" && pwd -P)"
    lock_devnet down
    local nodes
    nodes="$(list_nodes)"
    if [[ -z "$nodes" ]]; then
        info "No devnet nodes recorded in $DEVNET_DIR; nothing to stop."
        return 0
    fi
    info "Stopping the devnet in $DEVNET_DIR:"
    if printf '%s\n' "$nodes" | stop_pids "$DEVNET_STOP_TIMEOUT"; then
        info "Done."
    else
        die "some nodes could not be stopped"
    fi
}

# --- kill / restart ----------------------------------------------------------

# How often 'restart' starts a node whose port is still in use, 1s apart.
RESTART_ATTEMPTS=10

# node_index COMMAND ARG: fail unless ARG is a node number (1 = node-1).
node_index() {
    [[ "$2" =~ ^[1-9][0-9]*$ ]] ||
        die "$1: the node number must be a positive integer (1 for node-1), got '${2:-}'"
}

# find_node INDEX: set E_NAME, E_PID, E_DIR and E_BIN to the devnet's record of
# node INDEX (list_nodes). Fails if the devnet has no such node.
find_node() {
    local idx="$1" name pid dir bin _rest
    local -a names=()
    while IFS=$'\t' read -r name pid dir bin _rest; do
        [[ -n "$name" ]] || continue
        names+=("$name")
        if [[ "$name" == "node-$idx" ]]; then
            E_NAME=$name E_PID=$pid E_DIR=$dir E_BIN=$bin
            return 0
        fi
    done < <(list_nodes)
    ((${#names[@]} > 0)) || die "no devnet nodes recorded in $DEVNET_DIR. Start a devnet with: $PROG up"
    die "node-$idx is not a node of the devnet in $DEVNET_DIR (its nodes: ${names[*]})"
}

# running_node_pid: set RUN_PID to the pid of the node find_node found if it is
# running, else fail. A pid counts only if pid_is_node says it is that node:
# its command line, and the pid and start time 'up' or 'restart' recorded in
# PID_FILE. Candidates: PID_FILE's pid, the pid in nodes.json, node.json's pid.
running_node_pid() {
    local p rec="" _rest
    RUN_PID=""
    read -r rec _rest 2>/dev/null <"$E_DIR/$PID_FILE" || true
    for p in "$rec" "$E_PID" "$(jq -r '.pid // empty' "$E_DIR/node.json" 2>/dev/null || true)"; do
        [[ -n "$p" ]] || continue
        if pid_is_node "$p" "$E_DIR" "$E_BIN"; then
            RUN_PID=$p
            return 0
        fi
    done
    return 1
}

# refuse_foreign_node COMMAND: fail if a zerostate node this devnet did not
# start (not its recorded pid) uses the data dir of the node find_node found,
# going by the pid in its node.json. Such a process is never signalled.
refuse_foreign_node() {
    local p
    p="$(jq -r '.pid // empty' "$E_DIR/node.json" 2>/dev/null || true)"
    if [[ -n "$p" ]] && cmdline_is_node "$p" "$E_DIR" -; then
        die "$1: pid $p runs a zerostate node on $E_NAME's data dir $E_DIR, but it is not the process this devnet recorded; left alone (stop it yourself)"
    fi
}

cmd_kill() {
    local idx="$1"
    node_index kill "$idx"
    need jq
    require_devnet
    lock_devnet kill
    find_node "$idx"
    if ! running_node_pid; then
        refuse_foreign_node kill
        die "$E_NAME is not running; start it with: $PROG restart $idx"
    fi
    local pid=$RUN_PID start deadline
    # Checked again right before the signal, as stop_pids does, and the start
    # time kept: the wait below follows this process, not a reuse of its pid.
    if ! pid_is_node "$pid" "$E_DIR" "$E_BIN" || ! proc_start "$pid"; then
        die "$E_NAME is not running; start it with: $PROG restart $idx"
    fi
    start=$PROC_START
    info "Killing $E_NAME (pid $pid) with SIGKILL ..."
    kill -KILL "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while launched_alive "$pid" "$start"; do
        ((SECONDS < deadline)) || die "$E_NAME (pid $pid) is still running 10s after SIGKILL"
        sleep 0.1
    done
    info "  $E_NAME (pid $pid): killed (SIGKILL)"
    info "Restart it with: $PROG restart $idx"
}

# restart_bootstrap INDEX: the address node INDEX bootstraps from: node 1's
# (node 1's own: node 2's), or if that node is not running, the first running
# node's; nothing if no other node runs (a node with a bootstrap peer is only
# ready once connected). Prints "node-J<TAB>ADDR", or nothing.
restart_bootstrap() {
    local idx="$1" name pid dir bin _rest j want=1 addr
    local -a running=()
    ((idx != 1)) || want=2
    while IFS=$'\t' read -r name pid dir bin _rest; do
        j="${name#node-}"
        [[ "$j" =~ ^[0-9]+$ && "$j" != "$idx" ]] || continue
        pid_is_node "$pid" "$dir" "$bin" && running[j]=1
    done < <(list_nodes)
    for j in "$want" "${!running[@]}"; do # indices in ascending order
        [[ "${running[j]:-0}" == 1 ]] || continue
        addr="$(peer_addr "$j")"
        if [[ -n "$addr" ]]; then
            printf 'node-%s\t%s\n' "$j" "$addr"
            return 0
        fi
    done
    return 0
}

# set_nodes_json_pid INDEX PID: record node INDEX's new pid (and binary and
# data dir) in nodes.json, which 'status', 'down' and 'load' go by.
set_nodes_json_pid() {
    local f="$DEVNET_DIR/nodes.json"
    [[ -f "$f" ]] || return 0 # an 'up' that died half-way: list_nodes reads node.json
    jq --arg name "node-$1" --argjson pid "$2" --arg bin "$BIN" \
        --arg dir "$DEVNET_DIR/node-$1" \
        'map(if .name == $name then .pid = $pid | .bin = $bin | .data_dir = $dir else . end)' \
        "$f" >"$f.tmp" && mv -f -- "$f.tmp" "$f"
}

cmd_restart() {
    local idx="$1"
    node_index restart "$idx"
    [[ "$DEVNET_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "DEVNET_TIMEOUT must be a positive integer (seconds)"
    [[ "$DEVNET_STOP_TIMEOUT" =~ ^[0-9]+$ ]] || die "DEVNET_STOP_TIMEOUT must be a whole number of seconds"
    need curl jq setsid nohup
    require_devnet
    lock_devnet restart
    find_node "$idx"
    local name="node-$idx" dir="$DEVNET_DIR/node-$idx"
    [[ -d "$dir" ]] || die "$name has no data dir $dir"

    # The ports to keep, read before anything is stopped.
    load_ports "$idx" ||
        die "cannot tell which ports $name used: neither $dir/$PORTS_FILE nor $dir/node.json has its peer id, TCP and HTTP addresses"
    local peer=$PORT_PEER tcp=$PORT_TCP quic=$PORT_QUIC http=$PORT_HTTP
    if [[ "$PORTS_FROM" != */"$PORTS_FILE" ]]; then
        write_ports "$idx" || die "cannot write $dir/$PORTS_FILE"
    fi
    if [[ -z "$quic" ]]; then
        printf '%s: warning: %s has no recorded QUIC address; it gets a new QUIC port\n' "$PROG" "$name" >&2
        quic=/ip4/127.0.0.1/udp/0/quic-v1
    fi

    # The binary the devnet runs (nodes.json), unless ZEROSTATE_BIN says otherwise.
    if [[ -z "${ZEROSTATE_BIN:-}" && "$E_BIN" == /* && -x "$E_BIN" && -f "$E_BIN" ]]; then
        BIN=$E_BIN
    else
        BIN="$(resolve_bin if-missing)"
    fi

    if running_node_pid; then
        info "Stopping $name (pid $RUN_PID) ..."
        printf '%s\t%s\t%s\t%s\n' "$name" "$RUN_PID" "$E_DIR" "$E_BIN" |
            stop_pids "$DEVNET_STOP_TIMEOUT" || die "$name (pid $RUN_PID) could not be stopped"
    else
        refuse_foreign_node restart
        info "$name is not running."
    fi

    local boot_line boot="" boot_from=""
    boot_line="$(restart_bootstrap "$idx")"
    if [[ -n "$boot_line" ]]; then
        IFS=$'\t' read -r boot_from boot <<<"$boot_line"
    fi

    # Like 'up': if this does not finish, stop the node it started.
    trap cleanup_failed_up EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    local deadline=$((SECONDS + DEVNET_TIMEOUT)) attempt=0 rc stale log_size
    local tcp_port="${tcp##*/}" quic_port="${quic%/quic-v1}" http_port="${http##*:}"
    quic_port="${quic_port##*/}"
    info "Starting $name on tcp $tcp_port, udp $quic_port (QUIC), http $http_port, bootstrap ${boot_from:-none} ..."
    while :; do
        attempt=$((attempt + 1))
        stale="$(node_json_pid "$idx")"
        log_size="$(stat -c %s -- "$dir/node.log" 2>/dev/null || echo 0)"
        printf '\n=== %s: restart %s (attempt %d) at %s ===\n' "$PROG" "$name" "$attempt" \
            "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$dir/node.log"
        start_node "$idx" "$boot" "$tcp" "$quic" "$http"
        [[ "$stale" != "$NODE_PID" ]] || stale=""
        while :; do
            rc=0
            node_json_state "$idx" "$NODE_PID" "$NODE_START" "$stale" || rc=$?
            ((rc == 1)) || break
            if ((SECONDS >= deadline)); then
                show_log_tail "$name" "$dir/node.log"
                die "$name did not write a new node.json within ${DEVNET_TIMEOUT}s"
            fi
            sleep 0.2
        done
        ((rc == 2)) || break
        # HTTP and QUIC report EADDRINUSE; a TCP listen error may come
        # without its reason, but with the node's own hint.
        if tail -c "+$((log_size + 1))" -- "$dir/node.log" 2>/dev/null |
            grep -Eqi 'address already in use|os error 98|cannot listen on .*is the port in use'; then
            if ((attempt < RESTART_ATTEMPTS && SECONDS + 1 < deadline)); then
                info "  a port of $name is still in use (attempt $attempt of $RESTART_ATTEMPTS); retrying in 1s ..."
                sleep 1
                continue
            fi
            show_log_tail "$name" "$dir/node.log"
            die "$name cannot listen on its ports (tcp $tcp_port, udp $quic_port, http $http_port): still in use after $attempt attempts (see who holds them: ss -tulpn | grep -E ':($tcp_port|$quic_port|$http_port)\\b')"
        fi
        show_log_tail "$name" "$dir/node.log"
        die "$name exited before it wrote a new node.json"
    done

    # From here on, the pid the node reported itself (as in 'up').
    local pid
    pid="$(node_json_pid "$idx")"
    [[ -n "$pid" ]] || pid=$NODE_PID
    if [[ "$pid" != "$NODE_PID" ]]; then
        adopt_pid "$dir" "$pid" "$BIN" || true
        STARTED+=("$(printf '%s\t%s\t%s\t%s' "$name" "$pid" "$dir" "$BIN")")
    fi

    local code=""
    while :; do
        if ! pid_is_node "$pid" "$dir" "$BIN"; then
            show_log_tail "$name" "$dir/node.log"
            die "$name (pid $pid) exited before it became ready"
        fi
        code="$(http_code "http://$http/ready")"
        [[ "$code" != 200 ]] || break
        if ((SECONDS >= deadline)); then
            info "$name: GET http://$http/ready -> $code" >&2
            show_log_tail "$name" "$dir/node.log"
            die "$name did not become ready within ${DEVNET_TIMEOUT}s"
        fi
        sleep 0.5
    done

    set_nodes_json_pid "$idx" "$pid" || die "cannot update $DEVNET_DIR/nodes.json"
    UP_DONE=1
    trap - EXIT INT TERM

    # Same identity and ports as before?
    local f="$dir/node.json" got_peer got_http
    got_peer="$(jq -r '.peer_id // empty' "$f")"
    got_http="$(jq -r '.http // empty' "$f")"
    [[ "$got_peer" == "$peer" ]] ||
        printf '%s: warning: %s now has peer id %s, not %s as before\n' "$PROG" "$name" "$got_peer" "$peer" >&2
    [[ "$got_http" == "$http" ]] ||
        printf '%s: warning: %s now serves HTTP on %s, not %s as before\n' "$PROG" "$name" "$got_http" "$http" >&2

    info "$name restarted (pid $pid) and ready:"
    {
        printf '  peer id\t%s\n' "$got_peer"
        jq -r '.peer_id as $id | .listen_addrs[]?
            | "  listen\t" + (if test("/p2p/") then . else . + "/p2p/" + $id end)' "$f"
        printf '  http\t%s\n' "$got_http"
        printf '  metrics\thttp://%s/metrics\n' "$got_http"
        printf '  bootstrap\t%s\n' "${boot:-none}"
        printf '  log\t%s\n' "$dir/node.log"
    } | table
}

# --- load --------------------------------------------------------------------

# positive_number S: true if S is a decimal number above 0 (2, 0.5, .5, 10.).
positive_number() {
    [[ "$1" =~ ^([0-9]+([.][0-9]*)?|[.][0-9]+)$ && "$1" =~ [1-9] ]]
}

cmd_load() {
    local rate=2 duration=30 drain=60
    while (($# > 0)); do
        case "$1" in
            --rate | --duration | --drain)
                (($# >= 2)) || die "load: $1 needs a value"
                case "$1" in
                    --rate) rate="$2" ;;
                    --duration) duration="$2" ;;
                    --drain) drain="$2" ;;
                esac
                shift 2
                ;;
            --rate=*) rate="${1#*=}"; shift ;;
            --duration=*) duration="${1#*=}"; shift ;;
            --drain=*) drain="${1#*=}"; shift ;;
            *) die "load: unknown argument '$1' (usage: $PROG load [--rate R] [--duration SECONDS] [--drain SECONDS])" ;;
        esac
    done
    [[ "$drain" =~ ^[0-9]+$ ]] ||
        die "load: --drain must be a whole number of seconds, got '$drain'"
    positive_number "$rate" ||
        die "load: --rate must be a number of tasks per second above 0, got '$rate'"
    [[ "$duration" =~ ^[1-9][0-9]*$ ]] ||
        die "load: --duration must be a positive whole number of seconds, got '$duration'"
    need jq

    # Like 'status': the devnet is what the last successful 'up' recorded.
    [[ -d "$DEVNET_DIR" ]] ||
        die "no devnet is running: $DEVNET_DIR does not exist. Start one with: $PROG up"
    DEVNET_DIR="$(cd -- "$DEVNET_DIR" && pwd -P)"
    [[ -f "$DEVNET_DIR/nodes.json" ]] ||
        die "no devnet is running in $DEVNET_DIR (no nodes.json; 'up' writes it once every node is ready). Start one with: $PROG up"

    local name pid dir bin _rest
    local -a args=() running=() dead=()
    while IFS=$'\t' read -r name pid dir bin _rest; do
        [[ -n "$name" ]] || continue
        if pid_is_node "$pid" "$dir" "$bin"; then
            running+=("$name")
            args+=(--data-dir "$dir")
        else
            dead+=("$name")
        fi
    done < <(list_nodes)
    ((${#running[@]} > 0)) ||
        die "no devnet is running in $DEVNET_DIR: none of its nodes (${dead[*]:-none recorded}) is running. Start one with: $PROG up"
    if ((${#dead[@]} > 0)); then
        printf '%s: warning: not running, left out: %s\n' "$PROG" "${dead[*]}" >&2
    fi
    if ((${#running[@]} == 1)); then
        printf '%s: warning: only %s is running, and a node never bids on its own tasks: expect every task to fail (no_bids)\n' \
            "$PROG" "${running[0]}" >&2
    fi

    BIN="$(resolve_bin if-missing)"
    "$BIN" load --help >/dev/null 2>&1 ||
        die "'$BIN load --help' failed: this zerostate binary has no 'load' command. Rebuild it (cargo build --release --bin zerostate) or set ZEROSTATE_BIN"

    info "Loading ${running[*]} in $DEVNET_DIR: $rate task(s)/s for ${duration}s ($LOAD_KIND: pow difficulty $LOAD_DIFFICULTY, matmul n $LOAD_MATMUL_N)"
    # exec: zerostate's exit status is this script's, and Ctrl-C reaches it
    # directly. Each node's token is read from its data dir; a token in the
    # caller's environment would override them all, so it is cleared.
    exec env -u ZEROSTATE_API_TOKEN "$BIN" load "${args[@]}" \
        --rate "$rate" --duration "$duration" --drain "$drain" \
        --kind "$LOAD_KIND" --difficulty "$LOAD_DIFFICULTY" --n "$LOAD_MATMUL_N"
}

# --- main --------------------------------------------------------------------

main() {
    local cmd="${1:-help}"
    (($# == 0)) || shift
    case "$cmd" in
        up)
            (($# <= 1)) || die "up takes at most one argument (the node count)"
            cmd_up "$@"
            ;;
        status)
            (($# == 0)) || die "status takes no arguments"
            cmd_status
            ;;
        down)
            (($# == 0)) || die "down takes no arguments"
            cmd_down
            ;;
        kill | restart)
            (($# == 1)) || die "$cmd takes one argument, the node number (1 = node-1)"
            "cmd_$cmd" "$1"
            ;;
        load)
            cmd_load "$@"
            ;;
        help | -h | --help)
            usage
            ;;
        *)
            usage >&2
            die "unknown command '$cmd'"
            ;;
    esac
}

main "$@"
