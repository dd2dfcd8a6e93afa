# syntax=docker/dockerfile:1
# aurora-migrator for ECS Fargate. Build: docker build -t aurora-migrator .
# (pin the RDS CA bundle with RDS_CA_BUNDLE_SHA256 below: infra/BUILDING-IMAGE.md).
# Pin the base images by digest in CI (FROM image:tag@sha256:...); tags are kept here so the
# file stays readable and the bookworm builder matches the distroless debian12 glibc.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
# cargo-chef turns the manifests into a recipe, so dependencies build in their own layer
# and a source-only change does not rebuild the AWS SDK (most of the build time).
RUN cargo install --locked cargo-chef@0.1.78
WORKDIR /app

# The RDS CA bundle, which database connections are verified against (MIGRATOR_RDS_CA_BUNDLE's
# default path), fetched from AWS's trust store; with the pin set every build ships the same
# bytes and a changed file fails the build. AWS adds certificates to the bundle (new Regions, new CAs), so the pin is updated by
# hand (infra/BUILDING-IMAGE.md): download it, review the certificates
# (openssl storeutl -noout -text -certs global-bundle.pem), then set the default below (or
# pass --build-arg RDS_CA_BUNDLE_SHA256=<hex>) to
#   curl -fsSL https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem | sha256sum
# The rust image is the builder's base already, so this stage pulls nothing more.
FROM rust:${RUST_VERSION}-slim-bookworm AS rds-ca
ARG RDS_CA_BUNDLE_SHA256=""
ADD https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem /rds-ca-bundle.pem
# Unpinned (the default), the bundle is taken as fetched over verified HTTPS and its SHA-256 is
# printed for the next build to pin; pinned, a different file fails the build. The bundle is
# only read with database access on (MIGRATOR_DATABASE_ACCESS), so an unpinned build still
# serves every deployment without it.
RUN if [ -n "${RDS_CA_BUNDLE_SHA256}" ]; then \
      printf '%s  %s\n' "${RDS_CA_BUNDLE_SHA256}" /rds-ca-bundle.pem > /tmp/rds-ca-bundle.sha256 \
      && sha256sum --check --strict /tmp/rds-ca-bundle.sha256; \
    else \
      echo "warning: RDS_CA_BUNDLE_SHA256 unset; the bundle's sha256 to pin is:" >&2 \
      && sha256sum /rds-ca-bundle.pem >&2; \
    fi \
 && grep -q -- '-----BEGIN CERTIFICATE-----' /rds-ca-bundle.pem \
 && chmod 0444 /rds-ca-bundle.pem

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
# World-readable (0444 above; ADD gives a downloaded file 0600), so uid 65532 can read it.
COPY --from=rds-ca /rds-ca-bundle.pem /etc/aurora-migrator/rds-ca-bundle.pem
USER 65532:65532
# Exec form everywhere: no shell exists, and the binary must be PID 1 to get SIGTERM.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/aurora-migrator", "healthcheck"]
ENTRYPOINT ["/aurora-migrator"]
CMD ["run"]
