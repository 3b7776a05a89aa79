//! Legacy HTTP polling (XEP-0025) through xmpp-cm to a real Prosody (STARTTLS required on
//! c2s): a scripted polling client that speaks a raw stream split across POSTs logs in (stream
//! header, SASL PLAIN, restart, bind, presence) and chats with a BOSH user both ways; key
//! sequencing with a renewal mid-session, a wrong key that changes nothing; the error
//! identifiers of §3.1; inactivity; the switch.

mod bosh_client;
mod edge_common;
mod support;

use std::time::Duration;

use base64::Engine as _;
use bosh_client::Bosh;
use edge_common::metric;
use support::{http_request, Prosody, ProsodyOpts, XmppCm};
use xmpp_cm::polling::wire::hash_key;
use xmpp_cm::xml::{Frame, Framer, Limits};

const T: Duration = Duration::from_secs(15);
const PATH: &str = "/http-poll";
const HEADER: &str = "<stream:stream to='localhost' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

fn prosody() -> Prosody {
    Prosody::start(ProsodyOpts { tls_required: true, ..Default::default() })
}

fn polling_cm(p: &Prosody, extra: &[(&str, &str)]) -> XmppCm {
    let mut overrides = vec![("polling.enabled", "true")];
    overrides.extend_from_slice(extra);
    XmppCm::start(&XmppCm::config_with(p, &overrides))
}

/// Prosody, xmpp-cm with polling on (and `extra`) in front of it, and bob logged in over BOSH.
struct WithBob {
    cm: XmppCm,
    _prosody: Prosody,
    /// The polling URL.
    url: String,
    bob: Bosh,
    bob_jid: String,
}

async fn with_bob(extra: &[(&str, &str)]) -> WithBob {
    let p = prosody();
    let cm = polling_cm(&p, extra);
    let url = format!("{}{PATH}", cm.http_base());
    let (bob, bob_jid) = Bosh::login(&cm.bosh_url(), "localhost", "bob", "bobpass", 2).await;
    WithBob { cm, _prosody: p, url, bob, bob_jid }
}

fn chat(to: &str, body: &str) -> String {
    format!("<message to='{to}' type='chat'><body>{body}</body></message>")
}

/// One answer: the `ID` cookie's value and the body.
#[derive(Debug)]
struct Reply {
    id: String,
    body: String,
}

/// POST `body` as XEP-0025 says (form-urlencoded Content-Type, raw UTF-8 body): status 200
/// and a `Set-Cookie: ID=…; path=/http-poll` are checked on every answer.
async fn post(url: &str, body: &str) -> Reply {
    let r = http_request("POST", url, &[("Content-Type", "application/x-www-form-urlencoded")], body.as_bytes(), T)
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    assert_eq!(r.status, 200, "{body:.80}: {}", r.body);
    let cookie = r.header("set-cookie").unwrap_or_else(|| panic!("no Set-Cookie for {body:.80}")).to_string();
    let (id, path) = cookie.strip_prefix("ID=").and_then(|c| c.split_once("; path=")).unwrap_or_else(|| panic!("cookie {cookie:?}"));
    assert_eq!(path, PATH);
    Reply { id: id.to_string(), body: r.body }
}

/// A key chain K(0..=n) from `seed`, used from the top down.
fn chain(seed: &str, n: usize) -> Vec<String> {
    std::iter::successors(Some(seed.to_string()), |k| Some(hash_key(k))).take(n + 1).collect()
}

/// A scripted polling client: its answers, concatenated, are parsed as one XML stream.
struct Poller {
    url: String,
    id: String,
    /// The rest of the key chain (`None`: keyless); the last entry is the next key to send.
    keys: Option<Vec<String>>,
    /// Seeds of the chains to renew with, in order.
    seeds: Vec<&'static str>,
    renewals: usize,
    framer: Framer,
    /// Every top-level element received so far, serialized.
    received: Vec<String>,
    headers: usize,
    closed: bool,
}

impl Poller {
    /// Identifier 0 with the stream header (and `K(n)` when keyed): the session and the answer.
    async fn open(url: &str, header: &str, keys: Option<Vec<String>>) -> (Poller, Reply) {
        let mut p = Poller { url: url.into(), id: "0".into(), keys, seeds: vec!["beta", "gamma", "delta"], renewals: 0, framer: Framer::new(Limits::default()), received: vec![], headers: 0, closed: false };
        let r = p.send(header).await;
        assert!(r.id.len() == 32 && r.id.bytes().all(|b| b.is_ascii_hexdigit()), "session id {:?}: {}", r.id, r.body);
        p.id = r.id.clone();
        (p, r)
    }

