//! BOSH through xmpp-cm to a real Prosody (STARTTLS required on c2s, its test CA given to
//! xmpp-cm as `ca_file`). Each test names the CHECKLIST IDs it covers.

mod bosh_client;
mod support;

use std::time::{Duration, Instant};

use bosh_client::{post, Bosh, NS};
use support::fake::FakeUpstream;
use support::{Prosody, ProsodyOpts, XmppCm};

fn prosody() -> Prosody {
    Prosody::start(ProsodyOpts { tls_required: true, ..Default::default() })
}

/// Established TCP connections whose remote port is `port` (xmpp-cm's upstream sockets).
fn upstream_sockets(port: u16) -> usize {
    let mut n = 0;
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(f) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 3 && cols[3] == "01" {
                if let Some((_, p)) = cols[2].rsplit_once(':') {
                    if u16::from_str_radix(p, 16).ok() == Some(port) {
                        n += 1;
                    }
                }
            }
        }
    }
    n
}

fn chat(to: &str, body: &str) -> String {
    format!("<message xmlns='jabber:client' to='{to}' type='chat'><body>{body}</body></message>")
}

/// BOSH-S-01, S-09..13, S-18..22, S-26..28, XBOSH-01..04, XBOSH-08/09, UP-12, UP-14, UP-16.
#[tokio::test]
async fn creation_response_carries_attributes_and_filtered_features() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let b = Bosh::create(&cm.bosh_url(), "localhost", 30, "content='text/xml; charset=utf-8'").await;
    let a = &b.creation;
    assert_eq!(a.header("content-type"), Some("text/xml; charset=utf-8"));
    assert_eq!(a.header("cache-control"), Some("no-store, no-cache"));
    let body = a.body();
    assert_eq!(body.attr("sid").map(str::len), Some(22));
    assert_eq!(body.attr("wait"), Some("30"));
    assert_eq!(body.attr("hold"), Some("1"));
    assert_eq!(body.attr("requests"), Some("2"));
    assert_eq!(body.attr("ver"), Some("1.6"));
    assert_eq!(body.attr("from"), Some("localhost"));
    assert!(body.attr("authid").is_some());
    assert!(body.attr("inactivity").is_some() && body.attr("polling").is_some());
    assert_eq!(body.attr_ns("urn:xmpp:xbosh", "restartlogic"), Some("true"));
    assert_eq!(body.attr_ns("urn:xmpp:xbosh", "version"), Some("1.0"));
    // Features arrive in the creation response (upstream answered within wait), filtered.
    let f = body.child("features", "http://etherx.jabber.org/streams").expect("features in creation response");
    assert!(f.child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl").is_some());
    assert!(f.child("starttls", "urn:ietf:params:xml:ns:xmpp-tls").is_none(), "starttls must be hidden");
    assert!(!a.raw.contains("-PLUS"));
}

/// BOSH-S-13: the `content` attribute governs every response of the session.
#[tokio::test]
async fn content_attribute_is_honoured() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let mut b = Bosh::create(&cm.bosh_url(), "localhost", 2, "content='text/plain; charset=utf-8'").await;
    assert_eq!(b.creation.header("content-type"), Some("text/plain; charset=utf-8"));
    let a = b.send("", "").await;
    assert_eq!(a.header("content-type"), Some("text/plain; charset=utf-8"));
}

