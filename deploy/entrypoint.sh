#!/bin/sh
# Entrypoint of the ZeroState image (Dockerfile at the repository root).
#
#   zerostate-entrypoint [node] [EXTRA NODE FLAGS...]
#       Runs `zerostate node` with the data dir /data, p2p on TCP and QUIC port P2P_PORT and
#       the HTTP server on 0.0.0.0:HTTP_PORT, plus the extra flags. If BOOTSTRAP_FROM is set,
#       it first asks that node's API for its peer id and bootstraps from it.
#   zerostate-entrypoint COMMAND [ARGS...]
#       Any other command (id, task, reputation, wallet, channel, load, keygen, ...) runs
#       `zerostate COMMAND ARGS...` as it is.
#
# Environment (none of these start with ZEROSTATE_: the node refuses ZEROSTATE_* variables
# that are not config keys; config keys themselves, e.g. ZEROSTATE_API_ALLOWED_HOSTS, pass
# straight through to the node):
#   BOOTSTRAP_FROM       base URL of the bootstrap node's HTTP API, e.g. http://172.28.0.11:9464
#                        (unset: no bootstrap peer from here; ZEROSTATE_BOOTSTRAP still works)
#   BOOTSTRAP_IP         IPv4 address of the bootstrap node's p2p listener (default: the host of
#                        BOOTSTRAP_FROM, which must then be an IPv4 address: the node has no DNS
#                        transport, so bootstrap multiaddrs must be IP-based)
#   BOOTSTRAP_PORT       its p2p TCP port (default 4001)
#   BOOTSTRAP_RETRIES    how many times to ask before giving up (default 60)
#   BOOTSTRAP_INTERVAL   seconds between attempts (default 2)
#   P2P_PORT             this node's p2p port, TCP and UDP/QUIC (default 4001)
#   HTTP_PORT            this node's HTTP port (default 9464)
#   ZEROSTATE_DATA_DIR   data dir (default /data)
set -eu

log() { printf 'zerostate-entrypoint: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# is_uint S: S is a whole number.
is_uint() {
    case "$1" in
        '' | *[!0-9]*) return 1 ;;
        *) return 0 ;;
    esac
}

# is_ipv4 S: S is a dotted-quad IPv4 address.
is_ipv4() {
    case "$1" in
        *[!0-9.]* | .* | *. | *..*) return 1 ;;
    esac
    rest=$1
    count=0
    while [ -n "$rest" ]; do
        octet=${rest%%.*}
        case "$rest" in
            *.*) rest=${rest#*.} ;;
            *) rest="" ;;
        esac
        count=$((count + 1))
        [ "${#octet}" -le 3 ] && [ "$octet" -le 255 ] || return 1
    done
    [ "$count" -eq 4 ]
}

# Commands other than `node` run as they are.
case "${1:-node}" in
    node) [ "$#" -eq 0 ] || shift ;;
    -*) ;; # flags for `zerostate node`
    *) exec zerostate "$@" ;;
esac

DATA_DIR=${ZEROSTATE_DATA_DIR:-/data}
P2P_PORT=${P2P_PORT:-4001}
HTTP_PORT=${HTTP_PORT:-9464}
is_uint "$P2P_PORT" || die "P2P_PORT must be a port number, got '$P2P_PORT'"
is_uint "$HTTP_PORT" || die "HTTP_PORT must be a port number, got '$HTTP_PORT'"

if [ -n "${BOOTSTRAP_FROM:-}" ]; then
    url=${BOOTSTRAP_FROM%/}
    case "$url" in
        http://* | https://*) ;;
        *) die "BOOTSTRAP_FROM must be an http:// or https:// URL of the bootstrap node's API, got '$BOOTSTRAP_FROM'" ;;
    esac
    retries=${BOOTSTRAP_RETRIES:-60}
    interval=${BOOTSTRAP_INTERVAL:-2}
    port=${BOOTSTRAP_PORT:-4001}
    if ! is_uint "$retries" || [ "$retries" -lt 1 ]; then
        die "BOOTSTRAP_RETRIES must be a whole number of at least 1, got '$retries'"
    fi
    is_uint "$interval" || die "BOOTSTRAP_INTERVAL must be a whole number of seconds, got '$interval'"
    is_uint "$port" || die "BOOTSTRAP_PORT must be a port number, got '$port'"

    ip=${BOOTSTRAP_IP:-}
    if [ -z "$ip" ]; then
        # The host of BOOTSTRAP_FROM: scheme, path and port stripped.
        host=${url#*://}
        host=${host%%/*}
        host=${host%:*}
        is_ipv4 "$host" ||
            die "BOOTSTRAP_FROM's host '$host' is not an IPv4 address; set BOOTSTRAP_IP to the bootstrap node's IPv4 address (bootstrap multiaddrs must be IP-based: the node has no DNS transport)"
        ip=$host
    fi
    is_ipv4 "$ip" || die "BOOTSTRAP_IP must be an IPv4 address, got '$ip'"

    peer=""
    last_error=""
    attempt=0
    while [ "$attempt" -lt "$retries" ]; do
        attempt=$((attempt + 1))
        # On success curl -sS prints only the body; on failure only its error message.
        if answer=$(curl -fsS --noproxy '*' --connect-timeout 3 --max-time 5 "$url/api/v1/node" 2>&1); then
            # {"peer_id":"12D3KooW...",...}: peer ids are base58 (no 0, O, I, l).
            peer=$(printf '%s' "$answer" | tr -d '\r\n' |
                sed -n 's/.*"peer_id"[[:space:]]*:[[:space:]]*"\([1-9A-HJ-NP-Za-km-z]\{1,\}\)".*/\1/p')
            [ -z "$peer" ] || break
            last_error="the answer has no peer_id: $(printf '%s' "$answer" | cut -c1-200)"
        else
            last_error=$answer
        fi
        if [ "$attempt" -lt "$retries" ]; then
            log "waiting for the bootstrap node at $url/api/v1/node (attempt $attempt of $retries): $last_error"
            sleep "$interval"
        fi
    done
    [ -n "$peer" ] ||
        die "the bootstrap node at $url did not tell its peer id after $retries attempts, ${interval}s apart (last: $last_error). Is it running, and is BOOTSTRAP_FROM its HTTP API?"

    bootstrap="/ip4/$ip/tcp/$port/p2p/$peer"
    log "bootstrapping from $bootstrap"
    set -- --bootstrap "$bootstrap" "$@"
fi

exec zerostate node \
    --data-dir "$DATA_DIR" \
    --listen "/ip4/0.0.0.0/tcp/$P2P_PORT" \
    --listen "/ip4/0.0.0.0/udp/$P2P_PORT/quic-v1" \
    --http "0.0.0.0:$HTTP_PORT" \
    "$@"
