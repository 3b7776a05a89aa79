# syntax=docker/dockerfile:1
# Multi-stage build of xmpp-cm. Not built in this repository's CI (no Docker engine there);
# tests/ops_deploy.rs checks that the build command and binary path below stay the documented ones.
#
# Config: /etc/xmpp-cm/xmpp-cm.toml (mount a ConfigMap or a file there; every key is in
# config/example.toml; XMPP_CM_<SECTION>__<KEY> environment variables override it).
# Ports: 5280 public (BOSH /http-bind, WebSocket /xmpp-websocket, /.well-known/host-meta),
#        9280 admin (/metrics, /healthz, /readyz).

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin xmpp-cm

FROM debian:bookworm-slim
# No CA bundle needed: upstream certificates are checked against the built-in webpki roots
# (plus [upstream] ca_file when mounted).
COPY --from=builder /src/target/release/xmpp-cm /usr/local/bin/xmpp-cm
COPY config/example.toml /etc/xmpp-cm/xmpp-cm.toml
# Probes and scrapes reach the admin port from outside the container.
ENV XMPP_CM_ADMIN__LISTEN=0.0.0.0:9280
USER 10001:10001
EXPOSE 5280 5281 9280
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/xmpp-cm"]
CMD ["--config", "/etc/xmpp-cm/xmpp-cm.toml"]
