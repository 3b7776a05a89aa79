//! XMPP over WebSocket through the xmpp-cm binary: the harness' raw client (support::ws: exact
//! bytes, close codes) against real Prosody, and against the scripted fake upstream
//! (support::fake) for what a real server will not do on demand (whitespace keepalives, stream
//! errors, closing, watching for `</stream:stream>` after the client vanished). The ping
//! timeout runs in virtual time in `inproc.rs`. Test names carry checklist IDs (WS-xx).

mod support;

use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use xmpp_cm::xml::{ns, parse_document, Element, Limits};

use support::fake::{FakeConn, FakeUpstream, DOMAIN};
use support::ws::{open, request, Ws, WsClient};
use support::{Prosody, ProsodyOpts, XmppCm};

const CLOSE: &str = r#"<close xmlns="urn:ietf:params:xml:ns:xmpp-framing" />"#;
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- raw client helpers

async fn connect_with(url: &str, protocol: Option<&str>) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let (ws, resp) = WsClient::try_connect_request(request(url, protocol)).await?;
    if protocol.is_some() {
        // WS-01: only `xmpp` is ever selected, whatever else was offered.
        assert_eq!(resp.headers().get("sec-websocket-protocol").map(|v| v.as_bytes()), Some(&b"xmpp"[..]));
    }
    Ok(ws)
}

async fn connect(url: &str) -> Ws {
    connect_with(url, Some("xmpp")).await.expect("websocket handshake")
}

/// The next text message; every one must be a standalone document (WS-05, WS-06, WS-08).
async fn recv(ws: &mut Ws) -> String {
    let t = ws.recv().await;
    assert!(!t.starts_with("<?xml"), "xmpp-cm sent an XML declaration: {t}");
    assert!(!t.trim().is_empty(), "whitespace-only message (WS-21)");
    if !t.starts_with("<stream:stream ") && t != "</stream:stream>" {
        parse_document(t.as_bytes(), &Limits::default(), &[]).unwrap_or_else(|e| panic!("message is not one standalone element ({e}): {t}"));
    }
    t
}

