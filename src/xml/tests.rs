//! Tests for the xml module: parser refusals and namespaces, serializer, framer, headers.

use super::*;

fn parse(s: &str) -> Result<Element, XmlError> {
    parse_document(s.as_bytes(), &Limits::default(), &[])
}

#[test]
fn smoke_parse() {
    let el = parse("<a xmlns='urn:a'><b/></a>").unwrap();
    assert!(el.is("a", "urn:a"));
}
