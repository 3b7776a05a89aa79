#!/usr/bin/env bash
# N idle WebSocket sessions through xmpp-cm to `xmpp-cm-bench upstream`, on a machine whose
# per-process open-file limit is too low for one process to hold them all.
#
# RLIMIT_NOFILE is per process and xmpp-cm needs 2 descriptors per WebSocket session (client +
# upstream), the generator and the bench upstream 1 each. When the hard limit cannot be raised
# (a container without CAP_SYS_RESOURCE: 20,000 here), one xmpp-cm process tops out near 9,500
# sessions. This script then splits the N sessions over K independent chains
#     generator_i → xmpp-cm_i (own port) → bench upstream_i (own port)
# each sized to fit the limit, all on the same machine at the same time, and checks from
# xmpp-cm's own gauges (`xmpp_cm_sessions_active`) that all N are held at once. It then reads
# RSS and CPU of every process over a quiet window while all N are held.
#
#   bench/scale.sh [--sessions N] [--hold S] [--out FILE.jsonl] [--bin DIR] [--port-base P]
#     --sessions  total idle WebSocket sessions (default 100000)
#     --hold      seconds measured with all N held (default 20)
#     --out       JSON lines: one record per generator (note "scale-shard") and one summary
#                 (note "scale-total"), appended (default $WORK/results.jsonl)
#     --bin       directory holding xmpp-cm and xmpp-cm-bench (default target/release)
#     --port-base listeners at BASE+0..BASE+3K-1, all below 32768 (default 21040)
#     --chains    number of chains (default: enough for the open-file limit, plus one)
#
# Everything this script starts is recorded by PID and stopped by PID on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=100000; HOLD=20; CHAINS=0; OUT=""; BIN="$ROOT/target/release"; BASE=${BENCH_SCALE_PORT_BASE:-21040}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --sessions) N=$2; shift ;;
    --hold) HOLD=$2; shift ;;
    --out) OUT=$2; shift ;;
    --bin) BIN=$2; shift ;;
    --port-base) BASE=$2; shift ;;
    --chains) CHAINS=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
  shift
done
WORK=$(mktemp -d /tmp/xmpp-cm-scale.XXXXXX)
OUT=${OUT:-$WORK/results.jsonl}
log() { echo "[scale $(date +%T)] $*" >&2; }
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FDMAX=$(ulimit -n); [[ "$FDMAX" == unlimited ]] && FDMAX=1048576
SLACK=1000
PER_CM=$(( (FDMAX - SLACK) / 2 ))           # sessions one xmpp-cm process can hold
K=$(( (N + PER_CM - 1) / PER_CM ))
(( K < 2 )) || K=$(( K + 1 ))                # headroom: no chain near its limit
(( CHAINS > 0 )) && K=$CHAINS
(( BASE >= 1024 && BASE + 3 * K < 32768 )) || { echo "ports BASE..BASE+3K must stay in 1024..32767" >&2; exit 64; }
log "$N sessions over $K chain(s): open-file limit $FDMAX per process, xmpp-cm holds at most $PER_CM; work dir $WORK"

PIDS="$WORK/pids"; : >"$PIDS"
cleanup() {
  local name pid
  while read -r name pid; do kill -TERM "$pid" 2>/dev/null || true; done <"$PIDS"
  sleep 1
  while read -r name pid; do kill -KILL "$pid" 2>/dev/null || true; done <"$PIDS"
}
trap cleanup EXIT
start() { # name logfile cmd... → PID in $STARTED
  local name=$1 logf=$2; shift 2
  "$@" >"$logf" 2>&1 &
  STARTED=$!
  echo "$name $STARTED" >>"$PIDS"
}
wait_port() { # port pid
  local i
  for i in $(seq 1 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || { log "process $2 exited early; see $WORK"; return 1; }
    sleep 0.1
  done
  log "port $1 did not open"; return 1
}

for ((p = BASE; p < BASE + 3 * K; p++)); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "port $p is in use; pass --port-base" >&2; exit 1; fi
done

declare -a UPP CMP GENP ADMIN COUNT
for ((i = 0; i < K; i++)); do
  up=$((BASE + i)); cm=$((BASE + K + i)); adm=$((BASE + 2 * K + i))
  COUNT[i]=$(( N / K + (i < N % K ? 1 : 0) ))
  start "upstream$i" "$WORK/upstream$i.log" "$BIN/xmpp-cm-bench" upstream --listen "127.0.0.1:$up"
  UPP[i]=$STARTED
  cm_config "written by bench/scale.sh: chain $i of $K, plaintext to its own bench upstream on loopback" \
    "$cm" "$adm" '["bench.test"]' "\"bench.test\" = \"127.0.0.1:$up\"" >"$WORK/xmpp-cm$i.toml"
  start "xmpp-cm$i" "$WORK/xmpp-cm$i.log" "$BIN/xmpp-cm" --config "$WORK/xmpp-cm$i.toml"
  CMP[i]=$STARTED; ADMIN[i]=$adm
  wait_port "$up" "${UPP[i]}"; wait_port "$cm" "${CMP[i]}"; wait_port "$adm" "${CMP[i]}"
done
sleep 1

# Every generator holds its sessions long enough for the slowest chain to finish logging in and
# for the measured window after that.
GEN_HOLD=$(( HOLD + 60 + N / 1000 ))
T0=$(date +%s.%N)
for ((i = 0; i < K; i++)); do
  start "generator$i" "$WORK/generator$i.log" "$BIN/xmpp-cm-bench" run \
    --transport ws --target "ws://127.0.0.1:$((BASE + K + i))/xmpp-websocket" --label up-cm-ws --note scale-shard \
    --workload idle --sessions "${COUNT[i]}" --duration "$GEN_HOLD" --concurrency 50 --domain bench.test \
    --pid "proxy=${CMP[i]}" --pid "upstream=${UPP[i]}" --json "$WORK/shard$i.jsonl" --quiet
  GENP[i]=$STARTED
done
log "generators ${GENP[*]}; xmpp-cm ${CMP[*]}; bench upstreams ${UPP[*]}"

# Watch xmpp-cm's gauges until all N are held at once (or the generators give up), then measure
# RSS and CPU of every process over HOLD seconds.
python3 - "$N" "$HOLD" "$T0" "$GEN_HOLD" "$OUT" "$K" "${ADMIN[*]}" "${CMP[*]}" "${UPP[*]}" "${GENP[*]}" <<'EOF'
import json, os, re, sys, time, urllib.request
n, hold, t0, gen_hold, out, k = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], int(sys.argv[6])
admin, cm, up, gen = ([int(x) for x in s.split()] for s in sys.argv[7:11])
TICK = os.sysconf("SC_CLK_TCK")
def active(port):
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except Exception:
        return None
    m = re.search(r'^xmpp_cm_sessions_active\{transport="websocket"\} (\d+)', body, re.M)
    return int(m.group(1)) if m else 0
