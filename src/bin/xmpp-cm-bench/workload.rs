//! The four workloads. Every session logs in first (see `client::login`); then:
//! `idle` holds them for `--duration`; `pingpong` makes each active session send a message to
//! itself `--rate` times a second and records every round trip; `flood` keeps `--window`
//! messages per session in flight for `--duration` (each receipt releases the next send), so
//! the rate is what the target sustains; `setup` only logs sessions in, `--concurrency` at a
//! time, and measures logins per second.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::{self, client_ns, BenchError, ClientMode, Session, Target, Transport};
use crate::pace;
use crate::stats::{self, round3, Errors, Latency, ProcReport, Samples, Settled, Watch, Watched};
use crate::xml;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Idle,
    Pingpong,
    Flood,
    Setup,
}

#[derive(Debug, Clone, Serialize)]
pub struct Params {
    pub sessions: usize,
    pub idle_sessions: usize,
    pub concurrency: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub rate_per_session: f64,
    pub window: usize,
    /// `--mode`: how stanzas are spread over BOSH requests.
    pub mode: ClientMode,
    pub domains: Vec<String>,
    pub user_prefix: String,
    pub users: usize,
    pub sources: usize,
    pub fd_limit: u64,
    /// Seed of the pingpong phases (`--seed`).
    pub seed: u64,
    /// Quiet threshold (cores per watched process) and bound (s) of the settling waits.
    pub settle_cores: f64,
    pub settle_max_s: f64,
}

#[derive(Serialize, Default)]
pub struct Logins {
    pub ok: u64,
    pub failed: u64,
    /// Logged-in sessions per second over the login phase (wall clock, first start to last end).
    pub per_s: f64,
    pub phase_s: f64,
    pub latency_ms: Latency,
}

#[derive(Serialize, Default)]
pub struct Messages {
    pub sent: u64,
    pub received: u64,
    /// Round trips completed per second within the measured window.
    pub per_s: f64,
    pub window_s: f64,
    /// Pingpong: from the intended send time to the echo (see `drive`); flood: from the write.
    pub latency_ms: Latency,
    /// Pingpong: from the write to the echo (excludes the generator's own lag).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_from_write_ms: Option<Latency>,
    /// Pingpong: the generator's lag, write time − intended send time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag_ms: Option<Latency>,
    /// Pingpong: `latency_ms` for the messages intended in each second of the window.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_second: Vec<Latency>,
}

#[derive(Serialize)]
pub struct Generator {
    /// Nice value the generator ran at (`--nice`).
    pub nice: i32,
    pub cpu_s: f64,
    pub cpu_s_run: f64,
    pub rss_kib_peak: u64,
}

#[derive(Serialize)]
pub struct Record {
    pub tool: &'static str,
    pub label: String,
    pub note: String,
    pub transport: Transport,
    pub target: String,
    pub workload: Workload,
    pub params: Params,
    pub unix_time: u64,
    pub elapsed_s: f64,
    pub logins: Logins,
    pub messages: Messages,
    pub errors: BTreeMap<&'static str, u64>,
    pub errors_total: u64,
    pub error_samples: Vec<String>,
    pub procs: Vec<ProcReport>,
    /// (RSS loaded − RSS at start) / sessions held, KiB, per watched process.
    pub kib_per_session: BTreeMap<String, f64>,
    /// Watched CPU during the measured phase per 1,000 round trips (pingpong/flood), ms.
    pub cpu_ms_per_1000_msgs: BTreeMap<String, f64>,
    /// Watched CPU during the login phase per login (setup), ms.
    pub cpu_ms_per_login: BTreeMap<String, f64>,
    pub generator: Generator,
    /// Waits for the watched processes to go quiet: before anything, and after the logins.
    pub settle_before: Settled,
    pub settle_after_login: Settled,
}

pub struct Spec {
    pub target: Arc<Target>,
    pub workload: Workload,
    pub params: Params,
    pub pass_prefix: String,
    pub pids: Vec<Watched>,
    pub label: String,
    pub note: String,
    pub target_desc: String,
}

struct Opened {
    sessions: Vec<(usize, Session)>,
    latency: Samples,
    ok: u64,
    failed: u64,
    elapsed: Duration,
}

