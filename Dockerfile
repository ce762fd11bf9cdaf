# syntax=docker/dockerfile:1
#
# One image with all four binaries (order-svc, inventory-svc, payment-svc, sagactl);
# compose.yaml picks the process per service with `command:`.
#
#     docker build -t order-saga:dev .
#     docker run --rm order-saga:dev sagactl --help

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The cache mounts keep downloaded crates and compiled dependencies between builds.
# target/ lives in a cache mount, so the binaries are copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p order-svc -p inventory-svc -p payment-svc -p sagactl \
 && mkdir -p /out \
 && cp target/release/order-svc target/release/inventory-svc \
       target/release/payment-svc target/release/sagactl /out/

FROM debian:bookworm-slim AS runtime
# ca-certificates for TLS to a remote broker/database (a private CA is added by copying
# it to /usr/local/share/ca-certificates/ and running update-ca-certificates in an image
# built FROM this one, see docs/operations.md); curl for the compose healthchecks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 saga \
 && useradd --system --uid 10001 --gid saga --no-create-home --shell /usr/sbin/nologin saga
COPY --from=builder /out/ /usr/local/bin/
# Numeric, so that Kubernetes' runAsNonRoot can verify it (deploy/k8s).
USER 10001:10001
# order-svc, inventory-svc, payment-svc (each listens on 127.0.0.1 unless its
# SAGA_<SVC>_HTTP_ADDR says otherwise, e.g. 0.0.0.0:8080).
EXPOSE 8080 8081 8082
# Overridden per service in compose.yaml and deploy/k8s.
CMD ["order-svc"]