fn el(text: &str) -> Element {
    parse_document(text.as_bytes(), &Limits::default(), &[]).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The stream error condition in a message, if it is a `<stream:error/>` whose condition
/// child carries the streams namespace explicitly (WS-18: strophe.js checks it literally).
fn stream_error_condition(text: &str) -> Option<String> {
    let e = el(text);
    if !e.is("error", ns::STREAM) {
        return None;
    }
    assert!(text.contains("xmlns:stream="), "stream prefix not declared: {text}");
    let c = e.elements().find(|c| c.ns == ns::STREAMS_ERR && c.name != "text")?;
    assert!(text.contains(&format!("<{} xmlns='{}'", c.name, ns::STREAMS_ERR)) || text.contains(&format!("<{} xmlns=\"{}\"", c.name, ns::STREAMS_ERR)), "{text}");
    Some(c.name.clone())
}

/// After a fault: `<open/>` (when asked), the stream error, the exact `<close/>`, then a close
/// frame with `code`.
async fn expect_error_end(ws: Ws, condition: &str, code: u16, open_first: bool) {
    let (texts, got_code) = ws.read_to_close().await;
    let mut it = texts.iter();
    if open_first {
        let o = it.next().unwrap_or_else(|| panic!("no <open/> in {texts:?}"));
        assert!(o.starts_with("<open "), "{texts:?}");
    }
    let e = it.next().unwrap_or_else(|| panic!("no stream error in {texts:?}"));
    assert_eq!(stream_error_condition(e).as_deref(), Some(condition), "{texts:?}");
    assert_eq!(it.next().map(String::as_str), Some(CLOSE), "{texts:?}");
    assert_eq!(it.next(), None, "{texts:?}");
    assert_eq!(got_code, Some(code), "{texts:?}");
}

/// `<open/>` and its features; returns the features message.
async fn open_stream(ws: &mut Ws, to: &str) -> String {
    ws.send(&open(to)).await;
    let o = recv(ws).await;
    // WS-12: literal `<open `, framing xmlns, version 1.0, from, id, xml:lang.
    assert!(o.starts_with("<open "), "{o}");
    let oe = el(&o);
    assert!(oe.is("open", ns::FRAMING), "{o}");
    assert_eq!(oe.attr("version"), Some("1.0"));
    assert!(oe.attr("id").is_some_and(|i| !i.is_empty()), "{o}");
    assert!(oe.attr("from").is_some(), "{o}");
    assert!(oe.attr_ns(ns::XML, "lang").is_some(), "{o}");
    let f = recv(ws).await;
    assert!(el(&f).is("features", ns::STREAM), "{f}");
    f
}

/// SASL PLAIN, restart, bind (stanzas unqualified, as xmpp.js sends them: WS-23); the full JID.
async fn login(ws: &mut Ws, domain: &str, user: &str, pass: &str, resource: &str) -> String {
    let f = open_stream(ws, domain).await;
    // WS-13: TLS is never advertised to the client.
    assert!(!f.contains("starttls"), "{f}");
    assert!(f.contains(">PLAIN<"), "{f}");
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
    ws.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>")).await;
    let s = recv(ws).await;
    assert!(el(&s).is("success", ns::SASL), "{s}");
    // WS-15: a new <open/> without <close/>.
    let f = open_stream(ws, domain).await;
    assert!(f.contains("urn:ietf:params:xml:ns:xmpp-bind"), "{f}");
    ws.send(&format!("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>")).await;
    let r = recv(ws).await;
    let re = el(&r);
    assert!(re.is("iq", ns::CLIENT) && re.attr("type") == Some("result"), "{r}");
    // WS-06: stanzas carry jabber:client.
    assert!(r.starts_with("<iq xmlns='jabber:client'") || r.starts_with("<iq xmlns=\"jabber:client\""), "{r}");
    let jid = re.elements().next().and_then(|b| b.elements().next()).map(|j| j.text());
    jid.expect("bound jid")
}

/// Wait for a stanza matching `pred`, skipping others.
async fn recv_matching(ws: &mut Ws, pred: impl Fn(&Element) -> bool) -> Element {
    loop {
        let t = recv(ws).await;
        let e = el(&t);
        if pred(&e) {
            return e;
        }
    }
}

/// An XMPP ping to the server answers (the session is alive and working).
async fn ping_server(ws: &mut Ws, domain: &str, id: &str) {
    ws.send(&format!("<iq xmlns='jabber:client' type='get' to='{domain}' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>")).await;
    let r = recv_matching(ws, |e| e.name == "iq" && e.attr("id") == Some(id)).await;
    assert_eq!(r.attr("type"), Some("result"));
}

fn prosody() -> Prosody {
    Prosody::start(ProsodyOpts::default())
}

// ---------------------------------------------------------------- against real Prosody

/// WS-01, WS-05, WS-06, WS-12, WS-13, WS-15, WS-16, WS-23, WS-27: raw SASL PLAIN login,
/// restart, bind, a message to bob (also on WebSocket), then a clean `<close/>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_login_restart_bind_message_close_prosody() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let url = cm.ws_url();
    let d = p.domain().to_string();

    let mut bob = connect(&url).await;
    let bob_jid = login(&mut bob, &d, "bob", "bobpass", "ws").await;
    assert!(bob_jid.starts_with("bob@"), "{bob_jid}");
    bob.send("<presence/>").await;

    let mut alice = connect(&url).await;
    let alice_jid = login(&mut alice, &d, "alice", "alicepass", "ws").await;
    alice.send(&format!("<message to='{bob_jid}' type='chat' id='m1'><body>hello over ws</body></message>")).await;
    let m = recv_matching(&mut bob, |e| e.name == "message").await;
    assert_eq!(m.ns, ns::CLIENT);
    assert!(m.attr("from").is_some_and(|f| f == alice_jid), "{m:?}");
    assert_eq!(m.child("body", ns::CLIENT).map(|b| b.text()).as_deref(), Some("hello over ws"));

    // WS-16/WS-27: <close/> → exact <close/> back, then close 1000.
    alice.send(CLOSE).await;
    let (texts, code) = alice.read_to_close().await;
    assert_eq!(texts.last().map(String::as_str), Some(CLOSE), "{texts:?}");
    assert_eq!(code, Some(1000));

    // Bob is unaffected.
    ping_server(&mut bob, &d, "p1").await;
}

/// WS-02: a handshake without `xmpp` is refused with an HTTP error, not upgraded; WS-01: a
/// list `chat, xmpp` selects `xmpp` alone (asserted in connect_with).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws02_handshake_without_xmpp_is_refused() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    for proto in [None, Some("chat")] {
        match connect_with(&cm.ws_url(), proto).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 400, "{proto:?}"),
            Err(e) => panic!("{proto:?}: unexpected error {e}"),
            Ok(_) => panic!("{proto:?}: upgraded without the xmpp subprotocol"),
        }
    }
    let mut ws = connect_with(&cm.ws_url(), Some("chat, xmpp")).await.expect("chat, xmpp");
    open_stream(&mut ws, p.domain()).await;
}

