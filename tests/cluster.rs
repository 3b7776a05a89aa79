//! Several xmpp-cm replicas sharing BOSH sessions (issue 14, CHECKLIST §15): real Prosody behind
//! them, real HAProxy (round robin per request, no affinity) in front where a balancer is
//! wanted, real strophe.js clients and raw Rust clients.
//!
//! - CL-01: strophe.js pairs chat over BOSH through HAProxy, whichever replica each request hits;
//!   one session's requests sent to each replica in turn work; a request held at a non-owner is
//!   answered through the hop, and its repeat through a third replica is the cached answer.
//! - CL-02, CL-03, CL-04, CL-05: forged, altered, foreign-key, outside-`peer_cidrs`,
//!   previous-epoch and already-forwarded sids are `item-not-found`, and hop connections without
//!   valid authentication are closed unanswered, with a listener that must see no connection.
//! - CL-07: an owner killed with SIGKILL, or one that accepts and never answers, is
//!   `item-not-found` within the internal connect timeout; the other replicas' sessions go on.
//! - CL-08, CL-09, TX-04: rolling restart behind HAProxy: a BOSH and a WebSocket client with
//!   XEP-0198 resume through another replica and count every message sent during the switch.

mod bosh_client;
mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bosh_client::{Answer, Bosh, NS};
use xmpp_cm::cluster::SidCodec;
use xmpp_cm::xml::{parse_document, Element, Limits};

use support::c2s::{collect_until, direct_recipient};
use support::haproxy::{Backend, HaProxy};
use support::process::port_open;
use support::ws::{Ws, WsClient};
use support::xmpp_cm::toml_str;
use support::{free_port, http_request, node, tail, Prosody, ProsodyOpts, XmppCm};

const D: &str = "localhost";
const T: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- the replicas

/// One xmpp-cm process in cluster mode.
struct Replica {
    cm: XmppCm,
    /// Its config, to start a later process at the same addresses.
    toml: String,
    /// `cluster.listen`, also its `cluster.advertise`.
    internal: SocketAddr,
}

impl Replica {
    fn bosh_url(&self) -> String {
        self.cm.bosh_url()
    }
    fn backend(&self) -> Backend {
        let port = |u: &str| u.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port");
        Backend { addr: self.cm.http_addr().parse().expect("http addr"), check_port: port(&self.cm.admin_url()) }
    }
    async fn metrics(&self) -> Metrics {
        let url = format!("{}/metrics", self.cm.admin_url());
        Metrics(http_request("GET", &url, &[], b"", T).await.unwrap_or_else(|e| panic!("GET {url}: {e}")).body)
    }
}

/// Prosody and N replicas in front of it sharing one cluster key.
struct Replicas {
    // Field order: the replicas stop before Prosody.
    r: Vec<Replica>,
    p: Prosody,
    /// The key as written in the file (base64 text, like `openssl rand -base64 48`).
    key: String,
    key_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Replicas {
    /// Prosody (PLAIN only, `users` extra accounts, 60 s XEP-0198 hibernation) and `n`
    /// replicas, each with `extra` config overrides.
    fn start(n: usize, users: usize, extra: &[(&str, &str)]) -> Replicas {
        let p = Prosody::start(ProsodyOpts {
            plain_only: true,
            users,
            extra_config: "smacks_hibernation_time = 60\n".into(),
            ..Default::default()
        });
        let dir = tempfile::Builder::new().prefix("xmpp-cm-cluster-").tempdir().expect("temp dir");
        let mut raw = [0u8; 48];
        getrandom::getrandom(&mut raw).expect("random");
        let key = base64::engine::general_purpose::STANDARD.encode(raw);
        let key_file = dir.path().join("cluster.key");
        std::fs::write(&key_file, format!("{key}\n")).expect("write key");
        let mut c = Replicas { r: Vec::new(), p, key, key_file, _dir: dir };
        for _ in 0..n {
            let (toml, internal) = c.config(extra);
            c.r.push(start_replica(toml, internal));
        }
        c
    }

    /// A replica config: free ports, this cluster's key, peers = 127.0.0.1/32, per-IP limits
    /// raised (every client comes from loopback).
    fn config(&self, extra: &[(&str, &str)]) -> (String, SocketAddr) {
        let internal = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let addr = toml_str(&internal.to_string());
        let file = toml_str(self.key_file.to_str().expect("UTF-8 temp path"));
        let mut o: Vec<(&str, &str)> = vec![
            ("cluster.secret_file", &file),
            ("cluster.listen", &addr),
            ("cluster.advertise", &addr),
            ("cluster.peer_cidrs", "[\"127.0.0.1/32\"]"),
            ("limits.max_sessions_per_ip", "1000"),
            ("limits.new_sessions_per_ip_per_sec", "1000"),
        ];
        o.extend_from_slice(extra);
        (XmppCm::config_with(&self.p, &o), internal)
    }

    fn codec(&self) -> SidCodec {
        SidCodec::new(self.key.as_bytes())
    }

    /// Index of the replica whose internal address `sid` names.
    fn owner_of(&self, sid: &str) -> usize {
        let (addr, _) = self.codec().open(sid).unwrap_or_else(|| panic!("sid {sid} does not open under the cluster key"));
        self.r.iter().position(|r| r.internal == addr).unwrap_or_else(|| panic!("sid names {addr}, no replica of this cluster"))
    }

    fn bosh_urls(&self) -> Vec<String> {
        self.r.iter().map(Replica::bosh_url).collect()
    }

    fn backends(&self) -> Vec<Backend> {
        self.r.iter().map(Replica::backend).collect()
    }

    async fn metrics(&self) -> Vec<Metrics> {
        let mut out = Vec::new();
        for r in &self.r {
            out.push(r.metrics().await);
        }
        out
    }

    /// Every replica's log tail, for failure messages.
    fn logs(&self) -> String {
        self.r.iter().enumerate().map(|(i, r)| format!("--- replica {i} ---\n{}\n", tail(r.cm.log_path(), 40))).collect()
    }
}

impl Drop for Replicas {
    /// Replicas with live sessions drain (up to `[drain] grace`) before the harness kills them
    /// 3 s after SIGTERM: let them all do that at the same time, not one after the other.
    fn drop(&mut self) {
        for r in &self.r {
            r.cm.signal("TERM");
        }
    }
}

/// Start `toml`; wait (≤10 s) for its internal listener too.
fn start_replica(toml: String, internal: SocketAddr) -> Replica {
    let cm = XmppCm::start(&toml);
    let t0 = Instant::now();
    while !port_open(internal.port()) {
        assert!(t0.elapsed() < Duration::from_secs(10), "cluster listener {internal} not up\n{}", tail(cm.log_path(), 60));
        std::thread::sleep(Duration::from_millis(50));
    }
    Replica { cm, toml, internal }
}

// ---------------------------------------------------------------- metrics

/// One /metrics scrape.
struct Metrics(String);

impl Metrics {
    /// Sum of the samples named exactly `name` whose labels include every pair of `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name).into_iter().filter(|(l, _)| labels.iter().all(|(k, v)| l.get(*k).is_some_and(|x| x == v))).map(|(_, v)| v).sum()
    }

