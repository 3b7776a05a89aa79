//! Table tests for `relay`: feature filtering, upstream rewrites, client normalisation and
//! refusals, bounces. Inputs are written as XML and parsed the way the transports parse them.

use super::*;
use crate::xml::{parse_document, Limits};

/// Parse as a top-level element of the upstream stream (jabber:client + stream prefix).
fn up(s: &str) -> Element {
    parse_document(s.as_bytes(), &Limits::default(), &[("", ns::CLIENT), ("stream", ns::STREAM)]).unwrap()
}

/// Parse as a child of a BOSH `<body/>` (default namespace httpbind).
fn bosh(s: &str) -> Element {
    parse_document(s.as_bytes(), &Limits::default(), &[("", ns::HTTPBIND)]).unwrap()
}

/// Parse as a standalone WebSocket message (no namespace in scope).
fn ws(s: &str) -> Element {
    parse_document(s.as_bytes(), &Limits::default(), &[]).unwrap()
}

#[test]
fn features_are_filtered() {
    let f = up("<stream:features>\
        <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\
        <compression xmlns='http://jabber.org/features/compress'><method>zlib</method></compression>\
        <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
          <mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>SCRAM-SHA-1</mechanism>\
          <mechanism> SCRAM-SHA-256-PLUS </mechanism><mechanism>PLAIN</mechanism></mechanisms>\
        <sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/></sasl-channel-binding>\
        <sm xmlns='urn:xmpp:sm:3'/><ver xmlns='urn:xmpp:features:rosterver'/>\
        </stream:features>");
    let out = from_upstream(f);
    assert_eq!(
        out.to_xml(""),
        "<stream:features xmlns:stream='http://etherx.jabber.org/streams'>\
         <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>\
         <sm xmlns='urn:xmpp:sm:3'/><ver xmlns='urn:xmpp:features:rosterver'/></stream:features>"
    );
}

#[test]
fn filter_features_leaves_lookalikes() {
    // Same local names in other namespaces are not ours to remove.
    let mut f = up("<stream:features><starttls xmlns='urn:other'/><mechanisms xmlns='urn:other'>\
        <mechanism>X-PLUS</mechanism></mechanisms></stream:features>");
    let before = f.clone();
    filter_features(&mut f);
    assert_eq!(f, before);
}

#[test]
fn upstream_rewrites_table() {
    let cases = [
        // (upstream element, what the client gets, written with to_xml(""))
        (
            "<enabled xmlns='urn:xmpp:sm:3' id='x' resume='true' location='[2001:db8::1]:5222' max='600'/>",
            "<enabled xmlns='urn:xmpp:sm:3' id='x' resume='true' max='600'/>",
        ),
        (
            "<enabled xmlns='urn:xmpp:sm:2' id='x' resume='1' location='10.0.0.1'/>",
            "<enabled xmlns='urn:xmpp:sm:2' id='x' resume='1'/>",
        ),
        (
            "<resumed xmlns='urn:xmpp:sm:3' h='5' previd='x' location='h'/>",
            "<resumed xmlns='urn:xmpp:sm:3' h='5' previd='x'/>",
        ),
        // Not SM: untouched.
        ("<enabled xmlns='urn:other' location='h'/>", "<enabled xmlns='urn:other' location='h'/>"),
        (
            "<message from='a@b' location='x'><body>hi</body></message>",
            "<message xmlns='jabber:client' from='a@b' location='x'><body>hi</body></message>",
        ),
        (
            "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
            "<stream:error xmlns:stream='http://etherx.jabber.org/streams'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(from_upstream(up(input)).to_xml(""), want, "{input}");
    }
}

#[test]
fn client_namespaces_are_normalised() {
    let cases = [
        // BOSH stanza inheriting httpbind: moved to jabber:client, recursively.
        (bosh("<message to='b@x'><body>hi</body></message>"), "<message to='b@x'><body>hi</body></message>"),
        // xmpp.js over WebSocket: no namespace at all.
        (ws("<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>"), "<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>"),
        // Explicit jabber:client: unchanged.
        (ws("<presence xmlns='jabber:client'><show>away</show></presence>"), "<presence><show>away</show></presence>"),
        // Other namespaces pass untouched, including their unqualified-looking children.
        (bosh("<r xmlns='urn:xmpp:sm:3'/>"), "<r xmlns='urn:xmpp:sm:3'/>"),
        (
            bosh("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>"),
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>",
        ),
        // A payload that reset the default namespace to "" inside jabber:client.
        (ws("<message xmlns='jabber:client'><x xmlns=''/></message>"), "<message><x/></message>"),
    ];
    for (input, want) in cases {
        let out = from_client(input.clone()).unwrap();
        let xml = out.to_xml(ns::CLIENT);
        assert_eq!(xml, want, "{input:?}");
        assert!(!xml.contains(ns::HTTPBIND));
    }
    // Prefixed httpbind elements lose the prefix (no prefixes on jabber:client stanzas, UP-23).
    let body = parse_document(
        b"<b:body xmlns:b='http://jabber.org/protocol/httpbind'><b:message/></b:body>",
        &Limits::default(),
        &[],
    )
    .unwrap();
    let msg = body.elements().next().unwrap().clone();
    assert_eq!(from_client(msg).unwrap().to_xml(ns::CLIENT), "<message/>");
}

#[test]
fn client_refusals() {
    let cases = [
        ws("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
        bosh("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
        ws("<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>"),
        ws("<stream:features xmlns:stream='http://etherx.jabber.org/streams'/>"),
        ws("<stream:error xmlns:stream='http://etherx.jabber.org/streams'/>"),
    ];
    for input in cases {
        match from_client(input.clone()) {
            Err(Error::BadRequest(_)) => {}
            other => panic!("{input:?}: {other:?}"),
        }
    }
    match from_client(ws("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")) {
        Err(Error::BadRequest(m)) => assert_eq!(m, "starttls is not relayed"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bounces_table() {
    let cases: [(&str, Option<&str>); 10] = [
        (
            "<message from='a@x/r' to='b@y/r' id='m1' type='chat'><body>hi</body></message>",
            Some("<message xmlns='jabber:client' to='a@x/r' from='b@y/r' id='m1' type='error'><error type='cancel'><recipient-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"),
        ),
        (
            "<message from='a@x' to='b@y'/>",
            Some("<message xmlns='jabber:client' to='a@x' from='b@y' type='error'><error type='cancel'><recipient-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"),
        ),
        (
            "<iq from='a@x' to='b@y/r' id='q' type='get'><query xmlns='jabber:iq:version'/></iq>",
            Some("<iq xmlns='jabber:client' to='a@x' from='b@y/r' id='q' type='error'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"),
        ),
        (
            "<iq from='a@x' to='b@y/r' id='q' type='set'><x xmlns='urn:x'/></iq>",
            Some("<iq xmlns='jabber:client' to='a@x' from='b@y/r' id='q' type='error'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"),
        ),
        ("<message from='a@x' to='b@y' type='error'><error type='cancel'/></message>", None),
        ("<iq from='a@x' to='b@y' id='q' type='result'/>", None),
        ("<iq from='a@x' to='b@y' id='q' type='error'/>", None),
        ("<presence from='a@x' to='b@y'/>", None),
        ("<presence from='a@x' to='b@y' type='subscribe'/>", None),
        ("<r xmlns='urn:xmpp:sm:3'/>", None),
    ];
    for (input, want) in cases {
        let got = bounce(&up(input)).map(|e| e.to_xml(""));
        assert_eq!(got.as_deref(), want, "{input}");
    }
}
