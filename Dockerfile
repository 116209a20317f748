# syntax=docker/dockerfile:1
# Build stage: compile redial in release mode.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin redial && strip target/release/redial

# Runtime stage: a small image with only the binary, run as a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/redial --create-home redial
COPY --from=build /src/target/release/redial /usr/local/bin/redial
COPY config.example.toml /etc/redial/config.example.toml
USER redial
WORKDIR /var/lib/redial
ENV REDIAL_SERVER__LISTEN=0.0.0.0:8080 \
    REDIAL_SERVER__LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["redial"]
CMD ["serve"]