    /// The samples of `name`: (labels, value).
    fn samples(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let mut out = Vec::new();
        for line in self.0.lines().filter(|l| !l.starts_with('#')) {
            let (head, value) = match line.rsplit_once(' ') {
                Some(x) => x,
                None => continue,
            };
            let (n, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (head, ""),
            };
            if n != name {
                continue;
            }
            let labels = labels
                .split("\",")
                .filter_map(|kv| kv.split_once("=\""))
                .map(|(k, v)| (k.to_string(), v.trim_end_matches('"').to_string()))
                .collect();
            out.push((labels, value.parse().unwrap_or(f64::NAN)));
        }
        out
    }
}

fn total(ms: &[Metrics], name: &str, labels: &[(&str, &str)]) -> f64 {
    ms.iter().map(|m| m.sum(name, labels)).sum()
}

/// No forward failed, nothing was refused by the cluster rules, no session ended with
/// item-not-found, on any replica.
fn assert_no_cluster_failures(ms: &[Metrics], logs: &str) {
    for (i, m) in ms.iter().enumerate() {
        for (l, v) in m.samples("xmpp_cm_cluster_forwards_total") {
            assert!(l.get("result").map(String::as_str) == Some("ok") || v == 0.0, "replica {i}: forwards {l:?} = {v}\n{logs}");
        }
        for (l, v) in m.samples("xmpp_cm_cluster_refused_total") {
            assert_eq!(v, 0.0, "replica {i}: refused {l:?}\n{logs}");
        }
        let inf = m.sum("xmpp_cm_sessions_ended_total", &[("condition", "item_not_found")]);
        assert_eq!(inf, 0.0, "replica {i}: sessions ended with item-not-found\n{logs}");
    }
}

// ---------------------------------------------------------------- small helpers

fn chat(to: &str, body: &str) -> String {
    format!("<message xmlns='jabber:client' to='{to}' type='chat'><body>{body}</body></message>")
}

/// A BOSH request body for `sid` that no session has seen (rid chosen by the caller).
fn bare_request(sid: &str, rid: u64) -> String {
    format!("<body {NS} sid='{sid}' rid='{rid}'/>")
}

fn assert_item_not_found(a: &Answer, what: &str) {
    assert_eq!(a.status, 200, "{what}: {}", a.raw);
    assert!(a.is_terminate(), "{what}: {}", a.raw);
    assert_eq!(a.condition().as_deref(), Some("item-not-found"), "{what}: {}", a.raw);
}

/// A listener that counts every TCP connection it accepts (kept open, never read): a place
/// xmpp-cm must not connect to, or (as an owner that accepts and never answers) may.
struct Sentinel {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Sentinel {
    fn bind(ip: Ipv4Addr) -> Sentinel {
        let port = if ip == Ipv4Addr::LOCALHOST { free_port() } else { 0 };
        let l = TcpListener::bind((ip, port)).unwrap_or_else(|e| panic!("bind sentinel on {ip}: {e}"));
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let (hits, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (h, s) = (hits.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        h.fetch_add(1, Ordering::SeqCst);
                        held.push(c);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Sentinel { addr, hits, stop }
    }
    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A sid that opens under the same key but names another owner: one character changed in the
/// middle (not the last one, whose low bits may be padding).
fn altered(sid: &str) -> String {
    let mut b: Vec<u8> = sid.bytes().collect();
    let i = b.len() / 2;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

fn random_sid() -> String {
    let mut raw = [0u8; 40];
    getrandom::getrandom(&mut raw).expect("random");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

// ---------------------------------------------------------------- a. round robin, strophe.js

const PAIRS: usize = 4;

/// CL-01: strophe.js pairs log in over BOSH through a round-robin HAProxy in front of three
/// replicas and chat both ways; every run succeeds, each replica got requests, about two thirds
/// were forwarded to their owner, and none failed, was refused or met an unknown sid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_round_robin_haproxy() {
    let c = Replicas::start(3, 2 * PAIRS, &[]);
    let lb = HaProxy::start(&c.backends());
    let url = format!("{}/http-bind", lb.http_base());
    let runs: Vec<_> = (0..PAIRS)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let a = format!("user{}:pass{}", 2 * i + 1, 2 * i + 1);
                let b = format!("user{}:pass{}", 2 * i + 2, 2 * i + 2);
                let args = ["--transport", "bosh", "--url", &url, "--domain", D, "--a", &a, "--b", &b, "--messages", "3"];
                node("strophe-chat.mjs", &args, Duration::from_secs(45))
            })
        })
        .collect();
    let outs: Vec<_> = runs.into_iter().map(|r| r.join().expect("node thread")).collect();
    for (i, o) in outs.iter().enumerate() {
        if !o.success() {
            eprintln!("{}--- haproxy ---\n{}", c.logs(), tail(lb.log_path(), 30));
        }
        o.assert_ok(&format!("strophe pair {i} through HAProxy"));
    }

    let ms = c.metrics().await;
    let logs = c.logs();
    for (i, m) in ms.iter().enumerate() {
        let reqs = m.sum("xmpp_cm_http_requests_total", &[("route", "bosh")]);
        assert!(reqs > 0.0, "replica {i} got no BOSH request: HAProxy is not balancing per request");
    }
    let ok = total(&ms, "xmpp_cm_cluster_forwards_total", &[("result", "ok")]);
    let served = total(&ms, "xmpp_cm_cluster_served_total", &[]);
    let all = total(&ms, "xmpp_cm_http_requests_total", &[("route", "bosh")]);
    eprintln!("BOSH requests {all}, forwarded ok {ok}, served for a peer {served}");
    assert!(ok > 0.0 && served > 0.0, "no forwarding happened: ok {ok}, served {served}\n{logs}");
    // Every forwarded request reached its session at the owner (an unknown sid there would be
    // an ok forward without a served one).
    assert_eq!(ok, served, "forwards answered ok vs. requests the owners served\n{logs}");
    assert_no_cluster_failures(&ms, &logs);
    for s in lb.servers() {
        assert!(s.responses_2xx > 0, "HAProxy sent nothing to {}: {s:?}", s.name);
        assert_eq!(s.responses_other, 0, "HAProxy saw non-2xx answers from {}: {s:?}", s.name);
    }
}

// ---------------------------------------------------------------- b. each replica in turn

/// CL-01 without a balancer: request n of one session goes to replica n % 3 (the creation to
/// replica 0, its owner): login, a message to a direct c2s user and one back, and the
/// terminate all work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_sent_to_each_replica_in_turn() {
    let c = Replicas::start(3, 0, &[]);
    let carol = direct_recipient(c.p.c2s_port(), D, "carol", "carolpass");
    let mut carol_w = carol.try_clone().unwrap();
    let carol_jid = format!("carol@{D}/direct");
    let (mut b, jid) = Bosh::login_rotating(&c.bosh_urls(), D, "alice", "alicepass", 3).await;
    assert_eq!(c.owner_of(&b.sid), 0);

