#!/usr/bin/env python3
"""Turn the JSON records of bench/compare.sh into BENCHMARKS.md.

usage: report.py RESULTS.jsonl OUT.md --machine M --versions V --command C --reps N

Every figure is the median over the repeats of one (scenario, target, workload); ratios are
taken against direct TCP (or the bench relay) measured in the same run.
"""
import argparse, json, statistics, sys, time
from collections import defaultdict

ap = argparse.ArgumentParser()
ap.add_argument("results"); ap.add_argument("out")
ap.add_argument("--machine", default="?"); ap.add_argument("--versions", default="?")
ap.add_argument("--command", default="bench/compare.sh"); ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--main-reps", type=int, default=0); ap.add_argument("--focus-reps", type=int, default=0); ap.add_argument("--setup-passes", type=int, default=1)
ap.add_argument("--main-dur", type=float, default=0)
ap.add_argument("--skipped", default="")
ap.add_argument("--fd-limit", type=int, default=0)
a = ap.parse_args()

recs = [json.loads(l) for l in open(a.results) if l.strip()]
FDMAX = a.fd_limit
groups = defaultdict(list)
for r in recs:
    groups[(r["note"], r["label"], r["workload"])].append(r)

def med(scen, label, wl, f):
    rs = groups.get((scen, label, wl), [])
    vals = [v for v in (f(r) for r in rs) if v is not None]
    return statistics.median(vals) if vals else None

def paired(scen, label, wl, f, op, ref="direct"):
    """The median, over label's runs, of op(its figure, the figure of the ref run nearest in time).

    The machine's speed drifts by tens of percent over minutes, so a ratio is taken against the
    reference measured closest to it (compare.sh runs each workload for all targets back to
    back) rather than between two medians of runs spread over the whole section."""
    refs = [(r["unix_time"], f(r)) for r in groups.get((scen, ref, wl), [])]
    refs = [(t, v) for t, v in refs if v is not None]
    out = []
    for r in groups.get((scen, label, wl), []):
        v = f(r)
        if v is None or not refs:
            continue
        _, b = min(refs, key=lambda x: abs(x[0] - r["unix_time"]))
        if b:
            out.append(op(v, b))
    return statistics.median(out) if out else None

def pratio(scen, label, wl, f, ref="direct"):
    return paired(scen, label, wl, f, lambda v, b: v / b, ref)

def pdiff(scen, label, wl, f, ref="direct"):
    return paired(scen, label, wl, f, lambda v, b: v - b, ref)

TP = lambda r: r["messages"]["per_s"]
P50 = lambda r: r["messages"]["latency_ms"]["p50"]
P99 = lambda r: r["messages"]["latency_ms"]["p99"]
LOGINS = lambda r: r["logins"]["per_s"]

def proc(r, name, key):
    for p in r["procs"]:
        if p["label"] == name:
            return p[key]
    return None

def errs(scen, label, wl=None):
    n = 0
    kinds = defaultdict(int)
    for (s, l, w), rs in groups.items():
        if s == scen and l == label and (wl is None or w == wl):
            for r in rs:
                n += r["errors_total"]
                for k, v in r["errors"].items():
                    kinds[k] += v
    return n, dict(kinds)

def fmt(v, spec="{:.1f}", none="–"):
    return none if v is None else spec.format(v)

def ratio(v, base):
    return None if v is None or not base else v / base

NAMES = {
    "direct": "direct TCP to Prosody", "relay": "byte relay → Prosody TCP",
    "prosody-bosh": "Prosody mod_bosh", "prosody-ws": "Prosody mod_websocket",
    "nxb": "node-xmpp-bosh → Prosody", "cm-bosh": "xmpp-cm BOSH → Prosody", "cm-ws": "xmpp-cm WebSocket → Prosody",
    "up-direct": "direct TCP to bench upstream", "up-relay": "byte relay → bench upstream",
    "up-cm-bosh": "xmpp-cm BOSH → bench upstream", "up-cm-ws": "xmpp-cm WebSocket → bench upstream",
}
TARGETS = ["direct", "relay", "prosody-bosh", "prosody-ws", "nxb", "cm-bosh", "cm-ws"]
REF = {  # issue #4: throughput ratio, p50 ms, login ratio (independent generator, 200 sessions)
    "direct": ("3,465 msg/s", "0.39", "305 logins/s"),
    "prosody-bosh": ("0.47×", "0.95", "0.36×"),
    "prosody-ws": ("0.56×", "0.71", "0.32×"),
    "nxb": ("0.75×", "1.52", "0.57×"),
}

out = []
w = out.append
w("# Benchmarks\n")
w(f"Written by `{a.command}` (bench/compare.sh → bench/report.py) on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
  "Absolute figures drift between machines and runs; compare the **ratios**, which are taken "
  "against direct TCP (or the byte relay) measured in the same run.\n")
w(f"- Machine: {a.machine}")
w(f"- Software: {a.versions}")
main_reps = a.main_reps or a.reps
w(f"- Side by side with Prosody: {main_reps} repeat(s); in each, every workload runs for all targets back to back on a fresh "
  f"Prosody per run (order reversed every other repeat), logins {a.setup_passes} run(s) per target per repeat"
  + (f", pingpong and flood {a.main_dur:g} s windows" if a.main_dur else "")
  + (f"; direct TCP and xmpp-cm get {a.focus_reps} more interleaved repeats (their ratios are the targets)" if a.focus_reps else "")
  + ". Figures are medians over the runs; "
  "**ratios and differences are the median of per-run ratios, each against the direct TCP run nearest in time** "
  "(this machine's speed drifts by tens of percent over minutes; see bench/findings.md).")
w(f"- Other sections: medians of {a.reps} repeat(s) of the same run; the generator is "
  "`xmpp-cm-bench` (this crate), on the same machine, sharing its 2 cores with the targets — its own CPU is reported next to theirs.")
w("- Prosody 0.12 runs with SASL PLAIN only (SCRAM off), TLS optional (STARTTLS offered, nobody takes it), "
  "no mod_limits, its own mod_bosh and mod_websocket on its HTTP port. Every hop is plaintext on loopback: "
  "xmpp-cm uses `upstream.tls = \"none\"`, node-xmpp-bosh `no_tls_domains` and a fixed lookup (no DNS).")
