# syntax=docker/dockerfile:1

# Build stage: the release binary, from the locked dependency set.
FROM rust:1-bookworm AS build
WORKDIR /src
# The whole context (see .dockerignore): besides src/, the build needs every file the
# manifest and the sources name (config/, benches/, embedded browser assets).
COPY . .
# Cache mounts keep the registry and build artefacts between builds (BuildKit); the
# binary is copied out because the target mount does not persist into the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -m 0755 target/release/cascade /usr/local/bin/cascade

# Runtime stage: the binary, curl for the health check, a non-root user.
FROM debian:bookworm-slim
# DL3008 (pin apt versions): Debian's archive keeps only a package's current version, so a
# pinned curl would break the build at its next security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 cascade \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --no-create-home \
       --shell /usr/sbin/nologin cascade
COPY --from=build /usr/local/bin/cascade /usr/local/bin/cascade
# The development config (publishing open to everyone, a published token secret, the demo's
# log-in by any name) is shipped for trials but never read unless asked for:
# CASCADE_CONFIG=/etc/cascade/development.toml (docker-compose.yml does that).
COPY config/cascade.toml /etc/cascade/development.toml
# Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
# The built-in default listens on loopback; inside a container it must be reachable.
ENV CASCADE_LISTEN=0.0.0.0:8080
EXPOSE 8080
# Any non-zero exit (curl's 7 refused, 22 an HTTP error) counts as a failed check.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"]
# SIGTERM (docker stop) starts the graceful drain; allow more than drain_deadline_ms.
STOPSIGNAL SIGTERM
# No --config: the built-in secure defaults (publishing needs an API key or a token, no
# demo), set with CASCADE_* variables (CASCADE_API_KEYS, CASCADE_TOKEN_HMAC_SECRET, ...).
ENTRYPOINT ["cascade"]
CMD ["serve"]
