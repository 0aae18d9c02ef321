# allot in a container: a static-enough release binary on a slim Debian base.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin allot

FROM debian:bookworm-slim
COPY --from=build /src/target/release/allot /usr/local/bin/allot
# The embedded SQLite default writes allot.db in the working directory.
WORKDIR /var/lib/allot
RUN chown 65534:65534 /var/lib/allot
USER 65534:65534
EXPOSE 50051
ENTRYPOINT ["allot"]
# In a container allot listens on 0.0.0.0, which it refuses without authentication: mount an
# admin token (`allot admin token create --output allot-admin-token`, owned by uid 65534, mode
# 600) at /run/secrets/allot-admin-token. Plaintext: publish the port on loopback only.
CMD ["serve", "--listen", "0.0.0.0:50051", "--admin-token-file", "/run/secrets/allot-admin-token", "--insecure-plaintext"]
