//! BOSH HTTP-level behaviour and retransmission rules against real Prosody, with exact bytes on
//! raw sockets: HTTP/1.0, pipelining, Content-Length, request content types, encodings, and the
//! rid repeat rules (BOSH-R-11/12/13, R-22, T-10).

mod bosh_client;
mod support;

use std::time::Duration;

use bosh_client::{post, Bosh, NS};
use support::http::{parse_response, raw_exchange};
use support::{Prosody, ProsodyOpts, XmppCm};

fn setup() -> (Prosody, XmppCm) {
    let p = Prosody::start(ProsodyOpts { tls_required: true, ..Default::default() });
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    (p, cm)
}

fn addr(cm: &XmppCm) -> String {
    cm.http_addr()
}

fn create_body(rid: u64) -> String {
    format!("<body {NS} rid='{rid}' to='localhost' ver='1.6' wait='5' hold='1' xmlns:xmpp='urn:xmpp:xbosh' xmpp:version='1.0'/>")
}

/// HTTP-02 (HTTP/1.0 without keep-alive: answered, then closed), HTTP-05 (Content-Length, never
/// chunked), HTTP-13 (no-cache headers).
#[tokio::test]
async fn http10_and_content_length() {
    let (_p, cm) = setup();
    let body = create_body(100);
    let req = format!("POST /http-bind HTTP/1.0\r\nHost: x\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let raw = raw_exchange(&addr(&cm), req.as_bytes(), Duration::from_secs(10)).await.expect("HTTP/1.0 answer and close");
    let r = parse_response(&raw, false).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("content-length").is_some(), "{:?}", r.headers);
    assert!(r.header("transfer-encoding").is_none());
    assert_eq!(r.header("pragma"), Some("no-cache"));
    assert!(r.body.contains("sid="), "{}", r.body);
}

