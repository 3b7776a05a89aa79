//! The TLS edge of the real binary (issue 5, "TLS on the front" and its Proof): `openssl
//! s_client` sees TLS 1.3 + ALPN h2 and is refused TLS 1.1 (SEC-05); the TLS handshake
//! deadline; strophe.js over https:// (BOSH) and wss:// against real Prosody; certificate reload
//! (file polling and SIGHUP) without dropping a live WebSocket session, and a bad new certificate
//! keeping the old one; BOSH over HTTP/2 with ALPN h2 (two requests in flight on one connection,
//! HTTP-03); XMPP over WebSocket over HTTP/2 (RFC 8441 extended CONNECT; WS-01); XEP-0368 Direct
//! TLS passthrough (ALPN `xmpp-client`) chatting with a BOSH user (UP-10 on the client side).

mod edge_common;
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use edge_common::*;
use support::certs::TestCa;
use support::node::node_env;
use support::ws::WsClient;
use support::{Prosody, ProsodyOpts, XmppCm};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Front certificate files the test owns (copied from a [`TestCa`], replaceable).
struct FrontCert {
    _dir: tempfile::TempDir,
    ca: TestCa,
    cert: PathBuf,
    key: PathBuf,
}

impl FrontCert {
    fn new() -> FrontCert {
        let dir = tempfile::Builder::new().prefix("xmpp-cm-front-").tempdir().expect("temp dir");
        let ca = TestCa::generate(&dir.path().join("ca1"), "localhost");
        let cert = dir.path().join("live.crt");
        let key = dir.path().join("live.key");
        std::fs::copy(&ca.cert, &cert).expect("copy cert");
        std::fs::copy(&ca.key, &key).expect("copy key");
        FrontCert { _dir: dir, ca, cert, key }
    }

    fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Replace the live files atomically (write aside, rename over), key first.
    fn install(&self, cert_pem: &[u8], key_pem: &[u8]) {
        for (dst, data) in [(&self.key, key_pem), (&self.cert, cert_pem)] {
            let tmp = dst.with_extension("new");
            std::fs::write(&tmp, data).expect("write new file");
            std::fs::rename(&tmp, dst).expect("rename over live file");
        }
    }

    fn overrides(&self) -> Vec<(&'static str, String)> {
        vec![
            ("http.tls.cert_file", support::xmpp_cm::toml_str(self.cert.to_str().unwrap())),
            ("http.tls.key_file", support::xmpp_cm::toml_str(self.key.to_str().unwrap())),
        ]
    }
}

/// An upstream nobody connects to (TLS-only tests).
struct Nowhere(PathBuf);
impl support::Upstream for Nowhere {
    fn domain(&self) -> &str {
        "localhost"
    }
    fn c2s_port(&self) -> u16 {
        1
    }
    fn ca_file(&self) -> &Path {
        &self.0
    }
}

fn start_cm(up: &impl support::Upstream, front: &FrontCert, extra: &[(&str, &str)]) -> XmppCm {
    let owned = front.overrides();
    let mut o: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    o.extend_from_slice(extra);
    XmppCm::start(&XmppCm::config_with(up, &o))
}

fn port_of(cm: &XmppCm) -> u16 {
    cm.http_addr().rsplit(':').next().unwrap().parse().unwrap()
}

