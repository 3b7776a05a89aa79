//! Loopback tests for [`super::connect`] and the reader/writer halves, against scripted fake
//! upstreams on `127.0.0.1:0`: one tokio task per fake that reads and writes raw XMPP (and TLS
//! with certificates minted by rcgen). Every wait is bounded by [`STEP`]. The fake's helpers
//! are `pub(crate)` for the tests of `crate::link`, which runs over the same streams.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::connect::connect_targets;
use super::resolve::Target;
use super::{connect, Connection, OpenParams, Upstream};
use crate::config::TlsMode;
use crate::error::{ConnectKind, Error};
use crate::xml::{ns, Element, Frame};

/// Upper bound for any single wait in a fake or a test.
pub(crate) const STEP: Duration = Duration::from_secs(5);
const DOMAIN: &str = "example.test";
pub(crate) const SASL_FEATURES: &str = "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
    <mechanism>PLAIN</mechanism></mechanisms></stream:features>";
const TLS_FEATURES: &str = "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>\
    <required/></starttls></stream:features>";

pub(crate) fn server_header(id: &str, version: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' id='{id}' from='{DOMAIN}' \
         version='{version}' xml:lang='en'>"
    )
}

pub(crate) fn params() -> OpenParams {
    OpenParams {
        domain: DOMAIN.into(),
        lang: "en".into(),
        version: "1.0".into(),
        from: Some("alice@example.test".into()),
        client: None,
    }
}

/// An `Upstream` whose only route for [`DOMAIN`] is `addr`.
pub(crate) fn upstream(addr: SocketAddr, tls: TlsMode, ca_file: Option<&std::path::Path>, timeout: u64) -> Upstream {
    let mut cfg = crate::Config::default();
    cfg.upstream.domains = vec![DOMAIN.into()];
    cfg.upstream.routes = BTreeMap::from([(DOMAIN.to_string(), addr.to_string())]);
    cfg.upstream.tls = tls;
    cfg.upstream.connect_timeout = timeout;
    if let Some(p) = ca_file {
        cfg.upstream.ca_file = p.to_str().expect("utf-8 temp path").into();
    }
    Upstream::new(Arc::new(cfg)).expect("upstream context")
}

// ---------------------------------------------------------------- certificates

/// A test CA, and server certificates it (or nobody) signs.
struct Pki {
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    /// `ca`'s PEM in a file, for `upstream.ca_file`.
    ca_file: tempfile::NamedTempFile,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, "xmpp-cm test CA");
        let ca = p.self_signed(&ca_key).unwrap();
        let mut ca_file = tempfile::NamedTempFile::new().unwrap();
        ca_file.write_all(ca.pem().as_bytes()).unwrap();
        Pki { ca, ca_key, ca_file }
    }

    /// A TLS server config presenting a certificate for `name`, signed by the CA or self-signed.
    fn server(&self, name: &str, signed_by_ca: bool) -> Arc<rustls::ServerConfig> {
        let key = rcgen::KeyPair::generate().unwrap();
        let p = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = if signed_by_ca { p.signed_by(&key, &self.ca, &self.ca_key) } else { p.self_signed(&key) }
            .unwrap();
        let der_key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], der_key)
            .unwrap();
        cfg.alpn_protocols = vec![b"xmpp-client".to_vec()];
        Arc::new(cfg)
    }
}

// ---------------------------------------------------------------- the fake upstream

/// Append to `got` until `needle` appears in the newly read part (bounded by [`STEP`]).
pub(crate) async fn read_until<S: AsyncRead + Unpin>(s: &mut S, got: &mut String, needle: &str) -> bool {
    let start = got.len();
    let deadline = Instant::now() + STEP;
    let mut buf = [0u8; 4096];
    while !got[start.min(got.len())..].contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => return false,
        }
    }
    true
}

/// Read a client stream header (through its closing `>`).
pub(crate) async fn read_header<S: AsyncRead + Unpin>(s: &mut S, got: &mut String) -> bool {
    if !read_until(s, got, "<stream:stream").await {
        return false;
    }
    let at = got.rfind("<stream:stream").unwrap_or(0);
    got[at..].contains('>') || read_until(s, got, ">").await
}

