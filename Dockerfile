# syntax=docker/dockerfile:1
#
# ZeroState node image for the compose stack (docker-compose.yml at the repo root):
#
#   docker compose up --build
#
# or on its own, from the repository root:
#
#   docker build -t zerostate:local .
#   docker run --rm -p 127.0.0.1:9464:9464 -v zerostate-data:/data zerostate:local
#
# The entrypoint (deploy/entrypoint.sh) runs `zerostate node` with the data dir /data, p2p on
# TCP and QUIC port 4001 and the HTTP server (/metrics, /health, /ready, /api/v1) on
# 0.0.0.0:9464, and can find its bootstrap peer's id by itself (BOOTSTRAP_FROM). Any other
# first argument runs that zerostate command instead, e.g. `docker run ... zerostate:local id`.
#
# Requires BuildKit (the default builder since Docker 23, and always used by `docker compose`)
# for the cache mounts.

# ---------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# Only what the build reads, so that editing docs, scripts, tests or the deploy files does not
# rebuild the binary. Cargo checks every target Cargo.toml declares, hence the benches; the
# crate embeds config/default.toml; build.rs compiles proto/ with protox (pure Rust: no protoc).
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto/ proto/
COPY benches/ benches/
COPY config/default.toml config/default.toml
COPY src/ src/

# Dependencies are cached in BuildKit cache mounts (cargo registry and target directory), so a
# rebuild after a source change recompiles this crate only. The binary is copied out of the
# cache mount, which is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin zerostate \
 && install -D -m 0755 target/release/zerostate /out/zerostate

# ---------------------------------------------------------------------------
# Runtime
# ---------------------------------------------------------------------------
FROM debian:bookworm-slim

LABEL org.opencontainers.image.title="zerostate" \
      org.opencontainers.image.description="A libp2p node for a decentralized compute market whose economics you can watch" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"

# ca-certificates for TLS to the outside world; curl for the entrypoint (it asks the bootstrap
# node for its peer id) and for health checks.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

# Unprivileged user with a fixed uid/gid (10001). /data belongs to it, and a new named volume
# mounted on /data starts as a copy of this directory, with the same owner.
RUN groupadd --system --gid 10001 zerostate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /data --shell /usr/sbin/nologin zerostate \
 && install -d -m 0700 -o zerostate -g zerostate /data

COPY --from=builder /out/zerostate /usr/local/bin/zerostate
COPY --chmod=0755 deploy/entrypoint.sh /usr/local/bin/zerostate-entrypoint

# The node keeps its identity key (so its peer id), its ledger and its API token in /data.
# ZEROSTATE_DATA_DIR makes the client commands (`zerostate id`, `zerostate task ...
# --data-dir /data`) find it too.
#
# The HTTP server binds 0.0.0.0:9464 inside the container: that is the container's own network
# namespace; it is reachable from the host only where a port is published (publish it on
# 127.0.0.1). Reads (/metrics, /health, /ready, GET /api/v1/...) are open; state-changing
# calls need the token in /data/api-token. The Host header must be localhost, an IP address or
# a name listed in ZEROSTATE_API_ALLOWED_HOSTS (comma-separated): a Prometheus that scrapes
# the container by name (node1:9464) needs that name listed.
# NO_COLOR keeps ANSI colour codes out of `docker logs` (with ZEROSTATE_LOG_FORMAT=json there
# are none anyway).
ENV ZEROSTATE_DATA_DIR=/data \
    NO_COLOR=1

# p2p: TCP and QUIC on 4001; HTTP API and metrics on 9464.
EXPOSE 4001/tcp 4001/udp 9464/tcp

VOLUME ["/data"]
WORKDIR /data
USER 10001:10001

# Liveness on /health (docker-compose.yml checks /ready instead). HTTP_PORT is the
# entrypoint's variable for the HTTP port (default 9464); shell form so it is expanded when
# the check runs.
# hadolint ignore=DL3025
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD curl -fsS --noproxy '*' --max-time 4 -o /dev/null "http://127.0.0.1:${HTTP_PORT:-9464}/health" || exit 1

# The node handles SIGTERM/SIGINT itself and exits within 15 s (docker stop sends SIGTERM; give
# it `--time 20` / compose `stop_grace_period: 20s`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["zerostate-entrypoint"]
CMD ["node"]
