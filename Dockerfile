# itrelay container image: build with the Rust toolchain, run on a slim Debian as a
# non-root user. Configuration comes from ITRELAY__* variables or a mounted file:
#   docker run -e ITRELAY__POSTGRES__URL=... -e ITRELAY__AMQP__URL=... itrelay
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY sql ./sql
COPY schemas ./schemas
COPY config ./config
RUN cargo build --release --locked --bin itrelay

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin itrelay
COPY --from=build /src/target/release/itrelay /usr/local/bin/itrelay
COPY sql /usr/share/itrelay/sql
USER itrelay
ENTRYPOINT ["/usr/local/bin/itrelay"]
CMD ["run"]
