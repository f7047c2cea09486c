# syntax=docker/dockerfile:1

# ---- build ------------------------------------------------------------------
FROM rust:1-slim-bookworm AS builder
WORKDIR /build

# Dependency layer: compile all dependencies against a placeholder crate so this
# layer is reused until Cargo.toml or Cargo.lock change. Test/bench/example
# targets are stripped from this temporary manifest because their sources are
# not copied yet (they do not affect the dependency graph or the lock file).
COPY Cargo.toml Cargo.lock ./
RUN awk '/^\[\[(bench|test|example)\]\]/ { skip = 1; next } /^\[/ { skip = 0 } !skip' \
        Cargo.toml > Cargo.deps.toml \
    && mv Cargo.deps.toml Cargo.toml \
    && mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src target/release/respguard target/release/.fingerprint/respguard-* \
        target/release/deps/respguard-* target/release/deps/librespguard-*

# The real crate.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY config ./config
RUN cargo build --release --locked \
    && install -m 0755 target/release/respguard /usr/local/bin/respguard

# ---- runtime ----------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="respguard" \
      org.opencontainers.image.description="A policy-enforcing RESP (Redis protocol) sidecar proxy" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /usr/local/bin/respguard /usr/local/bin/respguard
COPY config/example.yaml /etc/respguard/config.yaml

# In a container the proxy and the admin endpoint must listen on all interfaces;
# these override the config file and can themselves be overridden with `docker run -e`.
ENV RESPGUARD_LISTEN=0.0.0.0:6380 \
    RESPGUARD_ADMIN=0.0.0.0:9090

# The distroless image's "nonroot" user, numerically (lets Kubernetes' runAsNonRoot verify it).
USER 65532:65532
EXPOSE 6380 9090
ENTRYPOINT ["/usr/local/bin/respguard"]
CMD ["--config", "/etc/respguard/config.yaml"]