/// WS-04 (binary → 1003), WS-07 (two elements → not-well-formed), WS-25 (oversize → 1009),
/// WS-10 (first message not <open/>), WS-09 (invalid namespace), WS-11 (host-unknown), WS-14
/// (starttls) — while another logged-in session stays unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_faults_end_only_their_session_prosody() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_with(&p, &[("websocket.max_message_bytes", "16384")]));
    let url = cm.ws_url();
    let d = p.domain().to_string();
    let mut bystander = connect(&url).await;
    login(&mut bystander, &d, "bob", "bobpass", "bystander").await;

    // WS-04: binary frame after opening.
    let mut ws = connect(&url).await;
    open_stream(&mut ws, &d).await;
    ws.ws.send(Message::Binary(b"<presence/>".to_vec().into())).await.expect("send");
    expect_error_end(ws, "unsupported-encoding", 1003, false).await;

    // WS-04: binary frame as the very first message: <open/> first.
    let mut ws = connect(&url).await;
    ws.ws.send(Message::Binary(b"<open/>".to_vec().into())).await.expect("send");
    expect_error_end(ws, "unsupported-encoding", 1003, true).await;

    // WS-07: two elements in one message; nothing of it is forwarded.
    let mut ws = connect(&url).await;
    open_stream(&mut ws, &d).await;
    ws.send("<presence/><presence/>").await;
    expect_error_end(ws, "not-well-formed", 1000, false).await;

    // WS-07: forbidden constructs.
    let mut ws = connect(&url).await;
    open_stream(&mut ws, &d).await;
    ws.send("<!DOCTYPE x [<!ENTITY a 'aaaa'>]><presence>&a;</presence>").await;
    let (texts, code) = ws.read_to_close().await;
    let c = texts.first().and_then(|t| stream_error_condition(t));
    assert!(matches!(c.as_deref(), Some("restricted-xml" | "not-well-formed")), "{texts:?}");
    assert_eq!(code, Some(1000));

    // WS-25: oversize message → policy-violation and 1009.
    let mut ws = connect(&url).await;
    open_stream(&mut ws, &d).await;
    let big = format!("<message><body>{}</body></message>", "x".repeat(20_000));
    ws.send(&big).await;
    expect_error_end(ws, "policy-violation", 1009, false).await;

    // WS-10: the first message must be <open/>.
    let mut ws = connect(&url).await;
    ws.send("<message to='bob@localhost'><body>x</body></message>").await;
    expect_error_end(ws, "bad-format", 1000, true).await;

    // WS-09: <open/> in the wrong namespace.
    let mut ws = connect(&url).await;
    ws.send(&format!("<open xmlns='jabber:client' to='{d}' version='1.0'/>")).await;
    expect_error_end(ws, "invalid-namespace", 1000, true).await;

    // WS-11: a domain not served → <open/>, host-unknown, <close/>.
    let mut ws = connect(&url).await;
    ws.send(&open("not-served.test")).await;
    expect_error_end(ws, "host-unknown", 1000, true).await;

    // WS-14: starttls is never relayed.
    let mut ws = connect(&url).await;
    open_stream(&mut ws, &d).await;
    ws.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").await;
    let (texts, _) = ws.read_to_close().await;
    assert!(texts.first().and_then(|t| stream_error_condition(t)).is_some(), "{texts:?}");

    // WS-26: after <close/> nothing more: a later <open/> gets no new session.
    let mut ws = connect(&url).await;
    open_stream(&mut ws, &d).await;
    ws.send(CLOSE).await;
    let _ = ws.try_send(&open(&d)).await;
    let (texts, code) = ws.read_to_close().await;
    assert_eq!(texts, vec![CLOSE.to_string()]);
    assert_eq!(code, Some(1000));

    ping_server(&mut bystander, &d, "still-alive").await;
}