/// Read until EOF (bounded), e.g. to see what the client wrote last.
pub(crate) async fn read_to_end<S: AsyncRead + Unpin>(s: &mut S, got: &mut String) -> bool {
    let mut rest = Vec::new();
    let ok = matches!(tokio::time::timeout(STEP, s.read_to_end(&mut rest)).await, Ok(Ok(_)));
    got.push_str(&String::from_utf8_lossy(&rest));
    ok
}

pub(crate) async fn write<S: AsyncWrite + Unpin>(s: &mut S, data: &str) {
    let _ = s.write_all(data.as_bytes()).await;
    let _ = s.flush().await;
}

/// A fake server accepting one connection and running `script` on it; the task's result is
/// whatever the script returns (typically the bytes it received).
pub(crate) async fn fake<F, Fut>(script: F) -> (SocketAddr, JoinHandle<String>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = String> + Send,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        match tokio::time::timeout(STEP, l.accept()).await {
            Ok(Ok((s, _))) => script(s).await,
            _ => String::new(),
        }
    });
    (addr, task)
}

/// Plaintext open: read the header, answer with header `id` and `features`.
pub(crate) async fn open<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, got: &mut String, id: &str, features: &str) {
    if read_header(s, got).await {
        write(s, &format!("{}{features}", server_header(id, "1.0"))).await;
    }
}

/// STARTTLS server: plaintext header + starttls feature, `<proceed/>`, TLS with `tls`, a
/// second header and SASL features; then reads until the client goes away. Returns
/// "PLAIN:<plaintext bytes>\nTLS:<bytes under TLS>".
async fn starttls_script(mut s: TcpStream, tls: Arc<rustls::ServerConfig>) -> String {
    let mut plain = String::new();
    open(&mut s, &mut plain, "s1", TLS_FEATURES).await;
    if !read_until(&mut s, &mut plain, "/>").await {
        return format!("PLAIN:{plain}");
    }
    write(&mut s, "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").await;
    let mut secure = String::new();
    if let Ok(Ok(mut t)) = tokio::time::timeout(STEP, tokio_rustls::TlsAcceptor::from(tls).accept(s)).await {
        open(&mut t, &mut secure, "s2", SASL_FEATURES).await;
        read_to_end(&mut t, &mut secure).await;
    }
    format!("PLAIN:{plain}\nTLS:{secure}")
}

pub(crate) async fn result_of(task: JoinHandle<String>) -> String {
    tokio::time::timeout(STEP, task).await.expect("fake finishes").expect("fake task")
}

fn assert_connect_kind(r: Result<Connection, Error>, want: ConnectKind) -> String {
    match r {
        Err(Error::Connect { kind, detail }) if kind == want => detail,
        Err(e) => panic!("want Connect {{ {want:?} }}, got {e:?}"),
        Ok(c) => panic!("want Connect {{ {want:?} }}, got a connection {c:?}"),
    }
}

// ---------------------------------------------------------------- connect

#[tokio::test]
async fn plaintext_with_tls_none_connects_and_returns_header_and_features() {
    let (addr, task) = fake(open_then_read_all).await;
    let c = connect(&upstream(addr, TlsMode::None, None, 5), &params()).await.unwrap();
    assert!(!c.secure);
    assert_eq!(c.header.id.as_deref(), Some("s1"));
    assert_eq!(c.header.version.as_deref(), Some("1.0"));
    assert!(c.features.is("features", ns::STREAM));
    assert!(c.features.child("mechanisms", ns::SASL).is_some());
    drop(c);
    let got = result_of(task).await;
    assert!(got.contains("to='example.test'") || got.contains("to=\"example.test\""), "{got}");
    assert!(got.contains("jabber:client"), "{got}");
    // UP-19: no `from` on a plaintext header.
    assert!(!got.contains("alice@"), "{got}");
}

#[tokio::test]
async fn opportunistic_without_starttls_stays_plaintext() {
    let (addr, _task) = fake(open_then_read_all).await;
    let c = connect(&upstream(addr, TlsMode::Opportunistic, None, 5), &params()).await.unwrap();
    assert!(!c.secure);
}

