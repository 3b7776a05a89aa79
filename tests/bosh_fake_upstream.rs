//! BOSH against a scripted fake upstream (CHECKLIST UP-FAKE), for what a real server will not do
//! on demand: slow stream opens, whitespace keepalives, a stream error right after a message, a
//! clean close, stanzas for a client that is gone. The real-server behaviour is proven in
//! `bosh_prosody.rs`; this file never replaces it.

mod bosh_client;
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bosh_client::{post, Bosh, NS};
use support::XmppCm;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' from='fake.test' id='fake-id-1' version='1.0' xml:lang='en'>";
const FEATURES: &str = "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism><mechanism>SCRAM-SHA-1-PLUS</mechanism></mechanisms><compression xmlns='http://jabber.org/features/compress'><method>zlib</method></compression></stream:features>";

/// A scripted upstream: every accepted connection runs `script`; all bytes it receives are kept.
struct Fake {
    port: u16,
    seen: Arc<Mutex<Vec<u8>>>,
}

/// The connection as the script sees it.
struct Conn {
    sock: TcpStream,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Conn {
    /// Read until the bytes received so far contain `needle` (bounded).
    async fn expect(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        loop {
            if String::from_utf8_lossy(&self.seen.lock().unwrap()).matches(needle).count() > 0 {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.sock.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.seen.lock().unwrap().extend_from_slice(&buf[..n]),
                _ => panic!("fake upstream: never saw {needle:?}; got {:?}", String::from_utf8_lossy(&self.seen.lock().unwrap())),
            }
        }
    }
    /// Wait for the `n`-th occurrence of `needle`.
    async fn expect_n(&mut self, needle: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        while String::from_utf8_lossy(&self.seen.lock().unwrap()).matches(needle).count() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.sock.read(&mut buf)).await {
                Ok(Ok(k)) if k > 0 => self.seen.lock().unwrap().extend_from_slice(&buf[..k]),
                _ => panic!("fake upstream: never saw {needle:?} {n} times"),
            }
        }
    }
    async fn send(&mut self, s: &str) {
        self.sock.write_all(s.as_bytes()).await.expect("fake upstream write");
    }
    /// Open the stream like a server: header + features.
    async fn open(&mut self) {
        self.expect("<stream:stream").await;
        self.expect(">").await;
        self.send(HEADER).await;
        self.send(FEATURES).await;
    }
    /// Read until EOF (bounded); returns whether EOF came.
    async fn until_eof(&mut self, within: Duration) -> bool {
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.sock.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => self.seen.lock().unwrap().extend_from_slice(&buf[..n]),
                Err(_) => return false,
            }
        }
    }
}

impl Fake {
    async fn start<F, Fut>(script: F) -> Fake
    where
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let script = Arc::new(script);
        tokio::spawn(async move {
            while let Ok((sock, _)) = l.accept().await {
                let conn = Conn { sock, seen: s2.clone() };
                tokio::spawn(script(conn));
            }
        });
        Fake { port, seen }
    }
    fn seen(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }
}

/// A config routing `fake.test` to the fake upstream, plaintext (tls = "none").
fn cm_for(fake: &Fake, extra: &[(&str, &str)]) -> XmppCm {
    let mut toml = format!(
        "[http]\nlisten = [\"127.0.0.1:{}\"]\n[admin]\nlisten = \"\"\n[upstream]\ndomains = [\"fake.test\"]\ntls = \"none\"\nconnect_timeout = 5\n[upstream.routes]\n\"fake.test\" = \"127.0.0.1:{}\"\n[log]\nlevel = \"xmpp_cm=debug,info\"\n",
        support::free_port(),
        fake.port
    );
    let mut bosh = String::from("[bosh]\n");
    for (k, v) in extra {
        bosh.push_str(&format!("{k} = {v}\n"));
    }
    toml.push_str(&bosh);
    XmppCm::start(&toml)
}

