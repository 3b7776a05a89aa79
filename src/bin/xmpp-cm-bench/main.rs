//! `xmpp-cm-bench`: load generator and helpers for benchmarking xmpp-cm against direct TCP,
//! a bare relay, Prosody's own BOSH/WebSocket and node-xmpp-bosh (bench/compare.sh).
//!
//! - `run`: log sessions in over `tcp` (RFC 6120, no TLS: the server must allow SASL PLAIN
//!   without TLS), `bosh` (XEP-0124/0206) or `ws` (RFC 7395), then run one workload (`idle`,
//!   `pingpong`, `flood`, `setup`; see `workload.rs`). Prints a table on stderr and one JSON
//!   record (stdout or appended to `--json FILE`).
//! - `upstream`: a minimal multi-threaded XMPP server (see `upstream.rs`).
//! - `relay`: a bare TCP byte relay.
//!
//! Only ever aimed at loopback: `run` refuses targets outside 127.0.0.0/8 and ::1.

mod bosh;
mod client;
mod net;
mod pace;
mod relay;
mod stats;
mod upstream;
mod workload;
mod xml;

use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use client::{ClientMode, Target, Transport};
use workload::{Params, Spec, Workload};

#[derive(Parser)]
#[command(version, about = "Load generator, bench upstream and byte relay for xmpp-cm benchmarks (loopback only)")]
struct Cli {
    /// Tokio worker threads (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Scheduling priority (nice) for all threads of this process, e.g. -10 (needs root to go
    /// below 0; ignored when not allowed). On a machine shared with the targets (and others), a
    /// generator that waits for a CPU is late to send and late to read the answer; see the
    /// generator lag in the pingpong record.
    #[arg(long, global = true, allow_hyphen_values = true)]
    nice: Option<i32>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one workload against one target.
    Run(Box<RunArgs>),
    /// Minimal XMPP server: any PLAIN login, bind, message routing between its sessions.
    Upstream {
        /// Address to listen on (repeatable; port 0 = a free port below 32768).
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
    },
    /// Bare TCP byte relay (copy_bidirectional).
    Relay {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        to: String,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, value_enum)]
    transport: Transport,
    /// tcp: HOST:PORT; bosh: http://HOST:PORT/PATH; ws: ws://HOST:PORT/PATH.
    #[arg(long)]
    target: String,
    #[arg(long, value_enum)]
    workload: Workload,
    /// Active sessions (idle: sessions held).
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Extra idle sessions held during pingpong/flood (for the growth measurement).
    #[arg(long, default_value_t = 0)]
    idle_sessions: usize,
    /// Logins in progress at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Seconds measured (idle: held; pingpong/flood: sending).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of traffic before measuring (pingpong/flood).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Messages per second per session (pingpong).
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// How stanzas go on the wire: `batch` (a BOSH body carries every queued stanza) or
    /// `browser` (one stanza per BOSH request; WebSocket is one per frame either way).
    #[arg(long, value_enum, default_value_t = ClientMode::Batch)]
    mode: ClientMode,
    /// Messages in flight per session (flood; default 8 in batch mode, 4 in browser mode).
    #[arg(long)]
    window: Option<usize>,
    /// XMPP domain(s), comma separated; session i uses domain i mod n.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Accounts are PREFIX1..PREFIXn with password PASSPREFIX1..n (i-th session: user 1 + i mod users).
    #[arg(long, default_value = "user")]
    user_prefix: String,
    #[arg(long, default_value = "pass")]
    pass_prefix: String,
    /// Number of accounts (default: as many as sessions).
    #[arg(long)]
    users: Option<usize>,
    /// BOSH `route` attribute to send, e.g. xmpp:127.0.0.1:5222.
    #[arg(long)]
    bosh_route: Option<String>,
    /// BOSH `wait` (seconds). 60 is what strophe.js (and so converse.js) asks for; an idle
    /// session's held request comes back, and is re-posted, once per `wait`.
    #[arg(long, default_value_t = 60)]
    bosh_wait: u32,
    /// Seed of the random pingpong phases (default: a random one, stored in the record).
    #[arg(long)]
    seed: Option<u64>,
    /// Before the run and after the logins, wait until every --pid process uses at most this
    /// many cores (over 0.5 s)…
    #[arg(long, default_value_t = 0.1)]
    settle_cores: f64,
    /// …or this many seconds have passed (0: do not wait).
    #[arg(long, default_value_t = 30.0)]
    settle_max: f64,
    /// Client source addresses in 127.0.0.0/8 (0: one per 20,000 connections).
    #[arg(long, default_value_t = 0)]
    sources: usize,
    /// Process to sample from /proc: LABEL=PID (repeatable).
    #[arg(long = "pid")]
    pids: Vec<stats::Watched>,
    /// Name of this run in the record and table.
    #[arg(long, default_value = "run")]
    label: String,
    /// Free text stored in the record (e.g. "upstream: xmpp-cm-bench upstream").
    #[arg(long, default_value = "")]
    note: String,
    /// Append the JSON record to this file ("-": stdout).
    #[arg(long, default_value = "-")]
    json: String,
    /// No table on stderr.
    #[arg(long)]
    quiet: bool,
}