#[tokio::test]
async fn required_tls_without_starttls_offer_fails_starttls() {
    let (addr, _task) = fake(open_then_read_all).await;
    let r = connect(&upstream(addr, TlsMode::Required, None, 5), &params()).await;
    let detail = assert_connect_kind(r, ConnectKind::StartTls);
    assert_eq!(detail, "server does not offer STARTTLS");
}

#[tokio::test]
async fn starttls_with_ca_signed_certificate_connects_securely() {
    let pki = Pki::new();
    let tls = pki.server(DOMAIN, true);
    let (addr, task) = fake(move |s| starttls_script(s, tls)).await;
    let up = upstream(addr, TlsMode::Required, Some(pki.ca_file.path()), 5);
    let c = connect(&up, &params()).await.unwrap();
    assert!(c.secure);
    // The post-TLS header and features, not the pre-TLS ones.
    assert_eq!(c.header.id.as_deref(), Some("s2"));
    assert!(c.features.child("starttls", ns::TLS).is_none());
    assert!(c.features.child("mechanisms", ns::SASL).is_some());
    drop(c);
    let got = result_of(task).await;
    let (plain, secure) = got.split_once("\nTLS:").expect("TLS part");
    assert!(plain.contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"), "{plain}");
    assert!(!plain.contains("alice@"), "no from before TLS: {plain}");
    assert!(secure.contains("<stream:stream"), "{secure}");
    assert!(secure.contains("alice@example.test"), "from after TLS: {secure}");
}

#[tokio::test]
async fn starttls_certificate_for_another_name_fails_tls() {
    let pki = Pki::new();
    let tls = pki.server("other.test", true);
    let (addr, _task) = fake(move |s| starttls_script(s, tls)).await;
    let up = upstream(addr, TlsMode::Required, Some(pki.ca_file.path()), 5);
    let detail = assert_connect_kind(connect(&up, &params()).await, ConnectKind::Tls);
    assert!(detail.contains("certificate"), "{detail}");
}

#[tokio::test]
async fn starttls_self_signed_certificate_not_in_ca_file_fails_tls() {
    let pki = Pki::new();
    let tls = pki.server(DOMAIN, false);
    let (addr, _task) = fake(move |s| starttls_script(s, tls)).await;
    let up = upstream(addr, TlsMode::Opportunistic, Some(pki.ca_file.path()), 5);
    let detail = assert_connect_kind(connect(&up, &params()).await, ConnectKind::Tls);
    assert!(detail.contains("UnknownIssuer"), "{detail}");
}

#[tokio::test]
async fn starttls_failure_answer_fails_starttls() {
    let (addr, _task) = fake(|mut s| async move {
        let mut got = String::new();
        open(&mut s, &mut got, "s1", TLS_FEATURES).await;
        if read_until(&mut s, &mut got, "/>").await {
            write(&mut s, "<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:stream>").await;
        }
        read_to_end(&mut s, &mut got).await;
        got
    })
    .await;
    let r = connect(&upstream(addr, TlsMode::Required, None, 5), &params()).await;
    let detail = assert_connect_kind(r, ConnectKind::StartTls);
    assert!(detail.contains("failure"), "{detail}");
}

#[tokio::test]
async fn closed_port_fails_tcp_quickly() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let start = Instant::now();
    let r = connect(&upstream(addr, TlsMode::None, None, 5), &params()).await;
    assert_connect_kind(r, ConnectKind::Tcp);
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
}