/// BOSH-S-03, S-06, S-22, S-28, S-31, XBOSH-01, XBOSH-03, XBOSH-06/07, UP-12: a slow upstream does not
/// hold the creation response beyond `wait`; features, `from` and `authid` come later, filtered;
/// the upstream header carries `to` and `xml:lang`.
#[tokio::test]
async fn slow_upstream_features_come_in_a_later_response() {
    let fake = Fake::start(|mut c| async move {
        c.expect("<stream:stream").await;
        c.expect(">").await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        c.send(HEADER).await;
        c.send(FEATURES).await;
        c.until_eof(Duration::from_secs(20)).await;
    })
    .await;
    let cm = cm_for(&fake, &[]);
    let start = Instant::now();
    let mut b = Bosh::create(&cm.bosh_url(), "fake.test", 1, "xml:lang='de'").await;
    let _ = &mut b;
    assert!(start.elapsed() < Duration::from_millis(2500), "creation held {:?}", start.elapsed());
    assert!(b.creation.children().is_empty(), "{}", b.creation.raw);
    assert_eq!(b.creation.attr("authid"), None);
    // Later responses bring the features and the upstream identity.
    let deadline = Instant::now() + Duration::from_secs(10);
    let a = loop {
        let a = b.send("", "").await;
        if !a.children().is_empty() {
            break a;
        }
        assert!(Instant::now() < deadline);
    };
    assert_eq!(a.attr("from").as_deref(), Some("fake.test"));
    assert_eq!(a.attr("authid").as_deref(), Some("fake-id-1"));
    assert!(a.raw.contains("mechanisms") && !a.raw.contains("-PLUS") && !a.raw.contains("compression"), "{}", a.raw);
    let seen = fake.seen();
    assert!(seen.contains("to='fake.test'") && seen.contains("xml:lang='de'") && seen.contains("version='1.0'"), "{seen}");
    assert!(seen.starts_with("<?xml"), "{seen}");
}

/// BOSH-R-25, UP-24: upstream whitespace keepalives never reach the client; BOSH-T-20, T-14:
/// a stanza received before a stream error is delivered ahead of the error in the terminate body.
#[tokio::test]
async fn whitespace_dropped_and_stream_error_carries_earlier_stanzas() {
    let fake = Fake::start(|mut c| async move {
        c.open().await;
        c.expect("ping-me").await;
        c.send("  \n ").await;
        c.send("<message from='x@fake.test' to='u@fake.test'><body>before-error</body></message>").await;
        c.send(" <stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>").await;
        c.until_eof(Duration::from_secs(10)).await;
    })
    .await;
    let cm = cm_for(&fake, &[]);
    let mut b = Bosh::create(&cm.bosh_url(), "fake.test", 2, "").await;
    let a = b.send("", "<message xmlns='jabber:client' to='x@fake.test'><body>ping-me</body></message>").await;
    let mut all = vec![a];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !all.last().unwrap().is_terminate() {
        assert!(Instant::now() < deadline);
        all.push(b.send("", "").await);
    }
    let last = all.last().unwrap();
    assert_eq!(last.condition().as_deref(), Some("remote-stream-error"), "{}", last.raw);
    let kids = last.children();
    let names: Vec<_> = kids.iter().map(|k| k.name.as_str()).collect();
    // The message may have left in an earlier response or in the terminate body, never after.
    let msg_in_terminate = names.first() == Some(&"message");
    let msg_earlier = all[..all.len() - 1].iter().any(|a| a.raw.contains("before-error"));
    assert!(msg_in_terminate || msg_earlier, "{:?}", all.iter().map(|a| &a.raw).collect::<Vec<_>>());
    assert_eq!(names.last(), Some(&"error"));
    assert!(last.raw.contains("xmlns:stream='http://etherx.jabber.org/streams'"));
    for a in &all {
        assert!(!a.raw.contains("> <") && !a.raw.contains(">  "), "whitespace leaked: {}", a.raw);
    }
}

