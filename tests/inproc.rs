//! The in-process tier: xmpp-cm's own `server::serve` runs inside the test process on a port-0
//! listener, in front of the scripted fake upstream (support::fake), driven by the harness'
//! BOSH and WebSocket clients, all on one current-thread runtime whose clock starts paused.
//! Timer rules (BOSH `wait` and inactivity, `pause`, a slow upstream open, WebSocket ping
//! timeout, the wait for `<open/>`) are then checked to the second in virtual time, without a
//! real sleep: tokio advances the clock only when every task (client, server, fake) is idle.
//! Every wait stays bounded, so a rule that does not fire is a failed assertion, not a hang.
//! Real-server behaviour stays in the integration tests (bosh_prosody.rs, ws_transport.rs).

mod bosh_client;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bosh_client::{post, Bosh};
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use futures_util::StreamExt;
use support::fake::{FakeConn, FakeUpstream, DOMAIN, WAIT};
use support::ws::{open, WsClient};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use xmpp_cm::server::{serve, Listeners};
use xmpp_cm::state::AppState;
use xmpp_cm::Config;

/// One xmpp-cm served from this process; its tasks end with the test's runtime.
struct InProc {
    addr: SocketAddr,
}

impl InProc {
    /// `toml` (as written for the binary) on a fresh 127.0.0.1 port-0 listener; no admin or
    /// cluster listener (the addresses in `toml` are not bound).
    async fn start(toml: &str) -> InProc {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(toml))
            .extract()
            .unwrap_or_else(|e| panic!("config: {e}\n{toml}"));
        config.validate().unwrap_or_else(|e| panic!("config: {e}\n{toml}"));
        let state = AppState::new(Arc::new(config)).unwrap_or_else(|e| panic!("state: {e}"));
        let public = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = public.local_addr().expect("local address");
        tokio::spawn(serve(Listeners { public: vec![public], admin: None, cluster: None }, state));
        InProc { addr }
    }

    /// In front of `fake`, with `extra` config keys.
    async fn for_fake(fake: &FakeUpstream, extra: &[(&str, &str)]) -> InProc {
        Self::start(&fake.config(extra)).await
    }

    fn bosh_url(&self) -> String {
        format!("http://{}/http-bind", self.addr)
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/xmpp-websocket", self.addr)
    }
}

/// A BOSH session (client `wait`, `extra` creation attributes) whose upstream stream the fake
/// has opened: the creation is answered with the features.
async fn bosh_session(cm: &InProc, fake: &mut FakeUpstream, wait: u64, extra: &str) -> (Bosh, FakeConn) {
    let url = cm.bosh_url();
    let extra = extra.to_string();
    let creating = tokio::spawn(async move { Bosh::create(&url, DOMAIN, wait, &extra).await });
    let mut up = fake.accept().await;
    up.open().await;
    let b = creating.await.expect("creation task");
    assert!(b.creation.raw.contains("mechanisms"), "{}", b.creation.raw);
    (b, up)
}

/// A WebSocket session through to the fake, stream open (our `<open/>` and features read).
async fn ws_session(cm: &InProc, fake: &mut FakeUpstream) -> (WsClient, FakeConn) {
    let mut ws = WsClient::connect(&cm.ws_url()).await;
    ws.send(&open(DOMAIN)).await;
    let mut up = fake.accept().await;
    up.open().await;
    assert!(ws.recv().await.starts_with("<open "));
    assert!(ws.recv().await.contains(">PLAIN<"));
    (ws, up)
}

/// `d` within one second past `at_least` (virtual time: timers fire when due, not later).
fn on_time(d: Duration, at_least: Duration, what: &str) {
    assert!(d >= at_least && d < at_least + Duration::from_secs(1), "{what} after {d:?}, expected {at_least:?}");
}

/// BOSH-R-05, BOSH-S-09: an idle poll is held for `wait` and then answered with an empty
/// `<body/>`; a client `wait` above `bosh.max_wait` is capped (the creation says so) and the
/// hold follows the cap.
#[tokio::test(start_paused = true)]
async fn bosh_idle_poll_is_answered_empty_after_wait() {
    let mut fake = FakeUpstream::start().await;
    let cm = InProc::for_fake(&fake, &[("bosh.max_wait", "20")]).await;
    for (asked, held) in [(5, 5), (3600, 20)] {
        let (mut b, _up) = bosh_session(&cm, &mut fake, asked, "").await;
        assert_eq!(b.creation.attr("wait"), Some(held.to_string()), "{}", b.creation.raw);
        let t0 = Instant::now();
        let a = b.send("", "").await;
        on_time(t0.elapsed(), Duration::from_secs(held), "empty answer");
        assert_eq!(a.status, 200);
        assert!(!a.is_terminate() && a.children().is_empty(), "{}", a.raw);
    }
}