#[tokio::test]
async fn silent_listener_times_out_within_connect_timeout() {
    let (addr, _task) = fake(|mut s| async move {
        // Accept, never answer; hold the socket until the client gives up.
        let mut got = String::new();
        read_to_end(&mut s, &mut got).await;
        got
    })
    .await;
    let start = Instant::now();
    let r = connect(&upstream(addr, TlsMode::None, None, 1), &params()).await;
    let elapsed = start.elapsed();
    assert_connect_kind(r, ConnectKind::Timeout);
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn server_header_with_version_0_9_fails_stream() {
    let (addr, _task) = fake(|mut s| async move {
        let mut got = String::new();
        if read_header(&mut s, &mut got).await {
            write(&mut s, &format!("{}{SASL_FEATURES}", server_header("s1", "0.9"))).await;
        }
        read_to_end(&mut s, &mut got).await;
        got
    })
    .await;
    let r = connect(&upstream(addr, TlsMode::None, None, 5), &params()).await;
    assert_connect_kind(r, ConnectKind::Stream);
}

#[tokio::test]
async fn stream_error_during_open_is_upstream_stream_error() {
    let (addr, _task) = fake(|mut s| async move {
        let mut got = String::new();
        open(
            &mut s,
            &mut got,
            "s1",
            "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>",
        )
        .await;
        read_to_end(&mut s, &mut got).await;
        got
    })
    .await;
    match connect(&upstream(addr, TlsMode::None, None, 5), &params()).await {
        Err(Error::UpstreamStreamError(el)) => {
            assert!(el.is("error", ns::STREAM));
            assert!(el.child("host-unknown", ns::STREAMS_ERR).is_some());
        }
        other => panic!("want UpstreamStreamError, got {other:?}"),
    }
}

#[tokio::test]
async fn dead_first_target_then_live_second_connects() {
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let (addr, _task) = fake(open_then_read_all).await;
    let up = upstream(addr, TlsMode::None, None, 5);
    let targets = [
        Target { host: "127.0.0.1".into(), port: dead_addr.port(), direct_tls: false, trusted: true },
        Target { host: "127.0.0.1".into(), port: addr.port(), direct_tls: false, trusted: true },
    ];
    let c = connect_targets(&up, &params(), &targets, STEP).await.unwrap();
    assert_eq!(c.header.id.as_deref(), Some("s1"));
}

#[tokio::test]
async fn direct_tls_target_sends_sni_domain_and_alpn_xmpp_client() {
    let pki = Pki::new();
    let tls = pki.server(DOMAIN, true);
    let (addr, task) = fake(move |s| async move {
        let mut got = String::new();
        let Ok(Ok(mut t)) = tokio::time::timeout(STEP, tokio_rustls::TlsAcceptor::from(tls).accept(s)).await
        else {
            return "handshake failed".into();
        };
        let (_, conn) = t.get_ref();
        let sni = conn.server_name().unwrap_or("").to_string();
        let alpn = String::from_utf8_lossy(conn.alpn_protocol().unwrap_or(b"")).to_string();
        // A STARTTLS offer inside direct TLS must be ignored (UP-09).
        open(&mut t, &mut got, "d1", TLS_FEATURES).await;
        read_to_end(&mut t, &mut got).await;
        format!("SNI:{sni} ALPN:{alpn} GOT:{got}")
    })
    .await;
    let up = upstream(addr, TlsMode::Required, Some(pki.ca_file.path()), 5);
    // The SRV target is an IP; the name checked and sent is still the domain.
    let targets = [Target { host: "127.0.0.1".into(), port: addr.port(), direct_tls: true, trusted: true }];
    let c = connect_targets(&up, &params(), &targets, STEP).await.unwrap();
    assert!(c.secure);
    assert_eq!(c.header.id.as_deref(), Some("d1"));
    drop(c);
    let got = result_of(task).await;
    assert!(got.starts_with("SNI:example.test ALPN:xmpp-client "), "{got}");
    assert!(got.contains("alice@example.test"), "from allowed under TLS: {got}");
    assert!(!got.contains("<starttls"), "{got}");
}

// ---------------------------------------------------------------- reader and writer

/// A fake that opens the stream in plaintext (header `s1`, SASL features), then runs `then`
/// on the socket with what it read so far.
pub(crate) async fn fake_opened<F, Fut>(then: F) -> (SocketAddr, JoinHandle<String>)
where
    F: FnOnce(TcpStream, String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = String> + Send,
{
    fake(|mut s| async move {
        let mut got = String::new();
        open(&mut s, &mut got, "s1", SASL_FEATURES).await;
        then(s, got).await
    })
    .await
}

/// Connect (tls none) to [`fake_opened`] running `then`.
async fn open_plain<F, Fut>(then: F) -> (Connection, JoinHandle<String>)
where
    F: FnOnce(TcpStream, String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = String> + Send,
{
    let (addr, task) = fake_opened(then).await;
    let c = connect(&upstream(addr, TlsMode::None, None, 5), &params()).await.unwrap();
    (c, task)
}

/// The fake that opens the stream, then reads until the client goes away: what it read.
async fn open_then_read_all(mut s: TcpStream) -> String {
    let mut got = String::new();
    open(&mut s, &mut got, "s1", SASL_FEATURES).await;
    read_to_end(&mut s, &mut got).await;
    got
}

async fn next(c: &mut Connection) -> Result<Frame, Error> {
    tokio::time::timeout(STEP, c.reader.next()).await.expect("reader answers in time")
}

#[tokio::test]
async fn restart_writes_a_second_header_and_reader_yields_new_stream_open() {
    let (mut c, task) = open_plain(|mut s, mut got| async move {
        let first = got.len();
        if read_header(&mut s, &mut got).await {
            write(&mut s, &format!("{}{SASL_FEATURES}", server_header("s2", "1.0"))).await;
        }
        read_to_end(&mut s, &mut got).await;
        got[first..].to_string()
    })
    .await;
    c.writer.restart(&params()).await.unwrap();
    match next(&mut c).await {
        Ok(Frame::StreamOpen(h)) => assert_eq!(h.id.as_deref(), Some("s2")),
        other => panic!("want StreamOpen, got {other:?}"),
    }
    match next(&mut c).await {
        Ok(Frame::Element(el)) => assert!(el.is("features", ns::STREAM)),
        other => panic!("want features, got {other:?}"),
    }
    drop(c);
    let second = result_of(task).await;
    assert!(second.contains("<stream:stream"), "second header on the same socket: {second}");
}

#[tokio::test]
async fn reader_yields_elements_skips_whitespace_and_reports_close() {
    let (mut c, _task) = open_plain(|mut s, got| async move {
        write(&mut s, " \n<message xmlns='jabber:client' from='bob@example.test'><body>hi</body></message> ").await;
        write(&mut s, "<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>").await;
        write(&mut s, "</stream:stream>").await;
        got
    })
    .await;
    match next(&mut c).await {
        Ok(Frame::Element(el)) => {
            assert!(el.is("message", ns::CLIENT));
            assert_eq!(el.attr("from"), Some("bob@example.test"));
        }
        other => panic!("want message, got {other:?}"),
    }
    match next(&mut c).await {
        Ok(Frame::Element(el)) => assert!(el.is("error", ns::STREAM)),
        other => panic!("want stream error as an element, got {other:?}"),
    }
    assert!(matches!(next(&mut c).await, Ok(Frame::StreamClose)));
}

#[tokio::test]
async fn reader_eof_without_close_is_upstream_lost_and_stays_lost() {
    let (mut c, _task) = open_plain(|s, got| async move {
        drop(s);
        got
    })
    .await;
    assert!(matches!(next(&mut c).await, Err(Error::UpstreamLost(_))));
    assert!(matches!(next(&mut c).await, Err(Error::UpstreamLost(_))));
}

#[tokio::test]
async fn reader_bad_xml_is_upstream_lost() {
    let (mut c, _task) = open_plain(|mut s, mut got| async move {
        // Mismatched end tag: the element completes for the scanner, then fails to parse.
        write(&mut s, "<message><body>x</wrong></message>").await;
        read_to_end(&mut s, &mut got).await;
        got
    })
    .await;
    match next(&mut c).await {
        Err(Error::UpstreamLost(why)) => assert!(why.contains("XML"), "{why}"),
        other => panic!("want UpstreamLost, got {other:?}"),
    }
}

#[tokio::test]
async fn send_serializes_with_jabber_client_and_close_writes_footer() {
    let (mut c, task) = open_plain(|mut s, mut got| async move {
        let first = got.len();
        read_to_end(&mut s, &mut got).await;
        got[first..].to_string()
    })
    .await;
    let msg = Element::new("message", ns::CLIENT)
        .with_attr("to", "bob@example.test")
        .with_child(Element::new("body", ns::CLIENT).with_text("a < b"));
    c.writer.send(&msg).await.unwrap();
    c.writer.close().await.unwrap();
    drop(c);
    let got = result_of(task).await;
    assert!(got.starts_with("<message"), "{got}");
    assert!(!got.contains("xmlns='jabber:client'") && !got.contains("xmlns=\"jabber:client\""), "{got}");
    assert!(got.contains("a &lt; b"), "{got}");
    assert!(got.ends_with("</stream:stream>"), "{got}");
}

#[tokio::test]
async fn abort_ends_the_connection_without_stream_footer() {
    let (c, task) = open_plain(|mut s, mut got| async move {
        let first = got.len();
        let eof = read_to_end(&mut s, &mut got).await;
        format!("EOF:{eof} GOT:{}", &got[first..])
    })
    .await;
    let Connection { writer, reader, .. } = c;
    writer.abort().await;
    // The server sees EOF even while the reader half is still alive.
    let got = result_of(task).await;
    assert_eq!(got, "EOF:true GOT:");
    drop(reader);
}

// ---------------------------------------------------------------- PROXY header, SSRF guard

/// A fake that reads raw bytes until the client's stream header is complete, answers it in
/// plaintext, then reads to the end. Returns what came before the answer, hex-encoded (a v2
/// PROXY header is binary).
async fn proxy_fake() -> (SocketAddr, JoinHandle<String>) {
    fake(|mut s| async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + STEP;
        let complete = |g: &[u8]| {
            let at = g.windows(14).position(|w| w == b"<stream:stream");
            at.is_some_and(|i| g[i..].contains(&b'>'))
        };
        while !complete(&got) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => return hex::encode(got),
            }
        }
        write(&mut s, &format!("{}{SASL_FEATURES}", server_header("s1", "1.0"))).await;
        let mut rest = String::new();
        read_to_end(&mut s, &mut rest).await;
        hex::encode(got)
    })
    .await
}