    let reader = std::thread::spawn(move || collect_until(carol, vec!["alice-to-carol".into()], Duration::from_secs(15)));
    let a = b.send("", &chat(&carol_jid, "alice-to-carol")).await;
    assert!(!a.is_terminate(), "{}", a.raw);
    let got = reader.join().unwrap();
    assert!(got.contains("alice-to-carol"), "carol got: {got}");
    std::io::Write::write_all(&mut carol_w, chat(&jid, "carol-to-alice").as_bytes()).unwrap();
    b.poll_until("carol-to-alice", Duration::from_secs(15)).await;
    let end = b.send("type='terminate'", "<presence xmlns='jabber:client' type='unavailable'/>").await;
    assert!(end.is_terminate() && end.condition().is_none(), "{}", end.raw);
    let sent = b.sent;
    assert!(sent >= 6, "only {sent} requests: not every replica got two");

    let ms = c.metrics().await;
    let logs = c.logs();
    for (i, m) in ms.iter().enumerate() {
        let reqs = m.sum("xmpp_cm_http_requests_total", &[("route", "bosh")]);
        assert!(reqs >= (sent / 3) as f64, "replica {i}: {reqs} BOSH requests of {sent}");
        let fwd = m.sum("xmpp_cm_cluster_forwards_total", &[("result", "ok")]);
        if i == 0 {
            assert_eq!(fwd, 0.0, "the owner forwarded\n{logs}");
        } else {
            assert_eq!(fwd, reqs, "replica {i}: every request it got is forwarded\n{logs}");
        }
    }
    let served = ms[0].sum("xmpp_cm_cluster_served_total", &[]);
    assert_eq!(served, total(&ms, "xmpp_cm_cluster_forwards_total", &[("result", "ok")]), "{logs}");
    assert_no_cluster_failures(&ms, &logs);
}

// ---------------------------------------------------------------- c. held request, repeat

/// CL-01, BOSH-R-10 across replicas: a request held at a non-owner (B) is answered through the
/// hop when a message arrives; the same request repeated through a third replica (C) gets the
/// cached answer byte for byte, and its payload is not sent upstream again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_request_answered_through_the_hop_and_repeat_returns_cached() {
    let c = Replicas::start(3, 0, &[]);
    let urls = c.bosh_urls();
    let bob = direct_recipient(c.p.c2s_port(), D, "bob", "bobpass");
    let mut bob_w = bob.try_clone().unwrap();
    let bob_jid = format!("bob@{D}/direct");
    let (mut b, jid) = Bosh::login(&urls[0], D, "alice", "alicepass", 10).await;
    assert_eq!(c.owner_of(&b.sid), 0);

    // Held at B (forwarded to A), carrying a message for bob.
    let body = b.next_body("", &chat(&bob_jid, "alice-once"));
    let (u1, b1) = (urls[1].clone(), body.clone());
    let held = tokio::spawn(async move { bosh_client::post(&u1, &b1, Duration::from_secs(30)).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!held.is_finished(), "the request through B was answered before anything arrived for alice");
    let t0 = Instant::now();
    std::io::Write::write_all(&mut bob_w, chat(&jid, "bob-while-held").as_bytes()).unwrap();
    let first = held.await.unwrap();
    let took = t0.elapsed();
    assert_eq!(first.status, 200, "{}", first.raw);
    assert!(first.raw.contains("bob-while-held"), "{}", first.raw);
    assert!(took < Duration::from_secs(3), "held answer came {took:?} after the message (wait is 10 s)");

    // The same rid, same body, through C: the cached answer.
    let again = bosh_client::post(&urls[2], &body, Duration::from_secs(15)).await;
    assert_eq!(again.status, 200, "{}", again.raw);
    assert_eq!(again.raw, first.raw, "the repeat through another replica is not the cached answer");

    // Bob got alice's message exactly once; the session goes on (next rid, through C).
    let got = collect_until(bob, vec!["never-sent".into()], Duration::from_millis(1500));
    assert_eq!(got.matches("alice-once").count(), 1, "bob got: {got}");
    std::io::Write::write_all(&mut bob_w, chat(&jid, "bob-after-repeat").as_bytes()).unwrap();
    b.url = urls[2].clone();
    b.poll_until("bob-after-repeat", Duration::from_secs(15)).await;
    assert_eq!(b.count("bob-while-held"), 0, "the held answer came again on a new rid: {:?}", b.received);

    let ms = c.metrics().await;
    let logs = c.logs();
    assert!(ms[1].sum("xmpp_cm_cluster_forwards_total", &[("result", "ok")]) >= 1.0, "{logs}");
    assert!(ms[2].sum("xmpp_cm_cluster_forwards_total", &[("result", "ok")]) >= 2.0, "{logs}");
    assert!(ms[0].sum("xmpp_cm_cluster_served_total", &[]) >= 3.0, "{logs}");
    assert!(ms[1].sum("xmpp_cm_cluster_forward_duration_seconds_count", &[]) >= 1.0, "{logs}");
    assert_no_cluster_failures(&ms, &logs);
}

// ---------------------------------------------------------------- d. forged sids