w("- Each session logs in with SASL PLAIN, restarts, binds a resource, sends presence and waits for its echo.")
w("- Workloads: `setup` logs in sessions (50 at a time) and counts logins/s; `pingpong` has 100 sessions each send a "
  "message to itself 5 times a second (fixed schedule, random phase per session) and times every round trip from its intended send time; `flood` has 200 sessions keep 8 messages each in "
  "flight, so msg/s is what the chain sustains (a message = one round trip client → server → client).\n")

# ---------------------------------------------------------------- main table
LAG_MARK = " ⚠"  # the generator's own lag p99 is over half the p99: the p99 measures the machine
w("## Side by side, Prosody behind every target\n")
w("| target | flood msg/s | × direct | pingpong p50 ms | Δp50 vs direct | p95 | p99 | p99 × direct | max | p99 from the write | generator lag p99 | logins/s | × direct | proxy CPU-ms / 1k msgs | proxy CPU-ms / login | Prosody CPU s (flood) | generator CPU s (flood) | errors |")
w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for t in TARGETS:
    tp = med("main", t, "flood", lambda r: r["messages"]["per_s"])
    lat = lambda k: med("main", t, "pingpong", lambda r: r["messages"]["latency_ms"][k])
    lg = med("main", t, "setup", lambda r: r["logins"]["per_s"])
    cpum = med("main", t, "flood", lambda r: r["cpu_ms_per_1000_msgs"].get("proxy"))
    cpul = med("main", t, "setup", lambda r: r["cpu_ms_per_login"].get("proxy"))
    pcpu = med("main", t, "flood", lambda r: proc(r, "prosody", "cpu_s"))
    gcpu = med("main", t, "flood", lambda r: r["generator"]["cpu_s"])
    n, kinds = errs("main", t)
    p50 = lat("p50")
    p99w = med("main", t, "pingpong", lambda r: (r["messages"].get("latency_from_write_ms") or {}).get("p99"))
    lag99 = med("main", t, "pingpong", lambda r: (r["messages"].get("send_lag_ms") or {}).get("p99"))
    w(f"| {NAMES[t]} | {fmt(tp, '{:,.0f}')} | {fmt(pratio('main', t, 'flood', TP), '{:.2f}×')} | {fmt(p50, '{:.3f}')} | "
      f"{fmt(pdiff('main', t, 'pingpong', P50), '{:+.3f}')} | {fmt(lat('p95'), '{:.3f}')} | {fmt(lat('p99'), '{:.3f}')} | "
      f"{fmt(pratio('main', t, 'pingpong', P99), '{:.2f}×')} | {fmt(lat('max'), '{:.2f}')} | {fmt(p99w, '{:.3f}')} | {fmt(lag99, '{:.3f}')}{LAG_MARK if lag99 and lat('p99') and lag99 > 0.5 * lat('p99') else ''} | {fmt(lg, '{:,.0f}')} | {fmt(pratio('main', t, 'setup', LOGINS), '{:.2f}×')} | "
      f"{fmt(cpum, '{:.0f}')} | {fmt(cpul, '{:.2f}')} | {fmt(pcpu, '{:.2f}')} | {fmt(gcpu, '{:.2f}')} | {n}{' ' + str(kinds) if kinds else ''} |")
w("\nProxy CPU is the CPU time of the proxy process alone (relay, node-xmpp-bosh or xmpp-cm) during the measured window, "
  "per 1,000 round trips; for Prosody's own modules it is inside Prosody's CPU.\n")
w("Pingpong latency is timed from each message's *intended* send time (a fixed schedule per session with a random phase, "
  "so a stall anywhere, the generator included, counts against the messages behind it); \"p99 from the write\" is timed "
  "from the moment the generator actually wrote the message, and \"generator lag\" is how late it wrote (write − intended): "
  "when the lag is a large part of p99 (⚠: over half), the figure measures the machine, not the target.\n")

# ---------------------------------------------------------------- browser-like clients (issue 17)
# bench/compare.sh --mode browser|both: the main section's pingpong and flood again with one
# stanza per BOSH request and 4 messages in flight per session (note main-browser); each ratio is
# against the direct TCP run of the same mode nearest in time.
MODES = [("batch", "main"), ("browser", "main-browser")]
if any(r["note"] == "main-browser" for r in recs):
    PCPU = lambda r: r["cpu_ms_per_1000_msgs"].get("prosody")
    XCPU = lambda r: r["cpu_ms_per_1000_msgs"].get("proxy")
    w("## Batching and browser-like clients side by side (issue 17)\n")
    w("`batch` is xmpp-cm-bench's own client (a BOSH request carries every stanza queued while both requests were busy; "
      "flood window 8); `browser` sends one stanza per BOSH request with 4 messages in flight per session, as the "
      "independent generator of issue 17 did. WebSocket is one stanza per frame in both; TCP targets differ only in the window. "
      "Ratios and differences are against the direct TCP run of the same mode nearest in time.\n")
    cols = ["flood msg/s", "× direct", "Δp50 ms vs direct", "proxy CPU-ms / 1k msgs", "Prosody CPU / msg × direct", "errors"]
    w("| target | " + " | ".join(f"{c} ({m})" for c in cols for m, _ in MODES) + " |")
    w("|---|" + "---|" * (len(cols) * len(MODES)))
    for t in TARGETS:
        cells = []
        cells += [fmt(med(n, t, "flood", TP), "{:,.0f}") for _, n in MODES]
        cells += [fmt(pratio(n, t, "flood", TP), "{:.2f}×") for _, n in MODES]
        cells += [fmt(pdiff(n, t, "pingpong", P50), "{:+.3f}") for _, n in MODES]
        cells += [fmt(med(n, t, "flood", XCPU), "{:.0f}") for _, n in MODES]
        cells += [fmt(pratio(n, t, "flood", PCPU), "{:.2f}×") for _, n in MODES]
        cells += [str(sum(errs(n, t, wl)[0] for wl in ("pingpong", "flood"))) for _, n in MODES]
        w(f"| {NAMES[t]} | " + " | ".join(cells) + " |")
    w("")