/// Session `i`'s login (who it logs in as follows from `i`), bounded by `LOGIN_TIMEOUT`.
fn login_of(spec: &Spec, i: usize, run_tag: u32) -> impl std::future::Future<Output = Result<Session, BenchError>> + Send + 'static {
    let t = spec.target.clone();
    let p = &spec.params;
    let domain = p.domains[i % p.domains.len()].clone();
    let n = 1 + i % p.users.max(1);
    let user = format!("{}{n}", p.user_prefix);
    let pass = format!("{}{n}", spec.pass_prefix);
    let resource = format!("b{run_tag}-{i}");
    async move {
        match tokio::time::timeout(client::LOGIN_TIMEOUT, client::login(&t, &domain, &user, &pass, &resource)).await {
            Ok(r) => r,
            Err(_) => Err(BenchError::new("login_timeout", format!("no login within {:?}", client::LOGIN_TIMEOUT))),
        }
    }
}

/// Log in sessions `from..to`, `concurrency` at a time.
async fn open_all(spec: &Spec, from: usize, to: usize, errors: &Arc<Errors>) -> Opened {
    let sem = Arc::new(Semaphore::new(spec.params.concurrency.max(1)));
    let mut set = JoinSet::new();
    let t0 = Instant::now();
    let run_tag = std::process::id();
    for i in from..to {
        let (sem, login) = (sem.clone(), login_of(spec, i, run_tag));
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let start = Instant::now();
            let r = login.await;
            (i, start.elapsed(), r)
        });
    }
    let mut out = Opened { sessions: Vec::with_capacity(to - from), latency: Samples::default(), ok: 0, failed: 0, elapsed: Duration::ZERO };
    while let Some(j) = set.join_next().await {
        match j {
            Ok((i, d, Ok(s))) => {
                out.ok += 1;
                out.latency.push(d);
                out.sessions.push((i, s));
            }
            Ok((_, _, Err(e))) => {
                out.failed += 1;
                errors.add(&e);
            }
            Err(e) => {
                out.failed += 1;
                errors.add(&BenchError::new("internal", e.to_string()));
            }
        }
    }
    out.elapsed = t0.elapsed();
    out.sessions.sort_by_key(|(i, _)| *i);
    out
}

/// Log in sessions `from..to` like [`open_all`], but each session starts reading (answering
/// WebSocket pings, keeping a BOSH poll) as soon as it is logged in, until `cancel`: a long
/// login phase must not let the first sessions time out.
async fn open_idle(spec: &Spec, from: usize, to: usize, errors: &Arc<Errors>, cancel: &CancellationToken, set: &mut JoinSet<(Option<Session>, Tally)>) -> Opened {
    let sem = Arc::new(Semaphore::new(spec.params.concurrency.max(1)));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Duration, BenchError>>();
    let t0 = Instant::now();
    let run_tag = std::process::id();
    let ns = client_ns(spec.target.transport);
    for i in from..to {
        let (sem, tx, cancel, errors) = (sem.clone(), tx.clone(), cancel.clone(), errors.clone());
        let login = login_of(spec, i, run_tag);
        set.spawn(async move {
            let permit = sem.acquire_owned().await;
            let start = Instant::now();
            let r = login.await;
            drop(permit);
            match r {
                Ok(s) => {
                    let _ = tx.send(Ok(start.elapsed()));
                    drive(s, Mode::Idle, ns, t0, t0, cancel, errors).await
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    (None, Tally::default())
                }
            }
        });
    }
    drop(tx);
    let mut out = Opened { sessions: Vec::new(), latency: Samples::default(), ok: 0, failed: 0, elapsed: Duration::ZERO };
    for _ in from..to {
        match rx.recv().await {
            Some(Ok(d)) => {
                out.ok += 1;
                out.latency.push(d);
            }
            Some(Err(e)) => {
                out.failed += 1;
                errors.add(&e);
            }
            None => break,
        }
    }
    out.elapsed = t0.elapsed();
    out
}

enum Mode {
    /// Read (and answer pings) until cancelled.
    Idle,
    /// Send one message at each intended instant the pacer hands over (see `pace.rs`) until it
    /// closes the channel.
    Ping { due: tokio::sync::mpsc::UnboundedReceiver<Instant> },
    Flood { window: usize },
}