/// CL-02, CL-03, CL-04, CL-05: each sid below is HTTP 200 + `item-not-found` with no
/// connection attempt (the sentinel it names must see nothing), counted under its reason; hop
/// connections without valid authentication are refused. A control at the end: the same sentinel,
/// named by a valid sid inside `peer_cidrs`, does get a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_foreign_sids_cause_no_connection() {
    let mut c = Replicas::start(1, 0, &[("drain.grace", "2")]);
    let inside = Sentinel::bind(Ipv4Addr::LOCALHOST);
    let outside = Sentinel::bind(Ipv4Addr::new(127, 0, 0, 2));
    let codec = c.codec();
    let url = c.r[0].bosh_url();
    let post = |sid: String, what: &'static str| {
        let url = url.clone();
        async move {
            let a = bosh_client::post(&url, &bare_request(&sid, 1000), T).await;
            assert_item_not_found(&a, what);
        }
    };

    post(random_sid(), "random sid").await;
    post("not-a-sid".into(), "short garbage sid").await;
    let valid = codec.mint(inside.addr, 1);
    assert_eq!(codec.open(&valid), Some((inside.addr, 1)), "SidCodec round trip");
    let changed = altered(&valid);
    assert_ne!(codec.open(&changed), Some((inside.addr, 1)));
    post(changed, "altered sid").await;
    let other_key = SidCodec::new(b"another cluster's key, at least thirty-two bytes long");
    post(other_key.mint(inside.addr, 1), "sid under another key").await;
    post(codec.mint(outside.addr, 1), "sid outside peer_cidrs").await;

    // Over the internal hop, authenticated, naming a third party: never forwarded again.
    let internal = c.r[0].internal;
    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let hop = |key: &[u8]| xmpp_cm::cluster::Hop::new(key, peer, Duration::from_millis(500), T);
    let signer = hop(c.key.as_bytes());
    let body = bare_request(&valid, 1000);
    let a = signer.forward(internal, body.as_bytes(), Some("198.51.100.7:4444".parse().unwrap())).await.expect("hop to the replica");
    assert_eq!(a.status, 200, "{a:?}");
    assert!(String::from_utf8_lossy(&a.body).contains("item-not-found"), "authenticated hop request naming another owner: {a:?}");

    // A live session at the replica: hop requests for it without valid authentication are
    // refused and touch nothing (its payload never reaches carol, its rid is not used up).
    // (A frame altered on the wire is refused the same way: cluster::hop's unit tests.)
    let carol = direct_recipient(c.p.c2s_port(), D, "carol", "carolpass");
    let (mut b, _) = Bosh::login(&url, D, "alice", "alicepass", 5).await;
    let forged = b.body_for(b.rid + 1, "", &chat(&format!("carol@{D}/direct"), "forged-hop"));
    let other_key = hop(b"another cluster's key, at least thirty-two bytes long");
    let e = other_key.forward(internal, forged.as_bytes(), None).await.expect_err("a hop under another key was answered");
    assert_eq!(e.result(), "refused", "{e}");
    // Not the hop protocol at all (an HTTP request): closed without an answer.
    let raw = format!("POST /http-bind HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{forged}", forged.len());
    let got = support::http::raw_exchange(&internal.to_string(), raw.as_bytes(), T).await.unwrap_or_default();
    assert!(got.is_empty(), "the internal listener answered an HTTP request: {}", String::from_utf8_lossy(&got));
    let a = b.send("", &chat(&format!("carol@{D}/direct"), "real-message")).await;
    assert!(!a.is_terminate(), "the session was touched by a refused hop request: {}", a.raw);
    let got = collect_until(carol, vec!["real-message".into()], T);
    assert!(got.contains("real-message"), "carol got: {got}");
    assert!(!got.contains("forged-hop"), "a refused hop request's payload was delivered: {got}");

    let m = c.r[0].metrics().await;
    let logs = c.logs();
    let reason = |r: &str| m.sum("xmpp_cm_cluster_refused_total", &[("reason", r)]);
    assert_eq!(reason("bad_sid"), 4.0, "{logs}");
    assert_eq!(reason("outside_peer_cidrs"), 1.0, "{logs}");
    assert_eq!(reason("forwarded_twice"), 1.0, "{logs}");
    assert_eq!(reason("hop_auth"), 2.0, "{logs}");
    assert_eq!(m.sum("xmpp_cm_cluster_forwards_total", &[]), 0.0, "a forward was attempted\n{logs}");
    assert_eq!((inside.hits(), outside.hits()), (0, 0), "a refused sid made xmpp-cm connect\n{logs}");

    // CL-04: a sid of the previous process at the same address (same config, new epoch).
    let old_sid = b.sid.clone();
    let next = b.body_for(b.rid + 1, "", "");
    let toml = c.r[0].toml.clone();
    let internal = c.r[0].internal;
    let mut old = c.r.remove(0);
    old.cm.signal("TERM");
    let status = tokio::task::spawn_blocking(move || old.cm.wait_exit(Duration::from_secs(10))).await.unwrap();
    assert!(status.is_some_and(|s| s.success()), "the first process exited with {status:?}");
    c.r.push(start_replica(toml, internal));
    let a = bosh_client::post(&c.r[0].bosh_url(), &next, T).await;
    assert_item_not_found(&a, "sid of the previous process");
    let m = c.r[0].metrics().await;
    assert_eq!(m.sum("xmpp_cm_cluster_refused_total", &[("reason", "stale_epoch")]), 1.0, "{}", c.logs());
    assert_eq!(c.codec().open(&old_sid).map(|(a, _)| a), Some(internal));

    // Control: a valid sid naming the sentinel inside peer_cidrs is dialled (so the silence
    // above means something).
    let a = bosh_client::post(&c.r[0].bosh_url(), &bare_request(&valid, 1000), T).await;
    assert_item_not_found(&a, "valid sid naming a silent owner");
    assert!(inside.hits() >= 1, "the sentinel saw no connection even for a valid sid");
    assert_eq!(outside.hits(), 0);
}

// ---------------------------------------------------------------- e. dead owners

/// CL-07: an owner killed with SIGKILL gives its sessions' clients `item-not-found` within 2 s
/// (through a pooled hop connection to it); the other replicas' sessions work on, forwarded
/// between them. An owner that accepts TCP and never answers is `item-not-found` within
/// `connect_timeout_ms` + 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_killed_gives_item_not_found_fast() {
    let connect_timeout_ms = 300u64;
    let ct = connect_timeout_ms.to_string();
    let mut c = Replicas::start(3, 0, &[("cluster.connect_timeout_ms", &ct)]);
    let urls = c.bosh_urls();
    let (mut alice, _) = Bosh::login(&urls[0], D, "alice", "alicepass", 2).await;
    let (mut bob, bob_jid) = Bosh::login(&urls[1], D, "bob", "bobpass", 2).await;
    let (mut carol, carol_jid) = Bosh::login(&urls[2], D, "carol", "carolpass", 2).await;
    assert_eq!([c.owner_of(&alice.sid), c.owner_of(&bob.sid), c.owner_of(&carol.sid)], [0, 1, 2]);
    // B has a hop connection to A (pooled) before A dies.
    alice.url = urls[1].clone();
    let a = alice.send("", "<presence xmlns='jabber:client'><status>via B</status></presence>").await;
    assert!(!a.is_terminate(), "{}", a.raw);

    c.r[0].cm.signal("KILL");
    let status = c.r[0].cm.wait_exit(Duration::from_secs(5));
    assert!(status.is_some(), "replica 0 did not die");
    let t0 = Instant::now();
    let a = alice.send("", "").await;
    let took = t0.elapsed();
    assert_item_not_found(&a, "request for the killed owner's session");
    assert!(took < Duration::from_secs(2), "item-not-found took {took:?}");
    eprintln!("killed owner: item-not-found after {took:?}");

    // B's and C's sessions, each reached through the other.
    bob.url = urls[2].clone();
    carol.url = urls[1].clone();
    let a = bob.send("", &chat(&carol_jid, "bob-to-carol")).await;
    assert!(!a.is_terminate(), "{}", a.raw);
    carol.poll_until("bob-to-carol", T).await;
    let a = carol.send("", &chat(&bob_jid, "carol-to-bob")).await;
    assert!(!a.is_terminate(), "{}", a.raw);
    bob.poll_until("carol-to-bob", T).await;

    // A silent owner: accepts, never answers.
    let silent = Sentinel::bind(Ipv4Addr::LOCALHOST);
    let sid = c.codec().mint(silent.addr, 7);
    let t0 = Instant::now();
    let a = bosh_client::post(&urls[1], &bare_request(&sid, 1000), T).await;
    let took = t0.elapsed();
    assert_item_not_found(&a, "request for a silent owner");
    assert!(silent.hits() >= 1, "the silent owner was not dialled");
    let bound = Duration::from_millis(connect_timeout_ms + 1000);
    assert!(took < bound, "silent owner: item-not-found after {took:?} (bound {bound:?})");
    eprintln!("silent owner: item-not-found after {took:?}");

    let m1 = c.r[1].metrics().await;
    let logs = c.logs();
    assert!(m1.sum("xmpp_cm_cluster_forwards_total", &[("result", "connect_failed")]) >= 2.0, "{logs}");
    assert_eq!(m1.sum("xmpp_cm_cluster_forwards_total", &[("result", "lost")]), 0.0, "{logs}");
    let m2 = c.r[2].metrics().await;
    assert!(m2.sum("xmpp_cm_cluster_forwards_total", &[("result", "ok")]) >= 1.0, "{logs}");
}