/// SEC-05 (client side over TLS): `openssl s_client -alpn h2` negotiates TLSv1.3 and h2;
/// TLS 1.2 with http/1.1 works; TLS 1.1 is refused; a plain-HTTP request on the TLS port gets
/// no HTTP answer; a client that never finishes its handshake is cut after
/// `http.tls.handshake_timeout` and counted in `xmpp_cm_limit_hits_total{limit="tls_handshake"}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec05_openssl_sees_tls13_and_h2_refuses_tls11_and_slow_handshakes() {
    let front = FrontCert::new();
    let cm = start_cm(&Nowhere(front.ca.ca_cert.clone()), &front, &[("http.tls.handshake_timeout", "2")]);
    let port = port_of(&cm);
    let ca = front.ca.ca_cert.to_str().unwrap();

    let (ok, out) = s_client(port, &["-alpn", "h2", "-CAfile", ca]);
    assert!(ok, "{out}");
    assert!(out.contains("New, TLSv1.3,"), "not TLS 1.3:\n{out}");
    assert!(out.contains("ALPN protocol: h2"), "no h2 via ALPN:\n{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "certificate not verified with the test CA:\n{out}");

    let (ok, out) = s_client(port, &["-tls1_2", "-alpn", "http/1.1", "-CAfile", ca]);
    assert!(ok && out.contains("New, TLSv1.2,") && out.contains("ALPN protocol: http/1.1"), "{out}");

    // SECLEVEL=0 so that it is the server, not the local OpenSSL policy, that says no.
    let (_, out) = s_client(port, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]);
    assert!(out.contains("New, (NONE), Cipher is (NONE)") && out.contains("alert"), "TLS 1.1 was not refused:\n{out}");
    assert!(!out.contains("BEGIN CERTIFICATE"), "a certificate was sent over TLS 1.1:\n{out}");

    // Plain HTTP on the TLS port: no HTTP response comes back.
    let raw = support::http::raw_exchange(&cm.http_addr(), b"GET /http-bind HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(5)).await;
    assert!(raw.as_ref().map(|b| !b.starts_with(b"HTTP/")).unwrap_or(true), "{raw:?}");

    // Stalled handshakes: 20 connections that send nothing, 20 that send half a ClientHello.
    let before = metric(&cm.admin_url(), "xmpp_cm_limit_hits_total{limit=\"tls_handshake\"}").await;
    let mut socks = Vec::new();
    for i in 0..40 {
        let mut s = tokio::net::TcpStream::connect(cm.http_addr()).await.expect("connect");
        if i % 2 == 1 {
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.expect("partial hello");
        }
        socks.push(s);
    }
    let t0 = Instant::now();
    for mut s in socks {
        let mut b = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(8), s.read(&mut b)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "stalled handshake not closed: {r:?}");
    }
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(6), "closed after {took:?}, want ~2 s");
    let after = metric(&cm.admin_url(), "xmpp_cm_limit_hits_total{limit=\"tls_handshake\"}").await;
    assert_eq!(after - before, 40.0, "tls_handshake limit hits");

    // The listener is fine afterwards.
    let (ok, out) = s_client(port, &["-alpn", "h2", "-CAfile", ca]);
    assert!(ok && out.contains("ALPN protocol: h2"), "{out}");
}

/// strophe.js logs in and chats over https:// (BOSH) and wss:// (WebSocket), and one user on
/// each, through xmpp-cm's TLS listener in front of real Prosody (Node trusts the test CA via
/// NODE_EXTRA_CA_CERTS).
#[test]
fn strophe_over_https_and_wss() {
    let p = Prosody::start(ProsodyOpts::default());
    let front = FrontCert::new();
    let cm = start_cm(&p, &front, &[]);
    assert!(cm.bosh_url().starts_with("https://") && cm.ws_url().starts_with("wss://"));
    let ca = front.ca.ca_cert.to_str().unwrap();
    let env = [("NODE_EXTRA_CA_CERTS", ca)];
    let t = Duration::from_secs(60);
    for (what, args) in [
        ("strophe BOSH over https", vec!["--url", &cm.bosh_url(), "--messages", "3"]),
        ("strophe WebSocket over wss", vec!["--url", &cm.ws_url(), "--messages", "3"]),
    ] {
        let args: Vec<&str> = args.to_vec();
        node_env("strophe-chat.mjs", &args, &env, t).assert_ok(what);
    }
    let (bosh, ws) = (cm.bosh_url(), cm.ws_url());
    node_env("strophe-chat.mjs", &["--url", &bosh, "--url-b", &ws, "--a", "carol:carolpass", "--b", "dave:davepass"], &env, t)
        .assert_ok("strophe https BOSH ↔ wss WebSocket");
    // Without the CA, Node refuses the certificate: the client really verified it.
    let out = support::node("strophe-chat.mjs", &["--url", &ws, "--step-timeout", "5000"], t);
    assert!(!out.success(), "connected without trusting the test CA?\n{}", out.stdout);
}

