//! Tests for the xml module: parser refusals and namespace resolution (tables), the serializer,
//! the framer (tables, awkward input, chunking), stream headers, and property tests.

use super::*;
use proptest::prelude::*;

const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";

fn parse(s: &str) -> Result<Element, XmlError> {
    parse_document(s.as_bytes(), &Limits::default(), &[])
}

fn nwf() -> XmlError {
    XmlError::NotWellFormed(String::new())
}

/// Compare errors by variant (and by the static text of `Restricted`), not by free text.
fn same_error(a: &XmlError, b: &XmlError) -> bool {
    match (a, b) {
        (XmlError::Restricted(x), XmlError::Restricted(y)) => x == y,
        _ => std::mem::discriminant(a) == std::mem::discriminant(b),
    }
}

// ---------------------------------------------------------------- parse_document: refusals

#[test]
fn parse_refusals() {
    let small = Limits { max_stanza_bytes: 64, max_depth: 3, max_attrs: 2, max_name_len: 8 };
    let deep = "<a><a><a><a/></a></a></a>"; // depth 4
    let cases: &[(&[u8], Limits, XmlError)] = &[
        (b"<!DOCTYPE a><a/>", Limits::default(), XmlError::Restricted("DOCTYPE")),
        (
            b"<!DOCTYPE l [<!ENTITY lol 'lol'><!ENTITY l2 '&lol;&lol;'>]><a>&l2;</a>",
            Limits::default(),
            XmlError::Restricted("DOCTYPE"),
        ),
        (b"<a><!--x--></a>", Limits::default(), XmlError::Restricted("comment")),
        (b"<!--x--><a/>", Limits::default(), XmlError::Restricted("comment")),
        (b"<a/><!--x-->", Limits::default(), XmlError::Restricted("comment")),
        (b"<a><?pi x?></a>", Limits::default(), XmlError::Restricted("processing instruction")),
        (b"<?xml-stylesheet href='x'?><a/>", Limits::default(), XmlError::Restricted("processing instruction")),
        (b"<a/><?xml version='1.0'?>", Limits::default(), XmlError::Restricted("processing instruction")),
        (b"<?xml version='1.0'?><?xml version='1.0'?><a/>", Limits::default(), XmlError::Restricted("processing instruction")),
        (b"<a>&custom;</a>", Limits::default(), XmlError::Restricted("entity reference")),
        (b"<a b='&custom;'/>", Limits::default(), XmlError::Restricted("entity reference")),
        (b"<a>&#x1;</a>", Limits::default(), nwf()),
        (b"<a>&#0;</a>", Limits::default(), nwf()),
        (b"<a>&#xFFFE;</a>", Limits::default(), nwf()),
        (b"<a>&#xD800;</a>", Limits::default(), nwf()),
        (b"<a>&#x110000;</a>", Limits::default(), nwf()),
        (b"<a>&#99999999999999999999;</a>", Limits::default(), nwf()),
        (b"<a b='&#x1;'/>", Limits::default(), nwf()),
        (b"<a>&#xZZ;</a>", Limits::default(), nwf()),
        (b"<a>\x01</a>", Limits::default(), nwf()),
        (b"<a b='\x1b'/>", Limits::default(), nwf()),
        (b"<a>\xff</a>", Limits::default(), XmlError::InvalidUtf8),
        (b"<a>\xe2\x82</a>", Limits::default(), XmlError::InvalidUtf8),
        // Raw characters XML 1.0 forbids, outside ASCII (the bytewise ASCII check skips them).
        ("<a>\u{FFFE}</a>".as_bytes(), Limits::default(), nwf()),
        ("<a b='é\u{FFFF}'/>".as_bytes(), Limits::default(), nwf()),
        (b"<x:a/>", Limits::default(), XmlError::UnboundPrefix),
        (b"<a x:b='1'/>", Limits::default(), XmlError::UnboundPrefix),
        (b"<a><x:b xmlns:x='u'/><x:c/></a>", Limits::default(), XmlError::UnboundPrefix),
        (&[b' '; 65], small, XmlError::TooLarge(64)),
        (deep.as_bytes(), small, XmlError::TooDeep(3)),
        (b"<a b='1' c='2' d='3'/>", small, XmlError::TooManyAttrs(2)),
        (b"<a xmlns='u' xmlns:p='v' b='1'/>", small, XmlError::TooManyAttrs(2)),
        (b"<abcdefghi/>", small, XmlError::NameTooLong(8)),
        (b"<a abcdefghi='1'/>", small, XmlError::NameTooLong(8)),
        (b"<a/><b/>", Limits::default(), nwf()),
        (b"x<a/>", Limits::default(), nwf()),
        (b"<a/>x", Limits::default(), nwf()),
        (b"", Limits::default(), nwf()),
        (b"  \n", Limits::default(), nwf()),
        (b"<a>", Limits::default(), nwf()),
        (b"<a><b></a>", Limits::default(), nwf()),
        (b"<a></b>", Limits::default(), nwf()),
        (b"</a>", Limits::default(), nwf()),
        (b"<a>&</a>", Limits::default(), nwf()),
        (b"<a>a & b;</a>", Limits::default(), nwf()),
        (b"<a b='<'/>", Limits::default(), nwf()),
        (b"<a b='1' b='2'/>", Limits::default(), nwf()),
        (b"<a xmlns:p='u' xmlns:q='u' p:x='1' q:x='2'/>", Limits::default(), nwf()),
        (b"<a xmlns:p=''/>", Limits::default(), nwf()),
        (b"<a xmlns:xml='urn:x'/>", Limits::default(), nwf()),
        (b"<xmlns:a xmlns:xmlns='urn:x'/>", Limits::default(), nwf()),
        (b"<1a/>", Limits::default(), nwf()),
        (b"<a:b:c xmlns:a='u'/>", Limits::default(), nwf()),
        (b"<a b/>", Limits::default(), nwf()),
        (b"<a>]]></a>", Limits::default(), nwf()),
        (b"<a><![CDATA[x</a>", Limits::default(), nwf()),
        (b"<?xml version='1.1'?><a/>", Limits::default(), nwf()),
        (b"<?xml version='1.0' encoding='ISO-8859-1'?><a/>", Limits::default(), nwf()),
    ];
    for (input, limits, want) in cases {
        let got = parse_document(input, limits, &[]);
        match &got {
            Err(e) if same_error(e, want) => {}
            other => panic!("{:?}: want {want:?}, got {other:?}", String::from_utf8_lossy(input)),
        }
    }
}

