# Shared by bench/compare.sh and bench/scale.sh (sourced, not run).

# cm_config COMMENT HTTP_PORT ADMIN_PORT DOMAINS ROUTES → an xmpp-cm config on stdout: loopback
# listeners, plaintext upstream (tls = "none"), the given domains (a TOML array) and routes
# (TOML lines "domain" = "host:port"), and the per-IP admission limits lifted.
cm_config() {
  cat <<CONF
# $1
[http]
listen = ["127.0.0.1:$2"]
[admin]
listen = "127.0.0.1:$3"
[upstream]
domains = $4
tls = "none"
[upstream.routes]
$5
[limits]
# The bench opens thousands of sessions from a handful of loopback addresses: lift the per-IP
# admission limits (defaults: 100 sessions and 20 new sessions/s per IP) so they measure the
# proxy, not its abuse protection.
max_sessions = 1000000
max_sessions_per_ip = 1000000
new_sessions_per_ip_per_sec = 1000000
[log]
level = "warn"
CONF
}
