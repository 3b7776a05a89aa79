//! Table tests for the body parser and response writer (BOSH-S-02, BOSH-S-07, BOSH-S-17,
//! BOSH-R-24, XBOSH-09, XBOSH-14, SEC-02), plus proptest: parsing never panics.

use super::*;
use proptest::prelude::*;

const NS: &str = "xmlns='http://jabber.org/protocol/httpbind'";

fn limits() -> Limits {
    Limits::default()
}

fn p(s: &str) -> Result<Request, Error> {
    parse(s.as_bytes(), &limits())
}

fn cond(s: &str) -> Option<&'static str> {
    p(s).err().and_then(|e| e.bosh_condition())
}

#[test]
fn strophe_session_request() {
    let r = p(&format!(
        "<body rid='4129412421' {NS} to='localhost' xml:lang='en' wait='59' hold='1' \
         content='text/xml; charset=utf-8' ver='1.6' xmpp:version='1.0' xmlns:xmpp='urn:xmpp:xbosh'/>"
    ))
    .unwrap();
    assert_eq!(r.rid, 4129412421);
    assert_eq!(r.sid, None);
    assert_eq!(r.to.as_deref(), Some("localhost"));
    assert_eq!(r.lang.as_deref(), Some("en"));
    assert_eq!((r.wait, r.hold), (Some(59), Some(1)));
    assert_eq!(r.ver, Some((1, 6)));
    assert_eq!(r.xmpp_version.as_deref(), Some("1.0"));
    assert_eq!(r.content.as_deref(), Some("text/xml; charset=utf-8"));
    assert!(r.payloads.is_empty() && !r.restart && !r.terminate);
}

#[test]
fn bad_requests_table() {
    // BOSH-S-02, BOSH-R-24: each is bad-request, nothing is forwarded.
    let cases = [
        "<foo rid='1'/>".to_string(),
        "<body xmlns='urn:x' rid='1'/>".to_string(),
        format!("<body {NS}/>"),
        format!("<body {NS} rid='abc'/>"),
        format!("<body {NS} rid='-5'/>"),
        format!("<body {NS} rid='+5'/>"),
        format!("<body {NS} rid='0'/>"),
        format!("<body {NS} rid='9007199254740992'/>"),
        format!("<body {NS} rid='9007199254740993'/>"),
        format!("<body {NS} rid='1' wait='x'/>"),
        format!("<body {NS} rid='1' ver='1'/>"),
        format!("<body {NS} rid='1' type='bogus'/>"),
        format!("<body {NS} rid='1'>bare text</body>"),
        format!("<body {NS} rid='1'><!--x--></body>"),
        format!("<body {NS} rid='1'><?pi x?></body>"),
        format!("<body {NS} rid='1'><message>&custom;</message></body>"),
        format!("<!DOCTYPE body [<!ENTITY a 'b'>]><body {NS} rid='1'/>"),
        format!("<body {NS} rid='1'><message>"),
        format!("<body {NS} rid='1'><message>&#x1;</message></body>"),
        format!("<body {NS} rid='1'/><body {NS} rid='2'/>"),
        format!("<body {NS} rid='1' xmpp:restart='maybe' xmlns:xmpp='urn:xmpp:xbosh'/>"),
        format!("<body {NS} rid='1'><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></body>"),
        "".to_string(),
        "not xml".to_string(),
    ];
    for c in &cases {
        assert_eq!(cond(c), Some("bad-request"), "{c}");
    }
}

#[test]
fn largest_rid_is_accepted() {
    assert_eq!(p(&format!("<body {NS} rid='9007199254740991'/>")).unwrap().rid, MAX_RID);
    assert_eq!(p(&format!("<body {NS} rid='1'/>")).unwrap().rid, 1);
}

#[test]
fn ver_is_compared_as_integers() {
    assert_eq!(parse_ver("1.10"), Some((1, 10)));
    assert!(parse_ver("1.10").unwrap() > parse_ver("1.9").unwrap());
    for bad in ["1", "1.", ".1", "a.b", "1.2.3", "-1.0"] {
        assert_eq!(parse_ver(bad), None, "{bad}");
    }
}

#[test]
fn restart_matched_by_namespace_not_prefix() {
    // BOSH-S-17, XBOSH-09: any prefix bound to urn:xmpp:xbosh; both boolean spellings.
    for (attr, want) in [
        ("x:restart='true' xmlns:x='urn:xmpp:xbosh'", true),
        ("xmpp:restart='1' xmlns:xmpp='urn:xmpp:xbosh'", true),
        ("xmpp:restart='false' xmlns:xmpp='urn:xmpp:xbosh'", false),
        ("xmpp:restart='true' xmlns:xmpp='urn:other'", false),
    ] {
        let r = p(&format!("<body {NS} rid='5' sid='s' {attr}/>")).unwrap();
        assert_eq!(r.restart, want, "{attr}");
    }
}

