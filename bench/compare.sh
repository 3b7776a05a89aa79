#!/usr/bin/env bash
# Side-by-side benchmark of xmpp-cm against direct TCP, a bare byte relay, Prosody's own
# mod_bosh/mod_websocket and node-xmpp-bosh, all on loopback, all in front of one Prosody;
# then BOSH through HAProxy to one xmpp-cm and to a cluster of three (issue 14: forwarded
# requests); then xmpp-cm against the bench relay in front of `xmpp-cm-bench upstream`, and
# (full mode) 100k idle WebSocket sessions. Writes every JSON record to $WORK/results.jsonl and the report
# to BENCHMARKS.md (bench/report.py).
#
#   bench/compare.sh            full run (~47 min): main section 5 repeats, cluster 6, the rest 3 (growth pairs 5)
#   bench/compare.sh --quick    smoke run (< 3 min): 1 repeat, short durations, small counts
#   options: --out FILE (default BENCHMARKS.md at the repo root), --no-build, --keep (leave $WORK),
#            --only main|cluster|mem|upstream (one section; the report then holds only its records),
#            --mode batch|browser|both (the main section's pingpong and flood: batch, the default,
#            is xmpp-cm-bench's own client, window 8; browser is one stanza per BOSH request and a
#            window of 4 (issue 17), recorded under the note main-browser; both runs each workload
#            in both modes, and the report puts them side by side)
#   env: BENCH_PORT_BASE (default 21000; every listener is BASE+0..99, all below 32768),
#        BENCH_DIR (work dir; default a new /tmp/xmpp-cm-bench.XXXXXX),
#        BENCH_PINGPONG_NICE (e.g. -10; default none), BENCH_PROSODY_GC (e.g. generational; default Prosody's)
#
# Needs: prosody (Debian package; apt-get install prosody), haproxy (Debian package, for the
# cluster section; apt-get install haproxy), node 20 + npm (node-xmpp-bosh is
# installed into bench/node_modules by `npm ci`), python3, openssl. The open-file limit is per
# process: with a hard limit of at least ~210k (root may raise it) one xmpp-cm holds the 100k idle
# sessions; below that, bench/scale.sh splits them over several xmpp-cm processes held at once,
# and each growth run is sized to fit the limit.
#
# Everything this script starts is recorded by PID in $WORK/pids and stopped by PID on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0; OUT="$ROOT/BENCHMARKS.md"; BUILD=1; KEEP=0; ONLY=all; MODE=batch
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --out) OUT=$2; shift ;;
    --no-build) BUILD=0 ;;
    --keep) KEEP=1 ;;
    --only) ONLY=$2; shift ;;  # main | cluster | mem | upstream: run one section (for re-measuring)
    --mode) MODE=$2; shift ;;  # batch | browser | both: how the main section's clients send
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
  shift
done

BASE=${BENCH_PORT_BASE:-21000}
(( BASE >= 1024 && BASE + 99 < 32768 )) || { echo "BENCH_PORT_BASE must keep ports in 1024..32767" >&2; exit 64; }
C2S=$((BASE + 22)); PHTTP=$((BASE + 80)); RELAY=$((BASE + 23)); NXB=$((BASE + 81))
CM=$((BASE + 90)); CMADMIN=$((BASE + 91)); UP=$((BASE + 30)); RELAY_UP=$((BASE + 31))
CMUP=$((BASE + 92)); CMUPADMIN=$((BASE + 93))
# Cluster section: three HAProxy frontends, and four xmpp-cm replicas (0: alone behind
# haproxy-1; 1–3: the cluster) with public, admin and internal (cluster hop) listeners each.
CLHAP1=$((BASE + 1)); CLHAP3=$((BASE + 2)); CLHAPF=$((BASE + 3))
CLHTTP=$((BASE + 10)); CLADMIN=$((BASE + 14)); CLPEER=$((BASE + 18))
WORK=${BENCH_DIR:-$(mktemp -d /tmp/xmpp-cm-bench.XXXXXX)}
mkdir -p "$WORK"
RESULTS="$WORK/results.jsonl"; : >"$RESULTS"
PIDS="$WORK/pids"; : >"$PIDS"
BENCH="$ROOT/target/release/xmpp-cm-bench"; CMBIN="$ROOT/target/release/xmpp-cm"
log() { echo "[compare $(date +%T)] $*" >&2; }
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

if (( QUICK )); then
  REPS=1; MAIN_REPS=1; FOCUS_REPS=1; SETUP_PASSES=1; MAIN_DUR=2; DUR=2; WARM=0.5; PAUSE=0.3; SETUP_N=200; PP_N=100; FLOOD_N=200; MEM_SMALL=200; MEM_BIG=1000; BIG_IDLE=0; HOLD=2
else
  REPS=3; MAIN_REPS=5; FOCUS_REPS=6; SETUP_PASSES=2; MAIN_DUR=6; DUR=10; WARM=1; PAUSE=1; SETUP_N=500; PP_N=100; FLOOD_N=200; MEM_SMALL=1000; MEM_BIG=10000; BIG_IDLE=100000; HOLD=5
fi
# The open-file limit is per process. Descriptors per session, in the process that needs the
# most: direct TCP 1 (generator and Prosody one each); xmpp-cm WebSocket 2 (client + upstream);
# xmpp-cm BOSH 3 (the client's two keep-alive HTTP connections + upstream; the generator holds
# 2); node-xmpp-bosh the same 3. When the hard limit cannot be raised, each target's big run is
# sized by its own figure (rounded down to 500, with FD_SLACK spare for listeners, logs and the
# like) so that no process runs out: the record of each run keeps the count actually used.
ulimit -Hn 1048576 2>/dev/null || true
FDMAX=$(ulimit -Hn); [[ "$FDMAX" == unlimited ]] && FDMAX=1048576
FD_SLACK=1000
declare -A FD_PER=([direct]=1 [cm-ws]=2 [cm-bosh]=3 [nxb]=3)
big_for() { # target → idle sessions for its growth run
  local fit=$(( (FDMAX - FD_SLACK) / ${FD_PER[$1]} - PP_N ))
  (( fit > MEM_BIG )) && fit=$MEM_BIG
  echo $(( fit / 500 * 500 ))
}
SKIPPED=""; SCALE_IDLE=0
if (( BIG_IDLE > 0 && BIG_IDLE * 2 + FD_SLACK > FDMAX )); then
  # One xmpp-cm process cannot hold them (2 descriptors per session): bench/scale.sh splits
  # them over several generator → xmpp-cm → bench upstream chains held at the same time.
  SCALE_IDLE=$BIG_IDLE
  BIG_IDLE=0
