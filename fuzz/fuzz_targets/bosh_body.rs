//! The BOSH request-body parser (`bosh::body::parse`) on arbitrary bytes: never panics; what it
//! accepts has a rid in 1..=2^53-1, and every payload, serialized as xmpp-cm sends it upstream
//! (inside a `jabber:client` stream), parses back to the same element.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmpp_cm_fuzz::bosh_body::{parse, MAX_RID};
use xmpp_cm_fuzz::xml::{ns, parse_document, Limits};

fuzz_target!(|data: &[u8]| {
    // Small limits so the depth/attribute/size refusals are reached too.
    let limits = Limits { max_stanza_bytes: 16 * 1024, max_depth: 16, max_attrs: 16, max_name_len: 64 };
    let Ok(req) = parse(data, &limits) else { return };
    assert!(req.rid >= 1 && req.rid <= MAX_RID, "rid {}", req.rid);
    let inherited = [("", ns::CLIENT), ("stream", ns::STREAM)];
    for el in &req.payloads {
        assert!(!el.ns.is_empty(), "unqualified payload left: {el:?}");
        let wire = el.to_xml(ns::CLIENT);
        let back = parse_document(wire.as_bytes(), &Limits::default(), &inherited);
        assert_eq!(back.as_ref(), Ok(el), "{wire}");
    }
});