/// The PROXY header the fake saw, and the text after it.
fn split_proxy(hex_bytes: &str, header: &[u8]) -> String {
    let got = hex::decode(hex_bytes).unwrap();
    assert!(got.starts_with(header), "want {:?} first, got {:?}", String::from_utf8_lossy(header), String::from_utf8_lossy(&got));
    String::from_utf8(got[header.len()..].to_vec()).unwrap()
}

fn with_proxy(mut up: Upstream, v: crate::config::ProxyProtocol) -> Upstream {
    let mut cfg = (*up.config).clone();
    cfg.upstream.proxy_protocol = v;
    up.config = Arc::new(cfg);
    up
}

#[tokio::test]
async fn proxy_header_is_the_first_bytes_on_the_wire() {
    use crate::config::ProxyProtocol::{V1, V2};
    let cases: [(crate::config::ProxyProtocol, Option<&str>); 4] =
        [(V1, Some("192.0.2.55:0")), (V1, None), (V2, Some("[2001:db8::1]:4000")), (V2, None)];
    for (v, client) in cases {
        let client: Option<SocketAddr> = client.map(|c| c.parse().unwrap());
        let (addr, task) = proxy_fake().await;
        let up = with_proxy(upstream(addr, TlsMode::None, None, 5), v);
        let c = connect(&up, &OpenParams { client, ..params() }).await.unwrap();
        drop(c);
        let got = result_of(task).await;
        let header = super::proxy::header(v, client, addr);
        if v == V1 && client.is_some() {
            assert_eq!(header, format!("PROXY TCP4 192.0.2.55 127.0.0.1 0 {}\r\n", addr.port()).into_bytes());
        }
        // Immediately followed by our stream header: nothing before, nothing between.
        let rest = split_proxy(&got, &header);
        assert!(rest.starts_with("<?xml") || rest.starts_with("<stream:stream"), "{v:?} {client:?}: {rest}");
    }
}