/// HTTP-05: a chunked request body is accepted. HTTP-04: two pipelined requests on one
/// connection are answered in order.
#[tokio::test]
async fn chunked_request_and_pipelining() {
    let (_p, cm) = setup();
    let body = create_body(200);
    let chunked = format!(
        "POST /http-bind HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let r = parse_response(&raw_exchange(&addr(&cm), chunked.as_bytes(), Duration::from_secs(10)).await.unwrap(), false).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.contains("sid="), "{}", r.body);

    // Pipelining: an unknown sid (answered at once) then a GET of the info page.
    let b1 = format!("<body {NS} rid='5' sid='unknown-1'/>");
    let req = format!(
        "POST /http-bind HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{b1}GET /http-bind HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b1.len()
    );
    let raw = raw_exchange(&addr(&cm), req.as_bytes(), Duration::from_secs(10)).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    let first = text.find("item-not-found").expect("first answer");
    let second = text.find("text/html").expect("second answer");
    assert!(first < second, "answers out of order: {text}");
}

/// HTTP-06: the request Content-Type is ignored (text/xml, text/plain, form-urlencoded all work,
/// the body is never form-decoded); HTTP-09: an unadvertised Content-Encoding is refused (415).
#[tokio::test]
async fn content_types_and_encodings() {
    let (_p, cm) = setup();
    for (i, ct) in ["text/xml; charset=utf-8", "text/plain", "application/x-www-form-urlencoded"].iter().enumerate() {
        let body = create_body(300 + i as u64 * 10);
        let r = support::http_request("POST", &cm.bosh_url(), &[("Content-Type", ct)], body.as_bytes(), Duration::from_secs(10)).await.unwrap();
        assert_eq!(r.status, 200, "{ct}");
        assert!(r.body.contains("sid="), "{ct}: {}", r.body);
    }
    let r = support::http_request("POST", &cm.bosh_url(), &[("Content-Encoding", "br")], create_body(400).as_bytes(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.status, 415);
}

/// BOSH-R-11: a repeat of a rid that is still held answers the older copy with a recoverable
/// `type='error'` and keeps the newest; BOSH-R-12 / T-10: a repeat of a rid no longer cached
/// ends the session with item-not-found, with a body identical to the one for a rid too high.
#[tokio::test]
async fn repeated_rids() {
    let (_p, cm) = setup();
    let url = cm.bosh_url();
    let mut b = Bosh::create(&url, "localhost", 3, "").await;
    let held = b.next_body("", "");
    let u = url.clone();
    let h2 = held.clone();
    let first = tokio::spawn(async move { post(&u, &h2, Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = post(&url, &held, Duration::from_secs(10)).await; // held until wait (3 s)
    let first = first.await.unwrap();
    assert_eq!(first.attr("type").as_deref(), Some("error"), "older copy: {}", first.raw);
    assert!(!second.is_terminate(), "newest copy gets the real answer: {}", second.raw);
    // Move on past the cache (requests=2), then repeat an old rid.
    for _ in 0..3 {
        b.send("", "").await;
    }
    let stale = post(&url, &b.body_for(b.rid - 3, "", ""), Duration::from_secs(5)).await;
    assert_eq!(stale.condition().as_deref(), Some("item-not-found"), "{}", stale.raw);
    // Too high on a fresh session: byte-identical body.
    let c = Bosh::create(&url, "localhost", 3, "").await;
    let high = post(&url, &c.body_for(c.rid + 50, "", ""), Duration::from_secs(5)).await;
    assert_eq!(high.raw, stale.raw, "no oracle between too-old and too-high");
}

/// BOSH-R-13: repeating the same rid more than `max_rid_repeats` times ends the session with
/// policy-violation.
#[tokio::test]
async fn repeat_cap() {
    let p = Prosody::start(ProsodyOpts { tls_required: true, ..Default::default() });
    let cm = XmppCm::start(&XmppCm::config_with(&p, &[("bosh.max_rid_repeats", "3")]));
    let url = cm.bosh_url();
    let mut b = Bosh::create(&url, "localhost", 1, "").await;
    let body = b.next_body("", "");
    let mut last = post(&url, &body, Duration::from_secs(5)).await;
    for _ in 0..5 {
        last = post(&url, &body, Duration::from_secs(5)).await;
        if last.is_terminate() {
            break;
        }
    }
    assert_eq!(last.condition().as_deref(), Some("policy-violation"), "{}", last.raw);
}

/// BOSH-R-22: a later body with `to` is an ordinary poll (multiple streams are not implemented,
/// no second upstream connection); BOSH-S-29: a `secure` attribute does not break creation.
#[tokio::test]
async fn later_to_is_a_plain_poll_and_secure_is_ignored() {
    let (_p, cm) = setup();
    let url = cm.bosh_url();
    let mut b = Bosh::create(&url, "localhost", 1, "secure='true'").await;
    assert!(b.creation.attr("stream").is_none());
    let a = b.send("to='other.test'", "").await;
    assert!(!a.is_terminate(), "{}", a.raw);
    assert!(a.attr("stream").is_none());
}

/// The lean HTTP/1.1 loop (src/front/h1.rs) on raw sockets: a body that arrives in pieces after
/// its head (HTTP-05), keep-alive reuse for sequential requests, `Connection: close` honoured,
/// HEAD without a body, 204 without Content-Length, a `Date` on every answer, and an idle
/// keep-alive connection closed after `http.header_read_timeout` (SEC-04).
#[tokio::test]
async fn http11_keep_alive_split_bodies_head_and_idle_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let p = Prosody::start(ProsodyOpts { tls_required: true, ..Default::default() });
    let cm = XmppCm::start(&XmppCm::config_with(&p, &[("http.header_read_timeout", "2")]));
    let mut s = TcpStream::connect(addr(&cm)).await.unwrap();
    // Reads one response (Content-Length framed, or none for 204) from a keep-alive socket.
    async fn read_one(s: &mut TcpStream, buf: &mut Vec<u8>) -> support::http::HttpResponse {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head.lines().find_map(|l| l.strip_prefix("content-length:")).map(|v| v.trim().parse::<usize>().unwrap()).unwrap_or(0);
                let len = if head.starts_with("http/1.1 204") { 0 } else { len };
                if buf.len() >= end + 4 + len {
                    let one: Vec<u8> = buf.drain(..end + 4 + len).collect();
                    return parse_response(&one, false).unwrap();
                }
            }
            let mut b = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await.expect("response in time").unwrap();
            assert!(n > 0, "closed early; have {:?}", String::from_utf8_lossy(buf));
            buf.extend_from_slice(&b[..n]);
        }
    }
    let mut buf = Vec::new();
    // 1. A creation body sent in three pieces, 150 ms apart, after its head.
    let body = create_body(500);
    s.write_all(format!("POST /http-bind HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes()).await.unwrap();
    let third = body.len() / 3;
    for piece in [&body[..third], &body[third..2 * third], &body[2 * third..]] {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.write_all(piece.as_bytes()).await.unwrap();
    }
    let r = read_one(&mut s, &mut buf).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("sid="), "{}", r.body);
    assert!(r.header("date").is_some_and(|d| d.ends_with("GMT")), "{:?}", r.headers);
    assert!(r.header("connection").is_none(), "{:?}", r.headers);
    // 2. The same connection carries the next request: an unknown sid, answered at once.
    let b2 = format!("<body {NS} rid='7' sid='unknown-2'/>");
    s.write_all(format!("POST /http-bind HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{b2}", b2.len()).as_bytes()).await.unwrap();
    let r = read_one(&mut s, &mut buf).await;
    assert!(r.body.contains("item-not-found"), "{}", r.body);
    // 3. OPTIONS (CORS preflight): 204 without a Content-Length.
    s.write_all(b"OPTIONS /http-bind HTTP/1.1\r\nHost: x\r\nOrigin: https://example.net\r\nAccess-Control-Request-Method: POST\r\n\r\n").await.unwrap();
    let r = read_one(&mut s, &mut buf).await;
    assert_eq!(r.status, 204);
    assert!(r.header("content-length").is_none(), "{:?}", r.headers);
    // 4. HEAD: the GET page's length, no body; then the connection is still usable.
    s.write_all(b"HEAD /http-bind HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut b = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await.unwrap().unwrap();
        assert!(n > 0);
        head.extend_from_slice(&b[..n]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let declared = text.to_ascii_lowercase().lines().find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()));
    assert!(declared.is_some_and(|n| n > 100), "HEAD must declare the GET page's length: {text}");
    assert!(text.ends_with("\r\n\r\n"), "HEAD answered with a body: {text}");
    // 5. Idle: closed after header_read_timeout (2 s), without an answer.
    let t0 = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut rest)).await.expect("idle connection closed");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(t0.elapsed() >= Duration::from_millis(1500), "closed after {:?}", t0.elapsed());
    // 6. Connection: close is honoured after the answer.
    let raw = raw_exchange(&addr(&cm), b"GET /http-bind HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", Duration::from_secs(5)).await.expect("answered and closed");
    let r = parse_response(&raw, false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
}