#[test]
fn error_messages_do_not_echo_input() {
    for input in ["<secret></other>", "<a secret='1' secret='2'/>", "<a>&secret;</a>", "<secret"] {
        let e = parse(input).unwrap_err();
        assert!(!e.to_string().contains("secret") && !e.to_string().contains("other"), "{e}");
    }
}

#[test]
fn deep_nesting_is_refused_fast() {
    let input = "<a>".repeat(10_000);
    assert_eq!(parse(&input), Err(XmlError::TooDeep(64)));
}

// ---------------------------------------------------------------- parse_document: accepted

#[test]
fn parse_accepts_declaration_whitespace_and_cdata() {
    let el = parse("<?xml version='1.0' encoding='UTF-8'?>\n<a><![CDATA[<b>&amp;</b>]]></a>\n ").unwrap();
    assert_eq!(el.text(), "<b>&amp;</b>");
    // CDATA and text merge into one text node.
    let el = parse("<a>x<![CDATA[y]]>z</a>").unwrap();
    assert_eq!(el.children, vec![Node::Text("xyz".into())]);
}

#[test]
fn parse_unescapes_text_and_attributes() {
    let el = parse("<a t='&lt;&#x41;&#66;&apos;&quot;&amp;' n='a\tb\nc\r\nd'>&amp;&lt;&gt;&apos;&quot;&#x1F600;&#233; \u{e9}</a>")
        .unwrap();
    assert_eq!(el.attr("t"), Some("<AB'\"&"));
    assert_eq!(el.attr("n"), Some("a b c d"));
    assert_eq!(el.text(), "&<>'\"\u{1F600}\u{e9} \u{e9}");
    let el = parse("<a>x\r\ny\rz</a>").unwrap();
    assert_eq!(el.text(), "x\ny\nz");
}

#[test]
fn parse_resolves_namespaces() {
    let inherited = [("", ns::CLIENT), ("stream", ns::STREAM)];
    let l = Limits::default();
    let f = parse_document(
        b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><x/></stream:features>",
        &l,
        &inherited,
    )
    .unwrap();
    assert!(f.is("features", ns::STREAM));
    assert_eq!(f.prefix.as_deref(), Some("stream"));
    assert!(f.child("bind", BIND).is_some());
    assert!(f.child("x", ns::CLIENT).is_some(), "unprefixed child inherits the default namespace");

    let m = parse_document(
        b"<message xml:lang='en' to='a@b'><body>x</body><p:y xmlns:p='urn:p' p:k='v'><z xmlns=''/></p:y></message>",
        &l,
        &inherited,
    )
    .unwrap();
    assert!(m.is("message", ns::CLIENT));
    assert_eq!(m.attr_ns(ns::XML, "lang"), Some("en"));
    assert_eq!(m.attr("lang"), None);
    assert_eq!(m.attr("to"), Some("a@b"));
    assert!(m.child("body", ns::CLIENT).is_some());
    let y = m.child("y", "urn:p").unwrap();
    assert_eq!(y.attr_ns("urn:p", "k"), Some("v"));
    assert_eq!(y.attr("k"), None);
    assert!(y.child("z", "").is_some(), "xmlns='' undeclares the default");
    assert!(m.attrs.iter().all(|a| a.name != "xmlns" && a.prefix.as_deref() != Some("xmlns")));

    // Shadowing: an inner declaration of the same prefix wins, and ends with its element.
    let s = parse("<p:a xmlns:p='u1'><p:b xmlns:p='u2'/><p:c/></p:a>").unwrap();
    let kids: Vec<_> = s.elements().map(|e| e.ns.as_str()).collect();
    assert_eq!(kids, ["u2", "u1"]);

    // Without inherited bindings an unprefixed root has no namespace.
    assert_eq!(parse("<message/>").unwrap().ns, "");
}