#[tokio::test]
async fn proxy_off_sends_no_header() {
    let (addr, task) = proxy_fake().await;
    let c = connect(&upstream(addr, TlsMode::None, None, 5), &OpenParams { client: Some("192.0.2.1:1".parse().unwrap()), ..params() }).await.unwrap();
    drop(c);
    let rest = split_proxy(&result_of(task).await, b"");
    assert!(rest.starts_with("<?xml") || rest.starts_with("<stream:stream"), "{rest}");
}

#[tokio::test]
async fn ssrf_guard_refuses_dns_learned_private_targets_but_not_config_ones() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let up = upstream(addr, TlsMode::None, None, 5);
    let learned = [Target { host: "127.0.0.1".into(), port: addr.port(), direct_tls: false, trusted: false }];
    let r = connect_targets(&up, &params(), &learned, Duration::from_secs(5)).await;
    let detail = assert_connect_kind(r, ConnectKind::Dns);
    assert!(detail.contains("127.0.0.1 (loopback)") && detail.contains("allow_private_targets"), "{detail}");
    // Nothing was even attempted.
    assert!(tokio::time::timeout(Duration::from_millis(200), l.accept()).await.is_err(), "a connection was made");
    drop(l);

    // allow_private_targets = true: the same DNS-learned target is used.
    let (addr, _task) = fake(open_then_read_all).await;
    let mut up = upstream(addr, TlsMode::None, None, 5);
    let mut cfg = (*up.config).clone();
    cfg.upstream.allow_private_targets = true;
    up.config = Arc::new(cfg);
    let learned = [Target { host: "127.0.0.1".into(), port: addr.port(), direct_tls: false, trusted: false }];
    assert!(connect_targets(&up, &params(), &learned, Duration::from_secs(5)).await.is_ok());
}