fn main() {
    let cli = Cli::parse();
    let fd_limit = net::raise_fd_limit(1_048_576);
    if let Some(n) = cli.nice {
        // Before any thread exists: threads inherit the nice value of the thread creating them.
        // SAFETY: setpriority on this process (which = 0: the calling thread on Linux).
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) } != 0 {
            eprintln!("xmpp-cm-bench: cannot set nice {n}: {}", std::io::Error::last_os_error());
        }
    }
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    if let Some(n) = cli.threads {
        b.worker_threads(n.max(1));
    }
    let rt = match b.build() {
        Ok(rt) => rt,
        Err(e) => fail(&format!("cannot start the runtime: {e}")),
    };
    match cli.cmd {
        Cmd::Upstream { listen } => {
            check_loopback(&listen);
            rt.block_on(async {
                let ls = upstream::bind_all(&listen).await.unwrap_or_else(|e| fail(&format!("cannot listen: {e}")));
                let _ = upstream::serve(ls).await;
            });
        }
        Cmd::Relay { listen, to } => {
            check_loopback(&[listen]);
            rt.block_on(async {
                let to = net::resolve(&to).await.unwrap_or_else(|e| fail(&format!("--to: {e}")));
                check_loopback(&[to]);
                let l = net::listen(listen).await.unwrap_or_else(|e| fail(&format!("cannot listen: {e}")));
                println!("{{\"listening\":[\"{}\"]}}", l.local_addr().map(|a| a.to_string()).unwrap_or_default());
                let _ = relay::serve(l, to).await;
            });
        }
        Cmd::Run(a) => {
            rt.block_on(run(*a, fd_limit));
        }
    }
    // Sessions' driver tasks may still be parked; do not wait for them.
    rt.shutdown_background();
}

async fn run(a: RunArgs, fd_limit: u64) {
    let (addr, path, host_header) = parse_target(a.transport, &a.target).await;
    check_loopback(&[addr]);
    let conns_per_session = if a.transport == Transport::Bosh { 2 } else { 1 };
    let sources = net::Sources::new((a.sessions + a.idle_sessions) * conns_per_session, a.sources);
    let domains: Vec<String> = a.domain.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    if domains.is_empty() {
        fail("--domain is empty");
    }
    let params = Params {
        sessions: a.sessions,
        idle_sessions: a.idle_sessions,
        concurrency: a.concurrency,
        duration_s: a.duration,
        warmup_s: a.warmup,
        rate_per_session: a.rate,
        window: a.window.unwrap_or(a.mode.default_window()),
        mode: a.mode,
        domains,
        user_prefix: a.user_prefix.clone(),
        users: a.users.unwrap_or(a.sessions + a.idle_sessions).max(1),
        sources: sources.count(),
        fd_limit,
        seed: a.seed.unwrap_or_else(pace::random_seed),
        settle_cores: a.settle_cores,
        settle_max_s: a.settle_max,
    };
    let target = Arc::new(Target {
        transport: a.transport,
        addr,
        path,
        host_header,
        url: a.target.clone(),
        bosh_route: a.bosh_route.clone(),
        bosh_wait: a.bosh_wait,
        mode: a.mode,
        sources,
    });
    let spec = Spec {
        target,
        workload: a.workload,
        params,
        pass_prefix: a.pass_prefix.clone(),
        pids: a.pids.clone(),
        label: a.label.clone(),
        note: a.note.clone(),
        target_desc: a.target.clone(),
    };
    let rec = workload::run(spec).await;
    if !a.quiet {
        eprint!("{}", workload::table(&rec));
    }
    let line = serde_json::to_string(&rec).unwrap_or_else(|e| fail(&format!("cannot serialize the record: {e}")));
    if a.json == "-" {
        println!("{line}");
    } else {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&a.json).unwrap_or_else(|e| fail(&format!("{}: {e}", a.json)));
        let _ = writeln!(f, "{line}");
    }
}

/// (socket address, HTTP path, Host header) of the target.
async fn parse_target(t: Transport, s: &str) -> (SocketAddr, String, String) {
    let (scheme, rest) = match s.split_once("://") {
        Some((sc, r)) => (sc, r),
        None => ("", s),
    };
    let want = match t {
        Transport::Tcp => "",
        Transport::Bosh => "http",
        Transport::Ws => "ws",
    };
    if scheme != want && !(t == Transport::Tcp && scheme == "tcp") {
        fail(&format!("--target {s:?}: a {t:?} target looks like {}", match t {
            Transport::Tcp => "127.0.0.1:5222",
            Transport::Bosh => "http://127.0.0.1:5280/http-bind",
            Transport::Ws => "ws://127.0.0.1:5280/xmpp-websocket",
        }));
    }
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let addr = net::resolve(hostport).await.unwrap_or_else(|e| fail(&format!("--target {s:?}: {e}")));
    (addr, path, hostport.to_string())
}

fn check_loopback(addrs: &[SocketAddr]) {
    for a in addrs {
        if !a.ip().is_loopback() {
            fail(&format!("{a}: only loopback addresses (127.0.0.0/8, ::1) are allowed"));
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("xmpp-cm-bench: {msg}");
    std::process::exit(64);
}