#[test]
fn parse_returns_root_bindings() {
    let (el, b) = parse_document_with_bindings(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'/>",
        &Limits::default(),
        &[],
    )
    .unwrap();
    assert!(el.is("stream", ns::STREAM));
    assert_eq!(b, vec![(String::new(), ns::CLIENT.to_owned()), ("stream".to_owned(), ns::STREAM.to_owned())]);
}

// ---------------------------------------------------------------- element helpers, serializer

#[test]
fn element_helpers() {
    let mut e = Element::new("iq", ns::CLIENT)
        .with_attr("type", "get")
        .with_child(Element::new("query", "urn:q"))
        .with_text("a")
        .with_child(Element::new("query", "urn:r").with_text("in"))
        .with_text("b");
    assert!(e.is("iq", ns::CLIENT));
    assert_eq!(e.attr("type"), Some("get"));
    e.set_attr("type", "set");
    e.set_attr("id", "1");
    assert_eq!(e.attr("type"), Some("set"));
    assert_eq!(e.remove_attr("id").as_deref(), Some("1"));
    assert_eq!(e.remove_attr("id"), None);
    assert_eq!(e.elements().count(), 2);
    assert_eq!(e.text(), "ab");
    assert_eq!(e.child("query", "urn:r").map(|q| q.text()).as_deref(), Some("in"));
    e.child_mut("query", "urn:q").unwrap().set_attr("x", "1");
    assert_eq!(e.child("query", "urn:q").unwrap().attr("x"), Some("1"));
    assert!(e.child("query", "urn:none").is_none());
}

