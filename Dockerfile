# syntax=docker/dockerfile:1
#
# The authd container image: the release binary on distroless/cc (glibc and
# libgcc, CA certificates, no shell, no package manager), run as uid 10001,
# fit for a read-only root filesystem.
#
#   docker build -t authd .
#   docker run --rm --read-only --tmpfs /tmp -p 8080:8080 -p 9090:9090 authd
#
# The second command runs the embedded default (SQLite and an in-process
# token store), whose files go to AUTHD_DATA_DIR=/var/lib/authd, a volume (an
# anonymous one unless you mount your own, e.g. -v authd-data:/var/lib/authd):
# the only place authd writes to. With DATABASE_URL (production) nothing is
# written at all. Secrets are best given as files: AUTHD_MASTER_KEY_FILE,
# AUTHD_PLATFORM_TOKEN_FILE, DATABASE_URL_FILE, REDIS_URL_FILE.
#
# Kubernetes probes /healthz (liveness) and /readyz (readiness) instead of a
# HEALTHCHECK; see helm/authd. scripts/check-runtime.sh tests this contract
# (unprivileged user, read-only root, only the data dir and /tmp writable,
# SIGTERM exits 0) on the locally built binary, as no image is built in CI.

ARG RUST_VERSION=1.95

# ---------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo

# Dependencies are cached across builds in BuildKit cache mounts (the cargo
# registry and the target directory), so a change to authd's own code
# rebuilds only the workspace crates. `cargo fetch` runs first and on its own
# so that downloads are cached even when the build fails.
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY tests tests
COPY migrations migrations
RUN --mount=type=cache,id=authd-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=authd-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    cargo fetch --locked
RUN --mount=type=cache,id=authd-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=authd-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=authd-target,target=/src/target,sharing=locked \
    cargo build --release --locked --offline -p authd --bin authd \
 && install -D -m 0555 target/release/authd /out/usr/local/bin/authd \
 && /out/usr/local/bin/authd --version

# The data directory of the embedded default, owned by the runtime user.
RUN install -d -m 0700 -o 10001 -g 10001 /out/var/lib/authd

# ---------------------------------------------------------------------------
# Runtime
# ---------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12 AS runtime

LABEL org.opencontainers.image.title="authd" \
      org.opencontainers.image.description="Multi-tenant authentication server" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/usr/local/bin/authd /usr/local/bin/authd
COPY --from=builder --chown=10001:10001 /out/var/lib/authd /var/lib/authd

# Listen on every interface inside the container (authd's own default is
# loopback); the platform API and /metrics go to the admin port, which is not
# meant to be published to the world.
ENV PATH=/usr/local/bin:/usr/bin:/bin \
    AUTHD_LISTEN=0.0.0.0:8080 \
    AUTHD_ADMIN_LISTEN=0.0.0.0:9090 \
    AUTHD_DATA_DIR=/var/lib/authd

# Numeric, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
WORKDIR /
VOLUME ["/var/lib/authd"]
EXPOSE 8080 9090
# authd handles SIGTERM itself: /readyz turns 503, it keeps serving for
# AUTHD_SHUTDOWN_DELAY_SECS, drains for up to AUTHD_DRAIN_SECS, exits 0.
STOPSIGNAL SIGTERM

ENTRYPOINT ["authd"]
CMD ["serve"]
