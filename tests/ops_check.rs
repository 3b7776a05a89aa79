//! `xmpp-cm check` as an operator runs it (issue 16 §1 and the `--front` half of §4): the built
//! binary against a real Prosody with STARTTLS required, for a good CA, a wrong CA, an expired
//! certificate, a certificate for another name, a closed port, a domain not served, and DNS SRV
//! answers from a scripted UDP DNS server on 127.0.0.1 (with and without
//! `upstream.allow_private_targets`, so the SSRF guard is seen refusing loopback); `--json`
//! against the text output; `check --front` on certificate files rcgen made. Each test asserts
//! the step that fails and the error it names, and every run is bounded by [`RUN`].

mod support;

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::certs::{MintCa, Validity};
use support::xmpp_cm::{toml_str, BIN};
use support::{free_port, Prosody, ProsodyOpts, XmppCm};

/// Upper bound of one `xmpp-cm check` run (its connect is bounded by 5 s in these configs).
const RUN: Duration = Duration::from_secs(30);

/// What one run printed, and its exit code.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The step lines called `name` (`ok    tcp_connect …`).
    fn lines(&self, name: &str) -> Vec<&str> {
        self.stdout.lines().filter(|l| l.split_whitespace().nth(1) == Some(name)).collect()
    }
    /// The one line of step `name` (the last, when there are several).
    fn line(&self, name: &str) -> &str {
        self.lines(name).last().copied().unwrap_or_else(|| panic!("no {name} step in:\n{}", self.stdout))
    }
    fn verdict(&self) -> &str {
        self.stdout.lines().find_map(|l| l.strip_prefix("verdict: ")).unwrap_or_else(|| panic!("no verdict in:\n{}", self.stdout))
    }
    /// Step names in order.
    fn names(&self) -> Vec<&str> {
        self.stdout.lines().filter(|l| !l.starts_with("verdict: ")).filter_map(|l| l.split_whitespace().nth(1)).collect()
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n--- stdout ---\n{}--- stderr ---\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Write `toml` to a file and run `xmpp-cm <args with CONFIG replaced by its path>`, at most
/// [`RUN`] (then the child is killed by its own handle). Inherited `XMPP_CM_*` are removed.
fn run(toml: &str, args: &[&str]) -> Run {
    let dir = tempfile::Builder::new().prefix("xmpp-cm-check-").tempdir().expect("temp dir");
    let config = dir.path().join("xmpp-cm.toml");
    std::fs::write(&config, toml).expect("write config");
    let args: Vec<String> =
        args.iter().map(|a| if *a == "CONFIG" { config.to_str().expect("UTF-8 path").to_string() } else { a.to_string() }).collect();
    let mut cmd = Command::new(BIN);
    cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("XMPP_CM_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    let reader = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout")));
    let err = reader(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + RUN;
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("xmpp-cm {args:?} still running after {RUN:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run { code, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
}

/// `xmpp-cm check DOMAIN --config F`.
fn check(toml: &str, domain: &str) -> Run {
    run(toml, &["check", domain, "--config", "CONFIG"])
}

/// Prosody with STARTTLS required, serving `domain`, with `extra` Lua.
fn prosody(domain: &str, extra: String) -> Prosody {
    Prosody::start(ProsodyOpts { domain: domain.into(), tls_required: true, extra_config: extra, ..Default::default() })
}

/// Lua that makes Prosody's c2s (STARTTLS) present `cert`/`key` for `domain` instead of the
/// harness's certificate: a host's `c2s_ssl` wins over its `ssl` in mod_tls.
fn c2s_cert(domain: &str, cert: &Path, key: &Path) -> String {
    format!(
        "VirtualHost \"{domain}\"\n  c2s_ssl = {{ certificate = \"{}\"; key = \"{}\"; }}\n",
        cert.display(),
        key.display()
    )
}

/// An upstream as `XmppCm::config_with` needs it, for a port with nothing behind it or a CA
/// that is not Prosody's.
struct At {
    domain: String,
    port: u16,
    ca: PathBuf,
}

impl support::Upstream for At {
    fn domain(&self) -> &str {
        &self.domain
    }
    fn c2s_port(&self) -> u16 {
        self.port
    }
    fn ca_file(&self) -> &Path {
        &self.ca
    }
}

// ---------------------------------------------------------------- the domain walk

#[test]
fn good_ca_and_starttls_required_exit_0_with_every_step() {
    let p = prosody("localhost", String::new());
    let r = check(&XmppCm::config_for(&p), "localhost");
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(
        r.names(),
        [
            "config", "domain", "route", "address", "ssrf_guard", "tcp_connect", "stream_open", "starttls",
            "certificate", "tls", "stream_open", "features"
        ],
        "{r:?}"
    );
    assert!(r.stdout.lines().filter(|l| !l.starts_with("verdict")).all(|l| l.starts_with("ok ")), "{r:?}");
    let port = p.c2s_port().to_string();
    assert!(r.line("route").contains("static route upstream.routes.\"localhost\"") && r.line("route").contains(&port), "{r:?}");
    assert!(r.line("ssrf_guard").contains("not applied (trusted target"), "{r:?}");
    assert!(r.line("tcp_connect").contains(&format!("127.0.0.1:{port} connected")), "{r:?}");
    assert!(r.lines("stream_open")[0].contains("plaintext") && r.lines("stream_open")[0].contains("starttls (required)"), "{r:?}");
    assert!(r.line("starttls").contains("<proceed/>"), "{r:?}");
    let cert = r.line("certificate");
    assert!(cert.contains("verified for \"localhost\"") && cert.contains(&p.ca_file().display().to_string()), "{cert}");
    assert!(cert.contains("CN=localhost") && cert.contains("names: localhost, ") && cert.contains("127.0.0.1, ::1;") && cert.contains("days left"), "{cert}");
    assert!(cert.contains("issuer CN=xmpp-cm test CA"), "{cert}");
    assert!(r.line("tls").contains("STARTTLS handshake: TLSv1_"), "{r:?}");
    assert!(r.lines("stream_open")[1].contains("over TLS") && r.lines("stream_open")[1].contains("mechanisms ("), "{r:?}");
    let features = r.line("features");
    assert!(features.contains("SASL mechanisms offered: ") && features.contains("PLAIN") && features.contains("hidden from clients:"), "{features}");
    assert!(
        r.verdict().starts_with(&format!("ok: a session for localhost would work: STARTTLS to 127.0.0.1:{port}; clients are offered SASL")),
        "{r:?}"
    );
    // Every step line carries its time.
    assert!(r.stdout.lines().filter(|l| !l.starts_with("verdict")).all(|l| l.contains(" ms  ")), "{r:?}");
}

#[test]
fn wrong_ca_fails_at_the_certificate_with_unknown_issuer() {
    let p = prosody("localhost", String::new());
    let dir = tempfile::tempdir().unwrap();
    let other = MintCa::new(dir.path(), "another throw-away CA");
    let up = At { domain: "localhost".into(), port: p.c2s_port(), ca: other.ca_cert.clone() };
    let r = check(&XmppCm::config_for(&up), "localhost");
    assert_eq!(r.code, Some(1), "{r:?}");
    let cert = r.line("certificate");
    assert!(cert.starts_with("FAIL"), "{cert}");
    assert!(cert.contains("invalid peer certificate: UnknownIssuer") && cert.contains("unknown issuer"), "{cert}");
    assert!(cert.contains(&other.ca_cert.display().to_string()), "the trust it was checked against: {cert}");
    // The chain the server sent is still shown.
    assert!(cert.contains("CN=localhost") && cert.contains("issuer CN=xmpp-cm test CA"), "{cert}");
    assert!(r.lines("tls").is_empty() && r.lines("features").is_empty(), "{r:?}");
    assert!(r.verdict().starts_with("FAIL: a session for localhost would fail at certificate: invalid peer certificate: UnknownIssuer"), "{r:?}");
}

#[test]
fn expired_certificate_fails_at_the_certificate_naming_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MintCa::new(dir.path(), "check CA");
    let (crt, key) = ca.leaf("expired", &["localhost", "127.0.0.1"], Validity::Expired);
    let p = prosody("localhost", c2s_cert("localhost", &crt, &key));
    let up = At { domain: "localhost".into(), port: p.c2s_port(), ca: ca.ca_cert.clone() };
    let r = check(&XmppCm::config_for(&up), "localhost");
    assert_eq!(r.code, Some(1), "{r:?}");
    let cert = r.line("certificate");
    assert!(cert.starts_with("FAIL") && cert.contains("certificate expired") && cert.contains("has expired"), "{cert}");
    assert!(cert.contains("valid 2020-01-01 00:00 UTC to 2021-01-01 00:00 UTC (EXPIRED"), "{cert}");
    assert!(r.verdict().contains("would fail at certificate: invalid peer certificate: certificate expired"), "{r:?}");
}