/// Legacy framing (tsung, old clients): `<stream:stream>` header, stanzas, `</stream:stream>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_legacy_framing_login_prosody() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let d = p.domain().to_string();
    let header = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{d}' version='1.0'>"
    );
    let mut ws = connect(&cm.ws_url()).await;
    ws.send(&header).await;
    let h = recv(&mut ws).await;
    assert!(h.starts_with("<stream:stream ") && h.contains("version=\"1.0\""), "{h}");
    let f = recv(&mut ws).await;
    assert!(f.contains(">PLAIN<") && !f.contains("starttls"), "{f}");
    let creds = base64::engine::general_purpose::STANDARD.encode("\0alice\0alicepass");
    ws.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>")).await;
    assert!(recv(&mut ws).await.contains("<success"));
    ws.send(&header).await;
    assert!(recv(&mut ws).await.starts_with("<stream:stream "));
    assert!(recv(&mut ws).await.contains("urn:ietf:params:xml:ns:xmpp-bind"));
    ws.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>").await;
    let r = el(&recv(&mut ws).await);
    assert_eq!(r.attr("type"), Some("result"));
    ws.send("</stream:stream>").await;
    let (texts, code) = ws.read_to_close().await;
    assert_eq!(texts.last().map(String::as_str), Some("</stream:stream>"), "{texts:?}");
    assert_eq!(code, Some(1000));
}

/// WS-19 / A-09: upstream unreachable → <open/>, remote-connection-failed, <close/>.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws19_dead_upstream_is_remote_connection_failed() {
    let fake = FakeUpstream::dead();
    let cm = XmppCm::start(&fake.config(&[]));
    let mut ws = connect(&cm.ws_url()).await;
    ws.send(&open(DOMAIN)).await;
    expect_error_end(ws, "remote-connection-failed", 1000, true).await;
}

// ---------------------------------------------------------------- scripted fake upstream

/// A client through xmpp-cm to the fake, stream open; features checked (WS-12, WS-13).
async fn fake_session(cm: &XmppCm, fake: &mut FakeUpstream) -> (Ws, FakeConn) {
    let mut ws = connect(&cm.ws_url()).await;
    ws.send(&open(DOMAIN)).await;
    let mut conn = fake.accept().await;
    conn.open().await;
    let o = recv(&mut ws).await;
    assert!(o.starts_with("<open "), "{o}");
    assert_eq!(el(&o).attr("id"), Some("fake-id-1"));
    let f = recv(&mut ws).await;
    assert!(f.contains(">PLAIN<") && !f.contains("-PLUS") && !f.contains("compress"), "{f}");
    (ws, conn)
}

/// WS-21: whitespace keepalives from upstream never become messages; WS-18: an upstream
/// stream error is relayed with its namespaces, then <close/> and close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws18_ws21_upstream_whitespace_dropped_and_stream_error_relayed() {
    let mut fake = FakeUpstream::start().await;
    let cm = XmppCm::start(&fake.config(&[]));
    let (mut ws, mut conn) = fake_session(&cm, &mut fake).await;
    conn.send(" \n ").await;
    conn.send("<message from='x@fake.test'><body>after ws</body></message>").await;
    let m = recv(&mut ws).await;
    assert!(m.starts_with("<message xmlns='jabber:client'"), "{m}");
    conn.send("<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>").await;
    let (texts, code) = ws.read_to_close().await;
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert_eq!(stream_error_condition(&texts[0]).as_deref(), Some("conflict"));
    assert_eq!(texts[1], CLOSE);
    assert_eq!(code, Some(1000));
}

/// WS-17: the upstream closes its stream → <close/> and a close frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws17_upstream_close_is_relayed() {
    let mut fake = FakeUpstream::start().await;
    let cm = XmppCm::start(&fake.config(&[]));
    let (ws, mut conn) = fake_session(&cm, &mut fake).await;
    conn.send("</stream:stream>").await;
    let (texts, code) = ws.read_to_close().await;
    assert_eq!(texts, vec![CLOSE.to_string()]);
    assert_eq!(code, Some(1000));
}

/// WS-16: client <close/> → `</stream:stream>` upstream; the upstream's close → our <close/>.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws16_client_close_closes_upstream_stream() {
    let mut fake = FakeUpstream::start().await;
    let cm = XmppCm::start(&fake.config(&[]));
    let (mut ws, mut conn) = fake_session(&cm, &mut fake).await;
    ws.send(CLOSE).await;
    assert!(conn.wait_for("</stream:stream>").await, "{}", conn.seen());
    conn.send("</stream:stream>").await;
    let (texts, code) = ws.read_to_close().await;
    assert_eq!(texts, vec![CLOSE.to_string()]);
    assert_eq!(code, Some(1000));
}