#[derive(Default)]
struct Tally {
    sent: u64,
    received: u64,
    /// Pingpong: from the intended send time; flood: from the write.
    latency: Samples,
    /// Pingpong: from the moment the message was handed to the socket (or the BOSH driver).
    latency_write: Samples,
    /// Pingpong: how late the generator was, write time − intended time.
    lag: Samples,
    /// Pingpong: `latency` per second of the measured window (by intended send time).
    by_second: Vec<Samples>,
}

/// A message in flight: sequence number, intended send time (pingpong; the write time for
/// flood), write time.
type InFlight = (u64, Instant, Instant);

/// Run one session in `mode` until `end` (or cancel for idle); round trips sent in
/// [`start`, `end`) count. Returns the session unless it failed.
async fn drive(mut s: Session, mode: Mode, ns: &'static str, start: Instant, end: Instant, cancel: CancellationToken, errors: Arc<Errors>) -> (Option<Session>, Tally) {
    let mut t = Tally::default();
    let to = xml::escape(&s.jid);
    let mut seq: u64 = 0;
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let drain_limit = Duration::from_secs(3);
    let msg = |n: u64| format!("<message to='{to}' id='m{n}' type='chat'{ns}><body>ping {n}</body></message>");
    let fail = |e: BenchError, errors: &Errors| {
        errors.add(&e);
    };
    match mode {
        Mode::Idle => loop {
            tokio::select! {
                _ = cancel.cancelled() => return (Some(s), t),
                r = s.conn.recv() => if let Err(e) = r {
                    fail(BenchError::new(if e.kind == "closed" { "idle_dropped" } else { e.kind }, e.detail), &errors);
                    return (None, t);
                },
            }
        },
        Mode::Ping { mut due } => {
            // Latency is taken from the *intended* send time: for a fixed-rate workload that is
            // the honest origin (coordinated omission: a stall anywhere, the generator included,
            // delays the sends queued behind it and must show in their latency). So the
            // generator must not be the cause: its lag (write time − intended time) is
            // recorded and reported beside the latency, and so is the latency from the write.
            let mut sending = true;
            loop {
                let now = Instant::now();
                if !sending && (inflight.is_empty() || now > end + drain_limit) {
                    break;
                }
                tokio::select! {
                    d = due.recv(), if sending => match d {
                        Some(intended) => {
                            let wrote = match send_next(&mut s.conn, &msg, &mut seq, &mut inflight, Some(intended)).await {
                                Ok(w) => w,
                                Err(e) => { fail(e, &errors); return (None, t); }
                            };
                            if intended >= start && intended < end {
                                t.sent += 1;
                                t.lag.push(wrote - intended);
                            }
                        }
                        None => sending = false,
                    },
                    r = s.conn.recv() => match r {
                        Ok(f) => on_frame(&f, &mut inflight, start, end, &mut t, true),
                        Err(e) => { fail(e, &errors); return (None, t); }
                    },
                    _ = tokio::time::sleep_until((end + drain_limit).into()), if !sending => break,
                }
            }
        }
        Mode::Flood { window } => {
            // One stanza per send: RFC 7395 allows exactly one stanza per WebSocket message.
            for _ in 0..window {
                if let Err(e) = send_next(&mut s.conn, &msg, &mut seq, &mut inflight, None).await {
                    fail(e, &errors);
                    return (None, t);
                }
            }
            loop {
                let now = Instant::now();
                if now >= end && (inflight.is_empty() || now > end + drain_limit) {
                    break;
                }
                let r = tokio::select! {
                    r = s.conn.recv() => r,
                    _ = tokio::time::sleep_until((end + drain_limit).into()) => break,
                };
                match r {
                    Ok(f) => {
                        let before = inflight.len();
                        on_frame(&f, &mut inflight, start, end, &mut t, false);
                        if inflight.len() < before && Instant::now() < end {
                            if let Err(e) = send_next(&mut s.conn, &msg, &mut seq, &mut inflight, None).await {
                                fail(e, &errors);
                                return (None, t);
                            }
                            if Instant::now() >= start { t.sent += 1; }
                        }
                    }
                    Err(e) => {
                        fail(e, &errors);
                        return (None, t);
                    }
                }
            }
        }
    }
    if !inflight.is_empty() {
        errors.add(&BenchError::new("lost", format!("{} message(s) never came back", inflight.len())));
    }
    (Some(s), t)
}

