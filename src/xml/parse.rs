//! Parsing one complete XML document (a BOSH `<body/>`, a WebSocket message, or a top-level
//! element cut out of the upstream stream by [`super::framing`]) into an [`Element`] tree.
//!
//! Refused outright: DOCTYPE, entity references other than the five predefined ones and
//! character references to characters XML 1.0 forbids, processing instructions other than a
//! leading XML declaration, and comments (RFC 6120 §11.1). Limits are checked while parsing.
//! quick-xml only tokenizes here; unescaping, character checks, name checks and namespace
//! resolution are done in this file so that every refusal is ours and typed.

use std::borrow::Cow;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::{ns, Attr, Element, Limits, Node};

/// Why a piece of XML was refused. Each variant says what was wrong, never echoing the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("not well-formed XML: {0}")]
    NotWellFormed(String),
    /// A construct XMPP forbids (DOCTYPE, comment, PI, entity declaration/reference).
    #[error("restricted XML construct: {0}")]
    Restricted(&'static str),
    #[error("element larger than {0} bytes")]
    TooLarge(usize),
    #[error("nesting deeper than {0}")]
    TooDeep(usize),
    #[error("more than {0} attributes on one element")]
    TooManyAttrs(usize),
    #[error("name longer than {0} bytes")]
    NameTooLong(usize),
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// An unbound namespace prefix.
    #[error("unbound namespace prefix")]
    UnboundPrefix,
}

fn nwf(msg: &str) -> XmlError {
    XmlError::NotWellFormed(msg.to_owned())
}

/// Parse one complete document (exactly one root element; an XML declaration is allowed first;
/// whitespace around the root is allowed). `inherited` are namespace bindings in scope around
/// the document, as (prefix, uri) with "" for the default namespace.
pub fn parse_document(input: &[u8], limits: &Limits, inherited: &[(&str, &str)]) -> Result<Element, XmlError> {
    parse_document_with_bindings(input, limits, inherited).map(|(el, _)| el)
}

/// Like [`parse_document`], also returning the namespace declarations written on the root
/// element, as (prefix, uri) with "" for the default namespace. The framer parses a stream
/// header this way to learn the bindings its top-level elements inherit.
pub fn parse_document_with_bindings(
    input: &[u8],
    limits: &Limits,
    inherited: &[(&str, &str)],
) -> Result<(Element, Vec<(String, String)>), XmlError> {
    parse_in_scope(input, limits, inherited.iter().copied())
}

/// [`parse_document_with_bindings`] with the inherited bindings as borrowed pairs from any
/// source (the framer passes its stream header's, without collecting them per stanza).
pub(crate) fn parse_in_scope<'b>(
    input: &[u8],
    limits: &Limits,
    inherited: impl Iterator<Item = (&'b str, &'b str)>,
) -> Result<(Element, Vec<(String, String)>), XmlError> {
    if input.len() > limits.max_stanza_bytes {
        return Err(XmlError::TooLarge(limits.max_stanza_bytes));
    }
    let text = std::str::from_utf8(input).map_err(|_| XmlError::InvalidUtf8)?;
    // ASCII is checked bytewise; only text with other characters needs the per-char test.
    let ascii_ok = |b: u8| b >= 0x20 || matches!(b, b'\t' | b'\n' | b'\r');
    if !input.iter().all(|&b| ascii_ok(b) && b < 0x80) && text.chars().any(|c| !is_xml_char(c)) {
        return Err(nwf("character not allowed in XML 1.0"));
    }

    let mut reader = Reader::from_str(text);
    {
        let cfg = reader.config_mut();
        cfg.check_end_names = true;
        cfg.allow_unmatched_ends = false;
        cfg.expand_empty_elements = false;
        cfg.trim_text(false);
    }

    let mut scope = Scope::new(inherited);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut root_bindings: Vec<(String, String)> = Vec::new();
    let mut seen_markup = false;

    loop {
        let event = reader.read_event().map_err(map_quick_error)?;
        match event {
            Event::Decl(d) => {
                if seen_markup {
                    return Err(XmlError::Restricted("processing instruction"));
                }
                seen_markup = true;
                let version = d.version().map_err(|_| nwf("malformed XML declaration"))?;
                if version.as_ref() != b"1.0" {
                    return Err(nwf("unsupported XML version"));
                }
                if let Some(enc) = d.encoding() {
                    let enc = enc.map_err(|_| nwf("malformed XML declaration"))?;
                    if !enc.eq_ignore_ascii_case(b"utf-8") {
                        return Err(nwf("encoding other than UTF-8"));
                    }
                }
            }
            Event::PI(_) => return Err(XmlError::Restricted("processing instruction")),
            Event::Comment(_) => return Err(XmlError::Restricted("comment")),
            Event::DocType(_) => return Err(XmlError::Restricted("DOCTYPE")),
            Event::Start(ref s) | Event::Empty(ref s) => {
                seen_markup = true;
                if root.is_some() {
                    return Err(nwf("more than one root element"));
                }
                if stack.len() + 1 > limits.max_depth {
                    return Err(XmlError::TooDeep(limits.max_depth));
                }
                let (el, decls) = start_element(text, s, &mut scope, limits, stack.is_empty())?;
                if stack.is_empty() {
                    root_bindings = decls;
                }
                if matches!(event, Event::Empty(_)) {
                    scope.pop();
                    finish(el, &mut stack, &mut root);
                } else {
                    stack.push(el);
                }
            }
            Event::End(_) => {
                let el = stack.pop().ok_or_else(|| nwf("end tag without start tag"))?;
                scope.pop();
                finish(el, &mut stack, &mut root);
            }
            Event::Text(t) => {
                let raw = sub_str(text, t.as_ref())?;
                match stack.last_mut() {
                    None => {
                        if !raw.bytes().all(is_xml_space) {
                            return Err(nwf("text outside the root element"));
                        }
                    }
                    Some(parent) => push_text(parent, unescape(raw, false)?),
                }
            }
            Event::CData(c) => {
                let raw = sub_str(text, c.as_ref())?;
                let parent = stack.last_mut().ok_or_else(|| nwf("CDATA outside the root element"))?;
                push_text(parent, normalize_newlines(raw));
            }
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(nwf("unclosed element"));
    }
    let root = root.ok_or_else(|| nwf("no root element"))?;
    Ok((root, root_bindings))
}

fn finish(el: Element, stack: &mut [Element], root: &mut Option<Element>) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(Node::Element(el)),
        None => *root = Some(el),
    }
}