#[test]
fn serializer_is_self_contained() {
    let inherited = [("", ns::CLIENT), ("stream", ns::STREAM)];
    let l = Limits::default();
    let f = parse_document(b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>", &l, &inherited)
        .unwrap();
    assert_eq!(
        f.to_xml(""),
        "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
    );
    let m = parse_document(b"<message to='a@b' xml:lang='en'><body>x</body><x xmlns='urn:x'><y/></x></message>", &l, &inherited)
        .unwrap();
    assert_eq!(
        m.to_xml(""),
        "<message xmlns='jabber:client' to='a@b' xml:lang='en'><body>x</body><x xmlns='urn:x'><y/></x></message>"
    );
    assert_eq!(
        m.to_xml(ns::CLIENT),
        "<message to='a@b' xml:lang='en'><body>x</body><x xmlns='urn:x'><y/></x></message>"
    );
    // A prefix declared on an ancestor that is not serialized is re-declared (XBOSH-15).
    let body = parse(
        "<body xmlns='http://jabber.org/protocol/httpbind' xmlns:x='urn:t'><message xmlns='jabber:client'><x:y x:a='1'/></message></body>",
    )
    .unwrap();
    let msg = body.elements().next().unwrap();
    assert_eq!(msg.to_xml(ns::CLIENT), "<message><x:y xmlns:x='urn:t' x:a='1'/></message>");
    // Back to no namespace inside a namespaced parent.
    let e = Element::new("a", "urn:a").with_child(Element::new("b", ""));
    assert_eq!(e.to_xml(""), "<a xmlns='urn:a'><b xmlns=''/></a>");
}

#[test]
fn serializer_escapes() {
    let e = Element::new("a", "").with_attr("v", "'\"&<>\t\n\r").with_text("&<>\"'\r]]>");
    let s = e.to_xml("");
    assert_eq!(s, "<a v='&apos;&quot;&amp;&lt;>&#9;&#10;&#13;'>&amp;&lt;&gt;\"'&#13;]]&gt;</a>");
    assert_eq!(parse(&s).unwrap(), e);
}

#[test]
fn names_ascii_fast_path_and_unicode() {
    for ok in ["<a-b.c_1/>", "<_x/>", "<é/>", "<x:é xmlns:x='u'/>", "<a Ünï.cødé='1'/>", "<a b-1.c='1'/>"] {
        assert!(parse(ok).is_ok(), "{ok}");
    }
    for bad in ["<1a/>", "<-a/>", "<.a/>", "<a 9='1'/>", "<a b:c:d='1' xmlns:b='u'/>", "<a$/>", "<x:/>"] {
        assert!(parse(bad).is_err(), "{bad}");
    }
    // Text and attribute values with multibyte characters come back intact.
    let e = parse("<a v='ü&amp;é'>ß&lt;€</a>").unwrap();
    assert_eq!(e.attr("v"), Some("ü&é"));
    assert_eq!(e.text(), "ß<€");
}

#[test]
fn serializer_escapes_around_multibyte_characters() {
    let e = Element::new("a", "").with_attr("v", "é&ü'\u{1F600}").with_text("ß<\u{1F600}>é\r");
    let s = e.to_xml("");
    assert_eq!(s, "<a v='é&amp;ü&apos;\u{1F600}'>ß&lt;\u{1F600}&gt;é&#13;</a>");
    assert_eq!(parse(&s).unwrap(), e);
    // Non-ASCII text that XML allows still parses (C1 controls included).
    assert!(parse("<a>\u{85}é\u{FFFD}</a>").is_ok());
}

#[test]
fn serializer_handles_code_built_odd_cases() {
    // A namespaced attribute without a prefix gets one invented and declared.
    let mut e = Element::new("a", "");
    e.attrs.push(Attr { prefix: None, name: "k".into(), ns: Some("urn:k".into()), value: "v".into() });
    // Namespace declarations stored as attributes are ignored: the serializer owns them.
    e.attrs.push(Attr::new("xmlns", "urn:wrong"));
    let s = e.to_xml("");
    assert_eq!(s, "<a xmlns:ns0='urn:k' ns0:k='v'/>");
    // The same prefix for two namespaces on one element: the attribute gets another prefix.
    let mut e = Element::new("a", "urn:1").with_prefix("p");
    e.attrs.push(Attr { prefix: Some("p".into()), name: "k".into(), ns: Some("urn:2".into()), value: "v".into() });
    let s = e.to_xml("");
    assert_eq!(s, "<p:a xmlns:p='urn:1' xmlns:ns0='urn:2' ns0:k='v'/>");
    let back = parse(&s).unwrap();
    assert!(back.is("a", "urn:1"));
    assert_eq!(back.attr_ns("urn:2", "k"), Some("v"));
    // A prefix with no namespace cannot be declared: written unprefixed.
    let e = Element::new("a", "").with_prefix("p");
    assert_eq!(e.to_xml(""), "<a/>");
}

// ---------------------------------------------------------------- stream header

#[test]
fn stream_header_helpers() {
    assert_eq!(
        client_header("example.com", "en", "1.0", None),
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' xml:lang='en'>"
    );
    assert_eq!(
        client_header("a'b", "en", "1.0", Some("u@<x>")),
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='a&apos;b' from='u@&lt;x>' version='1.0' xml:lang='en'>"
    );
    let el = parse("<stream:stream xmlns:stream='http://etherx.jabber.org/streams' from='d' to='u' id='i' version='1.0' xml:lang='de'/>")
        .unwrap();
    let h = StreamHeader::from_element(&el);
    let want = StreamHeader {
        from: Some("d".into()),
        to: Some("u".into()),
        id: Some("i".into()),
        version: Some("1.0".into()),
        lang: Some("de".into()),
    };
    assert_eq!(h, want);
    assert_eq!(h.validate_server(), Ok(()));
    let cases = [
        StreamHeader { version: None, ..want.clone() },
        StreamHeader { version: Some("0.9".into()), ..want.clone() },
        StreamHeader { id: None, ..want.clone() },
        StreamHeader { id: Some(String::new()), ..want.clone() },
    ];
    for h in cases {
        assert!(h.validate_server().is_err(), "{h:?}");
    }
}

// ---------------------------------------------------------------- writers of stream markup

#[test]
fn write_attr_quotes_and_escapes() {
    use element::{write_attr, Quote};
    let mut s = String::new();
    write_attr(&mut s, "a", "x'y\"z<&\t", Quote::Single);
    write_attr(&mut s, "xml:lang", "en", Quote::Double);
    assert_eq!(s, r#" a='x&apos;y&quot;z&lt;&amp;&#9;' xml:lang="en""#);
}

#[test]
fn write_open_pins_every_header_form() {
    use element::Quote;
    use stream_header::{write_open, Open, CLOSE, DECLARATION};
    let open = |h: Open<'_>, q| {
        let mut s = String::new();
        write_open(&mut s, &h, q);
        s
    };
    // No attribute but the namespaces; every attribute, in the fixed order.
    assert_eq!(
        open(Open::default(), Quote::Single),
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    );
    let all = Open { to: Some("t"), from: Some("f"), id: Some("i"), version: Some("1.0"), lang: Some("en") };
    assert_eq!(
        open(all, Quote::Double),
        r#"<stream:stream xmlns="jabber:client" xmlns:stream="http://etherx.jabber.org/streams" to="t" from="f" id="i" version="1.0" xml:lang="en">"#
    );
    // Direct TLS (passthrough::frame_text): the client's header back, without its id.
    let h = StreamHeader { to: Some("d".into()), id: Some("x".into()), version: Some("1.0".into()), ..Default::default() };
    assert_eq!(
        open(Open { id: None, ..Open::from(&h) }, Quote::Single),
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='d' version='1.0'>"
    );
    assert_eq!(DECLARATION, "<?xml version='1.0'?>");
    assert_eq!(CLOSE, "</stream:stream>");
    // What is written parses as a stream root.
    let doc = format!("{DECLARATION}{}{CLOSE}", open(all, Quote::Single));
    let el = parse(&doc).unwrap();
    assert!(el.is("stream", ns::STREAM));
    assert_eq!(StreamHeader::from_element(&el).id.as_deref(), Some("i"));
}

#[test]
fn write_error_pins_both_scopes() {
    use element::Quote;
    use stream_error::{write_error, Scope};
    let error = |c: &str, content, scope, q| {
        let mut s = String::new();
        write_error(&mut s, c, content, scope, q);
        s
    };
    assert_eq!(
        error("host-unknown", None, Scope::Standalone, Quote::Double),
        r#"<stream:error xmlns:stream="http://etherx.jabber.org/streams"><host-unknown xmlns="urn:ietf:params:xml:ns:xmpp-streams"/></stream:error>"#
    );
    assert_eq!(
        error("see-other-host", Some("h.example:5281"), Scope::Standalone, Quote::Double),
        r#"<stream:error xmlns:stream="http://etherx.jabber.org/streams"><see-other-host xmlns="urn:ietf:params:xml:ns:xmpp-streams">h.example:5281</see-other-host></stream:error>"#
    );
    assert_eq!(
        error("policy-violation", None, Scope::InStream, Quote::Single),
        "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
    );
    assert_eq!(error("a<b", Some("<&"), Scope::InStream, Quote::Single), "<stream:error><undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'>&lt;&amp;</undefined-condition></stream:error>");
    assert!(error("", None, Scope::InStream, Quote::Single).contains("<undefined-condition "));
    let el = parse(&error("conflict", None, Scope::Standalone, Quote::Single)).unwrap();
    assert!(el.is("error", ns::STREAM) && el.child("conflict", ns::STREAMS_ERR).is_some());
}

/// A Direct TLS refusal (`passthrough::refuse`): declaration, header, in-stream error, footer,
/// byte for byte what it has always written.
#[test]
fn refusal_document_is_the_writers_composed() {
    use element::Quote;
    use stream_error::{write_error, Scope};
    use stream_header::{write_open, Open, CLOSE, DECLARATION};
    let mut s = String::from(DECLARATION);
    write_open(&mut s, &Open { version: Some("1.0"), ..Default::default() }, Quote::Single);
    write_error(&mut s, "policy-violation", None, Scope::InStream, Quote::Single);
    s.push_str(CLOSE);
    assert_eq!(
        s,
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>\
         <stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
    );
}

// ---------------------------------------------------------------- framer

const HDR: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' from='example.com' id='s1' version='1.0' xml:lang='en'>";

/// Feed `chunks` one by one, draining frames after each; stops at the first error.
fn run(framer: &mut Framer, chunks: &[&[u8]]) -> (Vec<Frame>, Option<XmlError>) {
    let mut frames = Vec::new();
    for c in chunks {
        framer.feed(c);
        loop {
            match framer.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fn frames_of(input: &str) -> (Vec<Frame>, Option<XmlError>) {
    run(&mut Framer::new(Limits::default()), &[input.as_bytes()])
}

fn el(frame: &Frame) -> &Element {
    match frame {
        Frame::Element(e) => e,
        other => panic!("expected an element, got {other:?}"),
    }
}

#[test]
fn framer_basic_stream() {
    let input = format!(
        "{HDR}\n <stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features> \n\
         <message to='a@b'><body>hi</body></message>  <r xmlns='urn:xmpp:sm:3'/>\t</stream:stream>"
    );
    let (frames, err) = frames_of(&input);
    assert_eq!(err, None);
    assert_eq!(frames.len(), 5, "{frames:?}");
    match &frames[0] {
        Frame::StreamOpen(h) => {
            assert_eq!(h.id.as_deref(), Some("s1"));
            assert_eq!(h.from.as_deref(), Some("example.com"));
            assert_eq!(h.lang.as_deref(), Some("en"));
            assert_eq!(h.validate_server(), Ok(()));
        }
        other => panic!("{other:?}"),
    }
    assert!(el(&frames[1]).is("features", ns::STREAM));
    assert!(el(&frames[1]).child("bind", BIND).is_some());
    assert!(el(&frames[2]).is("message", ns::CLIENT));
    assert_eq!(el(&frames[2]).to_xml(""), "<message xmlns='jabber:client' to='a@b'><body>hi</body></message>");
    assert!(el(&frames[3]).is("r", ns::SM3));
    assert_eq!(frames[4], Frame::StreamClose);
}

#[test]
fn framer_restart_on_same_socket() {
    let second = HDR.replace("s1", "s2").replace("xmlns:stream", "xmlns:s").replace("stream:stream", "s:stream");
    let input = format!("{HDR}<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>{second}<s:features/><iq type='result' id='1'/></s:stream>");
    let (frames, err) = frames_of(&input);
    assert_eq!(err, None);
    assert_eq!(frames.len(), 6, "{frames:?}");
    assert!(el(&frames[1]).is("success", ns::SASL));
    assert!(matches!(&frames[2], Frame::StreamOpen(h) if h.id.as_deref() == Some("s2")));
    assert!(el(&frames[3]).is("features", ns::STREAM));
    assert!(el(&frames[4]).is("iq", ns::CLIENT));
    assert_eq!(frames[5], Frame::StreamClose);
    // A restart header without a declaration is recognised by its name.
    let input = format!("{HDR}<a/>{}<b/>", &HDR[21..]);
    let (frames, err) = frames_of(&input);
    assert_eq!(err, None);
    assert!(matches!(frames[2], Frame::StreamOpen(_)), "{frames:?}");
    // After a close a new stream may start.
    let input = format!("{HDR}</stream:stream>{HDR}<a/>");
    let (frames, err) = frames_of(&input);
    assert_eq!(err, None);
    assert_eq!(frames.len(), 4);
}

#[test]
fn framer_awkward_input() {
    let input = format!(
        "{HDR}<message a='/>' b=\"x>y\" c='\"'><body><![CDATA[</message></x>]]></body></message>\
         <x y='&lt;/x&gt;'/><p><q/><q></q>t</p>"
    );
    let (frames, err) = frames_of(&input);
    assert_eq!(err, None);
    assert_eq!(frames.len(), 4, "{frames:?}");
    let m = el(&frames[1]);
    assert_eq!(m.attr("a"), Some("/>"));
    assert_eq!(m.attr("b"), Some("x>y"));
    assert_eq!(m.attr("c"), Some("\""));
    assert_eq!(m.child("body", ns::CLIENT).unwrap().text(), "</message></x>");
    assert_eq!(el(&frames[2]).attr("y"), Some("</x>"));
    assert_eq!(el(&frames[3]).elements().count(), 2);
}

#[test]
fn framer_multibyte_split_across_chunks() {
    let msg = "<message><body>h\u{e9}llo \u{1F600} \u{65e5}\u{672c}</body></message>";
    let all = format!("{HDR}{msg}");
    let bytes = all.as_bytes();
    let mut f = Framer::new(Limits::default());
    let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
    let (frames, err) = run(&mut f, &chunks);
    assert_eq!(err, None);
    assert_eq!(el(&frames[1]).child("body", ns::CLIENT).unwrap().text(), "h\u{e9}llo \u{1F600} \u{65e5}\u{672c}");
}

#[test]
fn framer_refusals() {
    let cases: Vec<(String, XmlError)> = vec![
        (format!("{HDR}<!--x-->"), XmlError::Restricted("comment")),
        (format!("{HDR}<a><!--x--></a>"), XmlError::Restricted("comment")),
        ("<!DOCTYPE x><stream:stream>".into(), XmlError::Restricted("DOCTYPE")),
        (format!("{HDR}<!DOCTYPE x>"), XmlError::Restricted("DOCTYPE")),
        (format!("{HDR}<a><!ENTITY x 'y'></a>"), XmlError::Restricted("DOCTYPE")),
        (format!("{HDR}<?pi x?>"), XmlError::Restricted("processing instruction")),
        (format!("{HDR}<a><?xml version='1.0'?></a>"), XmlError::Restricted("processing instruction")),
        (format!("{HDR}<a>&ent;</a>"), XmlError::Restricted("entity reference")),
        (format!("{HDR}<a>&#x1;</a>"), nwf()),
        ("<?xml version='1.1'?><stream:stream>".into(), nwf()),
        ("<?xml version='1.0' encoding='UTF-16'?>".into(), nwf()),
        (format!("{HDR}<?xml version='1.0'?><a/>"), nwf()),
        (format!("{HDR}<?xml version='1.0'?></stream:stream>"), nwf()),
        (format!("{HDR}hello"), nwf()),
        (format!("{HDR}<![CDATA[x]]>"), nwf()),
        (format!("{HDR}</wrong>"), nwf()),
        (format!("{HDR}<a></b>"), nwf()),
        (format!("{HDR}<a <b>"), nwf()),
        ("</stream:stream>".into(), nwf()),
        ("<stream:stream xmlns:stream='urn:wrong'>".into(), nwf()),
        ("<foo xmlns='jabber:client'>".into(), nwf()),
        ("<stream:stream>".into(), XmlError::UnboundPrefix),
        ("<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>".into(), nwf()),
        (format!("{HDR}<x:a/>"), XmlError::UnboundPrefix),
        (format!("{HDR}<a>\u{ff}</a>").replace('\u{ff}', "\u{1}"), nwf()),
    ];
    for (input, want) in cases {
        let (_, err) = frames_of(&input);
        match &err {
            Some(e) if same_error(e, &want) => {}
            other => panic!("{input:?}: want {want:?}, got {other:?}"),
        }
    }
    let mut f = Framer::new(Limits::default());
    let (_, err) = run(&mut f, &[b"<a>\xff</a>"]);
    assert!(err.is_some());
    let (_, err) = run(&mut Framer::new(Limits::default()), &[HDR.as_bytes(), b"<a>\xff</a>"]);
    assert_eq!(err, Some(XmlError::InvalidUtf8));
}

#[test]
fn framer_header_namespace_messages_differ() {
    let (_, wrong_ns) = frames_of("<stream:stream xmlns:stream='urn:wrong'>");
    let (_, wrong_name) = frames_of("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'>");
    assert_ne!(wrong_ns, wrong_name);
    assert!(wrong_ns.unwrap().to_string().contains("namespace"));
}

#[test]
fn framer_byte_cap_applies_while_accumulating() {
    let limits = Limits { max_stanza_bytes: 100, ..Limits::default() };
    let mut f = Framer::new(limits);
    let (frames, err) = run(&mut f, &[HDR.replace("<?xml version='1.0'?>", "").as_bytes()]);
    // The header alone is longer than 100 bytes.
    assert_eq!(err, Some(XmlError::TooLarge(100)));
    assert!(frames.is_empty());

    let limits = Limits { max_stanza_bytes: 200, ..Limits::default() };
    let mut f = Framer::new(limits);
    let (_, err) = run(&mut f, &[HDR.as_bytes(), b"<message><body>"]);
    assert_eq!(err, None);
    let filler = [b'x'; 64];
    let mut err = None;
    for _ in 0..10 {
        let (_, e) = run(&mut f, &[&filler]);
        if e.is_some() {
            err = e;
            break;
        }
    }
    assert_eq!(err, Some(XmlError::TooLarge(200)));
    // Sticky, and nothing more is buffered.
    f.feed(&[b'y'; 1000]);
    assert_eq!(f.buffered(), 0);
    assert_eq!(f.next_frame(), Err(XmlError::TooLarge(200)));

    // Exactly at the cap is fine.
    let msg = format!("<m>{}</m>", "x".repeat(193));
    assert_eq!(msg.len(), 200);
    let mut f = Framer::new(Limits { max_stanza_bytes: 200, ..Limits::default() });
    let (frames, err) = run(&mut f, &[HDR.as_bytes(), msg.as_bytes()]);
    assert_eq!((frames.len(), err), (2, None));
    let msg = format!("<m>{}</m>", "x".repeat(194));
    let mut f = Framer::new(Limits { max_stanza_bytes: 200, ..Limits::default() });
    let (_, err) = run(&mut f, &[HDR.as_bytes(), msg.as_bytes()]);
    assert_eq!(err, Some(XmlError::TooLarge(200)));
}

#[test]
fn framer_depth_counts_the_stream_root() {
    let limits = Limits { max_depth: 3, ..Limits::default() };
    let (frames, err) = run(&mut Framer::new(limits), &[HDR.as_bytes(), b"<a><b/></a>"]);
    assert_eq!((frames.len(), err), (2, None));
    let (_, err) = run(&mut Framer::new(limits), &[HDR.as_bytes(), b"<a><b><c>"]);
    assert_eq!(err, Some(XmlError::TooDeep(3)));
    let (_, err) = run(&mut Framer::new(limits), &[HDR.as_bytes(), b"<a><b><c/></b></a>"]);
    assert_eq!(err, Some(XmlError::TooDeep(3)));
}

#[test]
fn framer_releases_consumed_bytes() {
    let mut f = Framer::new(Limits::default());
    run(&mut f, &[HDR.as_bytes()]);
    for i in 0..2000 {
        let (frames, err) = run(&mut f, &[format!("<message id='{i}'><body>x</body></message> ").as_bytes()]);
        assert_eq!((frames.len(), err), (1, None));
    }
    f.feed(b"");
    assert_eq!(f.buffered(), 0);
    // Partial input stays buffered, whitespace keepalives do not.
    run(&mut f, &[b"   \n  <message><bo"]);
    assert_eq!(f.buffered(), "<message><bo".len());
}

#[test]
fn framer_legacy_websocket_client_messages() {
    let mut f = Framer::new(Limits::default());
    let msgs: [&[u8]; 4] = [
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>",
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>",
        b"<presence/>",
        b"</stream:stream>",
    ];
    let (frames, err) = run(&mut f, &msgs);
    assert_eq!(err, None);
    assert!(matches!(&frames[0], Frame::StreamOpen(h) if h.to.as_deref() == Some("example.com")));
    assert!(el(&frames[1]).is("auth", ns::SASL));
    assert!(el(&frames[2]).is("presence", ns::CLIENT));
    assert_eq!(frames[3], Frame::StreamClose);
    assert!(!f.in_stream());
}

// ---------------------------------------------------------------- property tests

/// Namespaces with a fixed prefix each, so generated trees never need prefix renaming.
const NSES: [(&str, &str); 4] = [("", ""), ("jabber:client", "c"), ("urn:a", "a"), ("urn:b", "b")];

fn arb_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(vec!['&', '<', '>', '\'', '"', '\r', '\n', '\t', ' ', ']', 'a', '\u{e9}', '\u{1F600}']),
            any::<char>().prop_filter("XML char", |c| parse::is_xml_char(*c)),
        ],
        1..8,
    )
    .prop_map(|v| v.into_iter().collect())
}

fn arb_name() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_.-]{0,6}"
}