/// Send the next numbered message and note it in flight with its intended send time (the write
/// time when none was scheduled) and the write time, which is returned.
async fn send_next(conn: &mut client::Conn, msg: &impl Fn(u64) -> String, seq: &mut u64, inflight: &mut VecDeque<InFlight>, intended: Option<Instant>) -> Result<Instant, BenchError> {
    *seq += 1;
    let wrote = Instant::now();
    inflight.push_back((*seq, intended.unwrap_or(wrote), wrote));
    conn.send(msg(*seq).as_bytes()).await?;
    Ok(wrote)
}

fn on_frame(f: &[u8], inflight: &mut VecDeque<InFlight>, start: Instant, end: Instant, t: &mut Tally, ping: bool) {
    if xml::name(f) != "message" {
        return;
    }
    let Some(id) = xml::attr(f, "id").and_then(|s| s.strip_prefix('m')).and_then(|s| s.parse::<u64>().ok()) else { return };
    let Some(pos) = inflight.iter().position(|(n, _, _)| *n == id) else { return };
    let Some((_, sent, wrote)) = inflight.remove(pos) else { return };
    let now = Instant::now();
    if sent >= start && sent < end {
        t.latency.push(now - sent);
        if ping {
            t.latency_write.push(now - wrote);
            let k = (sent - start).as_secs() as usize;
            if t.by_second.len() <= k {
                t.by_second.resize_with(k + 1, Samples::default);
            }
            t.by_second[k].push(now - sent);
        }
    }
    if now >= start && now < end {
        t.received += 1;
    }
}

