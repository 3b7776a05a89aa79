//! Unit tests of the pure parts: message classification (WS-07..WS-11, WS-21, WS-23), the
//! messages xmpp-cm writes (WS-12, WS-18, WS-27), the handshake checks (WS-01, WS-02) and the
//! mapping of tungstenite read errors to close codes (WS-04, WS-25).

use axum::http::{HeaderMap, HeaderValue, StatusCode};

use super::message::{self, classify, Framing, Inbound, OpenRequest, Reply, CLOSE};
use super::session::{read_fault, ReadFault};
use super::check_handshake;
use crate::config::WebSocket as WsConfig;
use crate::error::Error;
use crate::xml::{ns, parse_document, Limits, XmlError};

fn limits() -> Limits {
    Limits { max_stanza_bytes: 4096, ..Limits::default() }
}

fn cls(text: &str, framing: Option<Framing>) -> Result<Inbound, Error> {
    classify(text, framing, true, &limits())
}

fn condition(r: Result<Inbound, Error>) -> &'static str {
    match r {
        Err(e) => e.stream_condition().unwrap_or("none"),
        Ok(i) => panic!("expected an error, got {i:?}"),
    }
}

const OPEN: &str = "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.com' version='1.0'/>";

#[test]
fn open_is_parsed_with_its_attributes() {
    let text = "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.com' version='1.0' xml:lang='de' from='a@example.com'/>";
    let want = OpenRequest {
        to: Some("example.com".into()),
        from: Some("a@example.com".into()),
        version: Some("1.0".into()),
        lang: Some("de".into()),
    };
    assert_eq!(cls(text, None).unwrap(), Inbound::Open(want.clone(), Framing::Rfc7395));
    // WS-15: the same on an open connection is a restart.
    assert_eq!(cls(text, Some(Framing::Rfc7395)).unwrap(), Inbound::Open(want, Framing::Rfc7395));
}

#[test]
fn xml_declaration_is_tolerated_ws08() {
    let text = format!("<?xml version='1.0'?>\n{OPEN}");
    assert!(matches!(cls(&text, None).unwrap(), Inbound::Open(..)));
    assert_eq!(cls("<?xml version='1.0'?>", None).unwrap(), Inbound::Nothing);
}

#[test]
fn whitespace_only_is_nothing_ws21() {
    for t in ["", " ", "\r\n\t "] {
        assert_eq!(cls(t, Some(Framing::Rfc7395)).unwrap(), Inbound::Nothing, "{t:?}");
    }
}

#[test]
fn close_is_recognised() {
    assert_eq!(cls(CLOSE, Some(Framing::Rfc7395)).unwrap(), Inbound::Close);
    assert_eq!(cls("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>", Some(Framing::Rfc7395)).unwrap(), Inbound::Close);
}

#[test]
fn open_outside_framing_namespace_is_invalid_namespace_ws09() {
    let cases = [
        "<open xmlns='jabber:client' to='example.com' version='1.0'/>",
        "<open to='example.com' version='1.0'/>",
        "<close xmlns='jabber:client'/>",
    ];
    for t in cases {
        assert_eq!(condition(cls(t, None)), "invalid-namespace", "{t}");
    }
}

#[test]
fn legacy_header_selects_legacy_framing() {
    let t = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>";
    match cls(t, None).unwrap() {
        Inbound::Open(r, Framing::Legacy) => assert_eq!(r.to.as_deref(), Some("example.com")),
        other => panic!("{other:?}"),
    }
    // Off by configuration, or on an RFC 7395 connection: invalid-namespace (WS-09).
    assert_eq!(condition(classify(t, None, false, &limits())), "invalid-namespace");
    assert_eq!(condition(cls(t, Some(Framing::Rfc7395))), "invalid-namespace");
    // The legacy footer closes a legacy stream only.
    assert_eq!(cls("</stream:stream>", Some(Framing::Legacy)).unwrap(), Inbound::Close);
    assert_eq!(condition(cls("</stream:stream>", Some(Framing::Rfc7395))), "invalid-namespace");
}