// ---------------------------------------------------------------- f. rolling restart, XEP-0198

/// What one XEP-0198 client saw (shared with the test while it runs).
#[derive(Default, Debug)]
struct Track {
    /// The numbers of the sender's messages received, in arrival order (repeats included).
    nums: Vec<u64>,
    /// Successful `<resumed/>`.
    resumes: usize,
    /// Numbered messages that came with a `<delay/>` (queued by the server while the session
    /// was hibernated, resent after `<resumed/>`).
    delayed: usize,
    /// Requests the balancer did not answer with a BOSH body (each retransmitted).
    http_errors: usize,
    /// How each connection ended, what went wrong on the way.
    events: Vec<String>,
}

/// XEP-0198 bookkeeping common to both transports.
struct Sm {
    /// Stanzas handled since `<enabled/>` (the `h` we report).
    h: u64,
    counting: bool,
    id: String,
    tag: String,
    track: Arc<Mutex<Track>>,
}

impl Sm {
    fn new(tag: &str, track: Arc<Mutex<Track>>) -> Sm {
        Sm { h: 0, counting: false, id: String::new(), tag: tag.to_string(), track }
    }

    /// Handle one top-level element; `true` when the server asked for an ack.
    fn element(&mut self, e: &Element) -> bool {
        const SM: &str = "urn:xmpp:sm:3";
        match (e.name.as_str(), e.ns.as_str()) {
            ("enabled", SM) => {
                self.counting = true;
                self.id = e.attr("id").unwrap_or_default().to_string();
                assert!(e.attr("resume").is_some_and(|r| r == "true" || r == "1"), "no resumption offered: {}", e.to_xml(""));
            }
            ("resumed", SM) => {
                self.counting = true;
                self.track.lock().unwrap().resumes += 1;
            }
            ("failed", SM) => panic!("{}: XEP-0198 failed: {}", self.tag, e.to_xml("")),
            ("r", SM) => return true,
            ("message" | "presence" | "iq", _) if self.counting => {
                self.h += 1;
                let body = e.elements().find(|c| c.name == "body").map(|b| b.text()).unwrap_or_default();
                if let Some(n) = body.strip_prefix(&format!("m-{}-", self.tag)).and_then(|n| n.parse().ok()) {
                    let mut t = self.track.lock().unwrap();
                    t.nums.push(n);
                    t.delayed += usize::from(e.child("delay", "urn:xmpp:delay").is_some());
                }
            }
            _ => {}
        }
        false
    }

    fn ack(&self) -> String {
        format!("<a xmlns='urn:xmpp:sm:3' h='{}'/>", self.h)
    }
    fn enable() -> &'static str {
        "<enable xmlns='urn:xmpp:sm:3' resume='true'/>"
    }
    fn resume(&self) -> String {
        format!("<resume xmlns='urn:xmpp:sm:3' h='{}' previd='{}'/>", self.h, self.id)
    }
    fn event(&self, e: String) {
        eprintln!("[{}] {e}", self.tag);
        self.track.lock().unwrap().events.push(e);
    }
}

/// Retry `f` with backoff (100 ms doubling to 1 s) for up to 15 s.
async fn with_retry<R, F, Fut>(what: &str, mut f: F) -> R
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<R, String>>,
{
    let t0 = Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if t0.elapsed() < Duration::from_secs(15) => {
                eprintln!("{what}: {e}; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => panic!("{what}: gave up after {:?}: {e}", t0.elapsed()),
        }
    }
}

/// A BOSH session through the balancer with XEP-0198 enabled: polls, acks every `<r/>`, and
/// when its session ends (any terminate) creates a new one and resumes.
struct SmBosh {
    url: String,
    b: Bosh,
    sm: Sm,
    jid: String,
    /// An `<a/>` due, sent with the next request.
    pending: String,
}

impl SmBosh {
    async fn new_session(url: &str) -> Bosh {
        with_retry("BOSH session creation", || async {
            Bosh::try_create(url, D, 10, "").await.map_err(|a| format!("refused: {} {}", a.status, a.raw))
        })
        .await
    }

    async fn login(url: &str, user: &str, pass: &str, track: Arc<Mutex<Track>>) -> SmBosh {
        let mut b = Self::new_session(url).await;
        b.authenticate(user, pass).await;
        let (b, jid) = b.bind().await;
        let mut s = SmBosh { url: url.into(), b, sm: Sm::new(user, track), jid, pending: String::new() };
        s.exchange(Sm::enable()).await;
        while !s.sm.counting {
            s.exchange("").await;
        }
        s
    }

    /// One request with `payload` (after the ack due, if any), its answer handled; the
    /// terminate condition when the session ended.
    async fn exchange(&mut self, payload: &str) -> Option<String> {
        let payload = std::mem::take(&mut self.pending) + payload;
        let body = self.b.next_body("", &payload);
        let a = loop {
            let a = self.b.send_raw(&body).await;
            if a.status == 200 && a.raw.starts_with("<body") {
                break a;
            }
            // A balancer error: a real client retransmits the same rid.
            self.sm.track.lock().unwrap().http_errors += 1;
            self.sm.event(format!("HTTP {} on rid {}: {}", a.status, self.b.rid, a.raw));
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut ack = false;
        for c in a.children() {
            ack |= self.sm.element(&c);
        }
        if a.is_terminate() {
            return Some(a.condition().unwrap_or_else(|| "(none)".into()));
        }
        if ack {
            self.pending = self.sm.ack();
        }
        None
    }

    async fn run(mut self, user: &str, pass: &str, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            let Some(why) = self.exchange("").await else { continue };
            self.sm.event(format!("BOSH session ended: {why}; resuming with h={}", self.sm.h));
            let mut b = Self::new_session(&self.url).await;
            b.authenticate(user, pass).await;
            self.b = b;
            self.pending.clear();
            self.sm.counting = false;
            let resume = self.sm.resume();
            self.exchange(&resume).await;
            while !self.sm.counting {
                if let Some(why) = self.exchange("").await {
                    panic!("{user}: the resumed session ended at once: {why}");
                }
            }
            self.sm.event(format!("BOSH resumed as {} (new sid {})", self.jid, self.b.sid));
        }
    }
}