pub async fn run(spec: Spec) -> Record {
    let errors = Arc::new(Errors::default());
    let settle_limit = Duration::from_secs_f64(spec.params.settle_max_s.max(0.0));
    let settle_before = stats::settle(&spec.pids, spec.params.settle_cores, settle_limit).await;
    let gen_pid = std::process::id();
    let gen0 = stats::sample(gen_pid).unwrap_or_default();
    let watch = Watch::start(spec.pids.clone());
    let t_run = Instant::now();
    let p = spec.params.clone();
    let ns = client_ns(spec.target.transport);

    // Idle background sessions first (pingpong growth runs), then the active ones.
    let cancel = CancellationToken::new();
    let mut idle_set: JoinSet<(Option<Session>, Tally)> = JoinSet::new();
    let mut logins = Logins::default();
    let mut login_lat = Samples::default();
    let n_idle_bg = if spec.workload == Workload::Idle { 0 } else { p.idle_sessions };
    if n_idle_bg > 0 {
        let o = open_idle(&spec, p.sessions, p.sessions + n_idle_bg, &errors, &cancel, &mut idle_set).await;
        logins.ok += o.ok;
        logins.failed += o.failed;
    }
    let phase_login0 = watch.now();
    let gen_login0 = stats::sample(gen_pid).unwrap_or_default();
    let o = if spec.workload == Workload::Idle {
        open_idle(&spec, 0, p.sessions, &errors, &cancel, &mut idle_set).await
    } else {
        open_all(&spec, 0, p.sessions, &errors).await
    };
    let phase_login1 = watch.now();
    let gen_login1 = stats::sample(gen_pid).unwrap_or_default();
    logins.ok += o.ok;
    logins.failed += o.failed;
    logins.phase_s = round3(o.elapsed.as_secs_f64());
    logins.per_s = round3(o.ok as f64 / o.elapsed.as_secs_f64().max(1e-9));
    login_lat.extend(o.latency);
    logins.latency_ms = login_lat.summary();
    let loaded = watch.now();
    let held = logins.ok as usize;
    let settle_after_login = if spec.workload == Workload::Setup { Settled::default() } else { stats::settle(&spec.pids, p.settle_cores, settle_limit).await };

    let mut messages = Messages::default();
    let (phase0, phase1, gen_phase);
    match spec.workload {
        Workload::Setup => {
            phase0 = phase_login0;
            phase1 = phase_login1;
            gen_phase = gen_login1.cpu_s - gen_login0.cpu_s;
            for (_, s) in o.sessions {
                idle_set.spawn(async move { (Some(s), Tally::default()) });
            }
        }
        Workload::Idle => {
            let g0 = stats::sample(gen_pid).unwrap_or_default();
            phase0 = watch.now();
            // SIGTERM or SIGINT ends the hold early and the record is still written
            // (bench/scale.sh stops its generators once it has measured them all held at once).
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(p.duration_s)) => {}
                _ = tokio::signal::ctrl_c() => {}
                Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => {}
            }
            phase1 = watch.now();
            gen_phase = stats::sample(gen_pid).unwrap_or_default().cpu_s - g0.cpu_s;
        }
        Workload::Pingpong | Workload::Flood => {
            // The first sends leave a little after this point so that no session starts late.
            let t0 = Instant::now() + Duration::from_millis(20);
            let start = t0 + Duration::from_secs_f64(p.warmup_s);
            let end = start + Duration::from_secs_f64(p.duration_s);
            let mut active = JoinSet::new();
            let period = Duration::from_secs_f64(1.0 / p.rate_per_session.max(0.001));
            let mut rng = pace::Rng::new(p.seed);
            let (mut senders, mut phases) = (Vec::new(), Vec::new());
            for (_, s) in o.sessions {
                let mode = match spec.workload {
                    Workload::Flood => Mode::Flood { window: p.window.max(1) },
                    _ => {
                        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                        senders.push(tx);
                        phases.push(period.mul_f64(rng.unit()));
                        Mode::Ping { due: rx }
                    }
                };
                active.spawn(drive(s, mode, ns, start, end, cancel.clone(), errors.clone()));
            }
            let pacer = (!senders.is_empty()).then(|| pace::start(senders, phases, period, t0, end));
            tokio::time::sleep_until(start.into()).await;
            let g0 = stats::sample(gen_pid).unwrap_or_default();
            phase0 = watch.now();
            tokio::time::sleep_until(end.into()).await;
            phase1 = watch.now();
            gen_phase = stats::sample(gen_pid).unwrap_or_default().cpu_s - g0.cpu_s;
            let (mut lat, mut lat_w, mut lag) = (Samples::default(), Samples::default(), Samples::default());
            let mut by_second: Vec<Samples> = Vec::new();
            while let Some(j) = active.join_next().await {
                if let Ok((s, t)) = j {
                    messages.sent += t.sent;
                    messages.received += t.received;
                    lat.extend(t.latency);
                    lat_w.extend(t.latency_write);
                    lag.extend(t.lag);
                    for (k, b) in t.by_second.into_iter().enumerate() {
                        if by_second.len() <= k {
                            by_second.resize_with(k + 1, Samples::default);
                        }
                        by_second[k].extend(b);
                    }
                    if let Some(s) = s {
                        idle_set.spawn(async move { (Some(s), Tally::default()) });
                    }
                }
            }
            if let Some(h) = pacer {
                let _ = h.join();
            }
            messages.window_s = p.duration_s;
            messages.per_s = round3(messages.received as f64 / p.duration_s.max(1e-9));
            messages.latency_ms = lat.summary();
            if spec.workload == Workload::Pingpong {
                messages.latency_from_write_ms = Some(lat_w.summary());
                messages.send_lag_ms = Some(lag.summary());
                messages.per_second = by_second.into_iter().map(Samples::summary).collect();
            }
        }
    }

    // Stop everyone; close politely when that is cheap enough, else just drop the sockets.
    cancel.cancel();
    let mut all = Vec::new();
    while let Some(j) = idle_set.join_next().await {
        if let Ok((Some(s), _)) = j {
            all.push(s);
        }
    }
    if all.len() <= 20_000 {
        let sem = Arc::new(Semaphore::new(500));
        let mut closing = JoinSet::new();
        for mut s in all {
            let sem = sem.clone();
            closing.spawn(async move {
                let _p = sem.acquire_owned().await;
                let _ = tokio::time::timeout(Duration::from_secs(3), s.conn.close()).await;
            });
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), async { while closing.join_next().await.is_some() {} }).await;
    } else {
        drop(all);
    }

    let procs = watch.finish((&phase0, &phase1), &loaded);
    let gen_end = stats::sample(gen_pid).unwrap_or_default();
    let (errs, samples) = errors.take();
    let mut kib_per_session = BTreeMap::new();
    let mut cpu_msgs = BTreeMap::new();
    let mut cpu_login = BTreeMap::new();
    for pr in &procs {
        if held > 0 {
            kib_per_session.insert(pr.label.clone(), round3((pr.rss_kib_loaded as f64 - pr.rss_kib_start as f64) / held as f64));
        }
        if messages.received > 0 {
            cpu_msgs.insert(pr.label.clone(), round3(pr.cpu_s * 1000.0 / (messages.received as f64 / 1000.0)));
        }
        if spec.workload == Workload::Setup && logins.ok > 0 {
            cpu_login.insert(pr.label.clone(), round3(pr.cpu_s * 1000.0 / logins.ok as f64));
        }
    }
    Record {
        tool: "xmpp-cm-bench",
        label: spec.label,
        note: spec.note,
        transport: spec.target.transport,
        target: spec.target_desc,
        workload: spec.workload,
        params: p,
        unix_time: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        elapsed_s: round3(t_run.elapsed().as_secs_f64()),
        logins,
        messages,
        errors_total: errs.values().sum(),
        errors: errs,
        error_samples: samples,
        procs,
        kib_per_session,
        cpu_ms_per_1000_msgs: cpu_msgs,
        cpu_ms_per_login: cpu_login,
        generator: Generator {
            // SAFETY: getpriority has no preconditions (who = 0: this thread).
            nice: unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) },
            cpu_s: round3(gen_phase),
            cpu_s_run: round3(gen_end.cpu_s - gen0.cpu_s),
            rss_kib_peak: gen_end.hwm_kib,
        },
        settle_before,
        settle_after_login,
    }
}