fn arb_attrs() -> impl Strategy<Value = Vec<Attr>> {
    prop::collection::btree_map((0usize..3, arb_name()), arb_text(), 0..4).prop_map(|m| {
        m.into_iter()
            .map(|((k, name), value)| match k {
                0 => Attr { prefix: None, name, ns: None, value },
                1 => Attr { prefix: Some("a".into()), name, ns: Some("urn:a".into()), value },
                _ => Attr { prefix: Some("xml".into()), name, ns: Some(ns::XML.into()), value },
            })
            .collect()
    })
}

fn arb_leaf() -> impl Strategy<Value = Element> {
    (arb_name(), 0usize..NSES.len(), any::<bool>(), arb_attrs()).prop_map(|(name, n, prefixed, attrs)| {
        let (uri, p) = NSES[n];
        Element {
            prefix: (prefixed && !uri.is_empty()).then(|| p.to_owned()),
            name,
            ns: uri.to_owned(),
            attrs,
            children: Vec::new(),
        }
    })
}

fn arb_element() -> impl Strategy<Value = Element> {
    arb_leaf().prop_recursive(4, 24, 4, |inner| {
        (arb_leaf(), prop::collection::vec(prop_oneof![inner.prop_map(Node::Element), arb_text().prop_map(Node::Text)], 0..4))
            .prop_map(|(mut e, kids)| {
                for k in kids {
                    match (k, e.children.last_mut()) {
                        (Node::Text(t), Some(Node::Text(prev))) => prev.push_str(&t),
                        (k, _) => e.children.push(k),
                    }
                }
                e
            })
    })
}