/// BOSH-T-23, UP-22: the upstream closes cleanly → plain terminate (no condition).
#[tokio::test]
async fn clean_upstream_close_is_plain_terminate() {
    let fake = Fake::start(|mut c| async move {
        c.open().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.send("</stream:stream>").await;
        c.until_eof(Duration::from_secs(5)).await;
    })
    .await;
    let cm = cm_for(&fake, &[]);
    let mut b = Bosh::create(&cm.bosh_url(), "fake.test", 5, "").await;
    let a = b.send("", "").await;
    assert!(a.is_terminate(), "{}", a.raw);
    assert_eq!(a.condition(), None);
}

/// XBOSH-09, XBOSH-10, XBOSH-13, UP-18: restart before SASL success is bad-request; after
/// success it writes a fresh header on the same socket and ignores stanzas inside it;
/// XBOSH-14: the upstream never sees the httpbind namespace.
#[tokio::test]
async fn restart_rules() {
    let fake = Fake::start(|mut c| async move {
        c.open().await;
        c.expect("</auth>").await;
        c.send("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>").await;
        c.expect_n("<stream:stream", 2).await;
        c.send(HEADER).await;
        c.send("<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>").await;
        c.until_eof(Duration::from_secs(20)).await;
    })
    .await;
    let cm = cm_for(&fake, &[]);
    // Premature restart (its own upstream, so the byte logs stay apart).
    let early_fake = Fake::start(|mut c| async move {
        c.open().await;
        c.until_eof(Duration::from_secs(10)).await;
    })
    .await;
    let cm_early = cm_for(&early_fake, &[]);
    let mut early = Bosh::create(&cm_early.bosh_url(), "fake.test", 2, "").await;
    let a = early.send("xmpp:restart='true'", "").await;
    assert_eq!(a.condition().as_deref(), Some("bad-request"), "{}", a.raw);

    let mut b = Bosh::create(&cm.bosh_url(), "fake.test", 2, "").await;
    b.send("", "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>").await;
    b.poll_until("<success", Duration::from_secs(10)).await;
    b.send("xmpp:restart='true' to='fake.test'", "<message xmlns='jabber:client' to='x@fake.test'><body>ignored-in-restart</body></message>").await;
    b.poll_until("xmpp-bind", Duration::from_secs(10)).await;
    let seen = fake.seen();
    assert!(!seen.contains("ignored-in-restart"), "{seen}");
    assert!(!seen.contains("httpbind"), "{seen}");
    assert!(!seen.contains("</stream:stream>"), "restart must not close the stream: {seen}");
}