/// Login, message both ways, presence; BOSH-R-07 (held request released by an incoming
/// message), BOSH-R-05, XBOSH-08/09/12/14/16, UP-18.
#[tokio::test]
async fn held_request_is_released_by_an_incoming_message() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let url = cm.bosh_url();
    let (mut alice, alice_jid) = Bosh::login(&url, "localhost", "alice", "alicepass", 30).await;
    // bob's own requests are answered within his `wait`: his message's request returns in 2 s,
    // not after alice's 30.
    let (mut bob, _bob_jid) = Bosh::login(&url, "localhost", "bob", "bobpass", 2).await;
    // alice holds an empty request (wait=30); bob's message must release it at once.
    let held_body = alice.next_body("", "");
    let url2 = url.clone();
    let held = tokio::spawn(async move {
        let t = Instant::now();
        (post(&url2, &held_body, Duration::from_secs(40)).await, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Unqualified stanza: treated as jabber:client (XBOSH-14).
    bob.send("", &format!("<message to='{alice_jid}' type='chat'><body>released</body></message>")).await;
    let (a, took) = held.await.unwrap();
    assert!(a.raw.contains("released"), "{}", a.raw);
    assert!(took < Duration::from_secs(5), "held request answered after {took:?}");
    let m = a.children().into_iter().find(|c| c.name == "message").expect("message");
    assert_eq!(m.ns, "jabber:client");
}

/// BOSH-R-10 / R-27: a retransmitted rid gets the cached body and its payload is not sent
/// upstream twice.
#[tokio::test]
async fn retransmitted_rid_does_not_duplicate_a_message() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let url = cm.bosh_url();
    let (mut alice, _) = Bosh::login(&url, "localhost", "alice", "alicepass", 2).await;
    let (mut bob, bob_jid) = Bosh::login(&url, "localhost", "bob", "bobpass", 2).await;
    let body = alice.next_body("", &chat(&bob_jid, "once-only"));
    let first = alice.send_raw(&body).await;
    let again = alice.send_raw(&body).await;
    assert_eq!(first.raw, again.raw, "retransmission must get the identical cached body");
    bob.poll_until("once-only", Duration::from_secs(10)).await;
    // Keep polling a few rounds: the message must not arrive a second time.
    for _ in 0..3 {
        bob.send("", "").await;
    }
    assert_eq!(bob.count("once-only"), 1, "{:?}", bob.received);
}

/// BOSH-R-01 / R-03: payloads go upstream in rid order even when rids arrive out of order.
#[tokio::test]
async fn out_of_order_rids_are_delivered_in_order() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let url = cm.bosh_url();
    let (mut alice, _) = Bosh::login(&url, "localhost", "alice", "alicepass", 2).await;
    let (mut bob, bob_jid) = Bosh::login(&url, "localhost", "bob", "bobpass", 2).await;
    let n1 = alice.next_body("", &chat(&bob_jid, "first-A"));
    let n2 = alice.next_body("", &chat(&bob_jid, "second-B"));
    let u = url.clone();
    let late = tokio::spawn(async move { post(&u, &n2, Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a1 = post(&url, &n1, Duration::from_secs(10)).await;
    let a2 = late.await.unwrap();
    assert!(!a1.is_terminate() && !a2.is_terminate(), "{} / {}", a1.raw, a2.raw);
    bob.poll_until("second-B", Duration::from_secs(10)).await;
    let order: Vec<_> = bob.received.iter().filter(|s| s.contains("first-A") || s.contains("second-B")).collect();
    assert_eq!(order.len(), 2);
    assert!(order[0].contains("first-A"), "{order:?}");
}

/// BOSH-R-17, BOSH-T-22: inactivity ends the session and frees its upstream socket; the sid is
/// then unknown (BOSH-R-26).
#[tokio::test]
async fn inactivity_ends_the_session_and_frees_the_upstream_connection() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_with(&p, &[("bosh.max_inactivity", "5"), ("bosh.polling", "1")]));
    let url = cm.bosh_url();
    let before = upstream_sockets(p.c2s_port());
    let (mut alice, _) = Bosh::login(&url, "localhost", "alice", "alicepass", 1).await;
    assert_eq!(upstream_sockets(p.c2s_port()), before + 1);
    assert_eq!(alice.creation.attr("inactivity").as_deref(), Some("5"));
    // Stop polling; after inactivity + margin the upstream socket is gone.
    let deadline = Instant::now() + Duration::from_secs(15);
    while upstream_sockets(p.c2s_port()) > before {
        assert!(Instant::now() < deadline, "upstream socket still open after inactivity");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let a = alice.send("", "").await;
    assert_eq!(a.condition().as_deref(), Some("item-not-found"), "{}", a.raw);
}

/// BOSH-T-01, T-02, T-03: terminate delivers its presence, then the sid is dead.
#[tokio::test]
async fn terminate_delivers_final_presence_and_kills_the_sid() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let url = cm.bosh_url();
    let (mut alice, alice_jid) = Bosh::login(&url, "localhost", "alice", "alicepass", 2).await;
    let (mut bob, bob_jid) = Bosh::login(&url, "localhost", "bob", "bobpass", 2).await;
    // Directed presence so bob sees alice's unavailable presence.
    alice.send("", &format!("<presence xmlns='jabber:client' to='{bob_jid}'/>")).await;
    bob.poll_until(&format!("from='{alice_jid}'"), Duration::from_secs(10)).await;
    let a = alice
        .send("type='terminate'", &format!("<presence xmlns='jabber:client' type='unavailable' to='{bob_jid}'><status>bye-now</status></presence>"))
        .await;
    assert!(a.is_terminate(), "{}", a.raw);
    assert_eq!(a.condition(), None);
    bob.poll_until("bye-now", Duration::from_secs(10)).await;
    let again = alice.send("", "").await;
    assert_eq!(again.condition().as_deref(), Some("item-not-found"));
}

/// BOSH-T-14, XBOSH-18: a same-resource conflict ends the older session with
/// remote-stream-error carrying the namespaced <conflict/>.
#[tokio::test]
async fn upstream_conflict_is_remote_stream_error() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let url = cm.bosh_url();
    let (mut first, _) = Bosh::login(&url, "localhost", "alice", "alicepass", 2).await;
    let (_second, _) = Bosh::login(&url, "localhost", "alice", "alicepass", 2).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let a = loop {
        let a = first.send("", "").await;
        if a.is_terminate() {
            break a;
        }
        assert!(Instant::now() < deadline, "first session never ended");
    };
    assert_eq!(a.condition().as_deref(), Some("remote-stream-error"), "{}", a.raw);
    let err = a.children().into_iter().find(|c| c.is("error", "http://etherx.jabber.org/streams")).expect("stream:error");
    assert!(err.child("conflict", "urn:ietf:params:xml:ns:xmpp-streams").is_some(), "{}", a.raw);
}

