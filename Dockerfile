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

# Runtime stage: the binary, its config, curl for the health check, a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin cascade
COPY --from=build /usr/local/bin/cascade /usr/local/bin/cascade
COPY config/cascade.toml /etc/cascade/cascade.toml
USER cascade
# The shipped config listens on loopback; inside a container it must be reachable.
ENV CASCADE_LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
# SIGTERM (docker stop) starts the graceful drain; allow more than drain_deadline_ms.
STOPSIGNAL SIGTERM
ENTRYPOINT ["cascade"]
CMD ["serve", "--config", "/etc/cascade/cascade.toml"]