fn push_text(parent: &mut Element, s: Cow<'_, str>) {
    if s.is_empty() {
        return;
    }
    if let Some(Node::Text(t)) = parent.children.last_mut() {
        t.push_str(&s);
    } else {
        parent.children.push(Node::Text(s.into_owned()));
    }
}

/// Namespace bindings in scope while parsing: a flat list plus one mark per open element.
/// Inherited bindings are borrowed, declarations in the document owned.
struct Scope<'a> {
    bindings: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    marks: Vec<usize>,
}

impl<'a> Scope<'a> {
    fn new(inherited: impl Iterator<Item = (&'a str, &'a str)>) -> Self {
        let mut bindings = Vec::with_capacity(inherited.size_hint().0 + 4);
        bindings.extend(inherited.map(|(p, u)| (Cow::Borrowed(p), Cow::Borrowed(u))));
        Scope { bindings, marks: Vec::with_capacity(8) }
    }
    /// Open an element: `decls` are the declarations written on it.
    fn push(&mut self, decls: impl IntoIterator<Item = (String, String)>) {
        self.marks.push(self.bindings.len());
        self.bindings.extend(decls.into_iter().map(|(p, u)| (Cow::Owned(p), Cow::Owned(u))));
    }
    fn pop(&mut self) {
        if let Some(m) = self.marks.pop() {
            self.bindings.truncate(m);
        }
    }
    fn lookup(&self, prefix: &str) -> Option<&str> {
        if prefix == "xml" {
            return Some(ns::XML);
        }
        self.bindings.iter().rev().find(|(p, _)| p == prefix).map(|(_, u)| u.as_ref())
    }
}