/// BOSH-S-02, R-24, T-05, T-10, R-26, S-05, S-04, HTTP-15, SEC-11: bad input gets the right
/// condition, and other sessions are unaffected.
#[tokio::test]
async fn bad_input_gets_clear_answers() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_with(&p, &[("bosh.max_body_bytes", "4096")]));
    let url = cm.bosh_url();
    let (mut alice, _) = Bosh::login(&url, "localhost", "alice", "alicepass", 2).await;
    let t = Duration::from_secs(5);
    let bad_request = [
        "<body rid='1' xmlns='http://jabber.org/protocol/httpbind' to='localhost'".to_string(),
        "<foo rid='1'/>".to_string(),
        "<body xmlns='urn:wrong' rid='1' to='localhost'/>".to_string(),
        format!("<body {NS} to='localhost' ver='1.6'/>"),
        format!("<body {NS} rid='x1' to='localhost' ver='1.6'/>"),
        format!("<!DOCTYPE body [<!ENTITY x 'y'>]><body {NS} rid='1' to='localhost' ver='1.6'/>"),
        format!(
            "<!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;'>]><body {NS} rid='1' ver='1.6'>&lol2;</body>"
        ),
        format!("<body {NS} rid='1' to='localhost' ver='1.6'><message>&custom;</message></body>"),
    ];
    for b in &bad_request {
        let a = post(&url, b, t).await;
        assert_eq!((a.status, a.condition().as_deref()), (200, Some("bad-request")), "{b} → {}", a.raw);
    }
    // Unknown sid.
    let a = post(&url, &format!("<body {NS} rid='5' sid='nope'/>"), t).await;
    assert_eq!((a.status, a.condition().as_deref()), (200, Some("item-not-found")));
    // Domain not served: host-unknown, answered at once (no DNS, no TCP).
    let start = Instant::now();
    let a = post(&url, &format!("<body {NS} rid='5' to='not-served.test' ver='1.6' wait='5' hold='1'/>"), t).await;
    assert_eq!(a.condition().as_deref(), Some("host-unknown"));
    assert!(start.elapsed() < Duration::from_secs(3), "host-unknown must not wait for DNS or TCP");
    // No `to`: improper-addressing.
    let a = post(&url, &format!("<body {NS} rid='5' ver='1.6' wait='5' hold='1'/>"), t).await;
    assert_eq!(a.condition().as_deref(), Some("improper-addressing"));
    // Over max_body_bytes: refused with 413 (no session to speak for it).
    let big = format!("<body {NS} rid='5' sid='{}'>{}</body>", alice.sid, "<a/>".repeat(5000));
    let a = post(&url, &big, t).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.condition().as_deref(), Some("policy-violation"));
    // Deep nesting (500 levels, under the size cap) is refused by the depth limit.
    let deep = format!("<body {NS} rid='5' sid='{}'>{}{}</body>", alice.sid, "<a>".repeat(500), "</a>".repeat(500));
    let a = post(&url, &deep, t).await;
    assert_eq!(a.condition().as_deref(), Some("bad-request"));
    // alice's session is unaffected by all of the above.
    let a = alice.send("", "<iq xmlns='jabber:client' type='get' id='ping1'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert!(!a.is_terminate(), "{}", a.raw);
    alice.poll_until("ping1", Duration::from_secs(5)).await;
}