fi
NUSERS=$(( MEM_BIG + PP_N + 100 ))

cleanup() {
  local pid
  if [[ -s "$PIDS" ]]; then
    while read -r name pid; do
      if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
    done <"$PIDS"
    sleep 1
    while read -r name pid; do
      if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    done <"$PIDS"
  fi
  (( KEEP )) || [[ -n "${BENCH_DIR:-}" ]] || rm -rf "$WORK/prosody/data"
}
trap cleanup EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # name port pid
  local i
  for i in $(seq 1 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
    kill -0 "$3" 2>/dev/null || { log "$1 exited early; see $WORK"; return 1; }
    sleep 0.1
  done
  log "$1 did not open port $2"; return 1
}
start() { # name logfile cmd... ; records the PID
  local name=$1 logf=$2; shift 2
  "$@" >"$logf" 2>&1 &
  local pid=$!
  echo "$name $pid" >>"$PIDS"
  eval "PID_${name//-/_}=$pid"
}
stop() { # name
  local var="PID_${1//-/_}" pid
  pid=${!var:-}
  [[ -n "$pid" ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  # Forget it, so that the cleanup never signals a PID that has been reused meanwhile.
  sed -i "/^$1 $pid\$/d" "$PIDS"
}

case "$ONLY" in all|main|cluster|mem|upstream) ;; *) echo "--only: main, cluster, mem or upstream" >&2; exit 64 ;; esac
case "$MODE" in batch) MODES=(batch) ;; browser) MODES=(browser) ;; both) MODES=(batch browser) ;; *) echo "--mode: batch, browser or both" >&2; exit 64 ;; esac
for p in $C2S $PHTTP $RELAY $NXB $CM $CMADMIN $UP $RELAY_UP $CMUP $CMUPADMIN $CLHAP1 $CLHAP3 $CLHAPF \
         $(for i in 0 1 2 3; do echo $((CLHTTP + i)) $((CLADMIN + i)) $((CLPEER + i)); done); do
  port_free "$p" || { echo "port $p is in use; set BENCH_PORT_BASE" >&2; exit 1; }
done

# Many sockets: raise the open-file limit for everything started below (root may raise the hard one).
ulimit -Hn 1048576 2>/dev/null || log "cannot raise the hard open-file limit ($(ulimit -Hn))"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log "open files limit $(ulimit -n); work dir $WORK"

# ------------------------------------------------------------------ build and install
if (( BUILD )); then
  log "cargo build --release --bins"
  (cd "$ROOT" && cargo build --release --bins)
fi
command -v prosody >/dev/null || { echo "prosody is not installed (apt-get install prosody)" >&2; exit 1; }
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)  # Debian puts it in /usr/sbin
if [[ "$ONLY" == all || "$ONLY" == cluster ]] && [[ ! -x "$HAPROXY" ]]; then
  echo "haproxy is not installed (apt-get install haproxy); the cluster section needs it (or pass --only main|mem|upstream)" >&2; exit 1
fi
if [[ ! -d "$ROOT/bench/node_modules/node-xmpp-bosh" ]]; then
  log "npm ci in bench/ (node-xmpp-bosh, node-expat 2.4.1 override)"
  (cd "$ROOT/bench" && npm ci --no-audit --no-fund >/dev/null)
fi

# ------------------------------------------------------------------ Prosody
P="$WORK/prosody"; mkdir -p "$P/data" "$P/certs"
if command -v openssl >/dev/null; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=localhost" \
    -keyout "$P/certs/localhost.key" -out "$P/certs/localhost.crt" >/dev/null 2>&1 || true