# ---------------------------------------------------------------- growth records
# growth-base: pingpong alone on a fresh Prosody/proxy; growth: the same with idle sessions held
# (right after, same processes). Older result files have no growth-base: fall back to main.
def growth_runs(t):
    """[(idle requested, growth record, base p99, base p50)] for target t, largest count first."""
    out = []
    gs = [r for r in recs if r["note"] == "growth" and r["label"] == t and r["workload"] == "pingpong"]
    bases = [r for r in recs if r["note"] == "growth-base" and r["label"] == t and r["workload"] == "pingpong"]
    for g in gs:
        prior = [b for b in bases if b["unix_time"] <= g["unix_time"]]
        if prior:
            b = max(prior, key=lambda r: r["unix_time"])
            b99, b50 = b["messages"]["latency_ms"]["p99"], b["messages"]["latency_ms"]["p50"]
        else:
            b99 = med("main", t, "pingpong", lambda r: r["messages"]["latency_ms"]["p99"])
            b50 = med("main", t, "pingpong", lambda r: r["messages"]["latency_ms"]["p50"])
        out.append((g["params"]["idle_sessions"], g, b99, b50))
    return sorted(out, key=lambda x: -x[0])

def growth_ratios_at(t, n):
    """The p99 ratios (with idle / alone) of every pair of target t at idle count n."""
    return [x for x in (ratio(g["messages"]["latency_ms"]["p99"], b99) for idle, g, b99, _ in growth_runs(t) if idle == n) if x is not None]

def median_or_none(xs):
    return statistics.median(xs) if xs else None

def direct_growth_at(n, ref="direct"):
    """Direct TCP's own growth at n idle: the median over its pairs."""
    return median_or_none(growth_ratios_at(ref, n))

# ---------------------------------------------------------------- targets from the issue
w("## Targets from issue #4 beside the measured figures\n")
w("Reference figures (issue #4) were taken with an independent generator at 200 sessions; ours with xmpp-cm-bench as above.\n")
w("| what | reference / target | measured here | met? |")
w("|---|---|---|---|")
def row(what, ref, meas, ok=None):
    verdict = ok if isinstance(ok, str) else ('' if ok is None else ('yes' if ok else '**no**'))
    w(f"| {what} | {ref} | {meas} | {verdict} |")
for t, (rt, rp, rl) in REF.items():
    tp = med("main", t, "flood", lambda r: r["messages"]["per_s"])
    p50 = med("main", t, "pingpong", lambda r: r["messages"]["latency_ms"]["p50"])
    lg = med("main", t, "setup", lambda r: r["logins"]["per_s"])
    if t == "direct":
        row(f"{NAMES[t]}: throughput, p50, logins", f"{rt}, p50 {rp} ms, {rl}", f"{fmt(tp, '{:,.0f}')} msg/s, p50 {fmt(p50, '{:.2f}')} ms, {fmt(lg, '{:,.0f}')} logins/s")
    else:
        row(f"{NAMES[t]}: throughput, p50, logins", f"{rt}, p50 {rp} ms, {rl}",
            f"{fmt(pratio('main', t, 'flood', TP), '{:.2f}×')}, p50 {fmt(p50, '{:.2f}')} ms, {fmt(pratio('main', t, 'setup', LOGINS), '{:.2f}×')}")
nxb_cpu = med("main", "nxb", "flood", lambda r: r["cpu_ms_per_1000_msgs"].get("proxy"))
row("node-xmpp-bosh CPU per 1,000 messages", "~200 CPU-ms", f"{fmt(nxb_cpu, '{:.0f}')} CPU-ms")
for t, lim in (("cm-ws", 0.9), ("cm-bosh", 0.85)):
    rr = pratio("main", t, "flood", TP)
    row(f"{NAMES[t]} throughput", f"≥ {lim}× direct", fmt(rr, '{:.2f}×'), None if rr is None else rr >= lim)
for t in ("up-cm-ws", "up-cm-bosh"):
    rr = pratio("upstream", t, "flood", TP, ref="up-relay")
    row(f"{NAMES[t]} flood vs byte relay (bench upstream)", "≥ 0.5× relay", fmt(rr, '{:.2f}×'), None if rr is None else rr >= 0.5)
for t, lim in (("cm-ws", 50), ("cm-bosh", 100)):
    c = med("main", t, "flood", lambda r: r["cpu_ms_per_1000_msgs"].get("proxy"))
    row(f"{NAMES[t]} CPU per 1,000 relayed messages", f"≤ {lim} CPU-ms", fmt(c, '{:.0f} CPU-ms'), None if c is None else c <= lim)
for t in ("cm-ws", "cm-bosh"):
    c = med("main", t, "setup", lambda r: r["cpu_ms_per_login"].get("proxy"))
    row(f"{NAMES[t]} CPU per login", "≤ 1 CPU-ms", fmt(c, '{:.2f} CPU-ms'), None if c is None else c <= 1)
    rr = pratio("main", t, "setup", LOGINS)
    row(f"{NAMES[t]} login rate", "≥ 0.9× direct", fmt(rr, '{:.2f}×'), None if rr is None else rr >= 0.9)
    p50 = med("main", t, "pingpong", lambda r: r["messages"]["latency_ms"]["p50"])
    p99 = med("main", t, "pingpong", lambda r: r["messages"]["latency_ms"]["p99"])
    dp = pdiff("main", t, "pingpong", P50)
    row(f"{NAMES[t]} pingpong p50 (100 sessions)", "≤ direct + 0.3 ms", fmt(dp, '{:+.3f} ms'), None if dp is None else dp <= 0.3)
    rr = pratio("main", t, "pingpong", P99)
    row(f"{NAMES[t]} pingpong p99", "≤ 1.2× direct", fmt(rr, '{:.2f}×'), None if rr is None else rr <= 1.2)
