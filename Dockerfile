# syntax=docker/dockerfile:1
#
# ZeroState node image.
#
#   docker build -t zerostate .
#   docker run -d --name zerostate \
#     -p 4001:4001/tcp -p 4001:4001/udp \
#     -p 127.0.0.1:9464:9464 \
#     -v zerostate-data:/var/lib/zerostate \
#     zerostate
#
# Requires BuildKit (the default builder since Docker 23) for the cache mounts.

# ---------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# Dependencies are cached in BuildKit cache mounts (the cargo registry and the
# target directory) rather than in a "dummy main.rs" layer: the cache survives
# source changes, so a rebuild recompiles only this crate, and it keeps working
# whatever bench/test/example targets Cargo.toml declares. The binary is copied
# out of the cache mount, which is not part of the image.
COPY . .
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

# ca-certificates for TLS to the outside world, curl for the HEALTHCHECK.
# (Versions follow bookworm and its security updates; not pinned one by one.)
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

# Unprivileged user with a fixed uid/gid (10001) so volume ownership is
# predictable across hosts and Kubernetes runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 zerostate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/zerostate --shell /usr/sbin/nologin zerostate \
 && install -d -m 0700 -o zerostate -g zerostate /var/lib/zerostate

COPY --from=builder /out/zerostate /usr/local/bin/zerostate

# The node keeps its identity key, its state and its API token in the data dir.
#
# ZEROSTATE_HTTP binds the HTTP API (/health, /ready, /metrics and the
# state-changing endpoints) on 0.0.0.0, but 0.0.0.0 here is the container's own
# network namespace: it is reachable from the host or other machines only where
# you publish the port. Publish it on loopback (-p 127.0.0.1:9464:9464) or keep
# it on an internal network with Prometheus. Reads (/health, /ready, /metrics)
# are open; the state-changing endpoints require the token the node writes into
# its data dir (/var/lib/zerostate), which only the zerostate user can read.
# The Host header must be localhost, an IP address, or a name listed in
# ZEROSTATE_API_ALLOWED_HOSTS (comma-separated): a Prometheus that scrapes the
# container by its name (e.g. node1:9464) needs that name listed there.
# Outside a container the default stays 127.0.0.1:9464.
# NO_COLOR keeps ANSI colour codes out of `docker logs`.
ENV ZEROSTATE_DATA_DIR=/var/lib/zerostate \
    ZEROSTATE_HTTP=0.0.0.0:9464 \
    ZEROSTATE_LISTEN=/ip4/0.0.0.0/tcp/4001,/ip4/0.0.0.0/udp/4001/quic-v1 \
    NO_COLOR=1

# p2p: TCP and QUIC on 4001; HTTP API and metrics on 9464.
EXPOSE 4001/tcp 4001/udp 9464/tcp

VOLUME ["/var/lib/zerostate"]
WORKDIR /var/lib/zerostate
USER 10001:10001

# Probes /health on the port ZEROSTATE_HTTP names (9464 unless overridden);
# shell form on purpose, so the variable is expanded when the check runs.
# hadolint ignore=DL3025
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD port="${ZEROSTATE_HTTP##*:}"; \
        curl -fsS --noproxy '*' --max-time 4 "http://127.0.0.1:${port:-9464}/health" >/dev/null || exit 1

# The node handles SIGTERM/SIGINT itself and exits 0 (docker stop sends SIGTERM).
STOPSIGNAL SIGTERM
ENTRYPOINT ["zerostate"]
CMD ["node"]