fi
SSL=""
# BENCH_PROSODY_GC=generational runs Prosody with Lua 5.4's generational GC instead of its
# default (incremental, threshold 105, speed 500); see bench/findings.md (growth).
PROSODY_GC=""
[[ -n "${BENCH_PROSODY_GC:-}" ]] && PROSODY_GC="gc = { mode = \"$BENCH_PROSODY_GC\" }"
[[ -s "$P/certs/localhost.crt" ]] && SSL="ssl = { certificate = \"$P/certs/localhost.crt\"; key = \"$P/certs/localhost.key\"; }"
cat >"$P/prosody.cfg.lua" <<EOF
-- written by bench/compare.sh: loopback only, TLS optional (STARTTLS offered, never required),
-- SASL PLAIN only (SCRAM off), no mod_limits (Debian's default would throttle c2s to 10 kB/s).
run_as_root = true
pidfile = "$P/prosody.pid"
data_path = "$P/data"
log = { { levels = { min = "warn" }, to = "file", filename = "$P/prosody.log" } }
interfaces = { "127.0.0.1" }
local_interfaces = { "127.0.0.1" }
c2s_ports = { $C2S }
c2s_interfaces = { "127.0.0.1" }
c2s_direct_tls_ports = { }
s2s_ports = { }
http_ports = { $PHTTP }
http_interfaces = { "127.0.0.1" }
https_ports = { }
component_ports = { }
modules_enabled = { "disco"; "roster"; "saslauth"; "tls"; "ping"; "posix"; "carbons"; "smacks"; "csi_simple"; "http"; "bosh"; "websocket"; }
modules_disabled = { "s2s"; "offline"; "limits"; }
authentication = "internal_plain"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
disable_sasl_mechanisms = { "DIGEST-MD5", "SCRAM-SHA-1", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS" }
consider_bosh_secure = true
consider_websocket_secure = true
bosh_max_inactivity = 60
http_default_host = "localhost"
statistics = nil
$PROSODY_GC
VirtualHost "localhost"
  $SSL
EOF
log "writing $NUSERS Prosody accounts (internal_plain)"
python3 - "$P/data/localhost/accounts" "$NUSERS" <<'EOF'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d, exist_ok=True)
for i in range(1, n + 1):
    with open(os.path.join(d, "user%d.dat" % i), "w") as f:
        f.write('return {\n\t["password"] = "pass%d";\n};\n' % i)
EOF
start prosody "$P/stdout.log" prosody --config "$P/prosody.cfg.lua" -F
wait_port prosody "$C2S" "$PID_prosody"; wait_port prosody-http "$PHTTP" "$PID_prosody"
log "prosody $(dpkg-query -W -f '${Version}' prosody 2>/dev/null || true) pid $PID_prosody c2s $C2S http $PHTTP"

# ------------------------------------------------------------------ relay, node-xmpp-bosh, xmpp-cm
start relay "$WORK/relay.log" "$BENCH" --threads 2 relay --listen "127.0.0.1:$RELAY" --to "127.0.0.1:$C2S"
wait_port relay "$RELAY" "$PID_relay"

cat >"$WORK/nxb.conf.js" <<EOF
// written by bench/compare.sh. lookup_service replaces node-xmpp-bosh's resolver: every
// stream goes to Prosody on loopback, never through DNS (its own 'route' handling would still
// resolve the domain and use port 5222). STARTTLS is not used towards Prosody, as for the others.
var events = require('events'), util = require('util');
function Fixed(port, stream) { events.EventEmitter.call(this); }
util.inherits(Fixed, events.EventEmitter);
Fixed.prototype.connect = function (socket) {
  var self = this;
  function ok() { socket.removeListener('error', bad); self.emit('connect'); }
  function bad(e) { socket.removeListener('connect', ok); self.emit('error', e); }
  socket.once('connect', ok); socket.once('error', bad);
  socket.connect($C2S, '127.0.0.1');
};
exports.config = {
  port: $NXB, host: '127.0.0.1', path: /^\/http-bind(\/+)?$/, logging: 'WARN',
  max_data_held: 100000, max_xmpp_stanza_size: 500000, max_bosh_connections: 2, window_size: 2,
  default_inactivity: 70, max_inactivity: 160, http_socket_keepalive: 60, max_streams_per_session: 8,
  http_headers: { }, no_tls_domains: [ 'localhost' ], firewall: { deny: [ ] }, route_filter: /^$/,
  pidgin_compatible: true, trim_default_length: 256, system_info_password: '', websocket_ping_interval: 30,
  lookup_service: Fixed
};
EOF
start nxb "$WORK/nxb.log" node "$ROOT/bench/node_modules/node-xmpp-bosh/run-server.js" "--config=$WORK/nxb.conf.js"
wait_port node-xmpp-bosh "$NXB" "$PID_nxb"

cm_config 'written by bench/compare.sh: plaintext to Prosody on loopback, like the direct TCP baseline (Prosody offers STARTTLS, does not require it)' \
  "$CM" "$CMADMIN" '["localhost"]' "\"localhost\" = \"127.0.0.1:$C2S\"" >"$WORK/xmpp-cm.toml"
start xmpp-cm "$WORK/xmpp-cm.log" "$CMBIN" --config "$WORK/xmpp-cm.toml"
wait_port xmpp-cm "$CM" "$PID_xmpp_cm"
log "relay $PID_relay, node-xmpp-bosh $PID_nxb, xmpp-cm $PID_xmpp_cm"

# ------------------------------------------------------------------ runs
# target name → transport, URL, processes to watch
declare -A T_TRANS T_URL T_PIDS
T_TRANS[direct]=tcp;       T_URL[direct]="127.0.0.1:$C2S";                              T_PIDS[direct]="--pid prosody=$PID_prosody"
T_TRANS[relay]=tcp;        T_URL[relay]="127.0.0.1:$RELAY";                             T_PIDS[relay]="--pid prosody=$PID_prosody --pid proxy=$PID_relay"
T_TRANS[prosody-bosh]=bosh; T_URL[prosody-bosh]="http://127.0.0.1:$PHTTP/http-bind";     T_PIDS[prosody-bosh]="--pid prosody=$PID_prosody"
T_TRANS[prosody-ws]=ws;    T_URL[prosody-ws]="ws://127.0.0.1:$PHTTP/xmpp-websocket";    T_PIDS[prosody-ws]="--pid prosody=$PID_prosody"
T_TRANS[nxb]=bosh;         T_URL[nxb]="http://127.0.0.1:$NXB/http-bind";                T_PIDS[nxb]="--pid prosody=$PID_prosody --pid proxy=$PID_nxb"
T_TRANS[cm-bosh]=bosh;     T_URL[cm-bosh]="http://127.0.0.1:$CM/http-bind";             T_PIDS[cm-bosh]="--pid prosody=$PID_prosody --pid proxy=$PID_xmpp_cm"
T_TRANS[cm-ws]=ws;         T_URL[cm-ws]="ws://127.0.0.1:$CM/xmpp-websocket";            T_PIDS[cm-ws]="--pid prosody=$PID_prosody --pid proxy=$PID_xmpp_cm"
TARGETS=(direct relay prosody-bosh prosody-ws nxb cm-bosh cm-ws)

# BENCH_PINGPONG_NICE=-10 runs the pingpong generator at a higher priority (root only). A
# generator waiting for a CPU sends late and reads late, and that lag counts in the latency
# (reported as send_lag_ms); in alternated runs on this shared machine -10 did not reduce the
# lag, so it is off by default.
PP_NICE=${BENCH_PINGPONG_NICE:-}
bench() { # target scenario args...
  local t=$1 scen=$2; shift 2
  local extra=()
  [[ "$t" == nxb ]] && extra+=(--bosh-route "xmpp:127.0.0.1:$C2S")
  [[ -n "$PP_NICE" && " $* " == *" --workload pingpong "* ]] && extra+=(--nice "$PP_NICE")
  # shellcheck disable=SC2086
  timeout 600 "$BENCH" run --transport "${T_TRANS[$t]}" --target "${T_URL[$t]}" --label "$t" --note "$scen" \
    --json "$RESULTS" ${T_PIDS[$t]} "${extra[@]}" "$@" 2>>"$WORK/bench.log" >/dev/null \
    || log "run $t $scen failed (exit $?), see $WORK/bench.log"
  sleep "$PAUSE"  # let the targets finish closing the previous sessions
  tail -n 1 "$RESULTS" | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); l=r["messages"]["latency_ms"]; print("   %-13s %-8s %-9s logins/s %8.1f  msg/s %8.1f  p50 %6.3f  p99 %7.3f  errors %d" % (r["label"], r["note"], r["workload"], r["logins"]["per_s"], r["messages"]["per_s"], l["p50"], l["p99"], r["errors_total"]))' >&2 || true
}