/// WS-24: the client vanishes without <close/> while the server keeps XEP-0198 resumption on
/// → the upstream connection is dropped without `</stream:stream>`, so the session stays
/// resumable (through this replica or another).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws24_lost_client_of_a_resumable_session_aborts_upstream_without_stream_close() {
    let mut fake = FakeUpstream::start().await;
    let cm = XmppCm::start(&fake.config(&[]));
    let (mut ws, mut conn) = fake_session(&cm, &mut fake).await;
    conn.send("<enabled xmlns='urn:xmpp:sm:3' id='sm-1' resume='true'/>").await;
    assert!(recv(&mut ws).await.contains("<enabled"), "the client saw resumption enabled");
    send_and_forget(ws, "<presence/>").await;
    assert!(conn.wait_eof(Duration::from_secs(5)).await, "upstream not released");
    let seen = conn.seen();
    assert!(seen.contains("<presence"), "{seen}");
    assert!(!seen.contains("</stream:stream>"), "graceful close after a lost client: {seen}");
}

/// WS-24 without resumption, BOSH-T-22: a lost client's stream is closed gracefully (the one
/// teardown rule, `Error::teardown`: nothing would be kept for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws24_lost_client_without_resumption_closes_the_upstream_stream() {
    let mut fake = FakeUpstream::start().await;
    let cm = XmppCm::start(&fake.config(&[]));
    let (ws, mut conn) = fake_session(&cm, &mut fake).await;
    send_and_forget(ws, "<presence/>").await;
    assert!(conn.wait_for("</stream:stream>").await, "no stream close: {}", conn.seen());
    assert!(conn.seen().contains("<presence"), "{}", conn.seen());
}

async fn send_and_forget(mut ws: Ws, text: &str) {
    ws.send(text).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Drop the TCP connection without a close frame.
    drop(ws);
}

// ---------------------------------------------------------------- more against real servers

/// WS-03: a stanza split over three frames (text + 2 continuations, a ping between) is
/// reassembled and relayed; WS-04: invalid UTF-8 → close 1007.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws03_fragments_reassembled_ws04_invalid_utf8_is_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let d = p.domain().to_string();
    let mut ws = connect(&cm.ws_url()).await;
    login(&mut ws, &d, "alice", "alicepass", "frag").await;
    let iq = format!("<iq type='get' to='{d}' id='frag1'><ping xmlns='urn:xmpp:ping'/></iq>");
    let (a, rest) = iq.split_at(10);
    let (b, c) = rest.split_at(15);
    ws.ws.send(Message::Frame(Frame::message(a.as_bytes().to_vec(), OpCode::Data(Data::Text), false))).await.expect("send");
    ws.ws.send(Message::Ping(b"between".to_vec().into())).await.expect("ping");
    ws.ws.send(Message::Frame(Frame::message(b.as_bytes().to_vec(), OpCode::Data(Data::Continue), false))).await.expect("send");
    ws.ws.send(Message::Frame(Frame::message(c.as_bytes().to_vec(), OpCode::Data(Data::Continue), true))).await.expect("send");
    let r = recv_matching(&mut ws, |e| e.attr("id") == Some("frag1")).await;
    assert_eq!(r.attr("type"), Some("result"));

    ws.ws.send(Message::Frame(Frame::message(b"<presence>\xff\xfe</presence>".to_vec(), OpCode::Data(Data::Text), true)))
        .await
        .expect("send");
    let (_texts, code) = ws.read_to_close().await;
    assert_eq!(code, Some(1007));
}

/// WS-18 with a real server: a second login with the same resource; the older session gets
/// `<stream:error><conflict/>` with the streams namespace, then `<close/>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws18_resource_conflict_is_relayed_prosody() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let d = p.domain().to_string();
    let mut first = connect(&cm.ws_url()).await;
    login(&mut first, &d, "alice", "alicepass", "dup").await;
    let mut second = connect(&cm.ws_url()).await;
    login(&mut second, &d, "alice", "alicepass", "dup").await;
    let (texts, code) = first.read_to_close().await;
    let err = texts.iter().find_map(|t| stream_error_condition(t));
    assert_eq!(err.as_deref(), Some("conflict"), "{texts:?}");
    assert_eq!(texts.last().map(String::as_str), Some(CLOSE), "{texts:?}");
    assert_eq!(code, Some(1000));
    ping_server(&mut second, &d, "p2").await;
}

