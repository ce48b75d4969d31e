# syntax=docker/dockerfile:1
# Two images from one build: `--target sidecar` (session-sidecar) and `--target operator`
# (session-operator). Base images are pinned to exact releases.

# ---- build: dependencies first, in a layer that changes only with the manifests ----------
FROM docker.io/library/rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY sidecar/Cargo.toml sidecar/
COPY operator/Cargo.toml operator/
COPY bench/Cargo.toml bench/
# Empty sources with the manifests' target paths, so `cargo build` compiles only dependencies.
RUN mkdir -p sidecar/src sidecar/tests/behaviour operator/src bench/src \
 && for crate in sidecar operator bench; do echo 'fn main() {}' > $crate/src/main.rs; touch $crate/src/lib.rs; done \
 && touch sidecar/tests/behaviour/main.rs sidecar/tests/process.rs \
 && cargo build --release --locked -p session-sidecar -p session-operator \
 && rm -rf sidecar operator bench
COPY sidecar sidecar
COPY operator operator
COPY bench bench
# COPY keeps the context's modification times, which are older than the placeholder build's:
# touched, the real sources are newer, so cargo rebuilds the crates instead of shipping the
# placeholders.
RUN find sidecar operator bench -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p session-sidecar -p session-operator

# ---- runtime: Debian slim with CA roots only, a non-root numeric user --------------------
FROM docker.io/library/debian:12.12-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
USER 65532:65532

FROM runtime AS sidecar
COPY --from=build /src/target/release/session-sidecar /usr/local/bin/session-sidecar
USER 65532:65532
EXPOSE 7070 7071
ENTRYPOINT ["/usr/local/bin/session-sidecar"]

FROM runtime AS operator
COPY --from=build /src/target/release/session-operator /usr/local/bin/session-operator
USER 65532:65532
EXPOSE 8080 9443
ENTRYPOINT ["/usr/local/bin/session-operator"]
CMD ["run"]