want() { [[ "$ONLY" == all || "$ONLY" == "$1" ]]; }

set_pids() {
  T_PIDS[direct]="--pid prosody=$PID_prosody"
  T_PIDS[relay]="--pid prosody=$PID_prosody --pid proxy=$PID_relay"
  T_PIDS[prosody-bosh]="--pid prosody=$PID_prosody"
  T_PIDS[prosody-ws]="--pid prosody=$PID_prosody"
  T_PIDS[nxb]="--pid prosody=$PID_prosody --pid proxy=$PID_nxb"
  T_PIDS[cm-bosh]="--pid prosody=$PID_prosody --pid proxy=$PID_xmpp_cm"
  T_PIDS[cm-ws]="--pid prosody=$PID_prosody --pid proxy=$PID_xmpp_cm"
}

# A fresh Prosody and a fresh proxy process before each memory/growth run: RSS never shrinks
# back after earlier runs, and a Prosody that has just held (and dropped) thousands of sessions
# keeps working through that garbage for minutes (its CPU per message stays up), which would
# land in the next target's figures.
fresh_prosody() {
  stop prosody
  start prosody "$P/stdout.log" prosody --config "$P/prosody.cfg.lua" -F
  wait_port prosody "$C2S" "$PID_prosody"; wait_port prosody-http "$PHTTP" "$PID_prosody"
  set_pids
}
fresh() { # target
  fresh_prosody
  case "$1" in
    nxb)
      stop nxb
      start nxb "$WORK/nxb.log" node "$ROOT/bench/node_modules/node-xmpp-bosh/run-server.js" "--config=$WORK/nxb.conf.js"
      wait_port node-xmpp-bosh "$NXB" "$PID_nxb" ;;
    cm-bosh|cm-ws)
      stop xmpp-cm
      start xmpp-cm "$WORK/xmpp-cm.log" "$CMBIN" --config "$WORK/xmpp-cm.toml"
      wait_port xmpp-cm "$CM" "$PID_xmpp_cm" ;;
  esac
  set_pids
  sleep 1
}

# A short warm-up per target so first-run effects (Lua JIT-less warm caches, node JIT) hit no figure.
for t in "${TARGETS[@]}"; do bench "$t" warmup --workload pingpong --sessions 20 --duration "$WARM" --warmup 0.2; done

# Every run of the main section starts on a fresh Prosody: its heap grows with every flood (from
# ~17 MB to ~40 MB over one quick pass) and its GC pauses with it, so a shared Prosody handed the
# later targets a slower server than the first (pingpong p99 rose with the position in the order).
#
# The section is built for ratios on a noisy machine. The same CPU-bound loop takes 0.95–1.38 s
# from one run to the next here, and stock Prosody's CPU per login varies twofold between
# identical 500-login runs (its incremental GC; see bench/findings.md). So: each workload runs
# for all targets back to back (a target's run is never more than a minute or two from direct
# TCP's), the order is reversed every other repeat (a drift during a repeat does not always
# favour the same targets), each repeat has SETUP_PASSES login runs per target, and report.py
# takes each ratio against the direct TCP run nearest in time, then the median of those ratios.
# Browser mode (--mode browser|both, issue 17): the same pingpong and flood with one stanza per
# BOSH request and 4 messages in flight per session, under their own note (main-browser), so
# each ratio is against the direct TCP run of the same mode nearest in time. Logins are the same
# in both modes (one stanza per request already), so setup runs once.
mode_note() { [[ "$1" == browser ]] && echo main-browser || echo main; }
mode_window() { [[ "$1" == browser ]] && echo 4 || echo 8; }
main_block() { # setup-passes target... : the three workloads, in this order of targets, a fresh Prosody per run
  local passes=$1 pass t m; shift
  for pass in $(seq 1 "$passes"); do
    for t in "$@"; do fresh_prosody; bench "$t" main --workload setup --sessions "$SETUP_N" --concurrency 50; done
  done
  for m in "${MODES[@]}"; do
    for t in "$@"; do
      fresh_prosody
      bench "$t" "$(mode_note "$m")" --mode "$m" --workload pingpong --sessions "$PP_N" --rate 5 --duration "$MAIN_DUR" --warmup "$WARM"
    done
  done
  for m in "${MODES[@]}"; do
    for t in "$@"; do
      fresh_prosody
      bench "$t" "$(mode_note "$m")" --mode "$m" --workload flood --sessions "$FLOOD_N" --window "$(mode_window "$m")" --duration "$MAIN_DUR" --warmup "$WARM"
    done
  done
}
want main && for rep in $(seq 1 "$MAIN_REPS"); do
  order=("${TARGETS[@]}")
  (( rep % 2 == 0 )) && order=($(printf '%s\n' "${TARGETS[@]}" | tac))
  log "repeat $rep/$MAIN_REPS (${order[*]}): setup ($SETUP_N × $SETUP_PASSES), pingpong ($PP_N × 5/s, ${MAIN_DUR} s), flood ($FLOOD_N × window 8, ${MAIN_DUR} s); modes: ${MODES[*]}"
  main_block "$SETUP_PASSES" "${order[@]}"
