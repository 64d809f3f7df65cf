# syntax=docker/dockerfile:1
# Multi-stage build: compile with the Rust toolchain, ship only the binary on a distroless
# base (glibc, CA certificates, no shell), as the non-root user 65532.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, compiled against stub sources, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > benches/engine.rs \
 && cargo build --release --locked --bin confgate \
 && rm -rf src
COPY src src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin confgate \
 && strip target/release/confgate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/confgate /usr/local/bin/confgate
# The shipped example policies; in a cluster the confgate-policies ConfigMap is mounted over them.
COPY policies /etc/confgate/policies
# mimalloc commits arena memory as it is used rather than up front: idle RSS 24 -> 16 MB at
# unchanged throughput (BENCHMARKS.md).
ENV MIMALLOC_ARENA_EAGER_COMMIT=0
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/confgate"]
CMD ["serve", "--policies=/etc/confgate/policies", "--tls-cert=/etc/confgate/tls/tls.crt", "--tls-key=/etc/confgate/tls/tls.key"]