/// WS-24 + XEP-0198 end to end: SM enabled (`location` never reaches the client), the socket
/// is cut, bob sends a message meanwhile, a new WebSocket resumes and gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws24_stream_management_resume_after_cut_prosody() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let d = p.domain().to_string();
    let mut alice = connect(&cm.ws_url()).await;
    let alice_jid = login(&mut alice, &d, "alice", "alicepass", "sm").await;
    alice.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>").await;
    let enabled = recv_matching(&mut alice, |e| e.name == "enabled").await;
    assert!(enabled.attr("location").is_none(), "{enabled:?}");
    let previd = enabled.attr("id").expect("resumption id").to_string();
    alice.send("<presence/>").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(alice); // TCP gone, no close frame, no <close/>

    let mut bob = connect(&cm.ws_url()).await;
    login(&mut bob, &d, "bob", "bobpass", "sm").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    bob.send(&format!("<message to='{alice_jid}' type='chat'><body>while you were away</body></message>")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut again = connect(&cm.ws_url()).await;
    open_stream(&mut again, &d).await;
    let creds = base64::engine::general_purpose::STANDARD.encode("\0alice\0alicepass");
    again.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>")).await;
    assert!(recv(&mut again).await.contains("<success"));
    let f = open_stream(&mut again, &d).await;
    assert!(f.contains("urn:xmpp:sm:3"), "{f}");
    again.send(&format!("<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='0'/>")).await;
    let resumed = recv_matching(&mut again, |e| e.name == "resumed" || e.name == "failed").await;
    assert_eq!(resumed.name, "resumed", "{resumed:?}");
    let m = recv_matching(&mut again, |e| e.name == "message").await;
    assert_eq!(m.child("body", ns::CLIENT).map(|b| b.text()).as_deref(), Some("while you were away"));
}

/// WS-19 / drain: SIGTERM → `system-shutdown` stream error, `<close/>`, close 1001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws19_shutdown_sends_system_shutdown() {
    let p = prosody();
    let mut cm = XmppCm::start(&XmppCm::config_for(&p));
    let d = p.domain().to_string();
    let mut ws = connect(&cm.ws_url()).await;
    login(&mut ws, &d, "alice", "alicepass", "bye").await;
    cm.signal("TERM");
    let (texts, code) = ws.read_to_close().await;
    let err = texts.iter().find_map(|t| stream_error_condition(t));
    assert_eq!(err.as_deref(), Some("system-shutdown"), "{texts:?}");
    assert_eq!(texts.last().map(String::as_str), Some(CLOSE), "{texts:?}");
    assert_eq!(code, Some(1001));
    assert!(cm.wait_exit(Duration::from_secs(10)).is_some(), "xmpp-cm did not exit");
}

/// WS-20 / drain with a peer configured: SIGTERM → `<close see-other-uri='ws://peer…'/>`,
/// no stream error, close 1001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws20_drain_redirects_with_see_other_uri() {
    let p = prosody();
    let mut cm = XmppCm::start(&XmppCm::config_with(&p, &[("drain.redirect_url", "\"http://peer.example:5280\"")]));
    let d = p.domain().to_string();
    let mut ws = connect(&cm.ws_url()).await;
    login(&mut ws, &d, "alice", "alicepass", "moved").await;
    cm.signal("TERM");
    let (texts, code) = ws.read_to_close().await;
    assert_eq!(texts.len(), 1, "{texts:?}");
    let c = el(&texts[0]);
    assert!(c.is("close", ns::FRAMING), "{texts:?}");
    assert_eq!(c.attr("see-other-uri"), Some("ws://peer.example:5280/xmpp-websocket"));
    assert_eq!(code, Some(1001));
    assert!(cm.wait_exit(Duration::from_secs(10)).is_some(), "xmpp-cm did not exit");
}

/// The raw login, restart, bind and close against ejabberd (a second, different server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_login_restart_bind_close_ejabberd() {
    let e = support::Ejabberd::start(support::EjabberdOpts::default());
    let cm = XmppCm::start(&XmppCm::config_for(&e));
    let d = e.domain().to_string();
    let mut ws = connect(&cm.ws_url()).await;
    login(&mut ws, &d, "alice", "alicepass", "ws").await;
    ping_server(&mut ws, &d, "ej1").await;
    ws.send(CLOSE).await;
    let (texts, code) = ws.read_to_close().await;
    assert_eq!(texts.last().map(String::as_str), Some(CLOSE), "{texts:?}");
    assert_eq!(code, Some(1000));
}

