# berth: the registry (9001) and the token service (9002) in one process,
# HTTPS with a CA generated into /var/lib/berth/tls on first start.
# Configure it with BERTH_* environment variables (docs/configuration.md);
# see docker-compose.test.yml and docs/docker-compose.md.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin berth \
    && install -m 0755 target/release/berth /usr/local/bin/berth

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/berth \
        --shell /usr/sbin/nologin berth \
    && install -d -o berth -g berth -m 0700 /var/lib/berth
COPY --from=build /usr/local/bin/berth /usr/local/bin/berth
USER berth
VOLUME /var/lib/berth
EXPOSE 9001 9002
ENTRYPOINT ["berth"]
CMD ["serve"]