    /// The next request's prefix: `id[;key[;new_key]]`, renewing the chain at its last key.
    fn prefix(&mut self) -> String {
        let Some(keys) = self.keys.as_mut() else { return self.id.clone() };
        let key = keys.pop().expect("key chain exhausted");
        if self.id == "0" || !keys.is_empty() {
            return format!("{};{key}", self.id);
        }
        let fresh = chain(self.seeds[self.renewals], 8);
        self.renewals += 1;
        let new_key = fresh.last().expect("chain").clone();
        *keys = fresh[..fresh.len() - 1].to_vec();
        format!("{};{key};{new_key}", self.id)
    }

    async fn send(&mut self, payload: &str) -> Reply {
        let body = format!("{},{payload}", self.prefix());
        let r = post(&self.url, &body).await;
        assert!(!r.id.ends_with(":0"), "error {} for {body:.120}", r.id);
        self.framer.feed(r.body.as_bytes());
        while let Some(f) = self.framer.next_frame().unwrap_or_else(|e| panic!("answers are not a stream ({e}): {}", r.body)) {
            match f {
                Frame::StreamOpen(_) => self.headers += 1,
                Frame::Element(el) => self.received.push(el.to_xml("")),
                Frame::StreamClose => self.closed = true,
            }
        }
        r
    }

    /// Empty polls, 200 ms apart, until a received element contains `needle`.
    async fn poll_until(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            if let Some(s) = self.received.iter().find(|s| s.contains(needle)) {
                return s.clone();
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {needle:?}; got {:?}", self.received);
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.send("").await;
        }
    }

    /// SASL PLAIN, the restart, bind and initial presence, each in its own request (the
    /// restart header in the middle of the client's stream); the full JID.
    async fn login(&mut self, user: &str, pass: &str) -> String {
        self.poll_until("PLAIN").await;
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        self.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>")).await;
        self.poll_until("<success").await;
        self.send(&format!("<?xml version='1.0'?>{HEADER}")).await;
        self.poll_until("urn:ietf:params:xml:ns:xmpp-bind").await;
        assert_eq!(self.headers, 2, "a header for the stream and one for the restart");
        self.send("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>poll</resource></bind></iq>").await;
        let bound = self.poll_until("<jid>").await;
        self.send("<presence/>").await;
        bound.split("<jid>").nth(1).and_then(|s| s.split("</jid>").next()).expect("jid").to_string()
    }
}

#[tokio::test]
async fn a_polling_client_logs_in_and_chats_with_a_bosh_user() {
    let WithBob { cm, _prosody: _p, url, mut bob, bob_jid } = with_bob(&[]).await;
    let (mut alice, first) = Poller::open(&url, HEADER, None).await;
    // The creation answer: the server's header, then its features, filtered as for BOSH.
    assert!(first.body.starts_with("<?xml version='1.0'?><stream:stream "), "{}", first.body);
    assert!(first.body.contains("from=\"localhost\"") && first.body.contains("mechanisms"), "{}", first.body);
    assert!(!first.body.contains("starttls") && !first.body.contains("-PLUS"), "{}", first.body);
    let alice_jid = alice.login("alice", "alicepass").await;
    assert!(alice_jid.starts_with("alice@localhost/"), "{alice_jid}");

    // A stanza split across two requests is one stanza.
    let m = chat(&bob_jid, "hello bob");
    let (a, b) = m.split_at(m.len() / 2);
    alice.send(a).await;
    alice.send(b).await;
    bob.poll_until("hello bob", T).await;
    bob.send("", &format!("<message xmlns='jabber:client' to='{alice_jid}' type='chat'><body>hello alice</body></message>")).await;
    let got = alice.poll_until("hello alice").await;
    assert!(got.contains("from='bob@localhost/"), "{got}");
    assert_eq!(metric(&cm.admin_url(), "xmpp_cm_sessions_active{transport=\"polling\"}").await, 1.0);
    assert!(metric(&cm.admin_url(), "xmpp_cm_http_requests_total{route=\"polling\",status=\"200\"}").await >= 10.0);

    // Closing the client's stream ends the session; the identifier is dead afterwards.
    let r = alice.send("<presence type='unavailable'/></stream:stream>").await;
    assert!(r.body.ends_with("</stream:stream>") && alice.closed, "{}", r.body);
    let after = post(&url, &format!("{},", alice.id)).await;
    assert_eq!(after.id, "0:0");
}

#[tokio::test]
async fn key_sequences_renew_and_a_wrong_key_changes_nothing() {
    let WithBob { cm: _cm, _prosody: _p, url, mut bob, bob_jid } = with_bob(&[]).await;
    // A short first chain: it runs out (and is renewed) during the login.
    let (mut alice, _) = Poller::open(&url, HEADER, Some(chain("alpha", 4))).await;
    alice.login("alice", "alicepass").await;
    assert!(alice.renewals >= 1, "the login renewed the key chain");

    let next = alice.keys.as_ref().and_then(|k| k.last()).expect("next key").clone();
    let forged = chat(&bob_jid, "forged");
    for wrong in [
        format!("{};{},{forged}", alice.id, hash_key(&next)), // the key already used
        format!("{};{},{forged}", alice.id, "bm90IGEga2V5"),  // not in the chain at all
        format!("{},{forged}", alice.id),                     // no key in a keyed session
    ] {
        let r = post(&url, &wrong).await;
        assert_eq!((r.id.as_str(), r.body.as_str()), ("-3:0", ""), "{wrong}");
    }
    // The chain goes on where it was, and nothing of the refused requests reached the server.
    alice.send(&chat(&bob_jid, "genuine")).await;
    bob.poll_until("genuine", T).await;
    assert_eq!(bob.count("forged"), 0, "{:?}", bob.received);
    // Through a second renewal too.
    while alice.renewals < 2 {
        alice.send("").await;
    }
    alice.send(&chat(&bob_jid, "renewed")).await;
    bob.poll_until("renewed", T).await;
}

