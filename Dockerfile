# syntax=docker/dockerfile:1
# aurora-migrator for ECS Fargate. Build: docker build -t aurora-migrator .
# Pin the base images by digest in CI (FROM image:tag@sha256:...); tags are kept here so the
# file stays readable and the bookworm builder matches the distroless debian12 glibc.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
# cargo-chef turns the manifests into a recipe, so dependencies build in their own layer
# and a source-only change does not rebuild the AWS SDK (most of the build time).
RUN cargo install --locked cargo-chef@0.1.78
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo build --release --locked --bin aurora-migrator \
 && cp target/release/aurora-migrator /aurora-migrator

# distroless cc: glibc, libgcc and CA certificates (the SDK loads the system roots), no
# shell, no package manager; the nonroot tag runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /aurora-migrator /aurora-migrator
USER 65532:65532
# Exec form everywhere: no shell exists, and the binary must be PID 1 to get SIGTERM.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/aurora-migrator", "healthcheck"]
ENTRYPOINT ["/aurora-migrator"]
CMD ["run"]