done

# The targets of issue #4 are ratios of xmpp-cm to direct TCP, and one pair of runs moves by ±50 %
# here (direct TCP alone: 3,723–10,176 msg/s over five floods of one run). So direct TCP and
# xmpp-cm get FOCUS_REPS more interleaved repeats (ABC, CBA, …), pooled with the section above.
want main && for rep in $(seq 1 "$FOCUS_REPS"); do
  order=(direct cm-bosh cm-ws)
  (( rep % 2 == 0 )) && order=(cm-ws cm-bosh direct)
  log "direct TCP and xmpp-cm, extra repeat $rep/$FOCUS_REPS (${order[*]})"
  main_block 1 "${order[@]}"
done

# ------------------------------------------------------------------ cluster (issue 14)
# BOSH through a real HAProxy (mode http, balance roundrobin decided per request, keep-alive to
# the servers shared by all client connections (http-reuse always), no affinity of any kind)
# to xmpp-cm replicas in cluster mode, stock Prosody behind, side by side in one run:
#   haproxy-1    HAProxy → one xmpp-cm with clustering on (same code path: every sid is sealed
#                and opened, it just never names another replica, so nothing is forwarded)
#   haproxy-3    HAProxy → three replicas: a request reaches its session's owner one time in
#                three, the other two thirds take the internal hop (src/cluster/hop.rs)
#   haproxy-fwd  HAProxy → two of the three: the session-creation request (no sid= in its body)
#                to one, every other request to the other, so every request after the
#                creation is forwarded (the added latency of a forwarded request, unmixed)
# All three frontends buffer the request body (`option http-buffer-request`; haproxy-fwd's
# rule reads it), so they differ only in where requests go. Each run starts on a fresh
# Prosody; the replicas and HAProxies live for the whole section (their hop connections
# stay pooled, as in production). Every run's record gets the replicas' own counters over
# the run (forwards, BOSH requests, stanzas, /proc CPU), read before and after it.
CL_TARGETS=(haproxy-1 haproxy-3 haproxy-fwd)
CLUSTER_REPS=$(( QUICK ? 1 : 6 ))
cl_config() { # replica-index → its config on stdout
  cm_config "written by bench/compare.sh (cluster section): replica $1, plaintext to Prosody on loopback" \
    "$((CLHTTP + $1))" "$((CLADMIN + $1))" '["localhost"]' "\"localhost\" = \"127.0.0.1:$C2S\""
  cat <<CONF
[cluster]
secret_file = "$WORK/cluster.key"
listen = "127.0.0.1:$((CLPEER + $1))"
advertise = "127.0.0.1:$((CLPEER + $1))"
peer_cidrs = ["127.0.0.1/32"]
CONF
}
hap_config() { # name port fwd(0|1) replica-index... → an HAProxy config on stdout
  local name=$1 port=$2 fwd=$3 i; shift 3
  cat <<CONF
# written by bench/compare.sh (cluster section): $name
global
    maxconn 4000
defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout http-request 10s
    timeout http-keep-alive 120s
    # A BOSH request must reach exactly one replica (the client retransmits by itself).
    retries 0
frontend public
    bind 127.0.0.1:$port
    option http-buffer-request
CONF
  if (( fwd )); then
    cat <<CONF
    acl has_sid req.body -m sub sid=
    use_backend creator if !has_sid
    default_backend others
backend creator
    server r$1 127.0.0.1:$((CLHTTP + $1))
backend others
    server r$2 127.0.0.1:$((CLHTTP + $2))
CONF
  else
    echo "    default_backend replicas"
    echo "backend replicas"
    echo "    # Per request, no affinity: no prefer-last-server, stick tables or cookies."
    echo "    balance roundrobin"
    echo "    http-reuse always"
    for i in "$@"; do echo "    server r$i 127.0.0.1:$((CLHTTP + i))"; done
  fi
}
if want cluster; then
  log "cluster section: HAProxy ($("$HAPROXY" -v | head -1 | awk '{print $3}')) → 1 and → 3 xmpp-cm replicas in cluster mode"
  if command -v openssl >/dev/null; then openssl rand -base64 48 >"$WORK/cluster.key"
  else python3 -c 'import base64,os; print(base64.b64encode(os.urandom(48)).decode())' >"$WORK/cluster.key"; fi
  chmod 600 "$WORK/cluster.key"
  for i in 0 1 2 3; do
    cl_config "$i" >"$WORK/xmpp-cm-cl$i.toml"
    start "cl$i" "$WORK/xmpp-cm-cl$i.log" "$CMBIN" --config "$WORK/xmpp-cm-cl$i.toml"
  done
  for i in 0 1 2 3; do v="PID_cl$i"; wait_port "xmpp-cm-cl$i" "$((CLHTTP + i))" "${!v}"; wait_port "xmpp-cm-cl$i internal" "$((CLPEER + i))" "${!v}"; done
  hap_config haproxy-1 "$CLHAP1" 0 0 >"$WORK/haproxy-1.cfg"
  hap_config haproxy-3 "$CLHAP3" 0 1 2 3 >"$WORK/haproxy-3.cfg"
  hap_config haproxy-fwd "$CLHAPF" 1 1 2 >"$WORK/haproxy-fwd.cfg"
  for h in 1 3 fwd; do
    "$HAPROXY" -c -q -f "$WORK/haproxy-$h.cfg" || { log "haproxy rejects $WORK/haproxy-$h.cfg"; exit 1; }
    start "hap_$h" "$WORK/haproxy-$h.log" "$HAPROXY" -db -f "$WORK/haproxy-$h.cfg"
  done
  wait_port haproxy-1 "$CLHAP1" "$PID_hap_1"; wait_port haproxy-3 "$CLHAP3" "$PID_hap_3"; wait_port haproxy-fwd "$CLHAPF" "$PID_hap_fwd"
  log "replicas $PID_cl0 (alone) $PID_cl1 $PID_cl2 $PID_cl3 (cluster); haproxy $PID_hap_1 $PID_hap_3 $PID_hap_fwd"
  T_TRANS[haproxy-1]=bosh;   T_URL[haproxy-1]="http://127.0.0.1:$CLHAP1/http-bind"
  T_TRANS[haproxy-3]=bosh;   T_URL[haproxy-3]="http://127.0.0.1:$CLHAP3/http-bind"
  T_TRANS[haproxy-fwd]=bosh; T_URL[haproxy-fwd]="http://127.0.0.1:$CLHAPF/http-bind"
  # Replica processes are watched as cm0, cm1, …: report.py sums every cm* label.
  declare -A CL_REPL=([haproxy-1]="0" [haproxy-3]="1 2 3" [haproxy-fwd]="1 2 3")
  cl_set_pids() {
    local t i k
    for t in "${CL_TARGETS[@]}"; do
      local hv="PID_hap_${t#haproxy-}"
      T_PIDS[$t]="--pid prosody=$PID_prosody --pid haproxy=${!hv}"
      k=0; for i in ${CL_REPL[$t]}; do local v="PID_cl$i"; T_PIDS[$t]+=" --pid cm$k=${!v}"; k=$((k + 1)); done
    done
  }
  # cl_counters snap FILE i…: the replicas' /proc CPU and their own counters now;
  # cl_counters annotate FILE LINES i…: add the difference since FILE to the record that the
  # run just appended to $RESULTS (only if it appended exactly one: LINES before).
  cat >"$WORK/cl_counters.py" <<'PY'