/// Resolve a start tag: check names and limits, collect namespace declarations (pushed onto
/// `scope`, which the caller pops at the end tag), resolve element and attribute namespaces.
/// `want_decls`: also return the declarations (the root's, for the framer).
fn start_element<'s>(
    text: &'s str,
    s: &'s BytesStart<'_>,
    scope: &mut Scope<'_>,
    limits: &Limits,
    want_decls: bool,
) -> Result<(Element, Vec<(String, String)>), XmlError> {
    let qname = sub_str(text, s.name().into_inner())?;
    check_name(qname, limits)?;

    let mut decls: Vec<(String, String)> = Vec::new();
    let mut plain: Vec<(&'s str, String)> = Vec::new();
    for (count, a) in s.attributes().enumerate() {
        if count + 1 > limits.max_attrs {
            return Err(XmlError::TooManyAttrs(limits.max_attrs));
        }
        let a = a.map_err(|e| match e {
            quick_xml::events::attributes::AttrError::Duplicated(..) => nwf("duplicate attribute"),
            _ => nwf("malformed attribute"),
        })?;
        let key = sub_str(text, a.key.into_inner())?;
        check_name(key, limits)?;
        let raw = sub_str(text, &a.value)?;
        let value = unescape(raw, true)?.into_owned();
        if key == "xmlns" {
            if value == ns::XML || value == XMLNS_URI {
                return Err(nwf("reserved namespace as default namespace"));
            }
            decls.push((String::new(), value));
        } else if let Some(p) = key.strip_prefix("xmlns:") {
            if value.is_empty() {
                return Err(nwf("empty namespace name for a prefix"));
            }
            let bad = p == "xmlns"
                || (p == "xml") != (value == ns::XML)
                || value == XMLNS_URI;
            if bad {
                return Err(nwf("reserved prefix or namespace rebound"));
            }
            decls.push((p.to_owned(), value));
        } else {
            plain.push((key, value));
        }
    }
    let returned = if want_decls { decls.clone() } else { Vec::new() };
    scope.push(decls);

    let (prefix, local) = split_qname(qname);
    let el_ns = match prefix {
        Some("xmlns") => return Err(nwf("element with the xmlns prefix")),
        Some(p) => scope.lookup(p).ok_or(XmlError::UnboundPrefix)?.to_owned(),
        None => scope.lookup("").unwrap_or("").to_owned(),
    };
    let mut attrs: Vec<Attr> = Vec::with_capacity(plain.len());
    for (key, value) in plain {
        let (p, l) = split_qname(key);
        let a_ns = match p {
            Some(p) => Some(scope.lookup(p).ok_or(XmlError::UnboundPrefix)?.to_owned()),
            None => None,
        };
        if attrs.iter().any(|x| x.ns == a_ns && x.name == l) {
            return Err(nwf("duplicate attribute"));
        }
        attrs.push(Attr { prefix: p.map(str::to_owned), name: l.to_owned(), ns: a_ns, value });
    }
    let el = Element {
        prefix: prefix.map(str::to_owned),
        name: local.to_owned(),
        ns: el_ns,
        attrs,
        children: Vec::new(),
    };
    Ok((el, returned))
}

const XMLNS_URI: &str = "http://www.w3.org/2000/xmlns/";

fn split_qname(q: &str) -> (Option<&str>, &str) {
    match split_colon(q) {
        Some((p, l)) => (Some(p), l),
        None => (None, q),
    }
}

/// `q.split_once(':')` for short names: a plain byte loop beats the generic searcher here.
fn split_colon(q: &str) -> Option<(&str, &str)> {
    let i = q.bytes().position(|b| b == b':')?;
    Some((&q[..i], &q[i + 1..]))
}

/// `b` as text. Slices of the (already validated) input are re-borrowed from `text` by
/// position, which only checks the two char boundaries; anything else is validated.
fn sub_str<'a>(text: &'a str, b: &'a [u8]) -> Result<&'a str, XmlError> {
    let base = text.as_ptr() as usize;
    let start = (b.as_ptr() as usize).wrapping_sub(base);
    if start <= text.len() && b.len() <= text.len() - start {
        return text.get(start..start + b.len()).ok_or(XmlError::InvalidUtf8);
    }
    std::str::from_utf8(b).map_err(|_| XmlError::InvalidUtf8)
}

/// A QName: length within limits, at most one colon, each part an XML Name without colons.
fn check_name(q: &str, limits: &Limits) -> Result<(), XmlError> {
    if q.len() > limits.max_name_len {
        return Err(XmlError::NameTooLong(limits.max_name_len));
    }
    let ok_part = |s: &str| {
        let b = s.as_bytes();
        if b.is_ascii() {
            // The ASCII subset of NameStartChar / NameChar (colon excluded).
            return match b.split_first() {
                Some((c, rest)) if c.is_ascii_alphabetic() || *c == b'_' => {
                    rest.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
                }
                _ => false,
            };
        }
        let mut cs = s.chars();
        match cs.next() {
            Some(c) if is_name_start(c) => cs.all(is_name_char),
            _ => false,
        }
    };
    let ok = match split_colon(q) {
        Some((p, l)) => ok_part(p) && ok_part(l),
        None => ok_part(q),
    };
    if ok {
        Ok(())
    } else {
        Err(nwf("invalid name"))
    }
}

/// XML 1.0 (5th ed.) NameStartChar, without ':'.
fn is_name_start(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z' | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}'
        | '\u{F8}'..='\u{2FF}' | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}'
        | '\u{200C}'..='\u{200D}' | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}'
        | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}'
        | '\u{10000}'..='\u{EFFFF}')
}