/// Certificate reload by file polling: the new certificate is served to new connections while a
/// WebSocket session opened before keeps working (a message crosses it after the reload); a
/// broken certificate file, and a certificate that does not match its key, keep the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_reload_serves_the_new_certificate_and_keeps_live_sessions() {
    let p = Prosody::start(ProsodyOpts::default());
    let front = FrontCert::new();
    let cm = start_cm(&p, &front, &[("http.tls.reload_interval", "1")]);
    let port = port_of(&cm);
    let addr = cm.http_addr();
    let old = served_cert(port);
    assert_eq!(Some(old.clone()), first_pem(&std::fs::read_to_string(&front.ca.cert).unwrap()));

    let mut alice = ws_tls(&addr, "/xmpp-websocket", &front.ca.ca_cert).await;
    alice.login(p.domain(), "alice", "alicepass").await;
    let mut bob = ws_tls(&addr, "/xmpp-websocket", &front.ca.ca_cert).await;
    let bob_jid = bob.login(p.domain(), "bob", "bobpass").await;

    // A renewed certificate from another CA (so the difference is unmistakable).
    let ca2 = TestCa::generate(&front.dir().join("ca2"), "localhost");
    front.install(&std::fs::read(&ca2.cert).unwrap(), &std::fs::read(&ca2.key).unwrap());
    let new = first_pem(&std::fs::read_to_string(&ca2.cert).unwrap()).unwrap();
    let t0 = Instant::now();
    while served_cert(port) != new {
        assert!(t0.elapsed() < Duration::from_secs(10), "new certificate {} not served after 10 s\n{}", fingerprint(&ca2.cert), support::tail(cm.log_path(), 20));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("reloaded after {:?}: {}", t0.elapsed(), fingerprint(&ca2.cert));
    assert!(cm.log().contains("TLS certificate reloaded"));

    // The sessions opened under the old certificate still carry messages, both ways.
    alice.send(&chat(&bob_jid, "after-reload-1")).await;
    bob.recv_until("after-reload-1").await;
    bob.send(&chat(&alice.jid, "after-reload-2")).await;
    alice.recv_until("after-reload-2").await;
    // New clients verify the new certificate with the new CA; the old CA no longer works.
    let mut carol = ws_tls(&addr, "/xmpp-websocket", &ca2.ca_cert).await;
    carol.login(p.domain(), "carol", "carolpass").await;
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let conn = tokio_rustls::TlsConnector::from(client_config(&front.ca.ca_cert, &[b"http/1.1"]));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    assert!(conn.connect(name, tcp).await.is_err(), "old CA still verifies the served certificate");

    // A broken certificate file: logged, old one kept.
    front.install(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n", &std::fs::read(&ca2.key).unwrap());
    let t0 = Instant::now();
    while !cm.log().contains("keeping the old one") {
        assert!(t0.elapsed() < Duration::from_secs(10), "bad certificate not reported\n{}", support::tail(cm.log_path(), 20));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(served_cert(port), new, "a broken certificate replaced the good one");
    // A valid certificate with the wrong key: also refused.
    let n_warn = cm.log().matches("keeping the old one").count();
    front.install(&std::fs::read(&front.ca.cert).unwrap(), &std::fs::read(&ca2.key).unwrap());
    let t0 = Instant::now();
    while cm.log().matches("keeping the old one").count() == n_warn {
        assert!(t0.elapsed() < Duration::from_secs(10), "mismatched key not reported\n{}", support::tail(cm.log_path(), 20));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(cm.log().contains("does not match"), "{}", support::tail(cm.log_path(), 10));
    assert_eq!(served_cert(port), new, "a mismatched key replaced the good certificate");
    // Everything still works.
    carol.ping(p.domain(), "ping-carol").await;
    alice.send(&chat(&bob_jid, "after-bad-cert")).await;
    bob.recv_until("after-bad-cert").await;
}

/// Certificate reload on SIGHUP (polling effectively off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_reload_on_sighup() {
    let front = FrontCert::new();
    let cm = start_cm(&Nowhere(front.ca.ca_cert.clone()), &front, &[("http.tls.reload_interval", "3600")]);
    let port = port_of(&cm);
    let old = served_cert(port);
    let ca2 = TestCa::generate(&front.dir().join("ca2"), "localhost");
    front.install(&std::fs::read(&ca2.cert).unwrap(), &std::fs::read(&ca2.key).unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(served_cert(port), old, "reloaded without SIGHUP although polling is hourly");
    cm.signal("HUP");
    let new = first_pem(&std::fs::read_to_string(&ca2.cert).unwrap()).unwrap();
    let t0 = Instant::now();
    while served_cert(port) != new {
        assert!(t0.elapsed() < Duration::from_secs(5), "SIGHUP did not reload\n{}", support::tail(cm.log_path(), 20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Still running and serving.
    let h = support::http_request("GET", &format!("{}/healthz", cm.admin_url()), &[], b"", T).await.unwrap();
    assert_eq!(h.status, 200);
}

/// BOSH over HTTP/2 with TLS (ALPN h2): a full login on one connection, then a held poll and a
/// message on two concurrent streams of that same connection (HTTP-03: no per-connection
/// request limit), and the message comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bosh_over_http2_with_alpn_h2() {
    let p = Prosody::start(ProsodyOpts::default());
    let front = FrontCert::new();
    let cm = start_cm(&p, &front, &[]);
    let tls = tls_connect(&cm.http_addr(), &front.ca.ca_cert, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let h2 = h2_handshake(tls).await;
    let uri = format!("https://localhost:{}/http-bind", port_of(&cm));
    let (mut b, jid) = H2Bosh::login(h2, &uri, p.domain(), "alice", "alicepass").await;

    b.got.clear();
    let poll = b.next_body("", "");
    let msg = b.next_body("", &chat(&jid, "over-h2"));
    let (mut h1, mut h2c) = (b.h2.clone(), b.h2.clone());
    let u1 = uri.clone();
    let held = tokio::spawn(async move { h2_post(&mut h1, &u1, &poll).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s2, _, t2) = h2_post(&mut h2c, &uri, &msg).await;
    let (s1, _, t1) = held.await.unwrap();
    assert_eq!((s1, s2), (200, 200), "{t1} {t2}");
    b.got.push_str(&t1);
    b.got.push_str(&t2);
    b.poll_until("over-h2").await;
    let end = b.next_body("type='terminate'", "<presence xmlns='jabber:client' type='unavailable'/>");
    let (st, _, t) = h2_post(&mut b.h2, &uri, &end).await;
    assert!(st == 200 && t.contains("terminate"), "{st} {t}");
}

/// RFC 8441: XMPP over WebSocket over an HTTP/2 extended CONNECT stream (TLS, ALPN h2); login,
/// a message to a WebSocket/HTTP/1.1 user and back, and a second WebSocket on the same
/// HTTP/2 connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_extended_connect() {
    let p = Prosody::start(ProsodyOpts::default());
    let front = FrontCert::new();
    let cm = start_cm(&p, &front, &[]);
    let tls = tls_connect(&cm.http_addr(), &front.ca.ca_cert, &[b"h2"]).await;
    let mut h2 = h2_handshake(tls).await;
    let base = format!("https://localhost:{}", port_of(&cm));
    // One ordinary request first, so the server's SETTINGS (ENABLE_CONNECT_PROTOCOL) are in.
    let (st, _, _) = h2_post(&mut h2, &format!("{base}/http-bind"), "<body/>").await;
    assert_eq!(st, 200);
    let mut alice = WsClient::from(h2_websocket(&mut h2, &format!("{base}/xmpp-websocket")).await);
    let alice_jid = alice.login(p.domain(), "alice", "alicepass").await;
    let mut carol = WsClient::from(h2_websocket(&mut h2, &format!("{base}/xmpp-websocket")).await);
    carol.login(p.domain(), "carol", "carolpass").await;
    let mut bob = ws_tls(&cm.http_addr(), "/xmpp-websocket", &front.ca.ca_cert).await;
    let bob_jid = bob.login(p.domain(), "bob", "bobpass").await;
    alice.send(&chat(&bob_jid, "h2-ws-to-h1")).await;
    bob.recv_until("h2-ws-to-h1").await;
    bob.send(&chat(&alice_jid, "h1-to-h2-ws")).await;
    alice.recv_until("h1-to-h2-ws").await;
    carol.ping(p.domain(), "ping-carol-h2").await;
    alice.send("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>").await;
    let rest = alice.recv_all().await;
    assert!(rest.iter().any(|m| m.starts_with("<close")), "{rest:?}");
    carol.ping(p.domain(), "ping-carol-h2-after").await;
}

// ---------------------------------------------------------------- Direct TLS passthrough

/// Reads a raw XMPP stream until markers appear.
struct Stream<S> {
    io: S,
    acc: String,
    pos: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream<S> {
    async fn send(&mut self, s: &str) {
        self.io.write_all(s.as_bytes()).await.expect("write");
        self.io.flush().await.expect("flush");
    }

    /// Everything from the last match up to and including `needle`.
    async fn until(&mut self, needle: &str) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(i) = self.acc[self.pos..].find(needle) {
                let start = self.pos;
                self.pos += i + needle.len();
                return self.acc[start..self.pos].to_string();
            }
            let left = T.checked_sub(t0.elapsed()).unwrap_or_else(|| panic!("timed out waiting for {needle:?}; got {:?}", &self.acc[self.pos..]));
            let mut b = [0u8; 8192];
            let n = tokio::time::timeout(left, self.io.read(&mut b))
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {needle:?}; got {:?}", &self.acc[self.pos..]))
                .expect("read");
            assert!(n > 0, "stream closed waiting for {needle:?}; got {:?}", &self.acc[self.pos..]);
            self.acc.push_str(std::str::from_utf8(&b[..n]).expect("UTF-8"));
        }
    }
}

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0' xml:lang='en'>";

/// XEP-0368 Direct TLS on the HTTPS port (`http.tls.xmpp_passthrough`): a native client
/// offering ALPN `xmpp-client` logs in with SASL PLAIN (no `<starttls/>` offered inside TLS),
/// binds, and exchanges messages with a BOSH (over HTTP/2) user; `</stream:stream>` ends it
/// cleanly. Without passthrough, the `xmpp-client` offer fails the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_passthrough_chats_with_a_bosh_user() {
    let p = Prosody::start(ProsodyOpts::default());
    let front = FrontCert::new();
    let cm = start_cm(&p, &front, &[("http.tls.xmpp_passthrough", "true")]);
    let tls = tls_connect(&cm.http_addr(), &front.ca.ca_cert, &[b"xmpp-client"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"xmpp-client"[..]));
    let mut s = Stream { io: tls, acc: String::new(), pos: 0 };
    s.send(HEADER).await;
    let f = s.until("</stream:features>").await;
    assert!(f.contains("<stream:stream") && f.contains(">PLAIN<"), "{f}");
    assert!(!f.contains("starttls"), "STARTTLS offered inside Direct TLS: {f}");
    let creds = base64::engine::general_purpose::STANDARD.encode("\0alice\0alicepass");
    s.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>")).await;
    let r = s.until("success").await;
    assert!(!r.contains("failure"), "{r}");
    s.send(HEADER).await;
    let f = s.until("</stream:features>").await;
    assert!(f.contains("urn:ietf:params:xml:ns:xmpp-bind"), "{f}");
    s.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>native</resource></bind></iq>").await;
    let r = s.until("</iq>").await;
    let alice_jid = between(&r, "<jid>", "</jid>").to_string();
    assert!(alice_jid.starts_with("alice@localhost/"), "{r}");
    s.send("<presence/>").await;
    s.until("<presence").await;

    // Bob on BOSH over HTTP/2 on the same TLS port.
    let tls = tls_connect(&cm.http_addr(), &front.ca.ca_cert, &[b"h2"]).await;
    let uri = format!("https://localhost:{}/http-bind", port_of(&cm));
    let (mut bob, bob_jid) = H2Bosh::login(h2_handshake(tls).await, &uri, p.domain(), "bob", "bobpass").await;
    s.send(&format!("<message to='{bob_jid}' type='chat'><body>native-to-bosh</body></message>")).await;
    bob.poll_until("native-to-bosh").await;
    bob.send("", &chat(&alice_jid, "bosh-to-native")).await;
    let m = s.until("bosh-to-native").await;
    assert!(m.contains("<message"), "{m}");
    s.send("</stream:stream>").await;
    s.until("</stream:stream>").await;
    assert!(cm.log().contains("direct TLS passthrough"));

    // Without passthrough, only h2 and http/1.1 are offered: an xmpp-client-only client fails.
    let cm2 = start_cm(&p, &front, &[]);
    let tcp = tokio::net::TcpStream::connect(cm2.http_addr()).await.unwrap();
    let conn = tokio_rustls::TlsConnector::from(client_config(&front.ca.ca_cert, &[b"xmpp-client"]));
    let r = conn.connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), tcp).await;
    assert!(r.is_err(), "xmpp-client accepted without http.tls.xmpp_passthrough");
}

/// Admission applies to Direct TLS clients too: with `limits.max_sessions = 1`, a second native
/// client gets a `policy-violation` stream error (not a bare close), counted under
/// `limit="sessions"`; the first keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_passthrough_is_admitted_like_other_sessions() {
    let p = Prosody::start(ProsodyOpts::default());
    let front = FrontCert::new();
    let cm = start_cm(&p, &front, &[("http.tls.xmpp_passthrough", "true"), ("limits.max_sessions", "1")]);
    let tls = tls_connect(&cm.http_addr(), &front.ca.ca_cert, &[b"xmpp-client"]).await;
    let mut first = Stream { io: tls, acc: String::new(), pos: 0 };
    first.send(HEADER).await;
    first.until("</stream:features>").await;

    let tls = tls_connect(&cm.http_addr(), &front.ca.ca_cert, &[b"xmpp-client"]).await;
    let mut second = Stream { io: tls, acc: String::new(), pos: 0 };
    second.send(HEADER).await;
    let e = second.until("</stream:stream>").await;
    assert!(e.contains("<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"), "{e}");
    assert_eq!(metric(&cm.admin_url(), "xmpp_cm_limit_hits_total{limit=\"sessions\"}").await, 1.0);
    // Counted as their own transport, not as WebSocket sessions (OPS metrics).
    assert_eq!(metric(&cm.admin_url(), "xmpp_cm_sessions_created_total{transport=\"direct_tls\"}").await, 1.0);
    assert_eq!(metric(&cm.admin_url(), "xmpp_cm_sessions_active{transport=\"direct_tls\"}").await, 1.0);

    let creds = base64::engine::general_purpose::STANDARD.encode("\0alice\0alicepass");
    first.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>")).await;
    let r = first.until("success").await;
    assert!(!r.contains("failure"), "{r}");
}
