//! What a run measures: latency samples, counters, errors by kind, and CPU/RSS of processes
//! sampled from /proc (the targets by PID, and this generator itself).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::client::BenchError;

/// Latency samples in microseconds.
#[derive(Default)]
pub struct Samples(Vec<u32>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_micros().min(u32::MAX as u128) as u32);
    }
    pub fn extend(&mut self, o: Samples) {
        self.0.extend(o.0);
    }
    pub fn summary(mut self) -> Latency {
        if self.0.is_empty() {
            return Latency::default();
        }
        self.0.sort_unstable();
        let q = |p: f64| {
            let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
            self.0[i] as f64 / 1000.0
        };
        let sum: u64 = self.0.iter().map(|&v| v as u64).sum();
        Latency {
            count: self.0.len() as u64,
            mean: sum as f64 / self.0.len() as f64 / 1000.0,
            p50: q(0.50),
            p95: q(0.95),
            p99: q(0.99),
            max: *self.0.last().unwrap_or(&0) as f64 / 1000.0,
        }
    }
}

/// Milliseconds.
#[derive(Default, Serialize, Clone, Debug)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// Error counts by kind, with a few examples kept for the record.
#[derive(Default)]
pub struct Errors {
    inner: Mutex<(BTreeMap<&'static str, u64>, Vec<String>)>,
}

impl Errors {
    pub fn add(&self, e: &BenchError) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *g.0.entry(e.kind).or_default() += 1;
        if g.1.len() < 5 {
            let mut d = e.detail.clone();
            d.truncate(300);
            g.1.push(format!("{}: {d}", e.kind));
        }
    }
    pub fn take(&self) -> (BTreeMap<&'static str, u64>, Vec<String>) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.clone()
    }
}

/// One /proc sample of a process.
#[derive(Clone, Copy, Default, Debug)]
pub struct ProcSample {
    /// utime + stime, seconds.
    pub cpu_s: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name (which may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(ProcSample { cpu_s: (utime + stime) / hz, rss_kib: kib("VmRSS:"), hwm_kib: kib("VmHWM:") })
}

/// A watched process: label and PID from `--pid label=PID`.
#[derive(Clone, Debug)]
pub struct Watched {
    pub label: String,
    pub pid: u32,
}

impl std::str::FromStr for Watched {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (label, pid) = s.split_once('=').unwrap_or(("target", s));
        Ok(Watched { label: label.to_string(), pid: pid.parse().map_err(|_| format!("bad PID in {s:?}"))? })
    }
}

/// Per process figures of one run.
#[derive(Serialize, Clone, Debug, Default)]
pub struct ProcReport {
    pub label: String,
    pub pid: u32,
    /// CPU seconds spent during the measured phase.
    pub cpu_s: f64,
    /// CPU seconds over the whole run (logins, measurement, closing).
    pub cpu_s_run: f64,
    /// RSS when the run started (before any session of this run).
    pub rss_kib_start: u64,
    /// RSS with all sessions of the run established.
    pub rss_kib_loaded: u64,
    /// Highest RSS sampled during the run (every 100 ms).
    pub rss_kib_peak: u64,
    /// The kernel's lifetime peak (VmHWM) at the end of the run.
    pub vmhwm_kib: u64,
}

/// Samples the watched PIDs every 100 ms for peak RSS.
pub struct Watch {
    pids: Vec<Watched>,
    start: Vec<ProcSample>,
    peak: std::sync::Arc<Mutex<Vec<u64>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Watch {
    pub fn start(pids: Vec<Watched>) -> Watch {
        let start: Vec<ProcSample> = pids.iter().map(|w| sample(w.pid).unwrap_or_default()).collect();
        let peak = std::sync::Arc::new(Mutex::new(start.iter().map(|s| s.rss_kib).collect::<Vec<_>>()));
        let stop = tokio_util::sync::CancellationToken::new();
        let (p2, s2, pids2) = (peak.clone(), stop.clone(), pids.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !s2.is_cancelled() {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = s2.cancelled() => break,
                }
                for (i, w) in pids2.iter().enumerate() {
                    if let Some(s) = sample(w.pid) {
                        let mut g = p2.lock().unwrap_or_else(|p| p.into_inner());
                        g[i] = g[i].max(s.rss_kib);
                    }
                }
            }
        });
        Watch { pids, start, peak, stop }
    }

    pub fn now(&self) -> Vec<ProcSample> {
        self.pids.iter().map(|w| sample(w.pid).unwrap_or_default()).collect()
    }

    /// Build the reports: `phase` = (samples at start of the measured phase, at its end),
    /// `loaded` = samples with every session established.
    pub fn finish(self, phase: (&[ProcSample], &[ProcSample]), loaded: &[ProcSample]) -> Vec<ProcReport> {
        self.stop.cancel();
        let end = self.now();
        let peak = self.peak.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.pids
            .iter()
            .enumerate()
            .map(|(i, w)| ProcReport {
                label: w.label.clone(),
                pid: w.pid,
                cpu_s: round3(phase.1[i].cpu_s - phase.0[i].cpu_s),
                cpu_s_run: round3(end[i].cpu_s - self.start[i].cpu_s),
                rss_kib_start: self.start[i].rss_kib,
                rss_kib_loaded: loaded[i].rss_kib,
                rss_kib_peak: peak[i].max(end[i].rss_kib),
                vmhwm_kib: end[i].hwm_kib,
            })
            .collect()
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// How long a run waited for the watched processes to go quiet (see [`settle`]).
#[derive(Serialize, Clone, Debug, Default)]
pub struct Settled {
    /// Seconds waited.
    pub waited_s: f64,
    /// Whether every watched process went under the threshold before the bound.
    pub quiet: bool,
    /// CPU of each watched process over the last window, in cores.
    pub cpu_cores: BTreeMap<String, f64>,
}

/// Wait until every watched process uses at most `max_cores` of CPU over a 0.5 s window (CPU
/// time from /proc, 10 ms ticks), or `limit` has passed. Used before a run (the previous run's
/// sessions may still be closing, a flood backlog still draining) and after the logins (the
/// target may still be digesting thousands of them) so that neither lands in the measured
/// window. A steady background load that never goes under the threshold (BOSH polls of many
/// idle sessions) just makes this wait `limit` and return `quiet: false`.
pub async fn settle(pids: &[Watched], max_cores: f64, limit: Duration) -> Settled {
    let t0 = std::time::Instant::now();
    let window = Duration::from_millis(500);
    let mut out = Settled::default();
    if pids.is_empty() || limit.is_zero() {
        out.quiet = true;
        return out;
    }
    let mut prev: Vec<f64> = pids.iter().map(|w| sample(w.pid).map(|s| s.cpu_s).unwrap_or(0.0)).collect();
    let mut prev_t = std::time::Instant::now();
    loop {
        tokio::time::sleep(window).await;
        let now: Vec<f64> = pids.iter().map(|w| sample(w.pid).map(|s| s.cpu_s).unwrap_or(0.0)).collect();
        let dt = prev_t.elapsed().as_secs_f64().max(1e-3);
        prev_t = std::time::Instant::now();
        let cores: Vec<f64> = now.iter().zip(&prev).map(|(a, b)| (a - b).max(0.0) / dt).collect();
        prev = now;
        out.cpu_cores = pids.iter().zip(&cores).map(|(w, c)| (w.label.clone(), round3(*c))).collect();
        out.quiet = cores.iter().all(|c| *c <= max_cores);
        if out.quiet || t0.elapsed() >= limit {
            break;
        }
    }
    out.waited_s = round3(t0.elapsed().as_secs_f64());
    out
}