for t, lim in (("cm-ws", 16), ("cm-bosh", 24)):
    runs = growth_runs(t)
    if not runs:
        row(f"{NAMES[t]} RSS per session with ~10k sessions", f"≤ {lim} KiB", "–")
        row(f"{NAMES[t]} pingpong p99 with ~10k idle vs without", "≤ 1.2×", "–")
        continue
    idle, g, b99, _ = runs[0]
    k = g["kib_per_session"].get("proxy")
    held = g["logins"]["ok"]
    row(f"{NAMES[t]} RSS per session at {held:,} sessions", f"≤ {lim} KiB", fmt(k, '{:.1f} KiB'), None if k is None else k <= lim)
    rr = ratio(g["messages"]["latency_ms"]["p99"], b99)
    dg = direct_growth_at(idle)
    extra = "" if rr is None or not dg else f" (direct TCP's own at {idle:,}: {dg:.2f}×; ratio to it {rr / dg:.2f})"
    # When direct TCP to the same Prosody grows past the target by itself, Prosody is the
    # ceiling (its GC; bench/findings.md) and the row cannot judge the proxy: the proxy's own
    # growth is the bench-upstream row below (issue #4: the bench upstream is for where a real
    # server would be the ceiling).
    verdict = None if rr is None else (rr <= 1.2 or ("n/a: Prosody's own growth, see the bench-upstream row" if dg and dg > 1.2 else False))
    row(f"{NAMES[t]} pingpong p99 with {idle:,} idle vs without (fd limit {FDMAX})" if FDMAX else f"{NAMES[t]} pingpong p99 with {idle:,} idle vs without",
        "≤ 1.2×", fmt(rr, '{:.2f}×') + extra, verdict)
for t in ("up-cm-ws", "up-cm-bosh"):
    runs = growth_runs(t)
    if not runs:
        continue
    idle = runs[0][0]
    rs = growth_ratios_at(t, idle)
    rr = median_or_none(rs)
    dg = direct_growth_at(idle, "up-direct")
    notes = ([f"median of {len(rs)} pairs ({', '.join(f'{x:.2f}' for x in rs)})"] if len(rs) > 1 else []) + \
        ([f"direct TCP to the bench upstream at {idle:,}: {dg:.2f}×"] if dg else [])
    extra = "" if rr is None or not notes else f" ({'; '.join(notes)})"
    row(f"{NAMES[t]}: pingpong p99 with {idle:,} idle vs without (no GC upstream)", "≤ 1.2×", fmt(rr, '{:.2f}×') + extra, None if rr is None else rr <= 1.2)
big = groups.get(("big-idle", "up-cm-ws", "idle"), [])
scale = groups.get(("scale-total", "up-cm-ws", "idle"), [])
scale_shards = groups.get(("scale-shard", "up-cm-ws", "idle"), [])
if big:
    r = big[-1]
    row("100,000 idle WebSocket sessions (bench upstream)", "held", f"{r['logins']['ok']:,} held, {r['errors_total']} errors")
elif scale:
    r = scale[-1]
    shard_errors = sum(x["errors_total"] for x in scale_shards)
    ok = r["max_held_at_once"] >= r["sessions"] and r.get("held_after_window", 0) >= r["sessions"]
    row(f"{r['sessions']:,} idle WebSocket sessions (bench upstream)", "held",
        f"{r['max_held_at_once']:,} held at once by {r['chains']} xmpp-cm processes "
        f"(open-file limit {r['fd_limit_per_process']:,} per process), {r.get('proxy_kib_per_session_incl_base', 0):.1f} KiB/session "
        f"incl. each process's base, {r.get('cpu_s_window', {}).get('proxy', 0):.2f} CPU-s idle over {r.get('window_s', 0):g} s, "
        f"{shard_errors} errors", ok and shard_errors == 0)
else:
    row("100,000 idle WebSocket sessions (bench upstream)", "held", a.skipped or "not run (full mode only)")
w("")

# ---------------------------------------------------------------- cluster (issue 14)
# bench/compare.sh's cluster section: BOSH through HAProxy to one xmpp-cm (clustering on) and
# to three replicas, plus haproxy-fwd (every request after the creation forwarded). Each run's
# record carries the replicas' own counters over the whole run ("cluster": forwards, BOSH
# requests, stanzas, /proc CPU), read by compare.sh before and after it.
CL_T = ["haproxy-1", "haproxy-3", "haproxy-fwd"]
CL_NAMES = {
    "haproxy-1": "HAProxy → 1 xmpp-cm (clustering on)",
    "haproxy-3": "HAProxy → 3 xmpp-cm replicas",
    "haproxy-fwd": "HAProxy → 2 replicas, all forwarded",
}
CL_REF = "haproxy-1"

def cl_runs(t, wl):
    return sorted(groups.get(("cluster", t, wl), []), key=lambda r: r["unix_time"])

def cl_nearest(r, wl, ref=CL_REF):
    refs = groups.get(("cluster", ref, wl), [])
    return min(refs, key=lambda b: abs(b["unix_time"] - r["unix_time"])) if refs else None

def cl_tot(r, k):
    return ((r or {}).get("cluster") or {}).get("total", {}).get(k)

def cm_cpu(r):
    """xmpp-cm CPU over the measured window, summed over the replicas (labels cm0, cm1, …)."""
    xs = [p["cpu_s"] for p in r["procs"] if p["label"].startswith("cm")]
    return sum(xs) if xs else None

def per_1k(cpu_s, r):
    n = r["messages"]["received"]
    return None if cpu_s is None or not n else cpu_s * 1000 / (n / 1000)

def cpu_per_forward(r, b, scale):
    """µs of xmpp-cm CPU per forwarded request in run r, against the haproxy-1 run b:
    (C_r − C_b × W_r / W_b) / F_r, all over the whole run (logins, warm-up, window, logout),
    C the replicas' CPU summed, W the work it is scaled by (stanzas relayed, or BOSH requests
    from clients), F the requests forwarded with result ok."""
    c, cb, w, wb, f = cl_tot(r, "cpu_s"), cl_tot(b, "cpu_s"), cl_tot(r, scale), cl_tot(b, scale), cl_tot(r, "forwards_ok")
    if None in (c, cb, w, wb, f) or not wb or not f:
        return None
    return (c - cb * w / wb) / f * 1e6

def cl_pairs(t, wl, f):
    """f(run, nearest haproxy-1 run) for each run of t, in time order (None dropped)."""
    out = []
    for r in cl_runs(t, wl):
        b = cl_nearest(r, wl)
        v = f(r, b) if b is not None else None
        if v is not None:
            out.append(v)
    return out

def lst(xs, spec):
    return ", ".join(spec.format(x) for x in xs)