/// A WebSocket through the balancer with XEP-0198 enabled; resumes through a new connection
/// when the server closes it.
struct SmWs {
    url: String,
    ws: Ws,
    sm: Sm,
    jid: String,
}

impl SmWs {
    async fn login(url: &str, user: &str, pass: &str, track: Arc<Mutex<Track>>) -> SmWs {
        let mut ws = with_retry("WebSocket login", || WsClient::try_authenticate(url, D, user, pass)).await;
        ws.try_send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>").await.unwrap();
        let r = ws.try_recv_until("<jid>").await.unwrap();
        let jid = r.split("<jid>").nth(1).and_then(|s| s.split("</jid>").next()).unwrap_or_default().to_string();
        let mut s = SmWs { url: url.into(), ws, sm: Sm::new(user, track), jid };
        s.ws.try_send(Sm::enable()).await.unwrap();
        while !s.sm.counting {
            let f = s.ws.try_recv().await.unwrap();
            s.frame(&f).await.unwrap();
        }
        s.ws.try_send("<presence/>").await.unwrap();
        s
    }

    async fn frame(&mut self, f: &str) -> Result<(), String> {
        match parse_document(f.as_bytes(), &Limits::default(), &[]) {
            Ok(e) => {
                if self.sm.element(&e) {
                    self.ws.try_send(&self.sm.ack()).await?;
                }
            }
            Err(_) if f.contains("stream:error") || f.starts_with("<close") => {}
            Err(err) => self.sm.event(format!("unparsable frame ({err}): {f}")),
        }
        Ok(())
    }

    async fn close(mut self) {
        let _ = self.ws.try_send("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>").await;
        let _ = self.ws.ws.close(None).await;
    }

    async fn run(mut self, user: &str, pass: &str, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(200), self.ws.try_recv()).await {
                Err(_) => continue,
                Ok(Ok(f)) => {
                    if f.contains("stream:error") {
                        self.sm.event(format!("stream error: {f}"));
                    }
                    match self.frame(&f).await {
                        Ok(()) => continue,
                        Err(e) => self.sm.event(format!("{e}; resuming with h={}", self.sm.h)),
                    }
                }
                Ok(Err(e)) => self.sm.event(format!("WebSocket ended: {e}; resuming with h={}", self.sm.h)),
            }
            // The connection is gone (or going): resume through a new one.
            let mut ws = with_retry("WebSocket reconnect", || WsClient::try_authenticate(&self.url, D, user, pass)).await;
            self.sm.counting = false;
            ws.try_send(&self.sm.resume()).await.unwrap();
            self.ws = ws;
            while !self.sm.counting {
                let f = self.ws.try_recv().await.unwrap_or_else(|e| panic!("{user}: waiting for <resumed/>: {e}"));
                self.frame(&f).await.unwrap();
            }
            self.sm.event(format!("WebSocket resumed as {}", self.jid));
        }
    }
}

/// A client task must run until the test stops it: show its panic if it ended.
async fn alive(j: &mut tokio::task::JoinHandle<()>) {
    if j.is_finished() {
        match j.await {
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            r => panic!("a client task ended by itself: {r:?}"),
        }
    }
}

/// The replica whose `xmpp_cm_sessions_created_total{transport="websocket"}` moved.
async fn new_ws_owner(c: &Replicas, before: &[f64]) -> Option<usize> {
    let now: Vec<f64> = c.metrics().await.iter().map(|m| m.sum("xmpp_cm_sessions_created_total", &[("transport", "websocket")])).collect();
    now.iter().zip(before).position(|(n, b)| n > b)
}

const GRACE: u64 = 8;