#[test]
fn unqualified_stanzas_become_jabber_client() {
    // XBOSH-14: children in the httpbind namespace (by inheritance) are jabber:client upstream.
    let r = p(&format!(
        "<body {NS} rid='5' sid='s' xmlns:x='urn:t'><message to='bob@localhost'><body>hi &amp; &lt;3</body><x:y/></message>\
         <iq xmlns='jabber:client' type='get' id='1'/><r xmlns='urn:xmpp:sm:3'/></body>"
    ))
    .unwrap();
    assert_eq!(r.payloads.len(), 3);
    let m = &r.payloads[0];
    assert_eq!((m.name.as_str(), m.ns.as_str()), ("message", "jabber:client"));
    let out = m.to_xml("jabber:client");
    assert!(!out.contains("httpbind"), "{out}");
    assert!(out.contains("xmlns:x='urn:t'"), "prefix re-declared: {out}");
    assert!(out.contains("hi &amp; &lt;3"), "{out}");
    assert_eq!(r.payloads[1].ns, "jabber:client");
    assert_eq!(r.payloads[2].ns, "urn:xmpp:sm:3");
}

#[test]
fn terminate_and_pause_and_keys() {
    let r = p(&format!("<body {NS} rid='7' sid='s' type='terminate' pause='30' key='abc' newkey='def' ack='6'><presence type='unavailable'/></body>")).unwrap();
    assert!(r.terminate);
    assert_eq!(r.pause, Some(30));
    assert_eq!((r.key.as_deref(), r.newkey.as_deref(), r.ack), (Some("abc"), Some("def"), Some(6)));
    assert_eq!(r.payloads.len(), 1);
}

#[test]
fn response_bodies() {
    assert_eq!(ResponseBody::new().to_xml(), "<body xmlns='http://jabber.org/protocol/httpbind'/>");
    assert_eq!(
        ResponseBody::terminate(Some("item-not-found")).to_xml(),
        "<body xmlns='http://jabber.org/protocol/httpbind' type='terminate' condition='item-not-found'/>"
    );
    let b = ResponseBody::new().attr("sid", "a'b").attr("xmpp:version", "1.0").to_xml();
    assert_eq!(b, "<body xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh' sid='a&apos;b' xmpp:version='1.0'/>");
    // A body with payload declares the stream prefix (BOSH-S-26) and parses namespace-aware.
    let f = crate::xml::parse_document(
        b"<stream:features xmlns:stream='http://etherx.jabber.org/streams'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>",
        &limits(),
        &[],
    )
    .unwrap();
    let mut rb = ResponseBody::new();
    rb.push_elements(std::iter::once(&f));
    let xml = rb.to_xml();
    let back = crate::xml::parse_document(xml.as_bytes(), &limits(), &[]).unwrap();
    let feat = back.elements().next().unwrap();
    assert!(feat.is("features", crate::xml::ns::STREAM));
}

proptest! {
    #[test]
    fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&bytes, &limits());
    }

    #[test]
    fn rid_roundtrip(rid in 1u64..=MAX_RID) {
        let r = p(&format!("<body {NS} rid='{rid}'/>")).unwrap();
        prop_assert_eq!(r.rid, rid);
    }
}

/// The `bosh_body` fuzz target's properties (fuzz/fuzz_targets/bosh_body.rs) in the ordinary
/// test suite, over the committed seeds from real strophe.js traffic and mutations of them.
mod fuzz_smoke {
    use super::*;
    use crate::xml::{ns, parse_document, Limits};

    fn check(data: &[u8]) -> bool {
        let limits = Limits { max_stanza_bytes: 16 * 1024, max_depth: 16, max_attrs: 16, max_name_len: 64 };
        let Ok(req) = parse(data, &limits) else { return false };
        assert!(req.rid >= 1 && req.rid <= MAX_RID);
        for el in &req.payloads {
            assert!(!el.ns.is_empty(), "{el:?}");
            let wire = el.to_xml(ns::CLIENT);
            let back = parse_document(wire.as_bytes(), &Limits::default(), &[("", ns::CLIENT), ("stream", ns::STREAM)]);
            assert_eq!(back.as_ref(), Ok(el), "{wire}");
        }
        true
    }

    fn seeds() -> Vec<Vec<u8>> {
        crate::fuzz_seeds("bosh_body")
    }

    #[test]
    fn seeds_from_real_traffic_hold_the_properties() {
        let seeds = seeds();
        assert!(seeds.len() >= 20, "fuzz/corpus/bosh_body/seed-* missing ({} found)", seeds.len());
        // Every body strophe.js sent (they carry a rid) parses; xmpp-cm's answers (no rid) don't.
        for s in &seeds {
            let sent = String::from_utf8_lossy(s).contains(" rid=");
            assert_eq!(check(s), sent, "{}", String::from_utf8_lossy(s));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn mutated_seeds(pick in any::<prop::sample::Index>(), edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
            let s = crate::mutated_seed("bosh_body", pick, &edits);
            prop_assume!(s.is_some());
            check(&s.unwrap_or_default());
        }
    }
}

/// XEP-0124 §16.4: `stream` is read (an empty value is no stream).
#[test]
fn stream_attribute() {
    assert_eq!(p(&format!("<body {NS} rid='1' sid='s' stream='abc'/>")).unwrap().stream.as_deref(), Some("abc"));
    assert_eq!(p(&format!("<body {NS} rid='1' sid='s' stream=''/>")).unwrap().stream, None);
    assert_eq!(p(&format!("<body {NS} rid='1' sid='s'/>")).unwrap().stream, None);
}