#[test]
fn certificate_for_another_name_fails_at_the_certificate_naming_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MintCa::new(dir.path(), "check CA");
    let (crt, key) = ca.leaf("wrong-name", &["wrong.example"], Validity::Current);
    let p = prosody("localhost", c2s_cert("localhost", &crt, &key));
    let up = At { domain: "localhost".into(), port: p.c2s_port(), ca: ca.ca_cert.clone() };
    let r = check(&XmppCm::config_for(&up), "localhost");
    assert_eq!(r.code, Some(1), "{r:?}");
    let cert = r.line("certificate");
    assert!(cert.starts_with("FAIL") && cert.contains("not valid for name \"localhost\""), "{cert}");
    assert!(cert.contains("wrong.example") && cert.contains("name mismatch"), "{cert}");
    assert!(r.verdict().contains("would fail at certificate") && r.verdict().contains("\"localhost\""), "{r:?}");
}

#[test]
fn closed_port_fails_at_tcp_connect() {
    let port = free_port();
    let up = At { domain: "localhost".into(), port, ca: PathBuf::new() };
    let toml = XmppCm::config_with(&up, &[("upstream.ca_file", "\"\"")]);
    let r = check(&toml, "localhost");
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(r.names(), ["config", "domain", "route", "address", "ssrf_guard", "tcp_connect"], "{r:?}");
    let tcp = r.line("tcp_connect");
    assert!(tcp.starts_with("FAIL") && tcp.contains(&format!("127.0.0.1:{port}")) && tcp.contains("refused"), "{tcp}");
    assert!(r.verdict().starts_with(&format!("FAIL: a session for localhost would fail at tcp_connect: 127.0.0.1:{port}")), "{r:?}");
}