import json, os, re, sys, time, urllib.request
mode, path = sys.argv[1], sys.argv[2]
if mode == "annotate":
    lines_before, results = int(sys.argv[3]), sys.argv[4]
    reps = sys.argv[5:]
else:
    reps = sys.argv[3:]
TICK = os.sysconf("SC_CLK_TCK")
KEEP = re.compile(r'^(xmpp_cm_cluster_\w+|xmpp_cm_http_requests_total|xmpp_cm_stanzas_relayed_total|xmpp_cm_sessions_created_total)(\{[^}]*\})? (\S+)$')
def snap():
    out = {}
    for spec in reps:  # index:pid:admin-port
        i, pid, port = spec.split(":")
        with open(f"/proc/{pid}/stat") as f:
            st = f.read().rsplit(")", 1)[1].split()
        cpu = (int(st[11]) + int(st[12])) / TICK  # utime + stime
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        m = {}
        for line in body.splitlines():
            g = KEEP.match(line)
            if g:
                m[g.group(1) + (g.group(2) or "")] = float(g.group(3))
        out[i] = {"cpu_s": cpu, "metrics": m, "t": time.time()}
    return out
def total(m, name, **want):
    s = 0.0
    for k, v in m.items():
        if k == name or k.startswith(name + "{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', k[len(name):]))
            if all(labels.get(a) == b for a, b in want.items()):
                s += v
    return s
if mode == "snap":
    json.dump(snap(), open(path, "w"))
    sys.exit(0)
before, after = json.load(open(path)), snap()
recs = open(results).read().splitlines()
if len(recs) != lines_before + 1:
    print(f"cl_counters: the run appended {len(recs) - lines_before} records; not annotated", file=sys.stderr)
    sys.exit(0)
per = []
for k, (i, a) in enumerate(sorted(after.items(), key=lambda x: int(x[0]))):
    b = before[i]
    d = lambda name, **w: round(total(a["metrics"], name, **w) - total(b["metrics"], name, **w))
    per.append({
        "label": f"cm{k}", "replica": int(i), "cpu_s": round(a["cpu_s"] - b["cpu_s"], 3),
        "bosh_requests": d("xmpp_cm_http_requests_total", route="bosh"),
        "bosh_requests_200": d("xmpp_cm_http_requests_total", route="bosh", status="200"),
        "stanzas": d("xmpp_cm_stanzas_relayed_total"),
        "sessions_created": d("xmpp_cm_sessions_created_total"),
        "forwards_ok": d("xmpp_cm_cluster_forwards_total", result="ok"),
        "forwards_failed": d("xmpp_cm_cluster_forwards_total") - d("xmpp_cm_cluster_forwards_total", result="ok"),
        "served_for_peers": d("xmpp_cm_cluster_served_total"),
        "refused": d("xmpp_cm_cluster_refused_total"),
        "forward_s_sum": round(total(a["metrics"], "xmpp_cm_cluster_forward_duration_seconds_sum") - total(b["metrics"], "xmpp_cm_cluster_forward_duration_seconds_sum"), 4),
    })
tot = {k: sum(p[k] for p in per) for k in ("cpu_s", "bosh_requests", "bosh_requests_200", "stanzas", "sessions_created", "forwards_ok", "forwards_failed", "served_for_peers", "refused")}
tot["cpu_s"] = round(tot["cpu_s"], 3)
tot["forwarded_share"] = round(tot["forwards_ok"] / tot["bosh_requests"], 4) if tot["bosh_requests"] else None
tot["interval_s"] = round(max(x["t"] for x in after.values()) - min(x["t"] for x in before.values()), 2)
r = json.loads(recs[-1])
r["cluster"] = {"replicas": per, "total": tot}
recs[-1] = json.dumps(r)
open(results, "w").write("\n".join(recs) + "\n")
print(f"   {'':13} forwarded {tot['forwards_ok']} of {tot['bosh_requests']} BOSH requests ({100 * (tot['forwarded_share'] or 0):.0f} %), "
      f"failed {tot['forwards_failed']}, refused {tot['refused']}, xmpp-cm CPU {tot['cpu_s']:.2f} s over {tot['interval_s']:.1f} s", file=sys.stderr)
PY
  cl_bench() { # target args… : bench, with the replicas' counters over the run added to its record
    local t=$1 i specs=() v n
    for i in ${CL_REPL[$t]}; do v="PID_cl$i"; specs+=("$i:${!v}:$((CLADMIN + i))"); done
    python3 "$WORK/cl_counters.py" snap "$WORK/cl_before.json" "${specs[@]}" || log "cl_counters snap failed"
    n=$(wc -l <"$RESULTS")
    bench "$@"
    python3 "$WORK/cl_counters.py" annotate "$WORK/cl_before.json" "$n" "$RESULTS" "${specs[@]}" || log "cl_counters annotate failed"
  }
  fresh_prosody; cl_set_pids
  for t in "${CL_TARGETS[@]}"; do cl_bench "$t" warmup --workload pingpong --sessions 20 --duration "$WARM" --warmup 0.2; done
  for rep in $(seq 1 "$CLUSTER_REPS"); do
    order=("${CL_TARGETS[@]}")
    (( rep % 2 == 0 )) && order=($(printf '%s\n' "${CL_TARGETS[@]}" | tac))
    log "cluster repeat $rep/$CLUSTER_REPS (${order[*]}): pingpong ($PP_N × 5/s, ${MAIN_DUR} s), flood ($FLOOD_N × window 8, ${MAIN_DUR} s)"
    for t in "${order[@]}"; do
      fresh_prosody; cl_set_pids
      cl_bench "$t" cluster --workload pingpong --sessions "$PP_N" --rate 5 --duration "$MAIN_DUR" --warmup "$WARM"
    done
    for t in "${order[@]}"; do
      fresh_prosody; cl_set_pids
      cl_bench "$t" cluster --workload flood --sessions "$FLOOD_N" --window 8 --duration "$MAIN_DUR" --warmup "$WARM"
    done
  done
  for h in 1 3 fwd; do stop "hap_$h"; done
  for i in 0 1 2 3; do stop "cl$i"; done
fi

# Growth: on a fresh Prosody and proxy, pingpong with only the active sessions (growth-base),
# then the same pingpong with the idle sessions held (growth), so that both figures come from
# the same state. Direct TCP is measured at every idle count another target uses: Prosody's own
# growth at that count is the reference for the others'.
declare -A BIG
for t in direct nxb cm-bosh cm-ws; do BIG[$t]=$(big_for "$t"); done
DIRECT_COUNTS=$(for t in direct nxb cm-bosh cm-ws; do echo "${BIG[$t]}"; done | sort -nr -u)
log "memory per idle session and growth: $MEM_SMALL idle, then pingpong $PP_N alone and with idle sessions held (direct ${DIRECT_COUNTS//$'\n'/, }; nxb ${BIG[nxb]}, cm-bosh ${BIG[cm-bosh]}, cm-ws ${BIG[cm-ws]}; hard open-file limit $FDMAX)"
growth() { # target idle-count
  fresh "$1"
  bench "$1" growth-base --workload pingpong --sessions "$PP_N" --rate 5 --duration "$DUR" --warmup "$WARM" --settle-max 20
  bench "$1" growth --workload pingpong --sessions "$PP_N" --idle-sessions "$2" --rate 5 --duration "$DUR" --warmup "$WARM" --concurrency 100 --settle-max 20
}
want mem && for t in direct nxb cm-bosh cm-ws; do
  fresh "$t"
  bench "$t" mem-small --workload idle --sessions "$MEM_SMALL" --duration "$HOLD" --concurrency 100
  if [[ "$t" == direct ]]; then
    for n in $DIRECT_COUNTS; do growth direct "$n"; done
  else
    growth "$t" "${BIG[$t]}"
  fi
done

# ------------------------------------------------------------------ bench upstream: relay vs xmpp-cm
stop nxb; stop relay
log "bench upstream (xmpp-cm-bench upstream): flood through the relay vs xmpp-cm"
UP_LISTEN=(--listen "127.0.0.1:$UP")
CM_DOMAINS='["bench.test"]'; CM_ROUTES="\"bench.test\" = \"127.0.0.1:$UP\""; BIG_DOMAINS="bench.test"
if (( BIG_IDLE > 0 )); then
  # 100k sessions need more than one (source, destination) pair per ~28k ephemeral ports: five
  # upstream addresses, one domain routed to each.
  for k in 2 3 4 5; do
    UP_LISTEN+=(--listen "127.0.0.$k:$UP")
    CM_DOMAINS=${CM_DOMAINS%]}", \"b$k.test\"]"; CM_ROUTES+=$'\n'"\"b$k.test\" = \"127.0.0.$k:$UP\""; BIG_DOMAINS+=",b$k.test"
  done
