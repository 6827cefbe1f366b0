# itrelay container image. Build stage: the Rust toolchain; runtime stage: distroless
# (glibc, CA certificates, no shell, no package manager) as the non-root user 65532.
#
#   docker build -t itrelay .
#   docker run -e ITRELAY__POSTGRES__URL=... -e ITRELAY__AMQP__URL=... \
#              -e ITRELAY__POSTGRES__PASSWORD_FILE=/run/secrets/pg_password itrelay
#
# Configuration comes from ITRELAY__* variables or a file mounted at
# /etc/itrelay/itrelay.toml (pass `--config /etc/itrelay/itrelay.toml run` as the
# command). Passwords belong in files (Docker secrets), not in the URL.
# docker-compose.yml runs it with Postgres and RabbitMQ for a local try-out.

FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY sql ./sql
COPY schemas ./schemas
COPY config ./config
# The manifest declares these benches; cargo wants their files even for a binary build.
COPY benches ./benches
RUN cargo build --release --locked --bin itrelay \
 && install -D -m 0755 target/release/itrelay /out/itrelay

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/itrelay /usr/local/bin/itrelay
# The SQL the binary embeds, for DBAs who apply it with psql (install, uninstall, role).
COPY sql /usr/share/itrelay/sql
USER nonroot:nonroot
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
