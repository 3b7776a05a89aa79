//! The pingpong schedule: a fixed rate per session with a random phase per session, released
//! by one pacer thread.
//!
//! Why a thread of its own rather than a `tokio::time::interval` per session:
//! - tokio's timer wheel has 1 ms granularity and rounds every deadline up to the next
//!   millisecond, so each send would leave 0–1 ms after its intended time. Latency is
//!   measured from the intended time (see `workload.rs`), so that quantisation would be added
//!   to every round trip and would swamp a 0.2 ms p50. The pacer sleeps with `nanosleep` and a
//!   1 µs timer slack instead.
//! - the whole schedule (when every session sends) is in one place: exact average rate per
//!   session (send k of session i is intended at `t0 + phase_i + k × period`, nothing skipped
//!   and nothing bunched up after a late wake-up), and the phases are drawn independently and
//!   uniformly in `[0, period)`, as real clients are not in lockstep (an even stagger would be
//!   the most favourable case; all at the same instant the least).
//!
//! The pacer hands each session the intended instant of its next send over an unbounded
//! channel; the session writes as soon as its task runs and records how late that was (the
//! generator's own lag). It never waits for anything from the sessions, so a slow target
//! cannot slow the schedule down (no coordinated omission on the sending side).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

/// A small deterministic PRNG (splitmix64) so a run can be repeated with `--seed`.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::getrandom(&mut b);
    u64::from_le_bytes(b)
}

/// Start the pacer thread: session `i` is sent `t0 + phases[i] + k × period` for every k with
/// that instant before `end`; the senders are dropped (closing the channels) when the schedule
/// is done.
pub fn start(senders: Vec<UnboundedSender<Instant>>, phases: Vec<Duration>, period: Duration, t0: Instant, end: Instant) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            // 1 µs timer slack for this thread (the default 50 µs would show in a 0.2 ms p50).
            // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
            unsafe {
                libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong);
            }
            let mut senders: Vec<Option<UnboundedSender<Instant>>> = senders.into_iter().map(Some).collect();
            let mut heap: BinaryHeap<Reverse<(Instant, usize)>> = phases.iter().enumerate().map(|(i, p)| Reverse((t0 + *p, i))).filter(|Reverse((t, _))| *t < end).collect();
            while let Some(Reverse((due, i))) = heap.pop() {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let alive = senders[i].as_ref().map(|s| s.send(due).is_ok()).unwrap_or(false);
                if !alive {
                    senders[i] = None;
                    continue;
                }
                let next = due + period;
                if next < end {
                    heap.push(Reverse((next, i)));
                } else {
                    senders[i] = None;
                }
            }
        })
        .expect("spawn the pacer thread")
}
