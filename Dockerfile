# allot in a container: one statically linked binary on an empty base (`FROM scratch`).
#
#   docker build -t allot .                    compiles allot in the official Rust image
#   docker build --target prebuilt -t allot .  takes target/docker/allot, built beforehand by
#                                              scripts/static-binary.sh (no image registry)
#
# Needs BuildKit, the default builder since Docker 23 (DOCKER_BUILDKIT=1 on Debian's docker.io
# 20.10): it builds only the stages the target needs, so `prebuilt` never pulls the Rust image
# and the default never looks for target/docker/allot.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The static flag as the host triple's rustflags, which cargo joins to .cargo/config.toml's
# (its x86-64-v2 baseline); RUSTFLAGS would replace them.
RUN host="$(rustc -vV | sed -n 's/^host: //p')"; \
    env "CARGO_TARGET_$(echo "$host" | tr 'a-z-' 'A-Z_')_RUSTFLAGS=-C target-feature=+crt-static" \
        cargo build --release --locked --bin allot --target "$host" \
    && cp target/*/release/allot /allot

# The data directory, made here to be copied with its owner: an empty base has no chown.
FROM scratch AS data
WORKDIR /var/lib/allot

FROM scratch AS base
COPY --from=data --chown=65534:65534 /var/lib/allot /var/lib/allot
# The embedded SQLite default writes allot.db in the working directory (mount a volume here).
WORKDIR /var/lib/allot
USER 65534:65534
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/allot"]
# In a container allot listens on 0.0.0.0, which it refuses without authentication: mount an
# admin token (`allot admin token create --output allot-admin-token`, owned by uid 65534, mode
# 600) at /run/secrets/allot-admin-token. Plaintext: publish the port on loopback only.
CMD ["serve", "--listen", "0.0.0.0:50051", "--admin-token-file", "/run/secrets/allot-admin-token", "--insecure-plaintext"]

FROM base AS prebuilt
COPY target/docker/allot /usr/local/bin/allot

FROM base
COPY --from=build /allot /usr/local/bin/allot