/// BOSH-R-02, T-10, T-11: a rid above the window ends the session with item-not-found; a
/// request held at that moment gets other-request. Legacy sessions get HTTP 404 (T-18).
#[tokio::test]
async fn rid_beyond_window_ends_the_session() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let url = cm.bosh_url();
    let mut b = Bosh::create(&url, "localhost", 10, "").await;
    let held_body = b.next_body("", "");
    let u = url.clone();
    let held = tokio::spawn(async move { post(&u, &held_body, Duration::from_secs(20)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let far = b.body_for(b.rid + 10, "", "");
    let a = post(&url, &far, Duration::from_secs(5)).await;
    assert_eq!((a.status, a.condition().as_deref()), (200, Some("item-not-found")));
    let h = held.await.unwrap();
    assert_eq!(h.condition().as_deref(), Some("other-request"), "{}", h.raw);
    let dead = b.send("", "").await;
    assert_eq!(dead.condition().as_deref(), Some("item-not-found"));

    // Legacy (no ver at creation): HTTP 404.
    let rid = 5000;
    let a = post(&url, &format!("<body {NS} rid='{rid}' to='localhost' wait='5' hold='1'/>"), Duration::from_secs(10)).await;
    let sid = a.attr("sid").expect("sid");
    let a = post(&url, &format!("<body {NS} rid='{}' sid='{sid}'/>", rid + 50), Duration::from_secs(5)).await;
    assert_eq!(a.status, 404, "{}", a.raw);
}

/// BOSH-R-14 / A-01: with a gap in the rids nothing can be answered, and one more request is
/// never accepted (the window check comes first: item-not-found); the parked request gets
/// other-request (BOSH-T-11).
#[tokio::test]
async fn overactivity_is_never_accepted() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let url = cm.bosh_url();
    let b = Bosh::create(&url, "localhost", 10, "").await;
    let r2 = b.body_for(b.rid + 2, "", "");
    let u = url.clone();
    let parked = tokio::spawn(async move { post(&u, &r2, Duration::from_secs(20)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = post(&url, &b.body_for(b.rid + 3, "", ""), Duration::from_secs(5)).await;
    assert_eq!(a.condition().as_deref(), Some("item-not-found"), "{}", a.raw);
    let p2 = parked.await.unwrap();
    assert_eq!(p2.condition().as_deref(), Some("other-request"), "{}", p2.raw);
}

/// BOSH-S-12, BOSH-R-16 (a): a polling session (hold='0') is granted; two empty polls closer
/// than `polling` end it with policy-violation.
#[tokio::test]
async fn too_frequent_polling_is_a_policy_violation() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_with(&p, &[("bosh.polling", "3")]));
    let url = cm.bosh_url();
    let rid = 42_000;
    let a = post(&url, &format!("<body {NS} rid='{rid}' to='localhost' ver='1.6' wait='10' hold='0'/>"), Duration::from_secs(15)).await;
    assert_eq!(a.attr("hold").as_deref(), Some("0"));
    let inactivity: u64 = a.attr("inactivity").unwrap().parse().unwrap();
    assert!(inactivity > 3);
    let sid = a.attr("sid").unwrap();
    let start = Instant::now();
    let a1 = post(&url, &format!("<body {NS} rid='{}' sid='{sid}'/>", rid + 1), Duration::from_secs(5)).await;
    assert!(!a1.is_terminate(), "{}", a1.raw);
    assert!(start.elapsed() < Duration::from_secs(1), "polling session must answer at once");
    let a2 = post(&url, &format!("<body {NS} rid='{}' sid='{sid}'/>", rid + 2), Duration::from_secs(5)).await;
    assert_eq!(a2.condition().as_deref(), Some("policy-violation"), "{}", a2.raw);
}

/// BOSH-R-21: key sequencing. A wrong key drops the payload and ends the session.
#[tokio::test]
async fn wrong_key_ends_the_session_and_drops_the_payload() {
    use sha1::{Digest, Sha1};
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let url = cm.bosh_url();
    let (mut bob, bob_jid) = Bosh::login(&url, "localhost", "bob", "bobpass", 2).await;
    // K(n) = sha1(K(n-1)); the client reveals keys backwards.
    let k0 = "seed-key".to_string();
    let k1 = hex::encode(Sha1::digest(k0.as_bytes()));
    let k2 = hex::encode(Sha1::digest(k1.as_bytes()));
    let mut c = Bosh::create(&url, "localhost", 2, &format!("newkey='{k2}'")).await;
    // Correct key (uppercase hex accepted).
    let a = c.send(&format!("key='{}'", k1), "").await;
    assert!(!a.is_terminate(), "{}", a.raw);
    // Wrong key with a message: item-not-found and the message never reaches bob.
    let a = c.send("key='wrong'", &chat(&bob_jid, "must-not-arrive")).await;
    assert_eq!(a.condition().as_deref(), Some("item-not-found"), "{}", a.raw);
    for _ in 0..2 {
        bob.send("", "").await;
    }
    assert_eq!(bob.count("must-not-arrive"), 0);
}

/// BOSH-R-18 with a real server: pause answers the held request at once and the session goes
/// on working. (Its timing, past inactivity and to the pause's end, is checked in virtual
/// time in inproc.rs.)
#[tokio::test]
async fn pause_answers_held_requests_and_the_session_goes_on() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_with(&p, &[("bosh.max_inactivity", "5"), ("bosh.polling", "1"), ("bosh.max_pause", "20")]));
    let url = cm.bosh_url();
    let (mut b, jid) = Bosh::login(&url, "localhost", "alice", "alicepass", 10).await;
    assert_eq!(b.creation.attr("maxpause").as_deref(), Some("20"));
    let held_body = b.next_body("", "");
    let u = url.clone();
    let held = tokio::spawn(async move { post(&u, &held_body, Duration::from_secs(20)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let a = b.send("pause='12'", "").await;
    assert!(!a.is_terminate(), "{}", a.raw);
    let h = held.await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(4), "held request not answered at once");
    assert!(!h.is_terminate());
    // After the pause response the session still relays through Prosody.
    b.send("", &chat(&jid, "after-pause")).await;
    b.poll_until("after-pause", Duration::from_secs(10)).await;
}

/// HTTP-11, HTTP-14: CORS preflight and a harmless GET.
#[tokio::test]
async fn cors_preflight_and_get_page() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let r = support::http_request(
        "OPTIONS",
        &cm.bosh_url(),
        &[("Origin", "https://app.test"), ("Access-Control-Request-Method", "POST"), ("Access-Control-Request-Headers", "content-type")],
        b"",
        Duration::from_secs(5),
    )
    .await
    .expect("preflight");
    assert!(r.status == 200 || r.status == 204, "{}", r.status);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r.header("access-control-allow-methods").unwrap_or("").contains("POST"));
    assert!(r.header("access-control-allow-headers").unwrap_or("").to_ascii_lowercase().contains("content-type"));
    let g = support::http_request("GET", &cm.bosh_url(), &[], b"", Duration::from_secs(5)).await.expect("get");
    assert_eq!(g.status, 200);
}