/// BOSH-R-17, BOSH-T-22, BOSH-R-26: a held request stops the inactivity clock (held 10 s with
/// inactivity 5 s, the session lives); once every request is answered, `inactivity` seconds
/// without a request end the session and close its upstream stream; the sid is then unknown.
#[tokio::test(start_paused = true)]
async fn bosh_inactivity_ends_the_session_only_when_no_request_is_held() {
    let mut fake = FakeUpstream::start().await;
    let cm = InProc::for_fake(&fake, &[("bosh.max_inactivity", "5"), ("bosh.polling", "1")]).await;
    let (mut b, mut up) = bosh_session(&cm, &mut fake, 10, "").await;
    assert_eq!(b.creation.attr("inactivity").as_deref(), Some("5"));
    let a = b.send("", "").await;
    assert!(!a.is_terminate(), "session ended while a request was held: {}", a.raw);
    let t0 = Instant::now();
    assert!(up.wait_for("</stream:stream>").await, "no stream close upstream: {}", up.seen());
    on_time(t0.elapsed(), Duration::from_secs(5), "inactivity end");
    assert!(up.wait_eof(WAIT).await, "upstream socket not closed");
    let a = b.send("", "").await;
    assert_eq!(a.condition().as_deref(), Some("item-not-found"), "{}", a.raw);
}

/// BOSH-T-21: after an inactivity end, stanzas the client never fetched are bounced before the
/// upstream stream is closed (message → `recipient-unavailable` error; presence dropped).
#[tokio::test(start_paused = true)]
async fn stanzas_for_a_vanished_client_are_bounced() {
    let mut fake = FakeUpstream::start().await;
    let cm = InProc::for_fake(&fake, &[("bosh.max_inactivity", "5"), ("bosh.polling", "1")]).await;
    let (mut b, mut up) = bosh_session(&cm, &mut fake, 1, "").await;
    let a = b.send("", "<message xmlns='jabber:client' to='x@fake.test'><body>go-idle</body></message>").await;
    up.expect("go-idle").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Arrives while the client has no request open; it goes idle and never fetches it.
    up.send("<message from='x@fake.test/r' to='u@fake.test/b' id='m1' type='chat'><body>unread</body></message>").await;
    up.send("<presence from='x@fake.test/r'/>").await;
    assert!(!a.raw.contains("unread"), "must not have been delivered: {}", a.raw);
    assert!(up.wait_for("</stream:stream>").await, "no close after inactivity: {}", up.seen());
    let seen = up.seen();
    let bounce_at = seen.find("recipient-unavailable").unwrap_or_else(|| panic!("no bounce: {seen}"));
    assert!(bounce_at < seen.find("</stream:stream>").unwrap_or(0), "bounce after close: {seen}");
    assert!(seen.contains("type='error'") && seen.contains("id='m1'"), "{seen}");
    assert!(!seen.contains("<presence"), "presence bounced: {seen}");
}

/// BOSH-R-18: `pause` answers the held request at once, keeps the session past `inactivity`
/// up to the pause, and a session idle longer than its pause ends.
#[tokio::test(start_paused = true)]
async fn bosh_pause_outlives_inactivity_until_the_pause_is_over() {
    let mut fake = FakeUpstream::start().await;
    let cm = InProc::for_fake(&fake, &[("bosh.max_inactivity", "5"), ("bosh.polling", "1"), ("bosh.max_pause", "20")]).await;
    let (mut b, mut up) = bosh_session(&cm, &mut fake, 10, "").await;
    assert_eq!(b.creation.attr("maxpause").as_deref(), Some("20"));
    let held_body = b.next_body("", "");
    let url = cm.bosh_url();
    let held = tokio::spawn(async move { post(&url, &held_body, Duration::from_secs(20)).await });
    // Virtual: it passes once the held request has reached the session and everything is idle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let a = b.send("pause='12'", "").await;
    assert!(!a.is_terminate(), "{}", a.raw);
    let h = held.await.expect("held request");
    assert!(t0.elapsed() < Duration::from_secs(1), "held request not answered at once: {:?}", t0.elapsed());
    assert!(!h.is_terminate(), "{}", h.raw);
    // Idle past inactivity (5 s) but inside the pause (12 s): still alive.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let a = b.send("pause='6'", "").await;
    assert!(!a.is_terminate(), "session died during the pause: {}", a.raw);
    // Idle past this pause: the session ends, 6 s after the request that asked for it.
    let t1 = Instant::now();
    assert!(up.wait_for("</stream:stream>").await, "no end after the pause: {}", up.seen());
    on_time(t1.elapsed(), Duration::from_secs(6), "end after the pause");
}

