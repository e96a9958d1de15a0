#!/usr/bin/env bash
# Runs every check and test of ZeroState. Installs what the tests need when it is missing:
# Debian's prometheus package (a real Prometheus server and promtool), curl and jq for the
# devnet script, and PyPI's prometheus_client (a strict OpenMetrics parser).
#
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'test.sh: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        fail "need root (or sudo) to install: $*"
    fi
}

step "prerequisites"
missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
command -v promtool >/dev/null || missing+=(prometheus)
command -v curl >/dev/null || missing+=(curl)
command -v jq >/dev/null || missing+=(jq)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        $(printf '%s\n' "${missing[@]}" | sort -u)
fi
# Debian's package may start a Prometheus service; the tests start their own.
if ! python3 -c 'import prometheus_client.openmetrics.parser' 2>/dev/null; then
    echo "installing prometheus_client (PyPI) for strict OpenMetrics parsing"
    python3 -m pip install --quiet --disable-pip-version-check 'prometheus_client>=0.20' \
        || python3 -m pip install --quiet --break-system-packages 'prometheus_client>=0.20'
fi
prometheus --version 2>&1 | head -1

step "dependency checks"
# One prometheus-client in the graph: libp2p-metrics registers into the same Registry type.
versions=$(cargo tree --locked --prefix none -e normal,build,dev 2>/dev/null \
    | sed -n 's/^prometheus-client v\([0-9.]*\).*/\1/p' | sort -u)
count=$(printf '%s\n' "$versions" | grep -c . || true)
[ "$count" -eq 1 ] || fail "expected one prometheus-client version, found: $(echo $versions) (see: cargo tree -i prometheus-client@<version>)"
case "$versions" in 0.25.*) ;; *) fail "prometheus-client must be on the 0.25 line libp2p-metrics 0.18 uses, found $versions" ;; esac
echo "prometheus-client $versions (one version)"
# libp2p-gossipsub before 0.50.1 has remote-crash advisories.
gossipsub=$(cargo tree --locked --prefix none -e normal 2>/dev/null \
    | sed -n 's/^libp2p-gossipsub v\([0-9.]*\).*/\1/p' | sort -u | head -1)
python3 - "$gossipsub" <<'PY' || fail "libp2p-gossipsub $gossipsub is older than 0.50.1"
import sys
v = tuple(int(x) for x in sys.argv[1].split("."))
sys.exit(0 if v >= (0, 50, 1) else 1)
PY
echo "libp2p-gossipsub $gossipsub"
# lru before 0.18.2: LruCache::pop is not panic-safe (RUSTSEC-2026-0253).
lru=$(cargo tree --locked --prefix none -e normal 2>/dev/null \
    | sed -n 's/^lru v\([0-9.]*\).*/\1/p' | sort -u)
for v in $lru; do
    python3 - "$v" <<'PY' || fail "lru $v is older than 0.18.2 (RUSTSEC-2026-0253)"
import sys
v = tuple(int(x) for x in sys.argv[1].split("."))
sys.exit(0 if v >= (0, 18, 2) else 1)
PY
done
echo "lru $lru"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings

step "shell scripts and Prometheus rules"
for s in scripts/*.sh; do bash -n "$s"; done
promtool check rules config/prometheus/rules.yml
(cd config/prometheus && promtool test rules rules_test.yml)

step "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --all-targets "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary, the last of which
# may be a target without tests).
passed=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed; \([0-9][0-9]*\) failed.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed; \([0-9][0-9]*\) failed.*/\2/p' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "summary: $passed passed, $failed failed"
exit "$status"
