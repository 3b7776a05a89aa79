//! Issue 17: gzip of BOSH responses, through xmpp-cm to a real Prosody, over both HTTP paths
//! (the lean HTTP/1.1 loop and hyper's HTTP/2, h2c). A client that accepts gzip logs in, fetches
//! its roster and sends presence; every response says `Vary: Accept-Encoding`, the large ones are
//! gzipped and decode to the XML expected; `gzip;q=0`, a client that does not ask, and
//! `compression = "off"` get identity. The byte counts of that session (compressed on the wire vs
//! identity) are printed for bench/findings.md; `BOSH_COMPRESSION_ROSTER=500` sizes the roster.

mod support;

use std::io::Read as _;
use std::time::{Duration, Instant};

use base64::Engine as _;
use support::{Prosody, ProsodyOpts, XmppCm};

const NS: &str = "http://jabber.org/protocol/httpbind";

/// One BOSH session over reqwest; counts what came back, as sent and as decoded.
struct Session {
    http: reqwest::Client,
    url: String,
    accept: Option<&'static str>,
    sid: String,
    rid: u64,
    /// (bytes of response bodies as sent, the same decoded, response header bytes).
    wire: u64,
    identity: u64,
    headers: u64,
    gzipped: usize,
    responses: usize,
}

struct Answer {
    text: String,
    gzip: bool,
    vary: bool,
}

impl Session {
    async fn create(http: reqwest::Client, url: &str, accept: Option<&'static str>) -> (Session, Answer) {
        let mut s = Session { http, url: url.into(), accept, sid: String::new(), rid: 4_000_000, wire: 0, identity: 0, headers: 0, gzipped: 0, responses: 0 };
        let body = format!(
            "<body content='text/xml; charset=utf-8' hold='1' rid='{}' to='localhost' ver='1.6' wait='5' xml:lang='en' xmpp:version='1.0' xmlns='{NS}' xmlns:xmpp='urn:xmpp:xbosh'/>",
            s.rid
        );
        let a = s.post(body).await;
        s.sid = attr(&a.text, "sid").unwrap_or_else(|| panic!("no sid in {}", a.text));
        (s, a)
    }

    async fn post(&mut self, body: String) -> Answer {
        let mut req = self.http.post(&self.url).header("content-type", "text/xml; charset=utf-8").body(body);
        if let Some(a) = self.accept {
            req = req.header("accept-encoding", a);
        }
        let resp = req.send().await.expect("BOSH POST");
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        self.headers += h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>() as u64;
        let vary = h.get_all("vary").iter().any(|v| v.to_str().unwrap_or("").split(',').any(|x| x.trim().eq_ignore_ascii_case("accept-encoding")));
        let gzip = match h.get("content-encoding").map(|v| v.to_str().unwrap_or("?").to_string()) {
            None => false,
            Some(e) if e == "gzip" => true,
            Some(e) => panic!("unexpected Content-Encoding {e}"),
        };
        let raw = resp.bytes().await.expect("body");
        let text = if gzip {
            let mut out = String::new();
            flate2::read::GzDecoder::new(&raw[..]).read_to_string(&mut out).expect("the gzip body decodes");
            out
        } else {
            String::from_utf8(raw.to_vec()).expect("UTF-8 body")
        };
        assert!(text.starts_with("<body") && text.ends_with("</body>") || text.ends_with("/>"), "a whole <body/>: {text}");
        self.wire += raw.len() as u64;
        self.identity += text.len() as u64;
        self.responses += 1;
        self.gzipped += gzip as usize;
        Answer { text, gzip, vary }
    }

    /// Post `payload` (or an empty poll) and keep polling until `needle` has come back; returns
    /// everything that came back meanwhile.
    async fn until(&mut self, payload: &str, extra: &str, needle: &str) -> (String, Vec<Answer>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut all = String::new();
        let mut answers = Vec::new();
        let mut next = format!("<body rid='{}' sid='{}' xmlns='{NS}'{extra}>{payload}</body>", self.rid + 1, self.sid);
        loop {
            self.rid += 1;
            let a = self.post(next).await;
            all.push_str(&a.text);
            answers.push(a);
            if all.contains(needle) {
                return (all, answers);
            }
            assert!(Instant::now() < deadline, "no {needle:?} within 20 s; got {all}");
            next = format!("<body rid='{}' sid='{}' xmlns='{NS}'/>", self.rid + 1, self.sid);
        }
    }

