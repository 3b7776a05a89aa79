//! A raw BOSH client for integration tests: exact bodies, explicit rids, several requests in
//! flight. Responses are parsed with xmpp-cm's own namespace-aware parser (the same one its
//! unit tests pin down), so assertions see namespaces, not strings.
#![allow(dead_code)]

use std::time::Duration;

use base64::Engine as _;
use xmpp_cm::xml::{parse_document, Element, Limits};

pub const NS: &str = "xmlns='http://jabber.org/protocol/httpbind'";
const XBOSH: &str = "xmlns:xmpp='urn:xmpp:xbosh'";

/// One HTTP answer: status, headers, raw body and the parsed `<body/>` (when it parses).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub raw: String,
}

impl Answer {
    pub fn body(&self) -> Element {
        parse_document(self.raw.as_bytes(), &Limits::default(), &[])
            .unwrap_or_else(|e| panic!("response is not XML ({e}): {}", self.raw))
    }
    pub fn attr(&self, name: &str) -> Option<String> {
        self.body().attr(name).map(str::to_owned)
    }
    pub fn condition(&self) -> Option<String> {
        self.attr("condition")
    }
    pub fn is_terminate(&self) -> bool {
        self.attr("type").as_deref() == Some("terminate")
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn children(&self) -> Vec<Element> {
        self.body().elements().cloned().collect()
    }
}

pub async fn post(url: &str, body: &str, timeout: Duration) -> Answer {
    let (status, headers, raw) = crate::support::bosh_post_timeout(url, body, timeout).await;
    Answer { status, headers, raw }
}

/// One client session.
pub struct Bosh {
    pub url: String,
    pub sid: String,
    pub rid: u64,
    pub wait: u64,
    pub domain: String,
    /// Stanzas received so far (serialized), in order.
    pub received: Vec<String>,
    pub creation: Answer,
    /// When not empty, request n of the session (the creation is request 0) goes to
    /// `rotate[n % len]` (each request of one session to another replica, no balancer).
    pub rotate: Vec<String>,
    /// Requests sent so far, the creation included.
    pub sent: usize,
}

impl Bosh {
    /// Create a session; `extra` are additional attributes for the creation body.
    pub async fn create(url: &str, domain: &str, wait: u64, extra: &str) -> Bosh {
        Self::try_create(url, domain, wait, extra).await.unwrap_or_else(|a| panic!("no session created: {} {}", a.status, a.raw))
    }

    /// [`Self::create`], but a refusal (no sid in the answer) is `Err(answer)`.
    pub async fn try_create(url: &str, domain: &str, wait: u64, extra: &str) -> Result<Bosh, Answer> {
        let rid = 1_000_000 + u64::from(rand_u16()) * 1000;
        let lang = if extra.contains("xml:lang") { "" } else { "xml:lang='en'" };
        let body = format!(
            "<body {NS} {XBOSH} rid='{rid}' to='{domain}' {lang} wait='{wait}' hold='1' ver='1.6' xmpp:version='1.0' {extra}/>"
        );
        let a = post(url, &body, Duration::from_secs(wait + 10)).await;
        let sid = match (a.status, a.raw.starts_with("<body")) {
            (200, true) => a.attr("sid").ok_or_else(|| a.clone())?,
            _ => return Err(a),
        };
        let mut b = Bosh {
            url: url.into(),
            sid,
            rid,
            wait,
            domain: domain.into(),
            received: vec![],
            creation: a.clone(),
            rotate: vec![],
            sent: 1,
        };
        b.absorb(&a);
        Ok(b)
    }

    /// The next request body (takes the next rid).
    pub fn next_body(&mut self, attrs: &str, payload: &str) -> String {
        self.rid += 1;
        self.body_for(self.rid, attrs, payload)
    }

    pub fn body_for(&self, rid: u64, attrs: &str, payload: &str) -> String {
        if payload.is_empty() {
            format!("<body {NS} {XBOSH} sid='{}' rid='{rid}' {attrs}/>", self.sid)
        } else {
            format!("<body {NS} {XBOSH} sid='{}' rid='{rid}' {attrs}>{payload}</body>", self.sid)
        }
    }

    /// Send the next request and wait for its answer.
    pub async fn send(&mut self, attrs: &str, payload: &str) -> Answer {
        let body = self.next_body(attrs, payload);
        self.send_raw(&body).await
    }

    pub async fn send_raw(&mut self, body: &str) -> Answer {
        if !self.rotate.is_empty() {
            self.url = self.rotate[self.sent % self.rotate.len()].clone();
        }
        self.sent += 1;
        let a = post(&self.url, body, Duration::from_secs(self.wait + 10)).await;
        self.absorb(&a);
        a
    }

    fn absorb(&mut self, a: &Answer) {
        if a.status == 200 && a.raw.starts_with("<body") {
            for c in a.children() {
                self.received.push(c.to_xml(""));
            }
        }
    }

    /// Poll (empty requests) until a received stanza contains `needle`; bounded by `timeout`.
    pub async fn poll_until(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.received.iter().find(|s| s.contains(needle)) {
                return s.clone();
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {needle:?}; got {:?}", self.received);
            let a = self.send("", "").await;
            assert!(!a.is_terminate(), "session ended while waiting for {needle:?}: {}", a.raw);
        }
    }

    /// Full login: create, SASL PLAIN, restart, bind, initial presence. Returns the full JID.
    pub async fn login(url: &str, domain: &str, user: &str, pass: &str, wait: u64) -> (Bosh, String) {
        Self::login_rotating(&[url.to_string()], domain, user, pass, wait).await
    }

    /// [`Self::login`] with request n sent to `urls[n % len]` (see [`Self::rotate`]); the
    /// session keeps rotating afterwards.
    pub async fn login_rotating(urls: &[String], domain: &str, user: &str, pass: &str, wait: u64) -> (Bosh, String) {
        let mut b = Bosh::create(&urls[0], domain, wait, "").await;
        if urls.len() > 1 {
            b.rotate = urls.to_vec();
        }
        b.authenticate(user, pass).await;
        b.bind().await
    }

    /// On a new session: SASL PLAIN and the stream restart, up to the features offering bind
    /// (and XEP-0198 resumption, when the server has it).
    pub async fn authenticate(&mut self, user: &str, pass: &str) {
        let domain = self.domain.clone();
        self.poll_until("mechanisms", Duration::from_secs(15)).await;
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        self.send("", &format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>")).await;
        self.poll_until("<success", Duration::from_secs(15)).await;
        self.send(&format!("to='{domain}' xml:lang='en' xmpp:restart='true'"), "").await;
        self.poll_until("urn:ietf:params:xml:ns:xmpp-bind", Duration::from_secs(15)).await;
    }

    /// After [`Self::authenticate`]: bind resource `test`, send initial presence; the full JID.
    pub async fn bind(mut self) -> (Bosh, String) {
        self.send("", "<iq xmlns='jabber:client' type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>test</resource></bind></iq>").await;
        let bound = self.poll_until("<jid>", Duration::from_secs(15)).await;
        let jid = bound.split("<jid>").nth(1).and_then(|s| s.split("</jid>").next()).unwrap_or_default().to_string();
        self.send("", "<presence xmlns='jabber:client'/>").await;
        (self, jid)
    }

    /// Count received stanzas containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.received.iter().filter(|s| s.contains(needle)).count()
    }
}

fn rand_u16() -> u16 {
    let mut b = [0u8; 2];
    getrandom::getrandom(&mut b).expect("random");
    u16::from_le_bytes(b)
}