/// The human table for one record.
pub fn table(r: &Record) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "== {} [{}] {:?} {:?} ({:?} mode, window {}) → {}{}",
        r.label,
        r.tool,
        r.transport,
        r.workload,
        r.params.mode,
        r.params.window,
        r.target,
        if r.note.is_empty() { String::new() } else { format!("  ({})", r.note) }
    );
    let _ = writeln!(
        s,
        "sessions {} (+{} idle), logins ok {} failed {}, {:.1} logins/s over {:.2} s, login p50 {:.2} ms p99 {:.2} ms",
        r.params.sessions, r.params.idle_sessions, r.logins.ok, r.logins.failed, r.logins.per_s, r.logins.phase_s, r.logins.latency_ms.p50, r.logins.latency_ms.p99
    );
    if r.messages.latency_ms.count > 0 || r.messages.sent > 0 {
        let l = &r.messages.latency_ms;
        let _ = writeln!(
            s,
            "messages sent {} received {} → {:.1} msg/s; latency ms p50 {:.3} p95 {:.3} p99 {:.3} max {:.3} (n={})",
            r.messages.sent, r.messages.received, r.messages.per_s, l.p50, l.p95, l.p99, l.max, l.count
        );
    }
    if let (Some(w), Some(g)) = (&r.messages.latency_from_write_ms, &r.messages.send_lag_ms) {
        let _ = writeln!(s, "  from the write: p50 {:.3} p99 {:.3} max {:.3}; generator lag (write − intended): p50 {:.3} p99 {:.3} max {:.3}", w.p50, w.p99, w.max, g.p50, g.p99, g.max);
        let per: Vec<String> = r.messages.per_second.iter().map(|l| format!("{:.1}", l.p99)).collect();
        let _ = writeln!(s, "  p99 per second of the window: {}", per.join(" "));
    }
    let _ = writeln!(
        s,
        "settled before: {:.1} s{} {:?}; after the logins: {:.1} s{} {:?}",
        r.settle_before.waited_s,
        if r.settle_before.quiet { "" } else { " (not quiet)" },
        r.settle_before.cpu_cores,
        r.settle_after_login.waited_s,
        if r.settle_after_login.quiet { "" } else { " (not quiet)" },
        r.settle_after_login.cpu_cores
    );
    let _ = writeln!(s, "errors {} {:?}", r.errors_total, r.errors);
    let _ = writeln!(s, "{:<14} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}", "process", "pid", "cpu s", "cpu s run", "rss start", "rss loaded", "rss peak", "KiB/session");
    for p in &r.procs {
        let _ = writeln!(
            s,
            "{:<14} {:>8} {:>10.3} {:>10.3} {:>10} {:>10} {:>10} {:>12.2}",
            p.label, p.pid, p.cpu_s, p.cpu_s_run, p.rss_kib_start, p.rss_kib_loaded, p.rss_kib_peak, r.kib_per_session.get(&p.label).copied().unwrap_or(0.0)
        );
    }
    let _ = writeln!(s, "{:<14} {:>8} {:>10.3} {:>10.3} {:>10} {:>10} {:>10}", "generator", std::process::id(), r.generator.cpu_s, r.generator.cpu_s_run, "", "", r.generator.rss_kib_peak);
    s
}
