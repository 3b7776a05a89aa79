//! `[upstream] proxy_protocol` against a real ejabberd listening with `use_proxy_protocol:
//! true`: the client address xmpp-cm believed (here from `X-Forwarded-For`, sent by a trusted
//! proxy on loopback) reaches ejabberd in the PROXY header and shows up in ejabberd's own log
//! line for the authentication, though every TCP connection really comes from 127.0.0.1.
//! v1 (text) over BOSH with an IPv4 client; v2 (binary) over WebSocket with an IPv6 client, so
//! the mixed-family case (IPv6 client, IPv4 upstream) is exercised too.

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use support::ws::{self, WsClient};
use support::{http_request, Ejabberd, EjabberdOpts, XmppCm};

const NS: &str = "xmlns='http://jabber.org/protocol/httpbind'";
const WAIT: Duration = Duration::from_secs(10);

fn plain(user: &str, pass: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"))
}

/// ejabberd with the PROXY listener, and xmpp-cm in front of it trusting loopback as a proxy.
fn setup(version: &str) -> (Ejabberd, XmppCm) {
    let e = Ejabberd::start(EjabberdOpts { proxy_protocol: true, ..Default::default() });
    let cfg = XmppCm::config_with(
        &e,
        &[
            ("upstream.proxy_protocol", &format!("\"{version}\"")),
            ("http.trusted_proxies", "[\"127.0.0.1/32\"]"),
        ],
    );
    (e, XmppCm::start(&cfg))
}

/// Wait (bounded) until ejabberd's log has a line with both `a` and `b`; that line.
fn ejabberd_line(e: &Ejabberd, a: &str, b: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(l) = e.log().lines().find(|l| l.contains(a) && l.contains(b)) {
            return Some(l.to_string());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn bosh(url: &str, xff: &str, body: &str) -> String {
    let h = [("Content-Type", "text/xml; charset=utf-8"), ("X-Forwarded-For", xff)];
    let r = http_request("POST", url, &h, body.as_bytes(), WAIT).await.unwrap_or_else(|e| panic!("POST {body}: {e}"));
    assert_eq!(r.status, 200, "{body}: {}", r.body);
    r.body
}

fn attr<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    let i = body.find(&format!(" {name}='")).map(|i| i + name.len() + 3)?;
    body[i..].split('\'').next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v1_bosh_client_ip_reaches_ejabberd() {
    let (e, cm) = setup("v1");
    let url = cm.bosh_url();
    let xff = "192.0.2.55";
    let created = bosh(
        &url,
        xff,
        &format!("<body {NS} xmlns:xmpp='urn:xmpp:xbosh' xmpp:version='1.0' rid='1000' to='localhost' ver='1.6' wait='10' hold='1'/>"),
    )
    .await;
    let diag = || format!("--- xmpp-cm ---\n{}\n--- ejabberd ---\n{}", support::tail(cm.log_path(), 40), support::tail(e.log_path(), 40));
    assert!(created.contains("PLAIN"), "no SASL PLAIN offered: {created}\n{}", diag());
    let sid = attr(&created, "sid").unwrap_or_else(|| panic!("no sid: {created}")).to_string();
    let auth = format!(
        "<body {NS} rid='1001' sid='{sid}'><auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth></body>",
        plain("alice", "alicepass")
    );
    let mut got = bosh(&url, xff, &auth).await;
    let mut rid = 1002;
    // The success may come in a later response (bounded).
    while !got.contains("<success") && rid < 1006 {
        got = bosh(&url, xff, &format!("<body {NS} rid='{rid}' sid='{sid}'/>")).await;
        rid += 1;
    }
    assert!(got.contains("<success"), "login failed: {got}\n{}", diag());
    let line = ejabberd_line(&e, "alice", xff)
        .unwrap_or_else(|| panic!("ejabberd never logged alice's login from {xff}\n{}", diag()));
    eprintln!("ejabberd: {line}");
    assert!(!line.contains("127.0.0.1"), "{line}");
    let _ = bosh(&url, xff, &format!("<body {NS} rid='{rid}' sid='{sid}' type='terminate'/>")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v2_websocket_ipv6_client_ip_reaches_ejabberd() {
    let (e, cm) = setup("v2");
    let xff = "2001:db8::66";
    let mut req = ws::request(&cm.ws_url(), Some("xmpp"));
    req.headers_mut().insert("x-forwarded-for", HeaderValue::from_static("2001:db8::66"));
    let (mut ws, _) = WsClient::try_connect_request(req).await.expect("websocket handshake");
    ws.send(&ws::open("localhost")).await;
    ws.recv_until("PLAIN").await;
    let auth = format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>", plain("bob", "bobpass"));
    ws.send(&auth).await;
    ws.recv_until("<success").await;
    let diag = || format!("--- xmpp-cm ---\n{}\n--- ejabberd ---\n{}", support::tail(cm.log_path(), 40), support::tail(e.log_path(), 40));
    let line = ejabberd_line(&e, "bob", xff).unwrap_or_else(|| panic!("ejabberd never logged bob's login from {xff}\n{}", diag()));
    eprintln!("ejabberd: {line}");
    let _ = ws.try_send("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>").await;
}