/// CL-08, CL-09, TX-04: three replicas behind HAProxy; a BOSH and a WebSocket client, both
/// with XEP-0198 resumption and both owned by replica O, while a direct c2s sender sends each of
/// them a numbered message every 50 ms. SIGTERM O: HAProxy takes it out (`/readyz` 503), each
/// client's session ends within the grace, each reconnects through HAProxy to another replica
/// and resumes; every message arrives, none twice; O exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_no_message() {
    let grace = GRACE.to_string();
    let mut c = Replicas::start(3, 0, &[("drain.grace", &grace), ("log.level", "\"xmpp_cm=debug,info\"")]);
    let lb = HaProxy::start(&c.backends());
    let bosh_url = format!("{}/http-bind", lb.http_base());
    let ws_url = format!("ws://127.0.0.1:{}/xmpp-websocket", lb.port());
    let (ta, tb) = (Arc::new(Mutex::new(Track::default())), Arc::new(Mutex::new(Track::default())));

    let alice = SmBosh::login(&bosh_url, "alice", "alicepass", ta.clone()).await;
    let o = c.owner_of(&alice.b.sid);
    // The WebSocket on the same replica: connect until one lands there.
    let mut bob = None;
    for attempt in 0..9 {
        let before: Vec<f64> = c.metrics().await.iter().map(|m| m.sum("xmpp_cm_sessions_created_total", &[("transport", "websocket")])).collect();
        let w = SmWs::login(&ws_url, "bob", "bobpass", tb.clone()).await;
        let at = new_ws_owner(&c, &before).await;
        eprintln!("WebSocket attempt {attempt}: replica {at:?} (BOSH owner {o})");
        if at == Some(o) {
            bob = Some(w);
            break;
        }
        w.close().await;
    }
    let bob = bob.unwrap_or_else(|| panic!("no WebSocket landed on replica {o} in 9 attempts through round robin"));
    let (alice_jid, bob_jid) = (alice.jid.clone(), bob.jid.clone());
    eprintln!("alice (BOSH) {alice_jid}, bob (WebSocket) {bob_jid}, both on replica {o}");

    let stop = Arc::new(AtomicBool::new(false));
    let mut ja = tokio::spawn(alice.run("alice", "alicepass", stop.clone()));
    let mut jb = tokio::spawn(bob.run("bob", "bobpass", stop.clone()));

    // The sender: carol, directly on Prosody.
    let carol = direct_recipient(c.p.c2s_port(), D, "carol", "carolpass");
    let carol_r = carol.try_clone().unwrap();
    std::thread::spawn(move || collect_until(carol_r, vec!["never-sent".into()], Duration::from_secs(60)));
    let sent = Arc::new(AtomicU64::new(0));
    let stop_sending = Arc::new(AtomicBool::new(false));
    let sender = {
        let (sent, stop_sending) = (sent.clone(), stop_sending.clone());
        let (aj, bj) = (alice_jid.clone(), bob_jid.clone());
        std::thread::spawn(move || {
            let mut carol = carol;
            let mut n = 0u64;
            while !stop_sending.load(Ordering::Relaxed) {
                let m = format!("{}{}", chat(&aj, &format!("m-alice-{n}")), chat(&bj, &format!("m-bob-{n}")));
                std::io::Write::write_all(&mut carol, m.as_bytes()).expect("carol's stream broke");
                n += 1;
                sent.store(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(1)).await;
    let t_term = Instant::now();
    c.r[o].cm.signal("TERM");
    // Both resumed elsewhere (the sessions end at random points in the first 80% of the grace).
    let t0 = Instant::now();
    while ta.lock().unwrap().resumes == 0 || tb.lock().unwrap().resumes == 0 {
        alive(&mut ja).await;
        alive(&mut jb).await;
        assert!(
            t0.elapsed() < Duration::from_secs(GRACE + 10),
            "not both resumed within {:?}: alice {:?}, bob {:?}\n{}",
            t0.elapsed(),
            ta.lock().unwrap().events,
            tb.lock().unwrap().events,
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("both resumed {:?} after SIGTERM", t_term.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_sending.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let n = sent.load(Ordering::SeqCst);

    // Every message arrives.
    let all = |t: &Arc<Mutex<Track>>| (0..n).all(|i| t.lock().unwrap().nums.contains(&i));
    let t0 = Instant::now();
    while !(all(&ta) && all(&tb)) && t0.elapsed() < Duration::from_secs(8) {
        alive(&mut ja).await;
        alive(&mut jb).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    ja.abort();
    jb.abort();
    let _ = ja.await;
    let _ = jb.await;

    let mut stopped = c.r.remove(o);
    let (mut old, status) = tokio::task::spawn_blocking(move || {
        let s = stopped.cm.wait_exit(Duration::from_secs(GRACE + 3));
        (stopped, s)
    })
    .await
    .unwrap();
    let logs = format!("{}--- stopped replica ---\n{}", c.logs(), tail(old.cm.log_path(), 60));
    for (who, t) in [("alice (BOSH)", &ta), ("bob (WebSocket)", &tb)] {
        let t = t.lock().unwrap();
        let missing: Vec<u64> = (0..n).filter(|i| !t.nums.contains(i)).collect();
        let mut seen = std::collections::HashSet::new();
        let dups: Vec<u64> = t.nums.iter().copied().filter(|i| !seen.insert(*i)).collect();
        eprintln!(
            "{who}: {n} sent, {} received ({} resent after resumption), {} resumes, missing {missing:?}, duplicates {dups:?}",
            t.nums.len(),
            t.delayed,
            t.resumes
        );
        assert!(missing.is_empty(), "{who} lost {} of {n} messages: {missing:?}\nevents: {:?}\n{logs}", missing.len(), t.events);
        assert!(dups.is_empty(), "{who} got duplicates: {dups:?}\nevents: {:?}", t.events);
        assert!(t.resumes >= 1, "{who} never resumed");
        assert_eq!(t.http_errors, 0, "{who}: requests that failed at the balancer: {:?}", t.events);
    }
    assert!(status.is_some_and(|s| s.success()), "the stopped replica exited with {status:?}\n{logs}");
    let _ = old.cm.stop();
}

// ---------------------------------------------------------------- g. drain in cluster mode

const SPREAD_GRACE: u64 = 6;

/// CL-08: a draining replica in a cluster refuses new sessions at once but keeps serving its
/// sessions: a message a BOSH session sends after SIGTERM reaches its recipient, and each BOSH
/// and WebSocket session is ended (`system-shutdown`) at its own moment within the first 80 %
/// of the grace, not all in the same second; the process exits 0 within the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_replica_serves_its_sessions_and_spreads_their_ends() {
    const EACH: usize = 10;
    let grace = SPREAD_GRACE.to_string();
    let mut c = Replicas::start(1, 2 * EACH, &[("drain.grace", &grace), ("bosh.max_wait", "60")]);
    let url = c.r[0].bosh_url();
    let ws_url = c.r[0].cm.ws_url();
    let carol = direct_recipient(c.p.c2s_port(), D, "carol", "carolpass");
    let carol_jid = format!("carol@{D}/direct");

    let term: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let mut bosh = Vec::new();
    for i in 1..=EACH {
        // wait=1: the loop below comes back every second, so it sends its message soon after SIGTERM.
        let (mut b, _) = Bosh::login(&url, D, &format!("user{i}"), &format!("pass{i}"), 1).await;
        let (term, to) = (term.clone(), carol_jid.clone());
        bosh.push(tokio::spawn(async move {
            let mut sent: Option<String> = None;
            loop {
                let t = *term.lock().unwrap();
                let payload = match (t, &sent) {
                    (Some(_), None) => {
                        let body = format!("after-term-{i}");
                        sent = Some(body.clone());
                        chat(&to, &body)
                    }
                    _ => String::new(),
                };
                let a = b.send("", &payload).await;
                if a.is_terminate() {
                    let t = t.or(*term.lock().unwrap()).expect("a session ended before SIGTERM");
                    // (when it ended after SIGTERM, its condition, the message it handed over)
                    return (t.elapsed(), a.condition(), sent.filter(|_| a.condition().as_deref() != Some("item-not-found")));
                }
            }
        }));
    }
    let mut ws = Vec::new();
    for i in EACH + 1..=2 * EACH {
        let w = WsClient::logged_in(&ws_url, D, &format!("user{i}"), &format!("pass{i}")).await;
        let term = term.clone();
        ws.push(tokio::spawn(async move {
            let (texts, code) = w.read_to_close().await;
            (term.lock().unwrap().expect("a WebSocket closed before SIGTERM").elapsed(), texts, code)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    *term.lock().unwrap() = Some(Instant::now());
    c.r[0].cm.signal("TERM");
    let t_term = Instant::now();

    // Not ready, and no new session, from the start of the drain.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ready = http_request("GET", &format!("{}/readyz", c.r[0].cm.admin_url()), &[], b"", T).await.unwrap();
    assert_eq!(ready.status, 503);
    let refused = bosh_client::post(&url, &format!("<body {NS} rid='1' to='{D}' wait='5' hold='1' ver='1.6'/>"), T).await;
    assert_eq!(refused.condition().as_deref(), Some("system-shutdown"), "{}", refused.raw);

    let spread = Duration::from_secs(SPREAD_GRACE).mul_f64(0.8);
    let mut ends = Vec::new();
    let mut handed_over = Vec::new();
    for j in bosh {
        let (at, condition, sent) = j.await.expect("BOSH task");
        assert_eq!(condition.as_deref(), Some("system-shutdown"), "BOSH session ended {at:?} after SIGTERM");
        ends.push(at);
        handed_over.extend(sent);
    }
    for j in ws {
        let (at, texts, code) = j.await.expect("WebSocket task");
        assert!(texts.iter().any(|t| t.contains("system-shutdown")), "{texts:?}");
        assert_eq!(code, Some(1001), "{texts:?}");
        ends.push(at);
    }
    ends.sort();
    eprintln!("session ends after SIGTERM: {ends:?}");
    let (first, last) = (ends[0], *ends.last().unwrap());
    // A second for the BOSH loop's own wait and the test's scheduling.
    assert!(last <= spread + Duration::from_secs(1), "a session ended {last:?} after SIGTERM, beyond 80% of the grace");
    assert!(last - first >= spread / 3, "ends not spread: {ends:?} (20 uniform points over {spread:?})");
    assert!(ends.iter().filter(|e| **e >= spread / 2).count() >= 2, "almost every session ended early: {ends:?}");

    // What BOSH sessions handed over after SIGTERM (and was not refused) reached carol.
    assert!(handed_over.len() >= EACH / 2, "only {} of {EACH} BOSH sessions were still served after SIGTERM", handed_over.len());
    let got = tokio::task::spawn_blocking({
        let needles = handed_over.clone();
        move || collect_until(carol, needles, Duration::from_secs(10))
    })
    .await
    .unwrap();
    for m in &handed_over {
        assert!(got.contains(m.as_str()), "{m} was handed over during the drain but never arrived; carol got: {got}");
    }

    let r = c.r.remove(0);
    let mut cm = r.cm;
    let (mut cm, status) = tokio::task::spawn_blocking(move || {
        let s = cm.wait_exit(Duration::from_secs(SPREAD_GRACE + 5));
        (cm, s)
    })
    .await
    .unwrap();
    assert!(status.is_some_and(|s| s.code() == Some(0)), "exit {status:?} after {:?}\n{}", t_term.elapsed(), tail(cm.log_path(), 40));
    assert!(t_term.elapsed() < Duration::from_secs(SPREAD_GRACE + 2), "drain took {:?}", t_term.elapsed());
    let _ = cm.stop();
}

// ---------------------------------------------------------------- h. the client's address, no key

/// CL-06: a forwarded request carries the original client's address to the owner, whose log
/// line for it names the client (after the trusted-proxy rules at the replica it reached) and
/// the replica it came through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_sees_the_original_client_address() {
    let c = Replicas::start(2, 0, &[("http.trusted_proxies", "[\"127.0.0.1/32\"]")]);
    let (mut b, _) = Bosh::login(&c.r[0].bosh_url(), D, "alice", "alicepass", 5).await;
    assert_eq!(c.owner_of(&b.sid), 0);
    let body = b.next_body("", "");
    let url = c.r[1].bosh_url();
    let a = http_request("POST", &url, &[("Content-Type", "text/xml; charset=utf-8"), ("X-Forwarded-For", "203.0.113.9")], body.as_bytes(), T)
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    assert!(!a.body.contains("terminate"), "{}", a.body);
    let log = std::fs::read_to_string(c.r[0].cm.log_path()).unwrap_or_default();
    let line = log.lines().find(|l| l.contains("forwarded by a peer")).unwrap_or_else(|| panic!("no forwarded request logged\n{log}"));
    assert!(line.contains("203.0.113.9"), "{line}");
    assert!(line.contains(&c.r[1].internal.to_string()), "{line}");
}

/// CL-10: without a cluster key nothing of this exists: no internal listener, single-replica
/// sids (22 characters, 128 random bits), the cluster gauge at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_one_replica_is_as_before() {
    let p = Prosody::start(ProsodyOpts { plain_only: true, ..Default::default() });
    let internal = free_port();
    let cm = XmppCm::start(&XmppCm::config_with(&p, &[("cluster.listen", &toml_str(&format!("127.0.0.1:{internal}")))]));
    let (b, _) = Bosh::login(&cm.bosh_url(), D, "alice", "alicepass", 5).await;
    assert_eq!(b.sid.len(), 22, "{}", b.sid);
    assert!(!port_open(internal), "an internal listener is up without a cluster key");
    let m = Metrics(http_request("GET", &format!("{}/metrics", cm.admin_url()), &[], b"", T).await.unwrap().body);
    assert_eq!(m.sum("xmpp_cm_cluster_enabled", &[]), 0.0);
}

/// The `[cluster]` interface from the environment, and `--check-config` refusing a short key,
/// an `advertise` outside `peer_cidrs` and a `listen` equal to a public listener with a
/// one-line reason and exit 64.
#[test]
fn check_config_validates_the_cluster_keys() {
    let p = Prosody::start(ProsodyOpts { plain_only: true, ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    let (good, short) = (dir.path().join("good.key"), dir.path().join("short.key"));
    std::fs::write(&good, "k".repeat(40)).unwrap();
    std::fs::write(&short, "k".repeat(31)).unwrap();
    let toml = XmppCm::config_for(&p);
    let public = Listen::of(&toml);
    let env = |key: &std::path::Path, listen: &str, advertise: &str| {
        vec![
            ("XMPP_CM_CLUSTER__SECRET_FILE", key.to_str().unwrap().to_string()),
            ("XMPP_CM_CLUSTER__LISTEN", listen.to_string()),
            ("XMPP_CM_CLUSTER__ADVERTISE", advertise.to_string()),
            ("XMPP_CM_CLUSTER__PEER_CIDRS", "[\"10.0.0.0/8\"]".to_string()),
        ]
    };
    let run = |e: Vec<(&str, String)>| {
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, out) = XmppCm::run_to_exit(&toml, &["--check-config"], &e, Duration::from_secs(10));
        (status.and_then(|s| s.code()), out)
    };
    let (code, out) = run(env(&good, "0.0.0.0:5281", "10.1.2.3:5281"));
    assert_eq!(code, Some(0), "{out}");
    for (e, want) in [
        (env(&short, "0.0.0.0:5281", "10.1.2.3:5281"), "at least 32"),
        (env(&good, "0.0.0.0:5281", "192.168.9.9:5281"), "outside cluster.peer_cidrs"),
        (env(&good, &public, "10.1.2.3:5281"), "public listener"),
    ] {
        let (code, out) = run(e);
        assert_eq!(code, Some(64), "{out}");
        let line = out.lines().find(|l| l.contains(want)).unwrap_or_else(|| panic!("no '{want}' in: {out}"));
        assert!(line.starts_with("xmpp-cm: bad configuration: cluster."), "{line}");
    }
}

/// The public listener address in a config written by the harness.
struct Listen;

impl Listen {
    fn of(toml: &str) -> String {
        let line = toml.lines().find(|l| l.starts_with("listen = [")).expect("http.listen");
        line.trim_start_matches("listen = [\"").trim_end_matches("\"]").to_string()
    }
}