/// BOSH-S-31, BOSH-S-03, S-06, S-22, S-28, XBOSH-01, XBOSH-03, XBOSH-06/07, UP-12: an upstream
/// that takes 3 s to open does not hold the creation response beyond `wait` (1 s); features,
/// `from` and `authid` come in a later response, filtered; the upstream header carries `to`
/// and `xml:lang`.
#[tokio::test(start_paused = true)]
async fn slow_upstream_features_come_in_a_later_response() {
    let mut fake = FakeUpstream::start().await;
    let cm = InProc::for_fake(&fake, &[]).await;
    let url = cm.bosh_url();
    let t0 = Instant::now();
    let creating = tokio::spawn(async move { Bosh::create(&url, DOMAIN, 1, "xml:lang='de'").await });
    let mut up = fake.accept().await;
    up.expect("<stream:stream").await;
    up.expect(">").await;
    let mut b = creating.await.expect("creation task");
    on_time(t0.elapsed(), Duration::from_secs(1), "creation response");
    assert!(b.creation.children().is_empty(), "{}", b.creation.raw);
    assert_eq!(b.creation.attr("authid"), None);
    tokio::time::sleep(Duration::from_secs(2)).await;
    up.send(support::fake::HEADER).await;
    up.send(support::fake::FEATURES).await;
    // Later responses bring the features and the upstream identity.
    let a = loop {
        let a = b.send("", "").await;
        if !a.children().is_empty() {
            break a;
        }
        assert!(t0.elapsed() < WAIT, "no features after {:?}", t0.elapsed());
    };
    assert_eq!(a.attr("from").as_deref(), Some("fake.test"));
    assert_eq!(a.attr("authid").as_deref(), Some("fake-id-1"));
    assert!(a.raw.contains("mechanisms") && !a.raw.contains("-PLUS") && !a.raw.contains("compression"), "{}", a.raw);
    let seen = up.seen();
    assert!(seen.contains("to='fake.test'") && seen.contains("xml:lang='de'") && seen.contains("version='1.0'"), "{seen}");
    assert!(seen.starts_with("<?xml"), "{seen}");
}

/// BOSH-R-15 / R-16 (b): a client with two connections sends its next empty poll (rid n) and a
/// stanza (rid n+1) right after a response; when n+1 arrives first it is parked, and the empty
/// poll must not count as "the last two requests empty" (the last one in rid order carries a
/// stanza). Seen with the load generator before the fix.
#[tokio::test(start_paused = true)]
async fn empty_poll_overtaken_by_a_stanza_is_not_too_frequent() {
    let mut fake = FakeUpstream::start().await;
    let cm = InProc::for_fake(&fake, &[("bosh.polling", "5")]).await;
    let url = cm.bosh_url();
    let (mut b, mut up) = bosh_session(&cm, &mut fake, 1, "").await;
    for round in 0..3 {
        // An empty poll held for `wait` (1 s) and answered empty: "the previous request was empty".
        let a = b.send("", "").await;
        assert!(!a.is_terminate(), "round {round}: {}", a.raw);
        let n = b.next_body("", "");
        let n1 = b.next_body("", &format!("<message xmlns='jabber:client' to='x@fake.test'><body>r{round}</body></message>"));
        let u = url.clone();
        let stanza = tokio::spawn(async move { post(&u, &n1, WAIT).await });
        // Virtual: the stanza's request has reached the session (and been parked) by then.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let poll = post(&url, &n, WAIT).await;
        let stanza = stanza.await.expect("stanza request");
        assert!(!poll.is_terminate(), "round {round}: empty poll refused: {}", poll.raw);
        assert!(!stanza.is_terminate(), "round {round}: {}", stanza.raw);
    }
    up.expect("r2").await;
}

/// BOSH-R-16 (b), BOSH-T-11 (issue 18): on a long-poll session, an empty request that finds
/// `requests` open and follows an empty one by less than `polling` is too soon; the third too
/// soon in a row ends the session with policy-violation, and the request held at that moment
/// gets other-request. The same requests `polling` apart are fine (each answers the older one).
#[tokio::test(start_paused = true)]
async fn two_empty_requests_faster_than_polling_are_a_policy_violation() {
    let mut fake = FakeUpstream::start().await;
    let cm = InProc::for_fake(&fake, &[("bosh.polling", "5")]).await;
    for (gap, too_soon) in [(Duration::from_millis(300), true), (Duration::from_secs(5), false)] {
        let (mut b, _up) = bosh_session(&cm, &mut fake, 10, "").await;
        let send = |body: String| {
            let url = cm.bosh_url();
            tokio::spawn(async move { post(&url, &body, Duration::from_secs(20)).await })
        };
        let mut held = send(b.next_body("", ""));
        for n in 1..=3 {
            tokio::time::sleep(gap).await;
            let next = send(b.next_body("", ""));
            let h = held.await.expect("held request");
            if too_soon && n == 3 {
                let last = next.await.expect("last request");
                assert_eq!(last.condition().as_deref(), Some("policy-violation"), "{}", last.raw);
                assert_eq!(h.condition().as_deref(), Some("other-request"), "{}", h.raw);
                break;
            }
            assert!(!h.is_terminate(), "{gap:?} apart, request {n}: {}", h.raw);
            held = next;
        }
    }
}

