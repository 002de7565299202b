# One image for every OpsConductor service: `opsconductor serve <service>` picks which.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p opsconductor \
    && cp target/release/opsconductor /usr/local/bin/opsconductor

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/opsconductor --create-home opsconductor
COPY --from=build /usr/local/bin/opsconductor /usr/local/bin/opsconductor
USER opsconductor
WORKDIR /var/lib/opsconductor
ENV OPSCONDUCTOR_DATA_DIR=/var/lib/opsconductor \
    OPSCONDUCTOR_LOG_FORMAT=json
ENTRYPOINT ["opsconductor"]
# Inside the container network; publish ports to the host deliberately (see docker-compose.yml).
CMD ["up", "--host", "0.0.0.0"]