/// BOSH-T-21: after an inactivity timeout, stanzas the client never received are bounced
/// (message → recipient-unavailable), presence is dropped, then the stream is closed.
#[tokio::test]
async fn stanzas_for_a_vanished_client_are_bounced() {
    let fake = Fake::start(|mut c| async move {
        c.open().await;
        c.expect("go-idle").await;
        tokio::time::sleep(Duration::from_millis(2000)).await;
        // Arrives while the client has no request open; it goes idle and never fetches it.
        c.send("<message from='x@fake.test/r' to='u@fake.test/b' id='m1' type='chat'><body>unread</body></message>").await;
        c.send("<presence from='x@fake.test/r'/>").await;
        c.until_eof(Duration::from_secs(20)).await;
    })
    .await;
    let cm = cm_for(&fake, &[("max_inactivity", "5"), ("polling", "1")]);
    let mut b = Bosh::create(&cm.bosh_url(), "fake.test", 1, "").await;
    let a = b.send("", "<message xmlns='jabber:client' to='x@fake.test'><body>go-idle</body></message>").await;
    assert!(!a.raw.contains("unread"), "must not have been delivered: {}", a.raw);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = fake.seen();
        if seen.contains("</stream:stream>") {
            let bounce_at = seen.find("recipient-unavailable").expect(&seen);
            assert!(bounce_at < seen.find("</stream:stream>").unwrap(), "bounce after close: {seen}");
            assert!(seen.contains("type='error'"), "{seen}");
            break;
        }
        assert!(Instant::now() < deadline, "no close after inactivity: {seen}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// BOSH-R-19 / R-20, BOSH-S-16 / S-25: with ack='1' responses carry `ack` when it differs from the
/// answered rid, and a stale client ack gets `report`/`time`, after which the missed rid replays.
#[tokio::test]
async fn acks_report_unacknowledged_responses() {
    let fake = Fake::start(|mut c| async move {
        c.open().await;
        c.until_eof(Duration::from_secs(30)).await;
    })
    .await;
    let cm = cm_for(&fake, &[]);
    let mut b = Bosh::create(&cm.bosh_url(), "fake.test", 1, "ack='1'").await;
    let creation_rid = b.rid;
    assert_eq!(b.creation.attr("ack"), Some(creation_rid.to_string()));
    let r1 = b.send(&format!("ack='{creation_rid}'"), "").await; // rid c+1
    let r2 = b.send(&format!("ack='{}'", creation_rid + 1), "").await; // rid c+2
    assert!(!r1.is_terminate() && !r2.is_terminate());
    // Pretend the response to c+2 never arrived: ack c+1 after a while.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let a = b.send(&format!("ack='{}'", creation_rid + 1), "").await;
    assert_eq!(a.attr("report"), Some((creation_rid + 2).to_string()), "{}", a.raw);
    assert!(a.attr("time").and_then(|t| t.parse::<u64>().ok()).is_some_and(|t| t >= 2000));
    // Resending the reported rid returns its cached body.
    let again = post(&cm.bosh_url(), &b.body_for(creation_rid + 2, &format!("ack='{}'", creation_rid + 1), ""), Duration::from_secs(5)).await;
    assert_eq!(again.raw, r2.raw);
    let _ = NS;
}

/// BOSH-R-15 / R-16 (b): a client with two connections sends its next empty poll (rid n) and a
/// stanza (rid n+1) right after a response; when n+1 arrives first it is parked, and the empty
/// poll must not count as "the last two requests empty" (the last one in rid order carries a
/// stanza). Seen with the load generator before the fix.
#[tokio::test]
async fn empty_poll_overtaken_by_a_stanza_is_not_too_frequent() {
    let fake = Fake::start(|mut c| async move {
        c.open().await;
        c.until_eof(Duration::from_secs(30)).await;
    })
    .await;
    let cm = cm_for(&fake, &[("polling", "5")]);
    let url = cm.bosh_url();
    let mut b = Bosh::create(&url, "fake.test", 1, "").await;
    for round in 0..3 {
        // An empty poll held for `wait` (1 s) and answered empty: "the previous request was empty".
        let a = b.send("", "").await;
        assert!(!a.is_terminate(), "round {round}: {}", a.raw);
        let n = b.next_body("", "");
        let n1 = b.next_body("", &format!("<message xmlns='jabber:client' to='x@fake.test'><body>r{round}</body></message>"));
        let u = url.clone();
        let stanza = tokio::spawn(async move { post(&u, &n1, Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let poll = post(&url, &n, Duration::from_secs(10)).await;
        let stanza = stanza.await.unwrap();
        assert!(!poll.is_terminate(), "round {round}: empty poll refused: {}", poll.raw);
        assert!(!stanza.is_terminate(), "round {round}: {}", stanza.raw);
    }
    assert!(fake.seen().contains("r2"));
}

/// BOSH-R-16 (b): on a long-poll session, `requests` unanswered requests whose last two are
/// empty and closer together than `polling` end the session with policy-violation; the request
/// held at that moment gets other-request (BOSH-T-11).
#[tokio::test]
async fn two_empty_requests_faster_than_polling_are_a_policy_violation() {
    let fake = Fake::start(|mut c| async move {
        c.open().await;
        c.until_eof(Duration::from_secs(30)).await;
    })
    .await;
    let cm = cm_for(&fake, &[("polling", "5")]);
    let url = cm.bosh_url();
    let mut b = Bosh::create(&url, "fake.test", 10, "").await;
    let first = b.next_body("", "");
    let u = url.clone();
    let held = tokio::spawn(async move { post(&u, &first, Duration::from_secs(20)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = b.send("", "").await;
    assert_eq!(second.condition().as_deref(), Some("policy-violation"), "{}", second.raw);
    let h = held.await.unwrap();
    assert_eq!(h.condition().as_deref(), Some("other-request"), "{}", h.raw);
}
