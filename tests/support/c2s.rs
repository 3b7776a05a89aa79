//! A raw client-to-server XMPP client on plain TCP, logged in directly to the upstream server
//! (not through xmpp-cm), so it outlives any xmpp-cm process a test stops: a sender or a
//! recipient whose side of a conversation is certainly not the thing under test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// Log `user` in to 127.0.0.1:`port` (SASL PLAIN without TLS, resource `direct`, initial
/// presence); its full JID is `user@domain/direct`. Panics if any step fails (10 s per read).
pub fn direct_recipient(port: u16, domain: &str, user: &str, pass: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect c2s");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let open = format!(
        "<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    );
    let read_until = |s: &mut TcpStream, needle: &str| {
        let mut got = String::new();
        let mut buf = [0u8; 4096];
        while !got.contains(needle) {
            let n = s.read(&mut buf).unwrap_or_else(|e| panic!("reading for {needle}: {e}; got {got}"));
            assert!(n > 0, "EOF waiting for {needle}: {got}");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        got
    };
    s.write_all(open.as_bytes()).unwrap();
    read_until(&mut s, "</stream:features>");
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
    write!(s, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>").unwrap();
    read_until(&mut s, "success");
    s.write_all(open.as_bytes()).unwrap();
    read_until(&mut s, "</stream:features>");
    s.write_all(b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>direct</resource></bind></iq>").unwrap();
    read_until(&mut s, "</iq>");
    s.write_all(b"<presence/>").unwrap();
    s
}

/// Read everything `s` receives until every needle was seen, the server closes, or `within`
/// passes; returns it all (the caller asserts on it).
pub fn collect_until(mut s: TcpStream, needles: Vec<String>, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut got = String::new();
    let mut buf = [0u8; 8192];
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    while Instant::now() < deadline && !needles.iter().all(|n| got.contains(n.as_str())) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
    }
    got
}