#[test]
fn silent_server_times_out_naming_the_last_step_that_finished() {
    // Accepts TCP (the kernel's backlog) and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let up = At { domain: "localhost".into(), port: silent.local_addr().unwrap().port(), ca: PathBuf::new() };
    let toml = XmppCm::config_with(&up, &[("upstream.ca_file", "\"\""), ("upstream.connect_timeout", "1")]);
    let r = check(&toml, "localhost");
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(r.names(), ["config", "domain", "route", "address", "ssrf_guard", "tcp_connect", "timeout"], "{r:?}");
    let timeout = r.line("timeout");
    assert!(timeout.starts_with("FAIL") && timeout.contains("no stream within 1 s") && timeout.contains("was tcp_connect"), "{timeout}");
    assert!(r.verdict().contains("would fail at timeout"), "{r:?}");
    drop(silent);
}

#[test]
fn domain_not_served_fails_before_any_network_step() {
    let up = At { domain: "localhost".into(), port: free_port(), ca: PathBuf::new() };
    let toml = XmppCm::config_with(&up, &[("upstream.ca_file", "\"\"")]);
    let r = check(&toml, "elsewhere.test");
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(r.names(), ["config", "domain"], "{r:?}");
    assert!(r.line("domain").starts_with("FAIL") && r.line("domain").contains("upstream.domains"), "{r:?}");
    assert!(r.verdict().contains("elsewhere.test") && r.verdict().contains("upstream.domains"), "{r:?}");
}

