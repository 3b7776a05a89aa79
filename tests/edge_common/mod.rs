//! Helpers for the edge tests (tests/edge_*.rs): TLS and HTTP/2 clients trusting a test CA,
//! `openssl s_client`, the TLS and RFC 8441 HTTP/2 streams the harness' WebSocket client
//! (`support::ws`) runs over, a raw BOSH exchange over HTTP/2, /proc memory readings and
//! /metrics values.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_tungstenite::WebSocketStream;

use crate::support::ws::{self, WsClient};

pub const T: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------- process readings

/// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`).
pub fn proc_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

pub fn rss_kb(pid: u32) -> u64 {
    proc_kb(pid, "VmRSS")
}

/// Open file descriptors of `pid` that are sockets.
pub fn socket_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.filter_map(Result::ok).filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))).count())
        .unwrap_or(0)
}

/// The value of `name{labels}` in xmpp-cm's /metrics (0 when absent).
pub async fn metric(admin_url: &str, name_and_labels: &str) -> f64 {
    let r = crate::support::http_request("GET", &format!("{admin_url}/metrics"), &[], b"", T).await.expect("GET /metrics");
    r.body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------- TLS

/// A rustls client config trusting only `ca_file`, offering `alpn`.
pub fn client_config(ca_file: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca_file).expect("read CA");
    for c in rustls_pemfile_certs(&pem) {
        roots.add(c).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().expect("PEM")
}

/// TCP + TLS to `addr` for the name "localhost", trusting `ca_file`, offering `alpn`.
pub async fn tls_connect(addr: &str, ca_file: &Path, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let conn = tokio_rustls::TlsConnector::from(client_config(ca_file, alpn));
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(T, conn.connect(name, tcp)).await.expect("TLS handshake timed out").expect("TLS handshake")
}

/// `openssl s_client -connect 127.0.0.1:<port> <args>` with stdin closed; (success, output).
pub fn s_client(port: u16, args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .arg("10")
        .args(["openssl", "s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "localhost"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The first PEM certificate in `text`, whitespace removed (for comparisons).
pub fn first_pem(text: &str) -> Option<String> {
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text[start..].find("-----END CERTIFICATE-----")? + start;
    Some(text[start + 27..end].split_whitespace().collect())
}

/// The certificate the TLS listener on `port` serves now (PEM body, no whitespace).
pub fn served_cert(port: u16) -> String {
    let (_, out) = s_client(port, &["-alpn", "http/1.1"]);
    first_pem(&out).unwrap_or_else(|| panic!("no certificate from s_client:\n{out}"))
}

/// The SHA-256 fingerprint of a PEM file's first certificate (for messages).
pub fn fingerprint(pem_file: &Path) -> String {
    let out = Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(pem_file).output().expect("openssl x509");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

// ---------------------------------------------------------------- HTTP/2

pub type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// An HTTP/2 client connection (prior knowledge) over `io`.
pub async fn h2_handshake<S>(io: S) -> H2
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// POST `body` to `uri` on an HTTP/2 connection; (status, version, body).
pub async fn h2_post(h2: &mut H2, uri: &str, body: &str) -> (u16, hyper::Version, String) {
    let req = hyper::Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "text/xml; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let work = async {
        h2.ready().await.expect("h2 ready");
        let resp = h2.send_request(req).await.expect("h2 request");
        let status = resp.status().as_u16();
        let version = resp.version();
        let b = resp.into_body().collect().await.expect("h2 body").to_bytes();
        (status, version, String::from_utf8_lossy(&b).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(30), work).await.expect("h2 POST timed out")
}

/// RFC 8441: a WebSocket (subprotocol xmpp) over an extended CONNECT stream of `h2`.
pub async fn h2_websocket(h2: &mut H2, uri: &str) -> WebSocketStream<TokioIo<hyper::upgrade::Upgraded>> {
    let mut req = hyper::Request::builder()
        .method("CONNECT")
        .uri(uri)
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "xmpp")
        .body(Full::new(Bytes::new()))
        .expect("request");
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    h2.ready().await.expect("h2 ready");
    let resp = tokio::time::timeout(T, h2.send_request(req)).await.expect("extended CONNECT timed out").expect("extended CONNECT");
    assert_eq!(resp.status(), 200, "extended CONNECT refused: {resp:?}");
    assert_eq!(resp.headers().get("sec-websocket-protocol").map(|v| v.as_bytes()), Some(&b"xmpp"[..]));
    let up = hyper::upgrade::on(resp).await.expect("h2 upgrade");
    WebSocketStream::from_raw_socket(TokioIo::new(up), tokio_tungstenite::tungstenite::protocol::Role::Client, None).await
}

// ---------------------------------------------------------------- XMPP over WebSocket

/// wss:// over our own TLS stream (trusting `ca_file`, ALPN http/1.1), as the one test client.
pub async fn ws_tls(addr: &str, path: &str, ca_file: &Path) -> WsClient<TlsStream<TcpStream>> {
    let tls = tls_connect(addr, ca_file, &[b"http/1.1"]).await;
    let req = ws::request(&format!("wss://localhost{path}"), Some("xmpp"));
    let (ws, _) = tokio::time::timeout(T, tokio_tungstenite::client_async(req, tls)).await.expect("wss timed out").expect("wss handshake");
    WsClient::from(ws)
}

pub fn chat(to: &str, body: &str) -> String {
    format!("<message xmlns='jabber:client' to='{to}' type='chat'><body>{body}</body></message>")
}

pub fn between<'a>(s: &'a str, a: &str, b: &str) -> &'a str {
    s.split(a).nth(1).and_then(|r| r.split(b).next()).unwrap_or_default()
}

/// Poll `cond` every 50 ms until true or `timeout` (returns whether it became true).
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

// ---------------------------------------------------------------- BOSH over HTTP/2

/// A BOSH session driven over one HTTP/2 connection (requests may run concurrently on clones
/// of `h2`).
pub struct H2Bosh {
    pub h2: H2,
    pub uri: String,
    pub sid: String,
    pub rid: u64,
    /// Every response body so far, concatenated.
    pub got: String,
}

pub const BOSH_NS: &str = "xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh'";

impl H2Bosh {
    pub async fn create(mut h2: H2, uri: &str, domain: &str) -> H2Bosh {
        let rid = 4_000_000 + u64::from(std::process::id() % 1000) * 1000;
        let body = format!("<body {BOSH_NS} rid='{rid}' to='{domain}' xml:lang='en' wait='5' hold='1' ver='1.6' xmpp:version='1.0'/>");
        let (status, version, text) = h2_post(&mut h2, uri, &body).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(version, hyper::Version::HTTP_2);
        let sid = between(&text, "sid='", "'").to_string();
        let sid = if sid.is_empty() { between(&text, "sid=\"", "\"").to_string() } else { sid };
        assert!(!sid.is_empty(), "no sid: {text}");
        H2Bosh { h2, uri: uri.into(), sid, rid, got: text }
    }

    pub fn next_body(&mut self, attrs: &str, payload: &str) -> String {
        self.rid += 1;
        format!("<body {BOSH_NS} sid='{}' rid='{}' {attrs}>{payload}</body>", self.sid, self.rid)
    }

    pub async fn send(&mut self, attrs: &str, payload: &str) -> String {
        let body = self.next_body(attrs, payload);
        let (status, _, text) = h2_post(&mut self.h2, &self.uri.clone(), &body).await;
        assert_eq!(status, 200, "{text}");
        assert!(!text.contains("type='terminate'") && !text.contains("type=\"terminate\""), "session ended: {text}");
        self.got.push_str(&text);
        text
    }

    /// Poll until `needle` has been received (bounded).
    pub async fn poll_until(&mut self, needle: &str) {
        let t0 = Instant::now();
        while !self.got.contains(needle) {
            assert!(t0.elapsed() < Duration::from_secs(30), "timed out waiting for {needle:?}; got {}", self.got);
            self.send("", "").await;
        }
    }

    /// Full login; returns the session and the full JID.
    pub async fn login(h2: H2, uri: &str, domain: &str, user: &str, pass: &str) -> (H2Bosh, String) {
        let mut b = H2Bosh::create(h2, uri, domain).await;
        b.poll_until("mechanisms").await;
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        b.send("", &format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>")).await;
        b.poll_until("<success").await;
        b.got.clear();
        b.send(&format!("to='{domain}' xml:lang='en' xmpp:restart='true'"), "").await;
        b.poll_until("urn:ietf:params:xml:ns:xmpp-bind").await;
        b.send("", "<iq xmlns='jabber:client' type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>").await;
        b.poll_until("</jid>").await;
        let jid = between(&b.got, "<jid>", "</jid>").to_string();
        b.send("", "<presence xmlns='jabber:client'/>").await;
        (b, jid)
    }
}
