# syntax=docker/dockerfile:1
# tunneld and tunnelc in a small image (docs/operations.md#docker):
#   docker build -t tunneld .
#   docker run -d --name tunneld -v tunneld-state:/var/lib/tunneld \
#     -v "$PWD/server.yaml:/etc/tunneld/server.yaml:ro" \
#     -p 80:80 -p 443:443 -p 7000:7000 -p 8445:8445 -p 2222:2222 -p 20000-20999:20000-20999 tunneld
#   docker exec tunneld tunneld --config /etc/tunneld/server.yaml token add alice
# The image's own /etc/tunneld/server.yaml is packaging/etc/server.yaml (tunnels.example.com):
# mount yours over it.

# --- build: both binaries, release profile, exactly the locked dependencies; static on
# glibc (.cargo/config.toml), in target/<host tuple>/release ---
FROM rust:1-slim-bookworm AS build
# make: jemalloc's build (the binaries' allocator); gcc comes with the image (ring, SQLite).
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tunneld-daemon -p tunneld-client --bins \
 && install -D -m 0755 -t /out/usr/local/bin \
      "target/$(rustc --print host-tuple)/release/tunneld" "target/$(rustc --print host-tuple)/release/tunnelc" \
 && install -d -m 0700 /out/var/lib/tunneld

# --- runtime: glibc, libgcc and CA certificates, no shell, user nonroot (65532) ---
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/local/bin/tunneld /out/usr/local/bin/tunnelc /usr/local/bin/
COPY --from=build --chown=65532:65532 /out/var/lib/tunneld /var/lib/tunneld
COPY packaging/etc/server.yaml /etc/tunneld/server.yaml
ENV TUNNELD_STATE_DIR=/var/lib/tunneld
USER 65532:65532
WORKDIR /var/lib/tunneld
VOLUME ["/var/lib/tunneld"]
# web (302s, /cacert), https frontend (+ h2-reverse), yamux transport, provisioning API, ssh
# transport, the tunnels' public ports. The admin API stays on the container's loopback.
# Ports below 1024 need no capability: Docker lets containers bind them
# (net.ipv4.ip_unprivileged_port_start=0); elsewhere (Kubernetes) set that sysctl or move
# the listeners above 1023.
EXPOSE 80 443 7000 8445 2222 20000-20999
ENTRYPOINT ["/usr/local/bin/tunneld"]
CMD ["--config", "/etc/tunneld/server.yaml"]