    /// SASL PLAIN, restart, bind; returns the bound JID.
    async fn login(&mut self, user: &str, pass: &str) -> String {
        let cred = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        self.until(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>"), "", "<success").await;
        self.until("", " to='localhost' xml:lang='en' xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh'", "urn:ietf:params:xml:ns:xmpp-bind").await;
        let (all, _) = self
            .until("<iq type='set' id='bind1' xmlns='jabber:client'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>gz</resource></bind></iq>", "", "</jid>")
            .await;
        let start = all.find("<jid>").expect("jid") + 5;
        all[start..all[start..].find("</jid>").expect("jid end") + start].to_string()
    }

    async fn terminate(&mut self) {
        self.rid += 1;
        let body = format!("<body rid='{}' sid='{}' type='terminate' xmlns='{NS}'><presence type='unavailable' xmlns='jabber:client'/></body>", self.rid, self.sid);
        let _ = self.post(body).await;
    }
}

fn attr(text: &str, name: &str) -> Option<String> {
    for q in ['\'', '"'] {
        let pat = format!(" {name}={q}");
        if let Some(i) = text.find(&pat) {
            let rest = &text[i + pat.len()..];
            return rest.find(q).map(|j| rest[..j].to_string());
        }
    }
    None
}

fn client(h2: bool) -> reqwest::Client {
    let b = reqwest::Client::builder().timeout(Duration::from_secs(15));
    let b = if h2 { b.http2_prior_knowledge() } else { b.http1_only() };
    b.build().expect("reqwest client")
}

/// Add `n` contacts to the logged-in user's roster, 50 roster sets per request.
async fn fill_roster(s: &mut Session, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let sets: String = chunk
            .iter()
            .map(|i| format!("<iq type='set' id='add-{i}' xmlns='jabber:client'><query xmlns='jabber:iq:roster'><item jid='contact{i}@example.org' name='Contact number {i}'><group>Friends</group></item></query></iq>"))
            .collect();
        let last = format!("add-{}", chunk[chunk.len() - 1]);
        s.until(&sets, "", &last).await;
    }
}

/// Login, roster, presence as a client accepting gzip: over HTTP/1.1 and over h2c.
#[tokio::test]
async fn a_gzip_client_gets_gzipped_bodies_that_decode_to_the_session() {
    let roster: usize = std::env::var("BOSH_COMPRESSION_ROSTER").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let p = Prosody::start(ProsodyOpts::default());
    // The default settings: gzip on, 1024 bytes and up.
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    // The roster, filled once by alice (not measured).
    let (mut setup, _) = Session::create(client(false), &cm.bosh_url(), None).await;
    setup.login("alice", "alicepass").await;
    fill_roster(&mut setup, roster).await;
    setup.terminate().await;

    for h2 in [false, true] {
        let path = if h2 { "h2c (hyper)" } else { "HTTP/1.1 (lean loop)" };
        let (mut s, created) = Session::create(client(h2), &cm.bosh_url(), Some("gzip, deflate, br")).await;
        assert!(created.vary, "{path}: Vary on the creation response");
        assert!(created.text.contains("PLAIN"), "{path}: the features decode: {}", created.text);
        let jid = s.login("alice", "alicepass").await;
        assert!(jid.starts_with("alice@localhost/"), "{path}: {jid}");
        let (all, answers) = s.until("<iq type='get' id='roster1' xmlns='jabber:client'><query xmlns='jabber:iq:roster'/></iq>", "", "roster1").await;
        assert!(all.contains(&format!("contact{}@example.org", roster - 1)), "{path}: the whole roster decodes");
        let big = answers.iter().find(|a| a.text.contains("roster1")).expect("the roster answer");
        assert!(big.gzip, "{path}: a {}-byte roster answer is gzipped", big.text.len());
        assert!(answers.iter().all(|a| a.vary), "{path}: Vary: Accept-Encoding on every response");
        s.until("<presence xmlns='jabber:client'/>", "", "<presence").await;
        s.terminate().await;
        assert!(s.gzipped >= 1, "{path}");
        eprintln!(
            "bosh_compression {path}: roster {roster}: {} responses, {} gzipped; bodies {} B on the wire, {} B identity ({:.2}×); response headers {} B",
            s.responses,
            s.gzipped,
            s.wire,
            s.identity,
            s.identity as f64 / s.wire.max(1) as f64,
            s.headers
        );
    }
}

/// `gzip;q=0`, no Accept-Encoding, and `[bosh] compression = "off"`: identity every time; Vary
/// only while compression is on.
#[tokio::test]
async fn identity_when_refused_unasked_or_off() {
    let p = Prosody::start(ProsodyOpts::default());
    let on = XmppCm::start(&XmppCm::config_with(&p, &[("bosh.compression_min_bytes", "64")]));
    for accept in [Some("gzip;q=0, br"), Some("identity"), None] {
        let (mut s, created) = Session::create(client(false), &on.bosh_url(), accept).await;
        assert!(!created.gzip && created.vary, "{accept:?}: identity with Vary");
        assert!(created.text.contains("PLAIN"), "{accept:?}: {}", created.text);
        s.terminate().await;
    }
    // The same request that is gzipped when on…
    let (mut s, created) = Session::create(client(false), &on.bosh_url(), Some("gzip")).await;
    assert!(created.gzip, "over 64 bytes and accepted: gzipped");
    s.terminate().await;
    // …is identity, with no Vary, when off.
    let off = XmppCm::start(&XmppCm::config_with(&p, &[("bosh.compression", "\"off\""), ("bosh.compression_min_bytes", "64")]));
    let (mut s, created) = Session::create(client(false), &off.bosh_url(), Some("gzip")).await;
    assert!(!created.gzip && !created.vary, "off: identity, no Vary");
    s.terminate().await;
}
