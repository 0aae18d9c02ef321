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
CMD ["serve", "--listen", "0.0.0.0:50051"]