fi
start upstream "$WORK/upstream.log" "$BENCH" upstream "${UP_LISTEN[@]}"
wait_port upstream "$UP" "$PID_upstream"
start relay_up "$WORK/relay-up.log" "$BENCH" --threads 2 relay --listen "127.0.0.1:$RELAY_UP" --to "127.0.0.1:$UP"
wait_port relay-up "$RELAY_UP" "$PID_relay_up"
cm_config 'written by bench/compare.sh: in front of xmpp-cm-bench upstream (plaintext, loopback)' \
  "$CMUP" "$CMUPADMIN" "$CM_DOMAINS" "$CM_ROUTES" >"$WORK/xmpp-cm-up.toml"
stop xmpp-cm
start xmpp_cm_up "$WORK/xmpp-cm-up.log" "$CMBIN" --config "$WORK/xmpp-cm-up.toml"
wait_port xmpp-cm-up "$CMUP" "$PID_xmpp_cm_up"
T_TRANS[up-direct]=tcp;   T_URL[up-direct]="127.0.0.1:$UP";                      T_PIDS[up-direct]="--pid upstream=$PID_upstream"
T_TRANS[up-relay]=tcp;    T_URL[up-relay]="127.0.0.1:$RELAY_UP";                 T_PIDS[up-relay]="--pid upstream=$PID_upstream --pid proxy=$PID_relay_up"
T_TRANS[up-cm-bosh]=bosh; T_URL[up-cm-bosh]="http://127.0.0.1:$CMUP/http-bind";  T_PIDS[up-cm-bosh]="--pid upstream=$PID_upstream --pid proxy=$PID_xmpp_cm_up"
T_TRANS[up-cm-ws]=ws;     T_URL[up-cm-ws]="ws://127.0.0.1:$CMUP/xmpp-websocket"; T_PIDS[up-cm-ws]="--pid upstream=$PID_upstream --pid proxy=$PID_xmpp_cm_up"
want upstream && for rep in $(seq 1 "$REPS"); do
  for t in up-direct up-relay up-cm-bosh up-cm-ws; do
    bench "$t" upstream --workload flood --sessions "$FLOOD_N" --window 8 --duration "$DUR" --warmup "$WARM" --domain bench.test
  done