/// XML 1.0 (5th ed.) NameChar, without ':'.
fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// XML 1.0 `Char` production.
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c,
        '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}'
        | '\u{10000}'..='\u{10FFFF}')
}

pub(crate) fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Line-end normalisation (XML 1.0 §2.11) for CDATA.
fn normalize_newlines(s: &str) -> Cow<'_, str> {
    if !s.contains('\r') {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.replace("\r\n", "\n").replace('\r', "\n"))
}

/// Unescape character data (`attr == false`) or an attribute value (`attr == true`, with
/// XML 1.0 §3.3.3 whitespace normalisation). Only the five predefined entities and character
/// references to legal characters are accepted.
fn unescape(raw: &str, attr: bool) -> Result<Cow<'_, str>, XmlError> {
    let special = |b: u8| matches!(b, b'&' | b'\r' | b'<' | b'\t' | b'\n' | b']');
    if !raw.bytes().any(special) {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(c) = rest.chars().next() {
        match c {
            '&' => {
                let end = rest.find(';').ok_or_else(|| nwf("'&' without ';'"))?;
                let name = &rest[1..end];
                let ch = match name {
                    "amp" => '&',
                    "lt" => '<',
                    "gt" => '>',
                    "apos" => '\'',
                    "quot" => '"',
                    _ if name.starts_with('#') => char_ref(&name[1..])?,
                    _ => {
                        return Err(if check_name(name, &Limits { max_name_len: usize::MAX, ..Limits::default() }).is_ok() {
                            XmlError::Restricted("entity reference")
                        } else {
                            nwf("'&' without a valid reference")
                        })
                    }
                };
                out.push(ch);
                rest = &rest[end + 1..];
                continue;
            }
            '<' if attr => return Err(nwf("'<' in an attribute value")),
            '<' => return Err(nwf("'<' in character data")),
            '\r' => {
                out.push(if attr { ' ' } else { '\n' });
                if rest[1..].starts_with('\n') {
                    rest = &rest[1..];
                }
            }
            '\t' | '\n' if attr => out.push(' '),
            ']' if !attr && rest.starts_with("]]>") => return Err(nwf("']]>' in character data")),
            c => out.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    Ok(Cow::Owned(out))
}

fn char_ref(digits: &str) -> Result<char, XmlError> {
    let n = if let Some(hex) = digits.strip_prefix('x') {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(nwf("malformed character reference"));
        }
        u32::from_str_radix(hex, 16)
    } else {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(nwf("malformed character reference"));
        }
        digits.parse::<u32>()
    }
    .map_err(|_| nwf("character reference out of range"))?;
    match char::from_u32(n) {
        Some(c) if is_xml_char(c) => Ok(c),
        _ => Err(nwf("character reference to a character not allowed in XML 1.0")),
    }
}

fn map_quick_error(e: quick_xml::Error) -> XmlError {
    use quick_xml::errors::{IllFormedError, SyntaxError};
    match e {
        quick_xml::Error::Syntax(s) => match s {
            SyntaxError::UnclosedComment => XmlError::Restricted("comment"),
            SyntaxError::UnclosedDoctype => XmlError::Restricted("DOCTYPE"),
            SyntaxError::InvalidBangMarkup => nwf("malformed '<!' markup"),
            SyntaxError::UnclosedPIOrXmlDecl => nwf("unclosed processing instruction"),
            SyntaxError::UnclosedCData => nwf("unclosed CDATA section"),
            SyntaxError::UnclosedTag => nwf("unclosed tag"),
        },
        quick_xml::Error::IllFormed(i) => match i {
            IllFormedError::MissingDeclVersion(_) => nwf("malformed XML declaration"),
            IllFormedError::MissingDoctypeName => XmlError::Restricted("DOCTYPE"),
            IllFormedError::MissingEndTag(_) => nwf("unclosed element"),
            IllFormedError::UnmatchedEndTag(_) => nwf("end tag without start tag"),
            IllFormedError::MismatchedEndTag { .. } => nwf("mismatched end tag"),
            IllFormedError::DoubleHyphenInComment => XmlError::Restricted("comment"),
        },
        quick_xml::Error::Encoding(_) => XmlError::InvalidUtf8,
        _ => nwf("malformed XML"),
    }
}
