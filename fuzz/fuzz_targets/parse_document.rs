//! parse_document on arbitrary bytes: never panics, and whatever it accepts survives
//! serialize → parse unchanged (the serializer's output is self-contained).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmpp_cm_fuzz::xml::{ns, parse_document, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let inherited = [("", ns::CLIENT), ("stream", ns::STREAM)];
    if let Ok(el) = parse_document(data, &limits, &inherited) {
        let standalone = el.to_xml("");
        let back = parse_document(standalone.as_bytes(), &limits, &[]);
        assert_eq!(back.as_ref(), Ok(&el), "{standalone}");
        let in_stream = el.to_xml(ns::CLIENT);
        let back = parse_document(in_stream.as_bytes(), &limits, &inherited);
        assert_eq!(back.as_ref(), Ok(&el), "{in_stream}");
    }
});
