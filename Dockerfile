# syntax=docker/dockerfile:1
# Multi-stage build of both binaries; one runtime image per binary:
#   docker build --target gateway -t edge/gateway:1.0 --build-arg GIT_COMMIT=$(git rev-parse --short HEAD) .
#   docker build --target app     -t edge/app:1.0     --build-arg GIT_COMMIT=$(git rev-parse --short HEAD) .
# Runtime images are distroless (no shell, no package manager, no build
# tools), run as the unprivileged `nonroot` user (65532), and probe
# themselves with their own `healthcheck` subcommand.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY shared/Cargo.toml shared/Cargo.toml
COPY app/Cargo.toml app/Cargo.toml
COPY gateway/Cargo.toml gateway/Cargo.toml
RUN mkdir -p shared/src app/src gateway/src gateway/benches \
 && echo '' > shared/src/lib.rs && echo 'fn main() {}' > app/src/main.rs && echo '' > app/src/lib.rs \
 && echo 'fn main() {}' > gateway/src/main.rs && echo '' > gateway/src/lib.rs && echo 'fn main() {}' > gateway/benches/limiter.rs \
 && echo 'fn main() {}' > app/build.rs \
 && cargo build --release --locked -p app -p gateway || true
COPY . .
ARG GIT_COMMIT=unknown
ENV GIT_COMMIT=${GIT_COMMIT}
RUN touch shared/src/lib.rs app/src/main.rs app/src/lib.rs gateway/src/main.rs gateway/src/lib.rs \
 && cargo build --release --locked -p app -p gateway \
 && mkdir /out && cp target/release/app target/release/gateway /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS app
COPY --from=build /out/app /usr/local/bin/app
USER nonroot:nonroot
ENV APP_LISTEN=0.0.0.0:8000 APP_ADMIN_LISTEN=0.0.0.0:9100 APP_DATA_DIR=/data LOG_FORMAT=json
EXPOSE 8000
# Liveness (/healthz): a store outage must not get the container restarted;
# readiness (/readyz, `app healthcheck --ready`) is for the gateway.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["/usr/local/bin/app", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/app"]

FROM gcr.io/distroless/cc-debian12:nonroot AS gateway
COPY --from=build /out/gateway /usr/local/bin/gateway
COPY gateway.example.toml /etc/gateway/gateway.toml
USER nonroot:nonroot
# Unprivileged ports inside the container; Swarm publishes 443 -> 8443 and 80 -> 8080.
EXPOSE 8443 8080
# Liveness (admin /healthz): with every replica unready the gateway is
# unready too, and must not be restarted for it (`healthcheck --ready` probes
# readiness).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["/usr/local/bin/gateway", "healthcheck", "--config", "/etc/gateway/gateway.toml"]
# The binary alone, so a service's `command` (swarm-stack.yml) replaces the
# default arguments instead of adding a second --config (which the gateway
# refuses: found by deploying the stack, scripts/swarm-e2e.sh).
ENTRYPOINT ["/usr/local/bin/gateway"]
CMD ["--config", "/etc/gateway/gateway.toml"]