/// Records what an observed connect reports, as short names.
#[derive(Default)]
struct Steps(std::sync::Mutex<Vec<String>>);

impl super::observe::Observer for Steps {
    fn step(&self, _took: Duration, what: super::observe::What<'_>) {
        use super::observe::What;
        let s = match what {
            What::Route(r) => format!("route {:?}", r.source),
            What::Skipped { .. } => "skipped".into(),
            What::Addresses { result, .. } => format!("addresses {:?}", result.map(|a| a.len())),
            What::Guard { decision, .. } => format!("guard bypassed={}", decision.bypassed.is_some()),
            What::Tcp { result, .. } => format!("tcp {}", result.is_ok()),
            What::ProxyHeader { len, result, .. } => format!("proxy {len} {}", result.is_ok()),
            What::StreamOpen { secure, result } => format!("open secure={secure} {}", result.is_ok()),
            What::StartTls(r) => format!("starttls {r:?}"),
            What::Tls { result, verification, .. } => {
                format!("tls {} verified={:?}", result.is_ok(), verification.map(|v| v.result.is_ok()))
            }
        };
        self.0.lock().unwrap().push(s);
    }
}

#[tokio::test]
async fn observed_connect_reports_each_step_in_order() {
    // Plaintext with a v1 PROXY header.
    let (addr, _task) = proxy_fake().await;
    let up = with_proxy(upstream(addr, TlsMode::None, None, 5), crate::config::ProxyProtocol::V1);
    let seen = Steps::default();
    let c = super::connect_observed(&up, &params(), None, &seen).await.unwrap();
    drop(c);
    assert_eq!(
        *seen.0.lock().unwrap(),
        [
            "route Static",
            "addresses Ok(1)",
            "guard bypassed=true",
            "tcp true",
            "proxy 15 true",
            "open secure=false true",
            "starttls Ok(Disabled)"
        ]
    );

    // STARTTLS with a certificate for another name: the recording verifier saw the rejection.
    let pki = Pki::new();
    let tls = pki.server("other.test", true);
    let (addr, _task) = fake(move |s| starttls_script(s, tls)).await;
    let mut up = upstream(addr, TlsMode::Required, Some(pki.ca_file.path()), 5);
    up.tls = super::tls::build_observed(pki.ca_file.path().to_str().unwrap()).unwrap();
    let seen = Steps::default();
    let r = super::connect_observed(&up, &params(), None, &seen).await;
    assert_connect_kind(r, ConnectKind::Tls);
    let steps = seen.0.lock().unwrap();
    assert_eq!(steps[steps.len() - 3..], ["open secure=false true", "starttls Ok(Proceeded)", "tls false verified=Some(false)"]);
}