#[tokio::test]
async fn refusals_carry_the_error_identifiers_before_any_upstream_connection() {
    let p = prosody();
    let cm = polling_cm(&p, &[]);
    let url = format!("{}{PATH}", cm.http_base());
    assert_eq!(post(&url, "0123456789abcdef0123456789abcdef,").await.id, "0:0");
    assert_eq!(post(&url, "not a polling request").await.id, "-2:0");
    let elsewhere = HEADER.replace("localhost", "elsewhere.test");
    let r = post(&url, &format!("0,{elsewhere}")).await;
    assert_eq!((r.id.as_str(), r.body.as_str()), ("-2:0", ""));
    let admin = cm.admin_url();
    assert_eq!(metric(&admin, "xmpp_cm_sessions_refused_total{transport=\"polling\",condition=\"host_unknown\"}").await, 1.0);
    // Nothing was resolved or dialled for it: no upstream connect, good or failed.
    assert_eq!(metric(&admin, "xmpp_cm_upstream_connect_duration_seconds_count").await, 0.0);
    assert_eq!(metric(&admin, "xmpp_cm_sessions_created_total{transport=\"polling\"}").await, 0.0);
}

#[tokio::test]
async fn inactivity_ends_the_session_and_bounces_what_it_never_fetched() {
    let WithBob { cm, _prosody: _p, url, mut bob, .. } = with_bob(&[("polling.inactivity", "2")]).await;
    let (mut alice, _) = Poller::open(&url, HEADER, Some(chain("alpha", 50))).await;
    let alice_jid = alice.login("alice", "alicepass").await;
    let last_good = std::time::Instant::now();
    // alice stops polling; what bob sends her now is queued, never fetched.
    let message = format!("<message xmlns='jabber:client' to='{alice_jid}' type='chat' id='m1'><body>unread</body></message>");
    let iq = format!("<iq xmlns='jabber:client' to='{alice_jid}' type='get' id='q1'><query xmlns='jabber:iq:version'/></iq>");
    bob.send("", &format!("{message}{iq}")).await;
    // Requests with a wrong key do not keep the session alive (§4: "must not extend the
    // session keepalive"): they get -3:0 until the session is gone, then 0:0.
    loop {
        let r = post(&url, &format!("{};bm90IGEga2V5,", alice.id)).await;
        if r.id == "0:0" {
            break;
        }
        assert_eq!(r.id, "-3:0");
        assert!(last_good.elapsed() < Duration::from_secs(6), "wrong keys kept the session alive");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Both reached xmpp-cm long before the session ended and were never fetched: bounced.
    // (Prosody itself, without offline storage here, would answer a chat message for a user
    // who is gone with service-unavailable: recipient-unavailable is xmpp-cm's bounce.)
    bob.poll_until("recipient-unavailable", T).await;
    bob.poll_until("service-unavailable", T).await;
    assert!(bob.received.iter().any(|s| s.contains("id='q1'") && s.contains("type='error'")), "{:?}", bob.received);
    let ended = "xmpp_cm_sessions_ended_total{transport=\"polling\",side=\"client\",condition=\"client_gone\"}";
    assert_eq!(metric(&cm.admin_url(), ended).await, 1.0);
}

#[tokio::test]
async fn drain_ends_live_sessions_and_the_process_exits() {
    let p = prosody();
    let mut cm = polling_cm(&p, &[]);
    let url = format!("{}{PATH}", cm.http_base());
    let (mut alice, _) = Poller::open(&url, HEADER, None).await;
    alice.login("alice", "alicepass").await;
    cm.signal("TERM");
    let status = cm.wait_exit(Duration::from_secs(10)).expect("exits within the drain grace");
    assert!(status.success(), "{status:?}\n{}", cm.log());
    let log = cm.log();
    assert!(log.lines().any(|l| l.contains("polling session ends") && l.contains("shutdown")), "{log}");
}

#[tokio::test]
async fn off_by_default_the_path_is_404() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let r = http_request("POST", &format!("{}{PATH}", cm.http_base()), &[], format!("0,{HEADER}").as_bytes(), T).await.expect("POST");
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.header("set-cookie").is_none());
}
