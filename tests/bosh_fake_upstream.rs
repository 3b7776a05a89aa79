//! BOSH through the xmpp-cm binary against the scripted fake upstream (support::fake; CHECKLIST
//! UP-FAKE), for what a real server will not do on demand: whitespace keepalives, a stream error
//! right after a message, a clean close, restarts at the wrong moment. The real-server behaviour
//! is proven in `bosh_prosody.rs`; this file never replaces it. Timer rules against the fake
//! (a slow stream open, stanzas for a client gone idle, the `polling` interval) run in virtual
//! time in `inproc.rs`.

mod bosh_client;
mod support;

use std::time::{Duration, Instant};

use bosh_client::{post, Bosh, NS};
use support::fake::{FakeUpstream, HEADER};
use support::XmppCm;

/// xmpp-cm in front of `fake`, with `extra` config keys (e.g. `("bosh.polling", "5")`).
fn cm_for(fake: &FakeUpstream, extra: &[(&str, &str)]) -> XmppCm {
    XmppCm::start(&fake.config(extra))
}

/// BOSH-R-25, UP-24: upstream whitespace keepalives never reach the client; BOSH-T-20, T-14:
/// a stanza received before a stream error is delivered ahead of the error in the terminate body.
#[tokio::test]
async fn whitespace_dropped_and_stream_error_carries_earlier_stanzas() {
    let fake = FakeUpstream::scripted(|mut c| async move {
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
    let fake = FakeUpstream::scripted(|mut c| async move {
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
    let fake = FakeUpstream::scripted(|mut c| async move {
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
    let early_fake = FakeUpstream::scripted(|mut c| async move {
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

/// BOSH-R-19 / R-20, BOSH-S-16 / S-25: with ack='1' responses carry `ack` when it differs from the
/// answered rid, and a stale client ack gets `report`/`time`, after which the missed rid replays.
#[tokio::test]
async fn acks_report_unacknowledged_responses() {
    let fake = FakeUpstream::opening().await;
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