#[test]
fn legacy_stanzas_inherit_the_client_namespace() {
    match cls("<message to='b@example.com'><body>hi</body></message>", Some(Framing::Legacy)).unwrap() {
        Inbound::Element(el) => assert_eq!(el.ns, ns::CLIENT),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unqualified_stanza_is_kept_for_relay_to_fix_ws23() {
    match cls("<message to='b@example.com'><body>hi</body></message>", Some(Framing::Rfc7395)).unwrap() {
        Inbound::Element(el) => {
            assert_eq!(el.ns, "");
            let fixed = crate::relay::from_client(el).unwrap();
            assert_eq!(fixed.ns, ns::CLIENT);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_messages_get_stream_conditions_ws07() {
    let f = Some(Framing::Rfc7395);
    let cases: &[(&str, &str)] = &[
        ("<message/><message/>", "not-well-formed"),
        ("<message>", "not-well-formed"),
        ("hello", "not-well-formed"),
        ("<message><!-- c --></message>", "restricted-xml"),
        ("<!DOCTYPE x [<!ENTITY a 'b'>]><message/>", "restricted-xml"),
        ("<message>&foo;</message>", "restricted-xml"),
        ("<?pi x?><message/>", "restricted-xml"),
        ("<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>", "invalid-namespace"),
    ];
    for (t, want) in cases {
        let got = condition(cls(t, f));
        // The XML layer decides between not-well-formed and restricted-xml for some inputs;
        // either is a stream error that ends the session.
        assert!(
            got == *want || (matches!(*want, "restricted-xml" | "not-well-formed") && matches!(got, "restricted-xml" | "not-well-formed")),
            "{t}: got {got}, want {want}"
        );
    }
}

#[test]
fn oversize_message_is_policy_violation_ws25() {
    let big = format!("<message><body>{}</body></message>", "x".repeat(5000));
    let r = cls(&big, Some(Framing::Rfc7395));
    assert!(matches!(r, Err(Error::ClientXml(XmlError::TooLarge(_)))), "{r:?}");
    assert_eq!(condition(r), "policy-violation");
}

#[test]
fn our_open_is_what_strophe_and_gloox_expect_ws12() {
    let r = Reply { from: "example.com".into(), id: "a'b<c".into(), lang: "en".into() };
    let s = message::open(&r);
    assert!(s.starts_with("<open "), "{s}");
    let el = parse_document(s.as_bytes(), &Limits::default(), &[]).unwrap();
    assert!(el.is("open", ns::FRAMING));
    assert_eq!(el.attr("version"), Some("1.0"));
    assert_eq!(el.attr("from"), Some("example.com"));
    assert_eq!(el.attr("id"), Some("a'b<c"));
    assert_eq!(el.attr_ns(ns::XML, "lang"), Some("en"));
    assert!(s.contains(r#"xmlns="urn:ietf:params:xml:ns:xmpp-framing""#));
    assert!(!s.starts_with("<?xml"));
}

#[test]
fn legacy_open_declares_both_namespaces() {
    let r = Reply { from: "example.com".into(), id: "x".into(), lang: "en".into() };
    let s = message::legacy_open(&r);
    assert!(s.starts_with("<stream:stream ") && s.ends_with('>') && !s.ends_with("/>"));
    let el = parse_document(format!("{s}</stream:stream>").as_bytes(), &Limits::default(), &[]).unwrap();
    assert!(el.is("stream", ns::STREAM));
    assert_eq!(el.attr("id"), Some("x"));
}

#[test]
fn close_is_byte_exact_ws27() {
    assert_eq!(CLOSE, r#"<close xmlns="urn:ietf:params:xml:ns:xmpp-framing" />"#);
    assert_eq!(message::close_for(Framing::Legacy), "</stream:stream>");
}

/// What xmpp-cm writes to WebSocket clients, byte for byte (double quotes, escaped values).
#[test]
fn originated_messages_are_byte_exact() {
    let r = Reply { from: "example.com".into(), id: "a'b<c".into(), lang: "en".into() };
    assert_eq!(
        message::open(&r),
        r#"<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" from="example.com" id="a&apos;b&lt;c" version="1.0" xml:lang="en"/>"#
    );
    assert_eq!(
        message::open_for(Framing::Legacy, &r),
        r#"<stream:stream xmlns="jabber:client" xmlns:stream="http://etherx.jabber.org/streams" from="example.com" id="a&apos;b&lt;c" version="1.0" xml:lang="en">"#
    );
    assert_eq!(
        message::close_redirect("wss://o.example/x?a=1&b=\"2\""),
        r#"<close xmlns="urn:ietf:params:xml:ns:xmpp-framing" see-other-uri="wss://o.example/x?a=1&amp;b=&quot;2&quot;" />"#
    );
    assert_eq!(
        message::stream_error("host-unknown"),
        r#"<stream:error xmlns:stream="http://etherx.jabber.org/streams"><host-unknown xmlns="urn:ietf:params:xml:ns:xmpp-streams"/></stream:error>"#
    );
    assert_eq!(
        message::see_other_host("wss://o.example:5281/ws"),
        r#"<stream:error xmlns:stream="http://etherx.jabber.org/streams"><see-other-host xmlns="urn:ietf:params:xml:ns:xmpp-streams">o.example:5281</see-other-host></stream:error>"#
    );
}

#[test]
fn stream_errors_declare_stream_prefix_and_condition_ns_ws06_ws18() {
    let s = message::stream_error("host-unknown");
    let el = parse_document(s.as_bytes(), &Limits::default(), &[]).unwrap();
    assert!(el.is("error", ns::STREAM));
    assert!(el.child("host-unknown", ns::STREAMS_ERR).is_some());
    assert!(s.contains(r#"<host-unknown xmlns="urn:ietf:params:xml:ns:xmpp-streams"/>"#), "{s}");
    assert!(message::stream_error("<evil/>").contains("undefined-condition"));
}

#[test]
fn every_ending_maps_through_error() {
    // The conditions this transport relies on, all from Error::stream_condition.
    assert_eq!(Error::HostUnknown.stream_condition(), Some("host-unknown"));
    assert_eq!(Error::ClientGone.stream_condition(), Some("connection-timeout"));
    assert_eq!(Error::Shutdown.stream_condition(), Some("system-shutdown"));
    assert_eq!(Error::UpstreamLost("x".into()).stream_condition(), Some("remote-connection-failed"));
    assert_eq!(Error::ClientTerminate.stream_condition(), None);
    assert_eq!(Error::UpstreamClosed.stream_condition(), None);
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    h
}

#[test]
fn handshake_requires_xmpp_ws01_ws02() {
    let c = WsConfig::default();
    assert!(check_handshake(&headers(&[("sec-websocket-protocol", "xmpp")]), &c).is_ok());
    assert!(check_handshake(&headers(&[("sec-websocket-protocol", "chat, xmpp")]), &c).is_ok());
    assert!(check_handshake(&headers(&[("sec-websocket-protocol", "chat"), ("sec-websocket-protocol", "xmpp")]), &c).is_ok());
    for h in [headers(&[]), headers(&[("sec-websocket-protocol", "chat")]), headers(&[("sec-websocket-protocol", "xmpp2")])] {
        assert_eq!(check_handshake(&h, &c).unwrap_err().0, StatusCode::BAD_REQUEST);
    }
}

#[test]
fn handshake_checks_origin() {
    let c = WsConfig { allowed_origins: vec!["https://chat.example.com".into()], ..WsConfig::default() };
    let ok = headers(&[("sec-websocket-protocol", "xmpp"), ("origin", "https://chat.example.com")]);
    assert!(check_handshake(&ok, &c).is_ok());
    for o in [Some("https://evil.example"), None] {
        let mut h = headers(&[("sec-websocket-protocol", "xmpp")]);
        if let Some(o) = o {
            h.insert("origin", HeaderValue::from_static(o).clone());
        }
        assert_eq!(check_handshake(&h, &c).unwrap_err().0, StatusCode::FORBIDDEN);
    }
}

#[test]
fn tungstenite_errors_map_to_faults() {
    use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
    use tokio_tungstenite::tungstenite::Error as T;
    let cases = [
        (T::Utf8("bad".into()), ReadFault::Utf8),
        (T::Capacity(CapacityError::MessageTooLong { size: 10, max_size: 5 }), ReadFault::TooBig),
        (T::Protocol(ProtocolError::UnmaskedFrameFromClient), ReadFault::Protocol),
        (T::Protocol(ProtocolError::ResetWithoutClosingHandshake), ReadFault::Lost),
        (T::Io(std::io::Error::other("reset")), ReadFault::Lost),
        (T::ConnectionClosed, ReadFault::Lost),
    ];
    for (e, want) in cases {
        let msg = e.to_string();
        assert_eq!(read_fault(&axum::Error::new(e)), want, "{msg}");
    }
}

/// A socket that never yields and accepts everything: enough to size the session future.
struct NullSocket;

impl futures_util::Stream for NullSocket {
    type Item = Result<super::FromClient, axum::Error>;
    fn poll_next(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Pending
    }
}

impl futures_util::Sink<axum::extract::ws::Message> for NullSocket {
    type Error = axum::Error;
    fn poll_ready(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), axum::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn start_send(self: std::pin::Pin<&mut Self>, _: axum::extract::ws::Message) -> Result<(), axum::Error> {
        Ok(())
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), axum::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_close(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), axum::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Idle sessions stay small: the session task's future (allocated once per connection, for
/// its whole life) must not be sized by rare states such as connecting.
#[test]
fn session_future_is_small() {
    let state = crate::state::AppState::new(std::sync::Arc::new(crate::Config::default())).unwrap();
    let fut = super::session::Session::new(NullSocket, state, crate::metrics::Transport::WebSocket).run();
    let size = std::mem::size_of_val(&fut);
    eprintln!("session future: {size} bytes");
    // 2,016 bytes before the client rate limit (limits.client_bytes_per_sec), 2,096 with it,
    // 2,128 with the cluster drain point (`drain_at`), 2,144 with the upstream link (its SASL
    // and XEP-0198 flags) and Direct TLS items handed over parsed; 1,248 (issue 17) with
    // `run` keeping one copy of the session, elements queued without an await, the restart
    // header boxed and one timer instead of three.
    assert!(size <= 1248, "session future is {size} bytes");
}

#[test]
fn redirect_close_carries_see_other_uri_ws20() {
    let s = message::close_redirect("wss://other.example/xmpp-websocket?a=1&b=2");
    assert!(s.starts_with("<close "), "{s}");
    let el = parse_document(s.as_bytes(), &Limits::default(), &[]).unwrap();
    assert!(el.is("close", ns::FRAMING));
    assert_eq!(el.attr("see-other-uri"), Some("wss://other.example/xmpp-websocket?a=1&b=2"));
}

/// The `ws_message` fuzz target's properties (fuzz/fuzz_targets/ws_message.rs) in the ordinary
/// test suite: over the committed seeds from real strophe.js traffic, arbitrary text, and seeds
/// with random byte edits (a short, deterministic-per-run stand-in for `cargo fuzz run`).
mod fuzz_smoke {
    use super::*;
    use proptest::prelude::*;

    fn check(sel: u8, text: &str) {
        let framing = match sel % 3 {
            0 => None,
            1 => Some(Framing::Rfc7395),
            _ => Some(Framing::Legacy),
        };
        let legacy = sel & 0x80 != 0;
        let limits = Limits { max_stanza_bytes: 16 * 1024, max_depth: 16, max_attrs: 16, max_name_len: 64 };
        match classify(text, framing, legacy, &limits) {
            Err(_) | Ok(Inbound::Nothing) | Ok(Inbound::Close) => {}
            Ok(Inbound::Open(_, chosen)) => {
                if let Some(f) = framing {
                    assert_eq!(chosen, f, "framing changed: {text}");
                }
                assert!(chosen != Framing::Legacy || legacy, "legacy framing while disabled: {text}");
            }
            Ok(Inbound::Element(el)) => {
                if let Ok(up) = crate::relay::from_client(el.clone()) {
                    let wire = up.to_xml(ns::CLIENT);
                    let back = parse_document(wire.as_bytes(), &Limits::default(), &[("", ns::CLIENT), ("stream", ns::STREAM)]);
                    assert_eq!(back.as_ref(), Ok(&up), "{wire}");
                }
                let down = crate::relay::from_upstream(el).to_xml("");
                assert!(parse_document(down.as_bytes(), &Limits::default(), &[]).is_ok(), "{down}");
            }
        }
    }

    fn seeds() -> Vec<Vec<u8>> {
        crate::fuzz_seeds("ws_message")
    }

    fn run(seed: &[u8]) {
        if let Some((&sel, rest)) = seed.split_first() {
            check(sel, &String::from_utf8_lossy(rest));
        }
    }

    #[test]
    fn seeds_from_real_traffic_hold_the_properties() {
        let seeds = seeds();
        assert!(seeds.len() >= 20, "fuzz/corpus/ws_message/seed-* missing ({} found)", seeds.len());
        let mut elements = 0;
        for s in &seeds {
            run(s);
            let (sel, text) = s.split_first().unwrap();
            let framing = [None, Some(Framing::Rfc7395), Some(Framing::Legacy)][usize::from(sel % 3)];
            if let Ok(Inbound::Element(_)) = classify(std::str::from_utf8(text).unwrap(), framing, sel & 0x80 != 0, &limits()) {
                elements += 1;
            }
        }
        // Real traffic is mostly well-formed stanzas, not errors.
        assert!(elements * 2 > seeds.len(), "{elements} of {} seeds classify as stanzas", seeds.len());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn arbitrary_text(sel in any::<u8>(), text in "[<>/a-z:=' \"\\-]{0,200}") {
            check(sel, &text);
        }

        #[test]
        fn mutated_seeds(pick in any::<prop::sample::Index>(), edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
            let s = crate::mutated_seed("ws_message", pick, &edits);
            prop_assume!(s.is_some());
            run(&s.unwrap_or_default());
        }
    }
}

#[test]
fn see_other_host_names_only_the_host_and_port() {
    for (uri, host) in [
        ("wss://peer.example.test/xmpp-websocket", "peer.example.test"),
        ("ws://peer.example.test:8080/x?y#z", "peer.example.test:8080"),
        ("wss://[2001:db8::1]:443/xmpp-websocket", "[2001:db8::1]:443"),
        ("wss://evil<x>&/", "evilx"),
    ] {
        let e = super::message::see_other_host(uri);
        let el = crate::xml::parse_document(e.as_bytes(), &crate::xml::Limits::default(), &[]).unwrap_or_else(|err| panic!("{uri}: {err}: {e}"));
        let soh = el.elements().next().unwrap();
        assert_eq!((soh.name.as_str(), soh.text()), ("see-other-host", host.to_string()), "{uri}");
    }
}