done

# Growth without Prosody's GC in the way: the same pair of pingpong runs against the bench
# upstream, whose sessions cost it a socket and a buffer and no garbage collector, so what grows
# with the idle count is the proxy's own per-message cost (Prosody's stock GC stalls grow its own
# p99 tens of times with thousands of sessions; see bench/findings.md).
FD_PER[up-direct]=1; FD_PER[up-cm-ws]=2; FD_PER[up-cm-bosh]=3
set_up_pids() {
  T_PIDS[up-direct]="--pid upstream=$PID_upstream"
  T_PIDS[up-cm-bosh]="--pid upstream=$PID_upstream --pid proxy=$PID_xmpp_cm_up"
  T_PIDS[up-cm-ws]="--pid upstream=$PID_upstream --pid proxy=$PID_xmpp_cm_up"
}
fresh_up() { # target: a fresh bench upstream, and a fresh xmpp-cm in front of it
  stop upstream
  start upstream "$WORK/upstream.log" "$BENCH" upstream "${UP_LISTEN[@]}"
  wait_port upstream "$UP" "$PID_upstream"
  if [[ "$1" == up-cm-* ]]; then
    stop xmpp_cm_up
    start xmpp_cm_up "$WORK/xmpp-cm-up.log" "$CMBIN" --config "$WORK/xmpp-cm-up.toml"
    wait_port xmpp-cm-up "$CMUP" "$PID_xmpp_cm_up"
  fi
  set_up_pids
  sleep 1
}
# Sub-millisecond p99s move by 20–50 % between windows here (the same pair, run three times
# alternately: 0.63/0.65/1.18 ms), so each pair is repeated 5 times (fresh processes each time)
# and the report takes the median ratio.
GROWTH_REPS=$(( QUICK ? 1 : 5 ))
if want upstream; then
  for rep in $(seq 1 "$GROWTH_REPS"); do
    for t in up-direct up-cm-bosh up-cm-ws; do
      n=$(big_for "$t")
      log "growth against the bench upstream ($rep/$GROWTH_REPS): $t, pingpong $PP_N alone, then with $n idle"
      fresh_up "$t"
      bench "$t" growth-base --workload pingpong --sessions "$PP_N" --rate 5 --duration "$DUR" --warmup "$WARM" --settle-max 20 --domain bench.test
      bench "$t" growth --workload pingpong --sessions "$PP_N" --idle-sessions "$n" --rate 5 --duration "$DUR" --warmup "$WARM" --concurrency 100 --settle-max 20 --domain bench.test
    done
  done
  fresh_up up-cm-ws
fi

if (( BIG_IDLE > 0 )) && want upstream; then
  log "$BIG_IDLE idle WebSocket sessions through xmpp-cm to the bench upstream"
  bench up-cm-ws big-idle --workload idle --sessions "$BIG_IDLE" --duration 20 --concurrency 500 --domain "$BIG_DOMAINS" --users 1000
fi

if (( SCALE_IDLE > 0 )) && want upstream; then
  stop xmpp_cm_up; stop upstream; stop relay_up
  log "$SCALE_IDLE idle WebSocket sessions over several xmpp-cm processes (bench/scale.sh; open-file limit $FDMAX per process)"
  "$ROOT/bench/scale.sh" --sessions "$SCALE_IDLE" --out "$RESULTS" --bin "$(dirname "$CMBIN")" --port-base "$((BASE + 40))" \
    2>>"$WORK/bench.log" || log "bench/scale.sh failed (exit $?), see $WORK/bench.log"
fi

# ------------------------------------------------------------------ report
MACHINE="$(nproc) cores, $(awk '/model name/{$1=$2=$3="";print;exit}' /proc/cpuinfo | sed 's/^ *//'), $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
VERSIONS="prosody $(dpkg-query -W -f '${Version}' prosody 2>/dev/null || echo '?'), node $(node --version), node-xmpp-bosh $(node -p "require('$ROOT/bench/node_modules/node-xmpp-bosh/package.json').version"), xmpp-cm $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
want cluster && VERSIONS+=", haproxy $(dpkg-query -W -f '${Version}' haproxy 2>/dev/null || "$HAPROXY" -v | head -1 | awk '{print $3}')"
CMDLINE="bench/compare.sh"; (( QUICK )) && CMDLINE+=" --quick"; [[ "$ONLY" != all ]] && CMDLINE+=" --only $ONLY"; [[ "$MODE" != batch ]] && CMDLINE+=" --mode $MODE"
python3 "$ROOT/bench/report.py" "$RESULTS" "$OUT" --machine "$MACHINE" --versions "$VERSIONS" --command "$CMDLINE" --reps "$REPS" --main-reps "$MAIN_REPS" --focus-reps "$FOCUS_REPS" --setup-passes "$SETUP_PASSES" --main-dur "$MAIN_DUR" --skipped "$SKIPPED" --fd-limit "$FDMAX"
cp "$RESULTS" "$WORK/results-$(date +%Y%m%d-%H%M%S).jsonl"
log "wrote $OUT (records in $RESULTS)"