/// BOSH-S-30, BOSH-T-13, UP-26: upstream down → remote-connection-failed within connect_timeout.
#[tokio::test]
async fn dead_upstream_is_remote_connection_failed() {
    let p = prosody();
    // A port nobody listens on, and a listener that accepts but never speaks.
    let closed = support::free_port();
    let silent = FakeUpstream::silent().await;
    let silent_port = silent.port();
    let cfg = XmppCm::config_with(
        &p,
        &[
            ("upstream.domains", "[\"localhost\", \"dead.test\", \"silent.test\"]"),
            ("upstream.routes.\"dead.test\"", &format!("\"127.0.0.1:{closed}\"")),
            ("upstream.routes.\"silent.test\"", &format!("\"127.0.0.1:{silent_port}\"")),
            ("upstream.connect_timeout", "2"),
        ],
    );
    let cm = XmppCm::start(&cfg);
    let url = cm.bosh_url();
    for (domain, max) in [("dead.test", 2), ("silent.test", 4)] {
        let start = Instant::now();
        let a = post(&url, &format!("<body {NS} rid='77' to='{domain}' ver='1.6' wait='30' hold='1'/>"), Duration::from_secs(10)).await;
        assert_eq!(a.condition().as_deref(), Some("remote-connection-failed"), "{domain}: {}", a.raw);
        assert!(start.elapsed() < Duration::from_secs(max), "{domain}: took {:?}", start.elapsed());
    }
    drop(silent);
}

