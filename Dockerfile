# verve in a container. Build: docker build -t verve .
# Run: docker run --rm -p 8080:8080 --ulimit memlock=-1 \
#        --security-opt seccomp=scripts/container/seccomp-io_uring.json verve
# Docker's default seccomp profile blocks the io_uring system calls: without this one,
# --driver auto falls back to epoll and logs why. docker-compose.yaml runs a cluster.

# librdkafka's OpenSSL and zlib are built from source and linked statically (Cargo.toml).
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends make g++ perl \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, with stub sources: this layer is rebuilt only when Cargo.toml or
# Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin benches \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > src/bin/verve-tokio.rs \
 && for bench in hot_path redis_push wal_append; do echo 'fn main() {}' > "benches/$bench.rs"; done \
 && cargo build --release --locked --bin verve \
 && rm -rf src benches
COPY src src
COPY benches benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin verve

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/verve --create-home verve
COPY --from=build /src/target/release/verve /usr/bin/verve
USER verve
WORKDIR /var/lib/verve
ENV VERVE_LISTEN=0.0.0.0:8080 VERVE_STATS_LOG=/var/lib/verve/verve-stats.log \
    VERVE_CALLBACK_LOG=/var/lib/verve/verve-callbacks.log VERVE_WAL_DIR=/var/lib/verve/wal
# The write-ahead log: a volume, so that a container started again after a crash (or a
# new one given the same volume) reports every id the last one answered ok.
VOLUME ["/var/lib/verve"]
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/verve"]