/// XML-ish fragments, so that random input reaches deep into the parser and the framer.
fn arb_xmlish() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop::sample::select(vec![
            "<", ">", "/>", "</", "<a", "<b:c", "</a>", " x='", "'", "\"", "=", " xmlns='u'", " xmlns:b='v'",
            "&amp;", "&lt;", "&#x41;", "&#1;", "&", ";", "<![CDATA[", "]]>", "<!--", "-->", "<?xml version='1.0'?>",
            "<?", "?>", "<!DOCTYPE", "text", " ", "\n", "\u{e9}", "\u{1F600}", "\u{1}",
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
            "</stream:stream>", "<message>", "</message>",
        ]),
        0..40,
    )
    .prop_map(|v| v.concat().into_bytes())
}

fn chunked(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut last = 0;
    for c in cuts.into_iter().chain(std::iter::once(input.len())) {
        out.push(input[last..c].to_vec());
        last = c;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics_on_bytes(input in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_document(&input, &Limits::default(), &[("", ns::CLIENT)]);
    }

    #[test]
    fn parse_never_panics_on_xmlish(input in arb_xmlish()) {
        let _ = parse_document(&input, &Limits::default(), &[("", ns::CLIENT)]);
    }

    #[test]
    fn serialize_then_parse_round_trips(e in arb_element()) {
        let xml = e.to_xml("");
        let back = parse_document(xml.as_bytes(), &Limits::default(), &[]);
        prop_assert_eq!(back.as_ref(), Ok(&e), "xml: {}", xml);
        // Written into a jabber:client stream, it resolves the same against the stream's scope.
        let inner = e.to_xml(ns::CLIENT);
        let back = parse_document(inner.as_bytes(), &Limits::default(), &[("", ns::CLIENT)]);
        prop_assert_eq!(back.as_ref(), Ok(&e), "xml: {}", inner);
    }

    #[test]
    fn framer_never_panics(input in arb_xmlish(), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let chunks = chunked(&input, &cuts);
        let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let _ = run(&mut Framer::new(Limits::default()), &refs);
    }

    #[test]
    fn framer_never_panics_on_bytes(input in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = run(&mut Framer::new(Limits::default()), &[HDR.as_bytes(), &input]);
    }

    #[test]
    fn framer_is_chunking_invariant(
        elems in prop::collection::vec(arb_element(), 0..5),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut input = String::from(HDR);
        for e in &elems {
            input.push_str(" \n");
            e.write_xml(&mut input, ns::CLIENT);
        }
        input.push_str("</stream:stream>");
        let whole = run(&mut Framer::new(Limits::default()), &[input.as_bytes()]);
        prop_assert_eq!(&whole.1, &None);
        prop_assert_eq!(whole.0.len(), elems.len() + 2);
        for (f, e) in whole.0[1..].iter().zip(&elems) {
            prop_assert_eq!(f, &Frame::Element(e.clone()));
        }
        let chunks = chunked(input.as_bytes(), &cuts);
        let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let split = run(&mut Framer::new(Limits::default()), &refs);
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn framer_chunking_invariant_on_xmlish(input in arb_xmlish(), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        // For arbitrary input, frames before the first error are the same however it is cut.
        let whole = run(&mut Framer::new(Limits::default()), &[&input]);
        let chunks = chunked(&input, &cuts);
        let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let split = run(&mut Framer::new(Limits::default()), &refs);
        prop_assert_eq!(split.0, whole.0);
        prop_assert_eq!(split.1.is_some(), whole.1.is_some());
    }
}