#[test]
fn bad_config_is_exit_64_with_the_one_line_reason() {
    let toml = "[upstream]\ndomains = [\"localhost\"]\nresolver = [\"dns.example:53\"]\n";
    let r = check(toml, "localhost");
    assert_eq!(r.code, Some(64), "{r:?}");
    assert!(r.stderr.starts_with("xmpp-cm: bad configuration: upstream.resolver: 'dns.example:53'"), "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    let j = run(toml, &["check", "localhost", "--json", "--config", "CONFIG"]);
    assert_eq!(j.code, Some(64), "{j:?}");
    let doc: serde_json::Value = serde_json::from_str(&j.stdout).unwrap_or_else(|e| panic!("{e}: {j:?}"));
    assert_eq!(doc["exit"], 64);
    assert_eq!(doc["steps"][0]["name"], "config");
    assert_eq!(doc["steps"][0]["ok"], false);
}

// ---------------------------------------------------------------- DNS SRV

/// A scripted DNS server on 127.0.0.1 (UDP): SRV and A answers for fixed names, NODATA for
/// other types of those names, NXDOMAIN for everything else. Stops (and its thread ends) on drop.
struct Dns {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Clone)]
enum Rr {
    /// priority, weight, port, target
    Srv(u16, u16, u16, &'static str),
    A(Ipv4Addr),
}

impl Dns {
    fn start(records: Vec<(&'static str, Rr)>) -> Dns {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind DNS");
        sock.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        let addr = sock.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !halt.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else { continue };
                if let Some(reply) = answer(&buf[..n], &records) {
                    let _ = sock.send_to(&reply, peer);
                }
            }
        });
        Dns { addr, stop, thread: Some(thread) }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const TYPE_A: u16 = 1;
const TYPE_SRV: u16 = 33;

/// `a.b.` in DNS wire format.
fn wire_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// The response to one query (RFC 1035 §4.1), or `None` for something that is not a query.
fn answer(q: &[u8], records: &[(&'static str, Rr)]) -> Option<Vec<u8>> {
    if q.len() < 12 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*q.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question = &q[12..i + 4];
    let qname = labels.join(".");
    let known = records.iter().any(|(n, _)| *n == qname);
    let mut answers = Vec::new();
    let mut n_answers = 0u16;
    for (_, rr) in records.iter().filter(|(n, _)| *n == qname) {
        let (ty, rdata) = match rr {
            Rr::Srv(prio, weight, port, target) if qtype == TYPE_SRV => {
                let mut d = [prio.to_be_bytes(), weight.to_be_bytes(), port.to_be_bytes()].concat();
                d.extend(wire_name(target));
                (TYPE_SRV, d)
            }
            Rr::A(ip) if qtype == TYPE_A => (TYPE_A, ip.octets().to_vec()),
            _ => continue,
        };
        n_answers += 1;
        answers.extend_from_slice(&[0xc0, 0x0c]); // the question's name
        answers.extend_from_slice(&ty.to_be_bytes());
        answers.extend_from_slice(&1u16.to_be_bytes()); // IN
        answers.extend_from_slice(&60u32.to_be_bytes());
        answers.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        answers.extend_from_slice(&rdata);
    }
    let rcode: u16 = if known { 0 } else { 3 }; // NOERROR (possibly NODATA) / NXDOMAIN
    let rd = u16::from_be_bytes([q[2], q[3]]) & 0x0100;
    let flags: u16 = 0x8000 | 0x0400 | rd | 0x0080 | rcode;
    let mut out = Vec::with_capacity(12 + question.len() + answers.len());
    out.extend_from_slice(&q[0..2]);
    out.extend_from_slice(&flags.to_be_bytes());
    for c in [1u16, n_answers, 0, 0] {
        out.extend_from_slice(&c.to_be_bytes());
    }
    out.extend_from_slice(question);
    out.extend_from_slice(&answers);
    Some(out)
}

/// Prosody for `check.test` (hickory answers `localhost` names itself, RFC 6761), a DNS server
/// whose `_xmpp-client._tcp.check.test` SRV lists a closed port at priority 5 and Prosody at
/// priority 10, and an xmpp-cm config using them with no static route.
fn srv_setup(allow_private: bool) -> (Prosody, Dns, String, u16) {
    let p = prosody("check.test", String::new());
    let closed = free_port();
    let dns = Dns::start(vec![
        ("_xmpp-client._tcp.check.test", Rr::Srv(10, 7, p.c2s_port(), "xmpp.check.test.")),
        ("_xmpp-client._tcp.check.test", Rr::Srv(5, 0, closed, "down.check.test.")),
        ("xmpp.check.test", Rr::A(Ipv4Addr::LOCALHOST)),
        ("down.check.test", Rr::A(Ipv4Addr::LOCALHOST)),
    ]);
    let toml = format!(
        "[http]\nlisten = [\"127.0.0.1:{}\"]\n[admin]\nlisten = \"\"\n[upstream]\ndomains = [\"check.test\"]\ntls = \"required\"\n\
         ca_file = {}\nconnect_timeout = 5\nresolver = [\"{}\"]\nallow_private_targets = {allow_private}\n",
        free_port(),
        toml_str(p.ca_file().to_str().expect("UTF-8")),
        dns.addr
    );
    (p, dns, toml, closed)
}

#[test]
fn srv_answer_is_walked_in_priority_order() {
    let (p, _dns, toml, closed) = srv_setup(true);
    let r = check(&toml, "check.test");
    assert_eq!(r.code, Some(0), "{r:?}");
    let route = r.line("route");
    let resolver = "upstream.resolver 127.0.0.1:";
    assert!(route.starts_with("ok") && route.contains("DNS SRV via ") && route.contains(resolver), "{route}");
    assert!(route.contains("_xmpps-client._tcp.check.test. no such name (NXDOMAIN)"), "{route}");
    assert!(route.contains("_xmpp-client._tcp.check.test. 2 record(s)"), "{route}");
    let first = format!("1. down.check.test:{closed} STARTTLS, priority 5, weight 0");
    let second = format!("2. xmpp.check.test:{} STARTTLS, priority 10, weight 7", p.c2s_port());
    assert!(route.contains(&first) && route.contains(&second), "{route}");
    // The first target's address is looked up, allowed (allow_private_targets) and refused by TCP;
    // then the second works.
    assert_eq!(r.lines("address").len(), 2, "{r:?}");
    assert!(r.lines("address")[0].contains("down.check.test has 127.0.0.1"), "{r:?}");
    assert!(r.lines("ssrf_guard")[0].contains("upstream.allow_private_targets = true"), "{r:?}");
    let tcp = r.lines("tcp_connect");
    assert_eq!(tcp.len(), 2, "{r:?}");
    assert!(tcp[0].starts_with("FAIL") && tcp[0].contains(&format!("127.0.0.1:{closed}")), "{r:?}");
    assert!(tcp[1].starts_with("ok") && tcp[1].contains(&format!("127.0.0.1:{}", p.c2s_port())), "{r:?}");
    assert!(r.line("certificate").contains("verified for \"check.test\""), "{r:?}");
    assert!(r.verdict().starts_with(&format!("ok: a session for check.test would work: STARTTLS to 127.0.0.1:{}", p.c2s_port())), "{r:?}");
}

#[test]
fn srv_targets_on_loopback_are_refused_by_the_ssrf_guard() {
    let (_p, _dns, toml, _) = srv_setup(false);
    let r = check(&toml, "check.test");
    assert_eq!(r.code, Some(1), "{r:?}");
    let guards = r.lines("ssrf_guard");
    assert_eq!(guards.len(), 2, "{r:?}");
    for g in &guards {
        assert!(g.starts_with("FAIL") && g.contains("127.0.0.1 (loopback)") && g.contains("upstream.allow_private_targets"), "{g}");
    }
    assert!(r.lines("tcp_connect").is_empty(), "nothing may be connected to: {r:?}");
    assert!(r.verdict().starts_with("FAIL: a session for check.test would fail at ssrf_guard: xmpp.check.test: refused"), "{r:?}");
}

// ---------------------------------------------------------------- --json

#[test]
fn json_parses_and_matches_the_text() {
    let p = prosody("localhost", String::new());
    let toml = XmppCm::config_for(&p);
    let text = check(&toml, "localhost");
    // --config before the subcommand works too (it is global).
    let json = run(&toml, &["--config", "CONFIG", "check", "localhost", "--json"]);
    assert_eq!(json.code, Some(0), "{json:?}");
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap_or_else(|e| panic!("{e}: {json:?}"));
    assert_eq!(doc["exit"], 0);
    assert_eq!(doc["verdict"].as_str(), Some(text.verdict()), "{json:?}");
    let steps = doc["steps"].as_array().expect("steps");
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().expect("name")).collect();
    assert_eq!(names, text.names());
    for s in steps {
        assert!(s["ok"].is_boolean() && s["warning"].is_boolean() && s["ms"].is_number() && s["detail"].is_string(), "{s}");
        assert_eq!(s["ok"], true, "{s}");
    }
    let cert = steps.iter().find(|s| s["name"] == "certificate").expect("certificate step");
    assert!(cert["detail"].as_str().unwrap().starts_with("verified for \"localhost\""), "{cert}");

    // A failure: the same exit code and step in both forms.
    let up = At { domain: "localhost".into(), port: free_port(), ca: PathBuf::new() };
    let closed = XmppCm::config_with(&up, &[("upstream.ca_file", "\"\"")]);
    let (text, json) = (check(&closed, "localhost"), run(&closed, &["check", "localhost", "--json", "--config", "CONFIG"]));
    assert_eq!((text.code, json.code), (Some(1), Some(1)));
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap_or_else(|e| panic!("{e}: {json:?}"));
    assert_eq!(doc["exit"], 1);
    assert_eq!(doc["verdict"].as_str(), Some(text.verdict()));
    let last = doc["steps"].as_array().and_then(|s| s.last()).expect("a step");
    assert_eq!((last["name"].as_str(), last["ok"].as_bool()), (Some("tcp_connect"), Some(false)), "{doc}");
}

// ---------------------------------------------------------------- --front

fn front_toml(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "[http]\nlisten = [\"127.0.0.1:{}\"]\n{extra}\n[http.tls]\ncert_file = {}\nkey_file = {}\n[admin]\nlisten = \"\"\n\
         [upstream]\ndomains = [\"chat.example.test\"]\n",
        free_port(),
        toml_str(cert.to_str().expect("UTF-8")),
        toml_str(key.to_str().expect("UTF-8"))
    )
}

#[test]
fn front_reports_names_expiry_key_match_and_the_trusted_proxies_warning() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MintCa::new(dir.path(), "front CA");
    let (crt, key) = ca.leaf("front", &["chat.example.test", "127.0.0.1"], Validity::Current);
    let r = run(&front_toml(&crt, &key, "public_url = \"https://chat.example.test\""), &["check", "--front", "--config", "CONFIG"]);
    assert_eq!(r.code, Some(0), "a warning is not a failure: {r:?}");
    assert_eq!(r.names(), ["config", "front_cert", "front_key", "public_url", "trusted_proxies"], "{r:?}");
    let cert = r.line("front_cert");
    assert!(cert.starts_with("ok") && cert.contains("CN=chat.example.test"), "{cert}");
    assert!(cert.contains("names: chat.example.test, 127.0.0.1") && cert.contains("to 2100-01-01 00:00 UTC") && cert.contains("days left"), "{cert}");
    assert!(cert.contains("issuer CN=front CA"), "{cert}");
    assert!(r.line("front_key").starts_with("ok") && r.line("front_key").contains("matches the certificate"), "{r:?}");
    assert!(r.line("public_url").starts_with("ok") && r.line("public_url").contains("names chat.example.test"), "{r:?}");
    let proxies = r.line("trusted_proxies");
    assert!(proxies.starts_with("warn"), "{proxies}");
    for words in ["http.trusted_proxies is empty", "shares the proxy's address", "limits.max_sessions_per_ip = 100", "limits.new_sessions_per_ip_per_sec = 20", "cap the whole service", "list the proxy in http.trusted_proxies"] {
        assert!(proxies.contains(words), "{words:?} missing: {proxies}");
    }
    assert_eq!(r.verdict(), "ok: the front's certificate and settings are consistent");