/// WS-22: xmpp-cm pings every `ping_interval`; a client that answers (tungstenite pongs while
/// reading) keeps its session through several intervals; one that stops answering is dropped
/// `ping_timeout` after the unanswered ping, and its upstream is freed (closed with
/// `</stream:stream>`: without XEP-0198 resumption nothing is kept for it, `Error::teardown`).
#[tokio::test(start_paused = true)]
async fn ws_ping_timeout_frees_the_upstream() {
    let mut fake = FakeUpstream::start().await;
    let cm = InProc::for_fake(&fake, &[("websocket.ping_interval", "1"), ("websocket.ping_timeout", "1")]).await;
    let (mut ws, mut up) = ws_session(&cm, &mut fake).await;
    let until = Instant::now() + Duration::from_millis(3500);
    let mut pings = 0;
    while let Ok(m) = tokio::time::timeout_at(until, ws.ws.next()).await {
        match m {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pings, 3, "one ping a second");
    assert!(!up.wait_eof(Duration::from_millis(400)).await, "session ended while the client answered pings");
    // Not reading any more: the ping at 4 s goes unanswered, the session ends at 5 s.
    let stopped = until;
    assert!(up.wait_eof(WAIT).await, "upstream not freed after the ping timeout");
    on_time(stopped.elapsed(), Duration::from_millis(1500), "ping timeout");
    assert!(up.seen().contains("</stream:stream>"), "{}", up.seen());
}

/// The 30 s wait for `<open/>` (WS-10, WS-19): a client that upgrades and says nothing is
/// dropped at 30 s (not before) with `connection-timeout`, without an upstream connection ever
/// being made.
#[tokio::test(start_paused = true)]
async fn ws_without_open_is_dropped_after_30_s() {
    let mut fake = FakeUpstream::start().await;
    let cm = InProc::for_fake(&fake, &[("websocket.ping_interval", "0")]).await;
    let mut ws = WsClient::connect(&cm.ws_url()).await;
    let t0 = Instant::now();
    let early = tokio::time::timeout(Duration::from_secs(29), ws.ws.next()).await;
    assert!(early.is_err(), "ended before 30 s: {early:?}");
    let (texts, code) = ws.read_to_close().await;
    on_time(t0.elapsed(), Duration::from_secs(30), "end of the wait for <open/>");
    // WS-19: our `<open/>` (none was sent yet), `connection-timeout`, `<close/>`, close 1000.
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert!(texts[0].starts_with("<open "), "{texts:?}");
    assert!(texts[1].contains("<stream:error") && texts[1].contains("<connection-timeout"), "{texts:?}");
    assert!(texts[2].starts_with("<close "), "{texts:?}");
    assert_eq!(code, Some(1000));
    assert!(tokio::time::timeout(Duration::from_secs(1), fake.accept()).await.is_err(), "an upstream connection was made");
}

/// SEC-04 (slowloris): a connection that sends nothing is closed, unanswered, at
/// `http.header_read_timeout`; one whose body stops short gets 408 at `http.body_read_timeout`.
#[tokio::test(start_paused = true)]
async fn silent_and_stalled_http_clients_are_cut_off_on_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = FakeUpstream::dead();
    let cm = InProc::for_fake(&fake, &[("http.header_read_timeout", "7"), ("http.body_read_timeout", "4")]).await;
    let mut silent = tokio::net::TcpStream::connect(cm.addr).await.expect("connect");
    let t0 = Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, silent.read_to_end(&mut got)).await.expect("silent connection not closed").expect("read");
    on_time(t0.elapsed(), Duration::from_secs(7), "close of a silent connection");
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));

    let mut stalled = tokio::net::TcpStream::connect(cm.addr).await.expect("connect");
    stalled.write_all(b"POST /http-bind HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n<body").await.expect("write");
    let t0 = Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, stalled.read_to_end(&mut got)).await.expect("stalled body not answered").expect("read");
    on_time(t0.elapsed(), Duration::from_secs(4), "answer to a stalled body");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}