if any(groups.get(("cluster", t, wl)) for t in CL_T for wl in ("flood", "pingpong")):
    w("## Cluster (issue 14): BOSH through HAProxy to one replica and to three\n")
    n_reps = max(len(cl_runs(t, wl)) for t in CL_T for wl in ("flood", "pingpong"))
    w("`bench/compare.sh --only cluster` (and the full run). A real HAProxy (`mode http`, `balance roundrobin` decided "
      "per request, keep-alive to the servers shared by all client connections with `http-reuse always`, no affinity of any kind) "
      "in front of xmpp-cm replicas in cluster mode (one key of 48 random bytes, `openssl rand -base64 48`; `listen` = `advertise` = 127.0.0.1:port, "
      "`peer_cidrs = [\"127.0.0.1/32\"]`), stock Prosody behind, the BOSH pingpong and flood of the main section. Targets:\n")
    w("- **haproxy-1**: HAProxy → one xmpp-cm with clustering **on** (the same code path: every sid is sealed and opened; it never names another replica, so nothing is forwarded). The reference.")
    w("- **haproxy-3**: HAProxy → three replicas; a request reaches its session's owner one time in three, the rest take the internal hop (the forwarded share below is read from the replicas' own counters).")
    w("- **haproxy-fwd**: HAProxy → two of the replicas, the session-creation request (no `sid=` in its body) to one, every other request to the other: every request after the creation is forwarded, so its Δp50 is the added latency of a forwarded request, unmixed.")
    w(f"\nAll three frontends buffer the body (`option http-buffer-request`, which haproxy-fwd's rule needs), so they differ only in where requests go. "
      f"{n_reps} repeat(s), each running pingpong then flood for the three targets back to back (order reversed every other repeat), "
      "a fresh Prosody per run; the replicas and HAProxies live for the whole section (hop connections stay pooled). "
      "Ratios and differences are the median of per-run ones, each against the haproxy-1 run nearest in time (same workload).\n")
    w("**CPU per forwarded request** = (C − C₁ × S / S₁) / F, per run against the nearest haproxy-1 run: C = xmpp-cm CPU of all "
      "replicas of the run (/proc, summed), S = stanzas relayed (xmpp-cm's `xmpp_cm_stanzas_relayed_total`, summed), "
      "F = requests forwarded with result ok (`xmpp_cm_cluster_forwards_total{result=\"ok\"}`), C₁ and S₁ the same for the "
      "haproxy-1 run; all over the whole run (logins, warm-up, window, logout), read before and after it. So it is all the CPU "
      "the cluster spends beyond one replica doing the same relaying (the hop client and server, HMAC, the second body parse, "
      "the extra wake-ups of three processes), per forwarded request. Beside it the same scaled by client BOSH requests "
      "(`xmpp_cm_http_requests_total{route=\"bosh\"}`) instead of stanzas.\n")
    w("| target | flood msg/s | × haproxy-1 | pingpong p50 ms | Δp50 vs haproxy-1 | p99 | p99 × haproxy-1 | generator lag p99 | forwarded share (flood / pingpong) | xmpp-cm CPU-ms / 1k msgs (flood, Σ replicas) | HAProxy CPU-ms / 1k msgs | Prosody CPU s / window s (flood) | CPU µs / forward, flood (by stanzas / by requests) | CPU µs / forward, pingpong (by stanzas / by requests) | forwards failed / refused | errors |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t in CL_T:
        tp = med("cluster", t, "flood", TP)
        p50 = med("cluster", t, "pingpong", P50)
        p99 = med("cluster", t, "pingpong", P99)
        lag99 = med("cluster", t, "pingpong", lambda r: (r["messages"].get("send_lag_ms") or {}).get("p99"))
        shf = med("cluster", t, "flood", lambda r: cl_tot(r, "forwarded_share"))
        shp = med("cluster", t, "pingpong", lambda r: cl_tot(r, "forwarded_share"))
        cmk = med("cluster", t, "flood", lambda r: per_1k(cm_cpu(r), r))
        hk = med("cluster", t, "flood", lambda r: r["cpu_ms_per_1000_msgs"].get("haproxy"))
        pb = med("cluster", t, "flood", lambda r: (proc(r, "prosody", "cpu_s") or 0) / r["messages"]["window_s"])
        cpf = {(wl, sc): (statistics.median(xs) if xs else None)
               for wl in ("flood", "pingpong") for sc in ("stanzas", "bosh_requests")
               for xs in [cl_pairs(t, wl, lambda r, b, sc=sc: cpu_per_forward(r, b, sc))] } if t != CL_REF else {}
        fails = sum((cl_tot(r, "forwards_failed") or 0) for wl in ("flood", "pingpong") for r in cl_runs(t, wl))
        refused = sum((cl_tot(r, "refused") or 0) for wl in ("flood", "pingpong") for r in cl_runs(t, wl))
        n, kinds = errs("cluster", t)
        ref = t == CL_REF
        w(f"| {CL_NAMES[t]} | {fmt(tp, '{:,.0f}')} | {'1.00×' if ref else fmt(pratio('cluster', t, 'flood', TP, ref=CL_REF), '{:.2f}×')} | "
          f"{fmt(p50, '{:.3f}')} | {'+0.000' if ref else fmt(pdiff('cluster', t, 'pingpong', P50, ref=CL_REF), '{:+.3f}')} | {fmt(p99, '{:.3f}')} | "
          f"{'1.00×' if ref else fmt(pratio('cluster', t, 'pingpong', P99, ref=CL_REF), '{:.2f}×')} | {fmt(lag99, '{:.3f}')} | "
          f"{fmt(shf, '{:.1%}')} / {fmt(shp, '{:.1%}')} | {fmt(cmk, '{:.0f}')} | {fmt(hk, '{:.0f}')} | {fmt(pb, '{:.2f}')} | "
          f"{'–' if ref else fmt(cpf[('flood', 'stanzas')], '{:.0f}') + ' / ' + fmt(cpf[('flood', 'bosh_requests')], '{:.0f}')} | "
          f"{'–' if ref else fmt(cpf[('pingpong', 'stanzas')], '{:.0f}') + ' / ' + fmt(cpf[('pingpong', 'bosh_requests')], '{:.0f}')} | "
          f"{fails} / {refused} | {n}{' ' + str(kinds) if kinds else ''} |")
    w("\nThe forwarded share is forwards (result ok) ÷ client BOSH requests, both from the replicas' counters over the whole run; "
      "session-creation requests (1–2 % of them) are in the denominator and are never forwarded, so per-request round robin over "
      "three replicas gives about 65 %, and haproxy-fwd about 98 %. "
      "xmpp-cm and HAProxy CPU per 1k messages are over the measured window (the generator's `--pid` sampling); "
      "Prosody CPU s / window s near 1.00 means Prosody (one Lua thread) was busy for the whole window, i.e. the ceiling.\n")

    # Targets, judged on the medians of the per-run figures.
    w("### Targets from issue 14 beside the measured figures\n")
    w("| what | target | measured here (median; per-run values in time order) | met? |")
    w("|---|---|---|---|")
    tr = cl_pairs("haproxy-3", "flood", lambda r, b: TP(r) / TP(b) if TP(b) else None)
    m = statistics.median(tr) if tr else None
    row("flood throughput, haproxy-3 ÷ haproxy-1", "≥ 0.9×", f"{fmt(m, '{:.2f}×')} ({lst(tr, '{:.2f}')})", None if m is None else m >= 0.9)
    pb3 = [(proc(r, "prosody", "cpu_s") or 0) / r["messages"]["window_s"] for r in cl_runs("haproxy-3", "flood")]
    pb1 = [(proc(r, "prosody", "cpu_s") or 0) / r["messages"]["window_s"] for r in cl_runs("haproxy-1", "flood")]
    mb = statistics.median(pb3) if pb3 else None
    row("Prosody stays the bottleneck (haproxy-3 flood: Prosody CPU s per window s)", "≈ 1 (busy all window; ≥ 0.9 read as yes)",
        f"{fmt(mb, '{:.2f}')} ({lst(pb3, '{:.2f}')}; haproxy-1: {lst(pb1, '{:.2f}')})", None if mb is None else mb >= 0.9)
    for t, what in (("haproxy-fwd", "pingpong Δp50 of a forwarded request (haproxy-fwd: all forwarded) vs haproxy-1"),
                    ("haproxy-3", "pingpong Δp50, haproxy-3 (about two thirds forwarded) vs haproxy-1")):
        ds = cl_pairs(t, "pingpong", lambda r, b: P50(r) - P50(b))
        m = statistics.median(ds) if ds else None
        row(what, "≤ +0.2 ms", f"{fmt(m, '{:+.3f} ms')} ({lst(ds, '{:+.3f}')})", None if m is None else m <= 0.2)
    for t in ("haproxy-3", "haproxy-fwd"):
        for wl in ("flood", "pingpong"):
            xs = cl_pairs(t, wl, lambda r, b: cpu_per_forward(r, b, "stanzas"))
            ys = cl_pairs(t, wl, lambda r, b: cpu_per_forward(r, b, "bosh_requests"))
            m, my = (statistics.median(xs) if xs else None), (statistics.median(ys) if ys else None)
            row(f"CPU per forwarded request, {t}, {wl}", "reported (no target)",
                f"{fmt(m, '{:.0f} µs')} ({lst(xs, '{:.0f}')}); scaled by requests instead: {fmt(my, '{:.0f} µs')} ({lst(ys, '{:.0f}')})", "–")
    sh = [cl_tot(r, "forwarded_share") for wl in ("flood", "pingpong") for r in cl_runs("haproxy-3", wl) if cl_tot(r, "forwarded_share") is not None]
    row("check: haproxy-3's forwarded share of BOSH requests", "≈ 2/3 (per-request round robin)",
        f"{min(sh):.1%}–{max(sh):.1%} over {len(sh)} runs" if sh else "–", None if not sh else 0.55 <= statistics.median(sh) <= 0.72)
    w("")

    w("### Per run\n")
    w("The k-th run of each target in time order; ratios and differences against the haproxy-1 run nearest in time.\n")
    w("| repeat | flood msg/s h-1 / h-3 / fwd | h-3 × h-1 | fwd × h-1 | pingpong p50 ms h-1 / h-3 / fwd | h-3 Δp50 | fwd Δp50 | forwarded share h-3 (flood / pp) | CPU µs / forward h-3 flood / pp (by stanzas) | fwd flood / pp | Prosody CPU s / window s, flood h-1 / h-3 / fwd |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    for k in range(n_reps):
        def at(t, wl):
            rs = cl_runs(t, wl)
            return rs[k] if k < len(rs) else None
        f1, f3, ff = at("haproxy-1", "flood"), at("haproxy-3", "flood"), at("haproxy-fwd", "flood")
        p1, p3, pf = at("haproxy-1", "pingpong"), at("haproxy-3", "pingpong"), at("haproxy-fwd", "pingpong")
        def rat(r, wl):
            b = cl_nearest(r, wl) if r else None
            return None if not r or not b or not TP(b) else TP(r) / TP(b)
        def dif(r):
            b = cl_nearest(r, "pingpong") if r else None
            return None if not r or not b else P50(r) - P50(b)
        def cpf(r, wl):
            b = cl_nearest(r, wl) if r else None
            return None if not r or not b else cpu_per_forward(r, b, "stanzas")
        g = lambda r, f, spec: fmt(f(r) if r else None, spec)
        pbusy = lambda r: (proc(r, "prosody", "cpu_s") or 0) / r["messages"]["window_s"]
        w(f"| {k + 1} | {g(f1, TP, '{:,.0f}')} / {g(f3, TP, '{:,.0f}')} / {g(ff, TP, '{:,.0f}')} | {fmt(rat(f3, 'flood'), '{:.2f}×')} | {fmt(rat(ff, 'flood'), '{:.2f}×')} | "
          f"{g(p1, P50, '{:.3f}')} / {g(p3, P50, '{:.3f}')} / {g(pf, P50, '{:.3f}')} | {fmt(dif(p3), '{:+.3f}')} | {fmt(dif(pf), '{:+.3f}')} | "
          f"{g(f3, lambda r: cl_tot(r, 'forwarded_share'), '{:.1%}')} / {g(p3, lambda r: cl_tot(r, 'forwarded_share'), '{:.1%}')} | "
          f"{fmt(cpf(f3, 'flood'), '{:.0f}')} / {fmt(cpf(p3, 'pingpong'), '{:.0f}')} | {fmt(cpf(ff, 'flood'), '{:.0f}')} / {fmt(cpf(pf, 'pingpong'), '{:.0f}')} | "
          f"{g(f1, pbusy, '{:.2f}')} / {g(f3, pbusy, '{:.2f}')} / {g(ff, pbusy, '{:.2f}')} |")
    w("")

# ---------------------------------------------------------------- memory
w("## Memory per idle session (proxy process RSS delta / sessions held)\n")
w("`mem-small`: an `idle` run; `growth`: the pingpong run with the extra idle sessions (all held at once). "
  "Prosody's RSS is listed for scale; for direct TCP only Prosody exists.\n")
w("| target | sessions | proxy RSS before → loaded (KiB) | proxy KiB/session | Prosody KiB/session | errors |")
w("|---|---|---|---|---|---|")
for t in ("direct", "nxb", "cm-bosh", "cm-ws", "up-cm-bosh", "up-cm-ws"):
    for scen, wl in (("mem-small", "idle"), ("growth", "pingpong")):
      for r in sorted(groups.get((scen, t, wl), []), key=lambda r: -r["params"]["idle_sessions"])[:1 if scen == "mem-small" else None]:
        held = r["logins"]["ok"]
        b, l = proc(r, "proxy", "rss_kib_start"), proc(r, "proxy", "rss_kib_loaded")
        w(f"| {NAMES[t]} | {held:,} of {r['params']['sessions'] + r['params']['idle_sessions']:,} | {'–' if b is None else f'{b:,} → {l:,}'} | {fmt(r['kib_per_session'].get('proxy'), '{:.1f}')} | "
          f"{fmt(r['kib_per_session'].get('prosody'), '{:.1f}')} | {r['errors_total']} {r['errors'] or ''} |")
w("")

# ---------------------------------------------------------------- growth
w("## Growth: pingpong latency with many idle sessions held\n")
w(f"Each target's idle count is what fits its own descriptors per session under the open-file limit ({FDMAX or '?'}; "
  "direct TCP 1, xmpp-cm WebSocket 2, BOSH 3), so direct TCP is measured at each count used. Both figures of a row come from "
  "the same fresh Prosody and proxy: pingpong alone, then the same pingpong with the idle sessions held. The last column "
  "divides a target's ratio by direct TCP's at the same count: what the target adds to Prosody's own growth. "
  "The rows *→ bench upstream* repeat the measurement against `xmpp-cm-bench upstream` (no garbage collector; its "
  "reference is direct TCP to the bench upstream), so their ratio is the proxy's own growth.\n")
w("| target | idle sessions held | p50 / p99 ms alone | p50 / p99 ms with idle | p99 ratio | direct TCP's ratio, same count | ratio ÷ direct's | generator lag p99 ms | settled after logins | errors |")
w("|---|---|---|---|---|---|---|---|---|---|")
for t in ("direct", "nxb", "cm-bosh", "cm-ws", "up-direct", "up-cm-bosh", "up-cm-ws"):
    ref = "up-direct" if t.startswith("up-") else "direct"
    for idle, g, b99, b50 in growth_runs(t):
        l = g["messages"]["latency_ms"]
        rr = ratio(l["p99"], b99)
        dg = direct_growth_at(idle, ref)
        lag = (g["messages"].get("send_lag_ms") or {}).get("p99")
        st = g.get("settle_after_login")
        st_s = "–" if not st else (f"{st['waited_s']:.1f} s" + ("" if st["quiet"] else " (not quiet)"))
        held = g["logins"]["ok"] - g["params"]["sessions"]
        w(f"| {NAMES[t]} | {held:,} of {idle:,} | {fmt(b50, '{:.3f}')} / {fmt(b99, '{:.3f}')} | {l['p50']:.3f} / {l['p99']:.3f} | "
          f"{fmt(rr, '{:.2f}×')} | {fmt(dg, '{:.2f}×')} | {fmt(None if rr is None or not dg or t == ref else rr / dg, '{:.2f}')} | "
          f"{fmt(lag, '{:.3f}')} | {st_s} | {g['errors_total']} |")
w("")

# ---------------------------------------------------------------- bench upstream
w("## Without a real server as the ceiling: flood against `xmpp-cm-bench upstream`\n")
w("**Upstream here is `xmpp-cm-bench upstream`, the bench's own minimal server, not Prosody** "
  "(accepts any PLAIN login, routes messages byte for byte). Same flood (200 sessions × 8 in flight).\n")
w("| target | msg/s | × relay | p50 ms | p99 ms | proxy CPU-ms / 1k msgs | upstream CPU s | generator CPU s | errors |")
w("|---|---|---|---|---|---|---|---|---|")
for t in ("up-direct", "up-relay", "up-cm-bosh", "up-cm-ws"):
    tp = med("upstream", t, "flood", lambda r: r["messages"]["per_s"])
    n, kinds = errs("upstream", t)
    w(f"| {NAMES[t]} | {fmt(tp, '{:,.0f}')} | {fmt(pratio('upstream', t, 'flood', TP, ref='up-relay'), '{:.2f}×')} | "
      f"{fmt(med('upstream', t, 'flood', lambda r: r['messages']['latency_ms']['p50']), '{:.3f}')} | "
      f"{fmt(med('upstream', t, 'flood', lambda r: r['messages']['latency_ms']['p99']), '{:.3f}')} | "
      f"{fmt(med('upstream', t, 'flood', lambda r: r['cpu_ms_per_1000_msgs'].get('proxy')), '{:.0f}')} | "
      f"{fmt(med('upstream', t, 'flood', lambda r: proc(r, 'upstream', 'cpu_s')), '{:.2f}')} | "
      f"{fmt(med('upstream', t, 'flood', lambda r: r['generator']['cpu_s']), '{:.2f}')} | {n}{' ' + str(kinds) if kinds else ''} |")
w("")
if big:
    r = big[-1]
    w("## 100,000 idle WebSocket sessions (upstream: `xmpp-cm-bench upstream`)\n")
    p = next((p for p in r["procs"] if p["label"] == "proxy"), None)
    u = next((p for p in r["procs"] if p["label"] == "upstream"), None)
    w(f"- held {r['logins']['ok']:,} of {r['params']['sessions']:,}; logins {r['logins']['per_s']:,.0f}/s; errors {r['errors_total']} {r['errors'] or ''}")
    if p:
        w(f"- xmpp-cm RSS {p['rss_kib_start']:,} → {p['rss_kib_loaded']:,} KiB ({r['kib_per_session'].get('proxy', 0):.1f} KiB/session), "
          f"peak {p['rss_kib_peak']:,} KiB; CPU while idle {p['cpu_s']:.2f} s over {r['params']['duration_s']:.0f} s")
    if u:
        w(f"- bench upstream RSS {u['rss_kib_loaded']:,} KiB, CPU while idle {u['cpu_s']:.2f} s")
    w(f"- generator CPU while idle {r['generator']['cpu_s']:.2f} s; client source addresses: {r['params']['sources']}\n")

if scale and not big:
    r = scale[-1]
    w(f"## {r['sessions']:,} idle WebSocket sessions (upstream: `xmpp-cm-bench upstream`; bench/scale.sh)\n")
    w(f"The open-file limit here is {r['fd_limit_per_process']:,} per process and cannot be raised (no CAP_SYS_RESOURCE), "
      "and xmpp-cm needs 2 descriptors per WebSocket session, so one process tops out near 9,500 sessions. "
      f"bench/scale.sh splits the sessions over {r['chains']} independent chains (generator → xmpp-cm → bench upstream, "
      "each on its own ports) running on this machine at the same time, and reads xmpp-cm's own "
      "`xmpp_cm_sessions_active` gauges to check that all are held at once before it measures. "
      "With a raised limit, one process would hold them (`bench/compare.sh` then runs the single-process 100k run instead).\n")
    w(f"- held at once (sum of the {r['chains']} gauges): {r['max_held_at_once']:,} of {r['sessions']:,}, "
      f"reached {r.get('setup_s', 0):.0f} s after the generators started; still held after the window: {r.get('held_after_window', 0):,}")
    st, ld, cw = r.get("rss_kib_start", {}), r.get("rss_kib_loaded", {}), r.get("cpu_s_window", {})
    if ld.get("proxy"):
        w(f"- xmpp-cm RSS, all {r['chains']} processes: {st['proxy']:,} KiB before → {ld['proxy']:,} KiB loaded = "
          f"{r['proxy_kib_per_session']:.1f} KiB per session ({r['proxy_kib_per_session_incl_base']:.1f} with every process's base)")
        w(f"- CPU while all are held, over {r['window_s']:g} s: xmpp-cm {cw.get('proxy')} s, bench upstreams {cw.get('upstream')} s, "
          f"generators {cw.get('generator')} s; bench upstream RSS {ld['upstream']:,} KiB, generators {ld['generator']:,} KiB")
    if scale_shards:
        lg = sum(x["logins"]["ok"] for x in scale_shards)
        w(f"- generators' own records: {lg:,} logins, {sum(x['logins']['failed'] for x in scale_shards)} failed, "
          f"{sum(x['errors_total'] for x in scale_shards)} errors over {len(scale_shards)} generators")
    w("")

# ---------------------------------------------------------------- errors and commands
w("## Errors\n")
any_err = False
for (s, l, wl), rs in sorted(groups.items()):
    tot = sum(r["errors_total"] for r in rs)
    if tot:
        any_err = True
        samples = [x for r in rs for x in r.get("error_samples", [])][:3]
        w(f"- {s} / {l} / {wl}: {tot} — {samples}")
if not any_err:
    w("None in any run.")
w("\n## How to reproduce\n")
w("```\nbench/compare.sh            # full (~47 min): with Prosody 5 repeats (+6 of direct TCP and xmpp-cm), 6 s windows; cluster (HAProxy → 1 and 3 replicas) 6 repeats; elsewhere 3 repeats, 10 s windows, 1k idle, growth at up to 10k idle (by open files; 5 pairs against the bench upstream), 100k idle (bench/scale.sh when one process cannot hold them)\n"
  "bench/compare.sh --quick    # smoke (< 3 min): 1 repeat, 2 s windows, small counts\n"
  "bench/compare.sh --only cluster   # the cluster section alone (~7 min; needs haproxy): 6 repeats, 6 s windows\n"
  "bench/compare.sh --only main --mode both   # the Prosody section with batching and browser-like clients side by side (issue 17): pingpong and flood run in both modes\n"
  "bench/compare.sh --quick --only main --mode browser   # smoke of the browser mode alone\n```\n")
w("`--mode browser` runs `xmpp-cm-bench run --mode browser`: one stanza per BOSH request (WebSocket is one stanza per frame in "
  "every mode) and a flood window of 4 messages per session (`--window` overrides it); its records carry the note `main-browser` "
  "and `params.mode`.\n")
w("Each run is one `xmpp-cm-bench run …` command; the exact commands of this report:\n")
w("```")
seen = set()
for r in recs:
    if "params" not in r:  # bench/scale.sh's summary record
        continue
    key = (r["note"], r["label"], r["workload"], r["params"]["idle_sessions"], r["params"].get("mode", "batch"))
    if key in seen or r["note"] == "warmup":
        continue
    seen.add(key)
    p = r["params"]
    cmd = f"xmpp-cm-bench run --transport {r['transport']} --target {r['target']} --workload {r['workload']} --sessions {p['sessions']}"
    if p["idle_sessions"]:
        cmd += f" --idle-sessions {p['idle_sessions']}"
    if r["workload"] in ("pingpong",):
        cmd += f" --rate {p['rate_per_session']:g}"
    if p.get("mode", "batch") != "batch":
        cmd += f" --mode {p['mode']}"
    if r["workload"] == "flood":
        cmd += f" --window {p['window']}"
    if r["workload"] != "setup":
        cmd += f" --duration {p['duration_s']:g}"
    cmd += f" --concurrency {p['concurrency']} --domain {','.join(p['domains'])} --label {r['label']} --note {r['note']} --pid …"
    w(cmd)
w("```")
import os
notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "findings.md")
if os.path.exists(notes):
    w("")
    w(open(notes).read().rstrip())
open(a.out, "w").write("\n".join(out) + "\n")
print(f"report: {len(recs)} records → {a.out}", file=sys.stderr)