/// WS-03: an unmasked client frame fails the connection with close code 1002 (both servers
/// observed in CHECKLIST §14 accept it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws03_unmasked_client_frame_is_1002() {
    let fake = FakeUpstream::dead();
    let cm = XmppCm::start(&fake.config(&[]));
    let mut s = tokio::net::TcpStream::connect(cm.http_addr()).await.expect("connect");
    let req = format!(
        "GET /xmpp-websocket HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n",
        cm.http_addr()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut b)).await.expect("timeout").expect("read");
        assert!(n == 1, "EOF in handshake: {}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    let payload = b"<presence/>";
    let mut frame = vec![0x81, payload.len() as u8];
    frame.extend_from_slice(payload);
    s.write_all(&frame).await.expect("write frame");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    // Server frames are unmasked: 0x88, length, then the 2-byte code.
    assert!(out.len() >= 4 && out[0] == 0x88, "{out:?}");
    assert_eq!(u16::from_be_bytes([out[2], out[3]]), 1002, "{out:?}");
}

/// Issue 15 (bug): `[limits] max_xml_depth`, `max_xml_attrs` and `max_xml_name_len` apply to
/// WebSocket clients as they do to BOSH (they used to be the built-in defaults here): an
/// element within the built-in limits but past the configured ones is a policy-violation, and
/// the same element is fine with the defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_xml_limits_apply_to_websocket() {
    let p = prosody();
    let deep = "<message to='bob@localhost'><a><b><c><d><e><f/></e></d></c></b></a></message>";
    let attrs = format!("<message to='bob@localhost' {}/>", (0..12).map(|i| format!("a{i}='x'")).collect::<Vec<_>>().join(" "));
    let long = format!("<message to='bob@localhost'><{n} xmlns='urn:x'/></message>", n = "n".repeat(40));
    for (what, stanza, key, value) in [
        ("depth", deep.to_string(), "limits.max_xml_depth", "5"),
        ("attributes", attrs, "limits.max_xml_attrs", "8"),
        ("name length", long, "limits.max_xml_name_len", "32"),
    ] {
        let strict = XmppCm::start(&XmppCm::config_with(&p, &[(key, value)]));
        let mut ws = connect(&strict.ws_url()).await;
        open_stream(&mut ws, "localhost").await;
        ws.send(&stanza).await;
        expect_error_end(ws, "policy-violation", 1000, false).await;
        // With the defaults the same element passes the parser (the server answers it).
        let lax = XmppCm::start(&XmppCm::config_for(&p));
        let mut ws = connect(&lax.ws_url()).await;
        open_stream(&mut ws, "localhost").await;
        ws.send(&stanza).await;
        let next = tokio::time::timeout(Duration::from_millis(700), ws.ws.next()).await;
        assert!(!matches!(&next, Ok(Some(Ok(Message::Close(_))))), "{what}: refused with the default limits: {next:?}");
    }
}

/// Issue 18: a client on legacy `<stream:stream>` framing, draining with `[drain] redirect_url`,
/// is sent on the way its framing allows: the RFC 6120 `see-other-host` stream error naming
/// the redirect's host and port, then `</stream:stream>` (RFC 7395 clients get
/// `<close see-other-uri/>`: ops_drain.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_legacy_framing_drain_redirect_is_see_other_host() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_with(&p, &[("drain.redirect_url", "\"https://peer.example.test:8443\"")]));
    let d = p.domain().to_string();
    let header = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{d}' version='1.0'>"
    );
    let mut ws = connect(&cm.ws_url()).await;
    ws.send(&header).await;
    assert!(recv(&mut ws).await.starts_with("<stream:stream "));
    recv(&mut ws).await; // features
    cm.signal("TERM");
    let (texts, code) = ws.read_to_close().await;
    let e = texts.iter().find(|t| t.contains("stream:error")).unwrap_or_else(|| panic!("no stream error: {texts:?}"));
    let el = el(e);
    let soh = el.elements().find(|c| c.name == "see-other-host").unwrap_or_else(|| panic!("{e}"));
    assert_eq!(soh.text(), "peer.example.test:8443", "{e}");
    assert_eq!(texts.last().map(String::as_str), Some("</stream:stream>"), "{texts:?}");
    assert_eq!(code, Some(1001), "{texts:?}");
}
