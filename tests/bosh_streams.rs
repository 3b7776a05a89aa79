//! Multiple streams per BOSH session (issue 18, XEP-0124 §16) through xmpp-cm to real Prosody:
//! two streams of one session logged in as two users (of one server, and of two servers with
//! their own domains), a message on each, one stream closed while the other keeps working, an
//! unknown `stream` refused for that stream only, the cap and the admission limits reached,
//! and the feature off by default. Each test names the CHECKLIST IDs it covers (BOSH-R-22,
//! BOSH-R-23, SEC-04).

mod bosh_client;
mod support;

use std::time::Duration;

use base64::Engine as _;
use bosh_client::{Answer, Bosh};
use support::{http_request, Prosody, ProsodyOpts, XmppCm};

/// `xmpp_cm_sessions_active{transport="bosh"}`: every stream counts as a BOSH session.
async fn bosh_sessions_active(cm: &XmppCm) -> String {
    let url = format!("{}/metrics", cm.admin_url());
    let m = http_request("GET", &url, &[], b"", Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    m.body.lines().find_map(|l| l.strip_prefix("xmpp_cm_sessions_active{transport=\"bosh\"} ")).unwrap_or("absent").to_string()
}

fn chat(to: &str, body: &str) -> String {
    format!("<message xmlns='jabber:client' to='{to}' type='chat'><body>{body}</body></message>")
}

/// A BOSH session that keeps what it received per stream (a response without `stream` is
/// the first stream's, §16.4).
struct Multi {
    b: Bosh,
    first: String,
    got: Vec<(String, String)>,
}

impl Multi {
    async fn create(url: &str, domain: &str) -> Multi {
        let b = Bosh::create(url, domain, 2, "").await;
        let first = b.creation.attr("stream").expect("the creation response names the first stream");
        let creation = b.creation.clone();
        let mut m = Multi { b, first, got: Vec::new() };
        m.absorb(&creation);
        m
    }

    fn absorb(&mut self, a: &Answer) {
        let s = a.attr("stream").unwrap_or_else(|| self.first.clone());
        for c in a.children() {
            self.got.push((s.clone(), c.to_xml("")));
        }
    }

    async fn send(&mut self, attrs: &str, payload: &str) -> Answer {
        let a = self.b.send(attrs, payload).await;
        self.absorb(&a);
        a
    }

    /// What `stream` received that contains `needle`, polling for it (bounded).
    async fn poll_on(&mut self, stream: &str, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some((_, x)) = self.got.iter().find(|(s, x)| s == stream && x.contains(needle)) {
                return x.clone();
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {needle:?} on {stream}; got {:?}", self.got);
            let a = self.send("", "").await;
            assert!(!(a.is_terminate() && a.attr("stream").is_none()), "session ended: {}", a.raw);
        }
    }

    /// Add a stream to `domain`: its name (§16.3).
    async fn add(&mut self, domain: &str) -> String {
        let a = self.send(&format!("to='{domain}' xml:lang='en'"), "").await;
        assert!(!a.is_terminate(), "stream refused: {}", a.raw);
        assert_eq!(a.attr("from").as_deref(), Some(domain), "{}", a.raw);
        a.attr("stream").expect("the add-stream answer names the stream")
    }

    /// SASL PLAIN, restart, bind and presence on one stream, every request naming it; the
    /// full JID.
    async fn login_on(&mut self, stream: &str, domain: &str, user: &str, pass: &str) -> String {
        let s = format!("stream='{stream}'");
        self.poll_on(stream, "mechanisms").await;
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        self.send(&s, &format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>")).await;
        self.poll_on(stream, "<success").await;
        self.send(&format!("{s} to='{domain}' xml:lang='en' xmpp:restart='true'"), "").await;
        self.poll_on(stream, "urn:ietf:params:xml:ns:xmpp-bind").await;
        self.send(&s, "<iq xmlns='jabber:client' type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>multi</resource></bind></iq>").await;
        let bound = self.poll_on(stream, "<jid>").await;
        let jid = bound.split("<jid>").nth(1).and_then(|x| x.split("</jid>").next()).unwrap_or_default().to_string();
        assert!(jid.starts_with(&format!("{user}@{domain}/")), "{bound}");
        self.send(&s, "<presence xmlns='jabber:client'/>").await;
        jid
    }
}

fn streams_config(p: &Prosody, max: &str, more: &[(&str, &str)]) -> String {
    let mut o = vec![("bosh.max_streams_per_session", max)];
    o.extend_from_slice(more);
    XmppCm::config_with(p, &o)
}

/// BOSH-R-23: two streams of one session, alice on the first and bob on the second (two
/// upstream logins, so two upstream connections), each counted as a BOSH session; a message each way arrives on the addressee's stream only; an
/// unknown stream is item-not-found for that stream and the session goes on; closing bob's
/// stream leaves alice's working; a plain terminate ends the session.
#[tokio::test]
async fn two_streams_two_users_one_closed_the_other_goes_on() {
    let p = Prosody::start(ProsodyOpts { tls_required: true, ..Default::default() });
    let cm = XmppCm::start(&streams_config(&p, "8", &[]));
    let mut m = Multi::create(&cm.bosh_url(), "localhost").await;
    let first = m.first.clone();
    let alice = m.login_on(&first, "localhost", "alice", "alicepass").await;
    let second = m.add("localhost").await;
    assert_ne!(first, second);
    assert!(second.len() >= 16, "stream names are unpredictable: {second}");
    let bob = m.login_on(&second, "localhost", "bob", "bobpass").await;
    assert_eq!(bosh_sessions_active(&cm).await, "2", "each stream is counted like a session");

    m.send(&format!("stream='{first}'"), &chat(&bob, "alice-to-bob")).await;
    m.poll_on(&second, "alice-to-bob").await;
    m.send(&format!("stream='{second}'"), &chat(&alice, "bob-to-alice")).await;
    m.poll_on(&first, "bob-to-alice").await;
    assert!(!m.got.iter().any(|(s, x)| s == &first && x.contains("alice-to-bob")), "{:?}", m.got);
    assert!(!m.got.iter().any(|(s, x)| s == &second && x.contains("bob-to-alice")), "{:?}", m.got);

    // §16.4: a stream that does not exist: item-not-found naming it; the session goes on.
    let a = m.send("stream='no-such-stream'", &chat(&bob, "lost")).await;
    assert!(a.is_terminate(), "{}", a.raw);
    assert_eq!((a.condition().as_deref(), a.attr("stream").as_deref()), (Some("item-not-found"), Some("no-such-stream")));

    // §16.5: close bob's stream; alice's keeps working.
    let a = m.send(&format!("type='terminate' stream='{second}'"), "<presence xmlns='jabber:client' type='unavailable'/>").await;
    assert!(a.is_terminate() && a.condition().is_none(), "{}", a.raw);
    assert_eq!(a.attr("stream").as_deref(), Some(second.as_str()));
    assert_eq!(bosh_sessions_active(&cm).await, "1");
    m.send(&format!("stream='{first}'"), &chat(&alice, "still-here")).await;
    m.poll_on(&first, "still-here").await;
    let a = m.send(&format!("stream='{second}'"), &chat(&alice, "closed")).await;
    assert_eq!((a.condition().as_deref(), a.attr("stream").as_deref()), (Some("item-not-found"), Some(second.as_str())), "{}", a.raw);

    // A terminate without `stream` ends the session.
    let a = m.send("type='terminate'", "").await;
    assert!(a.is_terminate() && a.attr("stream").is_none(), "{}", a.raw);
    let a = m.send("", "").await;
    assert_eq!(a.condition().as_deref(), Some("item-not-found"), "{}", a.raw);
}

/// BOSH-R-23: the streams of one session go to two servers with their own domains (each its
/// own Prosody with one virtual host), chosen by the add-stream request's `to`; a message on
/// each stream comes back on that stream only.
#[tokio::test]
async fn two_streams_to_two_domains() {
    let p1 = Prosody::start(ProsodyOpts::default());
    let p2 = Prosody::start(ProsodyOpts { domain: "second.test".into(), ..Default::default() });
    let route = format!("\"127.0.0.1:{}\"", p2.c2s_port());
    let cm = XmppCm::start(&streams_config(
        &p1,
        "2",
        &[("upstream.tls", "\"none\""), ("upstream.domains", "[\"localhost\", \"second.test\"]"), ("upstream.routes.\"second.test\"", &route)],
    ));
    let mut m = Multi::create(&cm.bosh_url(), "localhost").await;
    let first = m.first.clone();
    let a1 = m.login_on(&first, "localhost", "alice", "alicepass").await;
    let second = m.add("second.test").await;
    let a2 = m.login_on(&second, "second.test", "alice", "alicepass").await;
    assert_eq!(bosh_sessions_active(&cm).await, "2");
    m.send(&format!("stream='{first}'"), &chat(&a1, "on-localhost")).await;
    m.send(&format!("stream='{second}'"), &chat(&a2, "on-second")).await;
    m.poll_on(&first, "on-localhost").await;
    m.poll_on(&second, "on-second").await;
    assert!(!m.got.iter().any(|(s, x)| (s == &first && x.contains("on-second")) || (s == &second && x.contains("on-localhost"))), "{:?}", m.got);

}

/// A reload that stops serving an added stream's domain ends that stream alone, with
/// host-gone naming it, and the first stream keeps working. The second domain is reached by
/// an allow-listed BOSH `route` on the add-stream request (`upstream.allow_route`), so the
/// reload only has to take it out of `upstream.domains`.
#[tokio::test]
async fn a_reload_ends_the_stream_of_a_domain_no_longer_served() {
    let p1 = Prosody::start(ProsodyOpts::default());
    let p2 = Prosody::start(ProsodyOpts { domain: "second.test".into(), ..Default::default() });
    let route = format!("xmpp:127.0.0.1:{}", p2.c2s_port());
    let allow = format!("[\"{route}\"]");
    let cm = XmppCm::start(&streams_config(
        &p1,
        "2",
        &[("upstream.tls", "\"none\""), ("upstream.domains", "[\"localhost\", \"second.test\"]"), ("upstream.allow_route", &allow)],
    ));
    let mut m = Multi::create(&cm.bosh_url(), "localhost").await;
    let first = m.first.clone();
    let a1 = m.login_on(&first, "localhost", "alice", "alicepass").await;
    let a = m.send(&format!("to='second.test' route='{route}' xml:lang='en'"), "").await;
    let second = a.attr("stream").unwrap_or_else(|| panic!("stream refused: {}", a.raw));
    m.login_on(&second, "second.test", "alice", "alicepass").await;
    assert_eq!(bosh_sessions_active(&cm).await, "2");

    cm.rewrite_config(&[("upstream.domains", "[\"localhost\"]")]);
    cm.signal("HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let ended = loop {
        let a = m.send("", "").await;
        assert!(!(a.is_terminate() && a.attr("stream").is_none()), "the session ended: {}", a.raw);
        if a.is_terminate() && a.attr("stream").as_deref() == Some(second.as_str()) {
            break a;
        }
        assert!(tokio::time::Instant::now() < deadline, "the second stream did not end after the reload");
    };
    assert_eq!(ended.condition().as_deref(), Some("host-gone"), "{}", ended.raw);
    m.send(&format!("stream='{first}'"), &chat(&a1, "after-reload")).await;
    m.poll_on(&first, "after-reload").await;
    assert_eq!(bosh_sessions_active(&cm).await, "1");
}

/// BOSH-R-23, SEC-04: the cap refuses the stream with policy-violation naming it, a domain not
/// served is host-unknown for that stream (no connection tried), and the session goes on;
/// every stream holds an admission slot, so `limits.max_sessions` counts streams.
#[tokio::test]
async fn cap_and_admission_refuse_the_stream_not_the_session() {
    let p = Prosody::start(ProsodyOpts { tls_required: true, ..Default::default() });
    let cm = XmppCm::start(&streams_config(&p, "2", &[("limits.max_sessions", "2")]));
    let url = cm.bosh_url();
    let mut m = Multi::create(&url, "localhost").await;
    let a = m.send("to='not-served.test' xml:lang='en'", "").await;
    assert_eq!(a.condition().as_deref(), Some("host-unknown"), "{}", a.raw);
    assert!(a.attr("stream").is_some(), "the refusal names a stream, so the session goes on: {}", a.raw);
    let second = m.add("localhost").await;
    m.poll_on(&second, "mechanisms").await;
    // The second stream took the second slot: no new session.
    let refused = Bosh::try_create(&url, "localhost", 2, "").await.err().expect("max_sessions counts streams");
    assert_eq!(refused.status, 503, "{}", refused.raw);
    // The cap: a third stream is refused, naming it; the session goes on.
    let a = m.send("to='localhost' xml:lang='en'", "").await;
    assert!(a.is_terminate(), "{}", a.raw);
    assert_eq!(a.condition().as_deref(), Some("policy-violation"), "{}", a.raw);
    assert!(a.attr("stream").is_some_and(|s| s != second && s != m.first), "{}", a.raw);
    let a = m.send("", "").await;
    assert!(!a.is_terminate(), "{}", a.raw);
    // Closing the second stream gives its slot back.
    let a = m.send(&format!("type='terminate' stream='{second}'"), "").await;
    assert!(a.is_terminate() && a.attr("stream").as_deref() == Some(second.as_str()), "{}", a.raw);
    Bosh::create(&url, "localhost", 2, "").await;
}

/// BOSH-R-22: off by default: the creation response names no stream, a later request with
/// `to` is an ordinary empty request (no second stream), and a `stream`
/// attribute is ignored (the payload goes to the one stream, as before).
#[tokio::test]
async fn off_by_default() {
    let p = Prosody::start(ProsodyOpts { tls_required: true, ..Default::default() });
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let url = cm.bosh_url();
    let (mut alice, alice_jid) = Bosh::login(&url, "localhost", "alice", "alicepass", 2).await;
    assert!(alice.creation.attr("stream").is_none(), "{}", alice.creation.raw);
    let a = alice.send("to='localhost' xml:lang='en'", "").await;
    assert!(!a.is_terminate() && a.attr("stream").is_none(), "{}", a.raw);
    assert_eq!(bosh_sessions_active(&cm).await, "1", "no second stream");
    alice.send("stream='whatever'", &chat(&alice_jid, "as-today")).await;
    alice.poll_until("as-today", Duration::from_secs(10)).await;
}
