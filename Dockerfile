# itrelay container image. Build stage: the Rust toolchain; runtime stage: distroless
# (glibc, CA certificates, no shell, no package manager) as the numeric non-root user
# 65532:65532, so that Kubernetes' runAsNonRoot can verify it.
#
#   docker build -t itrelay .
#   docker run -e ITRELAY__POSTGRES__URL=... -e ITRELAY__AMQP__URL=... \
#              -e ITRELAY__POSTGRES__PASSWORD_FILE=/run/secrets/pg_password itrelay
#
# Configuration comes from ITRELAY__* variables or a file mounted at
# /etc/itrelay/itrelay.toml (pass `--config /etc/itrelay/itrelay.toml run` as the
# command). Passwords belong in files (Docker secrets), not in the URL.
# docker-compose.yml runs it with Postgres and RabbitMQ for a local try-out;
# deploy/kubernetes/itrelay.yaml on a cluster.
#
# Base images are pinned by digest, so a rebuild gets the bytes that were reviewed. To
# move to newer ones, look up the tag's current index digest and replace it here:
#   docker buildx imagetools inspect rust:1.89-bookworm
#   docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot
# (or `crane digest <image>`).

FROM rust:1.89-bookworm@sha256:948f9b08a66e7fe01b03a98ef1c7568292e07ec2e4fe90d88c07bb14563c84ff AS build
WORKDIR /src
# The dependencies first, in a layer of their own: built against stand-in sources, so that
# a change to the relay's own code rebuilds only the relay.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs benches/e2e.rs benches/pipeline.rs \
 && cargo build --release --locked --bin itrelay \
 && rm -rf src benches
COPY src ./src
COPY sql ./sql
COPY catalog ./catalog
COPY config ./config
# The manifest declares these benches; cargo wants their files even for a binary build.
COPY benches ./benches
# Newer than the stand-ins' build: cargo rebuilds the relay itself.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin itrelay \
 && install -D -m 0755 -t /out target/release/itrelay \
 && /out/itrelay asyncapi > /out/asyncapi.json \
 && install -D -m 0644 -t /out/schemas catalog/*.json

FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="itrelay" \
      org.opencontainers.image.description="Relays IT-module events from a Postgres outbox to RabbitMQ, validated, enriched and confirmed." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="/usr/share/itrelay/docs/consumers.md" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /out/itrelay /usr/local/bin/itrelay
# The SQL the binary embeds, for DBAs who apply it with psql (install, uninstall, role).
COPY sql /usr/share/itrelay/sql
# For consumers: the JSON Schemas of every event (`dataschema` names them) and the
# AsyncAPI document of the exchanges and messages, the same as `itrelay asyncapi` prints.
COPY --from=build /out/schemas /usr/share/itrelay/schemas
COPY --from=build /out/asyncapi.json /usr/share/itrelay/asyncapi.json
COPY docs /usr/share/itrelay/docs
# Numeric, so that runAsNonRoot can check it without reading /etc/passwd.
USER 65532:65532
# /healthz /readyz /metrics; inside a container the endpoint must face the network.
ENV ITRELAY__HTTP__LISTEN=0.0.0.0:9464
EXPOSE 9464
# Exit 0 when the relay answers on /healthz (the endpoint at http.listen).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["itrelay", "healthcheck"]
# SIGTERM (docker stop) lets in-flight confirms finish; give it more than
# amqp.confirm_timeout_secs with `docker stop -t 45` or compose's stop_grace_period.
STOPSIGNAL SIGTERM
CMD ["itrelay", "run"]