    // With the proxy listed, no warning.
    let listed = run(&front_toml(&crt, &key, "trusted_proxies = [\"127.0.0.1/32\"]"), &["check", "--front", "--config", "CONFIG"]);
    assert_eq!(listed.code, Some(0), "{listed:?}");
    assert!(listed.line("trusted_proxies").starts_with("ok") && listed.line("trusted_proxies").contains("127.0.0.1/32"), "{listed:?}");

    // public_url on a host the certificate does not name.
    let other = run(&front_toml(&crt, &key, "public_url = \"https://other.example.test/\""), &["check", "--front", "--config", "CONFIG"]);
    assert_eq!(other.code, Some(1), "{other:?}");
    assert!(other.line("public_url").starts_with("FAIL") && other.line("public_url").contains("does not name other.example.test"), "{other:?}");
    assert_eq!(other.verdict(), "FAIL: the front would fail at public_url");
}

#[test]
fn front_reports_a_key_that_does_not_match_and_an_expired_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MintCa::new(dir.path(), "front CA");
    let (crt, _key) = ca.leaf("front", &["chat.example.test"], Validity::Current);
    let stray = ca.stray_key("stray");
    let r = run(&front_toml(&crt, &stray, ""), &["check", "--front", "--config", "CONFIG"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.line("front_cert").starts_with("ok"), "{r:?}");
    let key = r.line("front_key");
    assert!(key.starts_with("FAIL") && key.contains("key does not match certificate") && key.contains(&stray.display().to_string()), "{key}");
    assert_eq!(r.verdict(), "FAIL: the front would fail at front_key");

    let (old, old_key) = ca.leaf("old", &["chat.example.test"], Validity::Expired);
    let r = run(&front_toml(&old, &old_key, ""), &["check", "--front", "--config", "CONFIG"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.line("front_cert").starts_with("FAIL") && r.line("front_cert").contains("EXPIRED"), "{r:?}");
}