def rss(pid):
    try:
        for l in open(f"/proc/{pid}/status"):
            if l.startswith("VmRSS:"):
                return int(l.split()[1])
    except OSError:
        return None
def cpu(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / TICK
    except OSError:
        return None
def alive(pid):
    return os.path.exists(f"/proc/{pid}")
def tot(f, pids):
    v = [f(p) for p in pids]
    return None if any(x is None for x in v) else sum(v)
rss_start = {"proxy": tot(rss, cm), "upstream": tot(rss, up)}
best, t_all = 0, None
deadline = t0 + gen_hold + 30
while time.time() < deadline:
    a = [active(p) for p in admin]
    s = sum(x or 0 for x in a)
    best = max(best, s)
    if s >= n:
        t_all = time.time()
        break
    if not any(alive(p) for p in gen):
        break
    time.sleep(1)
rec = {"note": "scale-total", "label": "up-cm-ws", "workload": "idle", "sessions": n, "chains": k,
       "fd_limit_per_process": int(os.popen("sh -c 'ulimit -n'").read().strip() or 0),
       "max_held_at_once": best, "errors_total": 0, "errors": {}}
if t_all is not None:
    rec["setup_s"] = round(t_all - t0, 1)
    c0 = {"proxy": tot(cpu, cm), "upstream": tot(cpu, up), "generator": tot(cpu, gen)}
    time.sleep(hold)
    a = [active(p) for p in admin]
    c1 = {"proxy": tot(cpu, cm), "upstream": tot(cpu, up), "generator": tot(cpu, gen)}
    rec["held_after_window"] = sum(x or 0 for x in a)
    rec["window_s"] = hold
    rec["cpu_s_window"] = {kk: None if c0[kk] is None or c1[kk] is None else round(c1[kk] - c0[kk], 3) for kk in c0}
    rec["rss_kib_start"] = rss_start
    rec["rss_kib_loaded"] = {"proxy": tot(rss, cm), "upstream": tot(rss, up), "generator": tot(rss, gen)}
    if rec["rss_kib_loaded"]["proxy"] and rss_start["proxy"]:
        rec["proxy_kib_per_session"] = round((rec["rss_kib_loaded"]["proxy"] - rss_start["proxy"]) / n, 2)
        rec["proxy_kib_per_session_incl_base"] = round(rec["rss_kib_loaded"]["proxy"] / n, 2)
print(json.dumps(rec), file=sys.stderr)
with open(out, "a") as f:
    f.write(json.dumps(rec) + "\n")
EOF

# Stop the generators now with SIGTERM (they would hold for the rest of GEN_HOLD) and keep their records:
# a generator writes its record when its hold ends, so wait for the early stop to flush it.
for ((i = 0; i < K; i++)); do kill -TERM "${GENP[i]}" 2>/dev/null || true; done
for ((i = 0; i < K; i++)); do wait "${GENP[i]}" 2>/dev/null || true; done
for ((i = 0; i < K; i++)); do [[ -s "$WORK/shard$i.jsonl" ]] && cat "$WORK/shard$i.jsonl" >>"$OUT"; done
log "records appended to $OUT"