/// BOSH-T-13, UP-16: an upstream certificate that does not verify ends the session with
/// remote-connection-failed and a log line naming the certificate error.
#[tokio::test]
async fn unverified_upstream_certificate_is_refused() {
    let p = prosody();
    let cfg = XmppCm::config_with(&p, &[("upstream.ca_file", "\"\"")]);
    let cm = XmppCm::start(&cfg);
    let a = post(&cm.bosh_url(), &format!("<body {NS} rid='77' to='localhost' ver='1.6' wait='10' hold='1'/>"), Duration::from_secs(15)).await;
    assert_eq!(a.condition().as_deref(), Some("remote-connection-failed"), "{}", a.raw);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = cm.log();
        if log.contains("UnknownIssuer") {
            break;
        }
        assert!(Instant::now() < deadline, "no certificate error in log:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// strophe.js (npm 5.0.0, run by Node) logs two users in over BOSH, chats both ways, and
/// disconnects. BOSH-S-*, XBOSH-08/09, HTTP-01.
#[test]
fn strophe_js_chat_over_bosh() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let out = support::node(
        "strophe-chat.mjs",
        &["--transport", "bosh", "--url", &cm.bosh_url(), "--domain", "localhost", "--a", "alice:alicepass", "--b", "bob:bobpass", "--messages", "5"],
        Duration::from_secs(60),
    );
    out.assert_ok("strophe.js BOSH chat");
}

/// BOSH-S-14, SEC-03 (issue 5): `route` is honoured only when allow-listed; anything else is
/// `host-unknown` at once, before any DNS or TCP work (the configured route is dead and the
/// connect timeout 2 s, so a refusal within 1 s tried nothing).
#[tokio::test]
async fn route_attribute_only_when_allow_listed() {
    let p = prosody();
    let dead = support::free_port();
    let good = format!("xmpp:127.0.0.1:{}", p.c2s_port());
    let cfg = XmppCm::config_with(
        &p,
        &[
            ("upstream.routes.\"localhost\"", &format!("\"127.0.0.1:{dead}\"")),
            ("upstream.allow_route", &format!("[\"{good}\"]")),
            ("upstream.connect_timeout", "2"),
        ],
    );
    let cm = XmppCm::start(&cfg);
    let url = cm.bosh_url();
    let create = |route: &str| format!("<body {NS} rid='900' to='localhost' ver='1.6' wait='10' hold='1' route='{route}'/>");
    let a = post(&url, &create(&good), Duration::from_secs(10)).await;
    assert!(a.raw.contains("mechanisms"), "allow-listed route must be used: {}", a.raw);
    for r in ["xmpp:127.0.0.1:22", "xmpp:169.254.169.254:5222", "http://127.0.0.1:5222", &format!("{good}/")] {
        let started = std::time::Instant::now();
        let a = post(&url, &create(r), Duration::from_secs(10)).await;
        assert_eq!(a.condition().as_deref(), Some("host-unknown"), "{r} must be refused: {}", a.raw);
        assert!(a.is_terminate(), "{r}: {}", a.raw);
        assert!(started.elapsed() < Duration::from_secs(1), "{r}: refused only after {:?}", started.elapsed());
    }
}

/// HTTP-11, HTTP-12, SEC-10: with an allow-list, the exact origin is echoed with credentials and
/// `Vary: Origin`; another origin gets no CORS headers and a log line saying why.
#[tokio::test]
async fn cors_allow_list() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_with(&p, &[("http.cors_allowed_origins", "[\"https://app.test\"]")]));
    let pre = |origin: &'static str| {
        let url = cm.bosh_url();
        async move {
            support::http_request(
                "OPTIONS",
                &url,
                &[("Origin", origin), ("Access-Control-Request-Method", "POST"), ("Access-Control-Request-Headers", "content-type")],
                b"",
                Duration::from_secs(5),
            )
            .await
            .expect("preflight")
        }
    };
    let ok = pre("https://app.test").await;
    assert_eq!(ok.header("access-control-allow-origin"), Some("https://app.test"));
    assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(ok.header("vary"), Some("Origin"));
    let bad = pre("https://evil.test").await;
    assert_eq!(bad.header("access-control-allow-origin"), None);
    // A POST from the allowed origin carries the header too (errors included).
    let r = support::http_request("POST", &cm.bosh_url(), &[("Origin", "https://app.test")], b"<nope/>", Duration::from_secs(5))
        .await
        .expect("post");
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.test"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cm.log().contains("origin not in http.cors_allowed_origins") {
        assert!(Instant::now() < deadline, "no log line for the refused origin:\n{}", cm.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// XBOSH-17, A-11: XEP-0198 elements pass through BOSH both ways (end to end with the server);
/// `<enabled/>` reaches the client, `<r/>` is answered by the server's `<a h='…'/>`.
#[tokio::test]
async fn stream_management_elements_pass_through() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let (mut alice, _) = Bosh::login(&cm.bosh_url(), "localhost", "alice", "alicepass", 2).await;
    alice.send("", "<enable xmlns='urn:xmpp:sm:3'/>").await;
    let enabled = alice.poll_until("<enabled", Duration::from_secs(10)).await;
    assert!(enabled.contains("urn:xmpp:sm:3") && !enabled.contains("location="), "{enabled}");
    alice.send("", "<r xmlns='urn:xmpp:sm:3'/>").await;
    let a = alice.poll_until("<a ", Duration::from_secs(10)).await;
    assert!(a.contains("h='"), "{a}");
}
