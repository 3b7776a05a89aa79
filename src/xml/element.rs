//! A small namespace-resolved element tree, and its serializer.
//!
//! Parsed elements carry their resolved namespace (`ns`) and the prefix they were written with;
//! namespace declarations are *not* kept as attributes. The serializer re-declares whatever a
//! serialized fragment needs, so every fragment it writes is self-contained. Parsing lives in
//! [`super::parse`]; deciding *what* to rewrite lives in `crate::relay`.

use std::borrow::Cow;

use super::ns;

/// One attribute. `ns` is `None` for unprefixed attributes (which have no namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Prefix as written (`xml` in `xml:lang`); kept so re-serialization looks like the input.
    pub prefix: Option<String>,
    /// Local name.
    pub name: String,
    /// Resolved namespace of a prefixed attribute; `None` for unprefixed ones.
    pub ns: Option<String>,
    /// Unescaped value.
    pub value: String,
}

impl Attr {
    /// An unprefixed attribute (no namespace).
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Attr { prefix: None, name: name.into(), ns: None, value: value.into() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Unescaped character data.
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Prefix as written in the source (`stream` in `<stream:features>`), `None` when unprefixed.
    pub prefix: Option<String>,
    /// Local name.
    pub name: String,
    /// Resolved namespace URI ("" when none).
    pub ns: String,
    /// Attributes in document order, namespace declarations excluded.
    pub attrs: Vec<Attr>,
    /// Child elements and character data in document order; adjacent text is merged by the
    /// parser.
    pub children: Vec<Node>,
}

impl Element {
    /// An unprefixed element in namespace `ns` ("" for none), without attributes or children.
    pub fn new(name: impl Into<String>, ns: impl Into<String>) -> Self {
        Element { prefix: None, name: name.into(), ns: ns.into(), attrs: Vec::new(), children: Vec::new() }
    }

    /// Builder: write this element with `prefix` (e.g. `stream`), declared as needed.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Builder: set an unprefixed attribute.
    pub fn with_attr(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Builder: append a child element.
    pub fn with_child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder: append character data.
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.children.push(Node::Text(text.into()));
        self
    }

    /// True when this element is `{ns}name`.
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    /// Value of the unprefixed (namespace-less) attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|a| a.ns.is_none() && a.name == name).map(|a| a.value.as_str())
    }

    /// Value of the namespaced attribute `{ns}local` (e.g. `attr_ns(ns::XML, "lang")`).
    pub fn attr_ns(&self, ns: &str, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.ns.as_deref() == Some(ns) && a.name == local)
            .map(|a| a.value.as_str())
    }

    /// Set (replace or add) the unprefixed attribute `name`.
    pub fn set_attr(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.attrs.iter_mut().find(|a| a.ns.is_none() && a.name == name) {
            Some(a) => a.value = value,
            None => self.attrs.push(Attr::new(name, value)),
        }
    }

    /// Remove the unprefixed attribute `name`, returning its value.
    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let i = self.attrs.iter().position(|a| a.ns.is_none() && a.name == name)?;
        Some(self.attrs.remove(i).value)
    }

    /// First child element `{ns}name`.
    pub fn child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(name, ns))
    }

    /// First child element `{ns}name`, mutably.
    pub fn child_mut(&mut self, name: &str, ns: &str) -> Option<&mut Element> {
        self.elements_mut().find(|e| e.is(name, ns))
    }

    /// Child elements, in document order (text is skipped).
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// Child elements, mutably.
    pub fn elements_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// Direct character data, concatenated (text of descendants is not included).
    pub fn text(&self) -> String {
        let mut s = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                s.push_str(t);
            }
        }
        s
    }

    /// Serialize as a self-contained fragment, given the default namespace the reader will have
    /// in scope around it: "" for a standalone document (BOSH/WebSocket), `jabber:client` when
    /// writing into the upstream stream (the stanza then carries no `xmlns`).
    pub fn to_xml(&self, default_ns_in_scope: &str) -> String {
        let mut out = String::with_capacity(256);
        self.write_xml(&mut out, default_ns_in_scope);
        out
    }

    /// Like [`Element::to_xml`], appending to `out`.
    pub fn write_xml(&self, out: &mut String, default_ns_in_scope: &str) {
        // The scope borrows from the element: no allocation per element or attribute, except
        // for an invented prefix.
        let mut scope: Vec<(Cow<'_, str>, &str)> = Vec::with_capacity(4);
        scope.push((Cow::Borrowed(""), default_ns_in_scope));
        write_element(self, out, &mut scope);
    }
}

type Scope<'a> = Vec<(Cow<'a, str>, &'a str)>;

/// Current binding of `prefix` ("" = default namespace) in the serializer's scope.
fn lookup<'a>(scope: &[(Cow<'a, str>, &'a str)], prefix: &str) -> Option<&'a str> {
    if prefix == "xml" {
        return Some(ns::XML);
    }
    scope.iter().rev().find(|(p, _)| p == prefix).map(|(_, u)| *u)
}

/// Bind `prefix` to `uri` on the element being written, unless that is already the binding in
/// scope. Returns false when this element already declares `prefix` for another URI.
fn ensure<'a>(scope: &mut Scope<'a>, mark: usize, prefix: Cow<'a, str>, uri: &'a str) -> bool {
    if lookup(scope, &prefix) == Some(uri) {
        return true;
    }
    if scope[mark..].iter().any(|(p, _)| *p == prefix) {
        return false;
    }
    scope.push((prefix, uri));
    true
}

fn write_element<'a>(el: &'a Element, out: &mut String, scope: &mut Scope<'a>) {
    let mark = scope.len();
    // A prefix is only usable with a non-empty namespace (`xmlns:p=''` is not XML Namespaces 1.0),
    // and `xml`/`xmlns` cannot be rebound; otherwise fall back to the default namespace.
    let prefix = match el.prefix.as_deref() {
        Some(p) if p == "xml" && el.ns == ns::XML => Some(p),
        Some(p) if !p.is_empty() && p != "xml" && p != "xmlns" && !el.ns.is_empty() => Some(p),
        _ => None,
    };
    ensure(scope, mark, Cow::Borrowed(prefix.unwrap_or("")), &el.ns);

    // Attribute names first: they may add declarations to this element. Each is written as
    // (prefix, local name, value); the prefix is "" for an unprefixed attribute.
    let mut attrs: Vec<(Cow<'a, str>, &'a str, &'a str)> = Vec::with_capacity(el.attrs.len());
    let mut fresh = 0usize;
    for a in &el.attrs {
        let is_decl = a.prefix.as_deref() == Some("xmlns") || (a.prefix.is_none() && a.name == "xmlns");
        if is_decl {
            continue; // the serializer owns namespace declarations
        }
        let p: Cow<'a, str> = match a.ns.as_deref() {
            None | Some("") => Cow::Borrowed(""),
            Some(u) if u == ns::XML => Cow::Borrowed("xml"),
            Some(u) => {
                let wanted = a.prefix.as_deref().filter(|p| !p.is_empty() && *p != "xml" && *p != "xmlns");
                match wanted {
                    Some(p) if ensure(scope, mark, Cow::Borrowed(p), u) => Cow::Borrowed(p),
                    _ => {
                        // Reuse any non-default prefix currently bound to `u`, else invent one.
                        let existing = scope
                            .iter()
                            .rev()
                            .find(|(p, uri)| !p.is_empty() && *uri == u && lookup(scope, p) == Some(u))
                            .map(|(p, _)| p.clone());
                        match existing {
                            Some(p) => p,
                            None => loop {
                                let cand = format!("ns{fresh}");
                                fresh += 1;
                                if lookup(scope, &cand).is_none() && ensure(scope, mark, Cow::Owned(cand.clone()), u) {
                                    break Cow::Owned(cand);
                                }
                            },
                        }
                    }
                }
            }
        };
        attrs.push((p, a.name.as_str(), a.value.as_str()));
    }

    out.push('<');
    if let Some(p) = prefix {
        out.push_str(p);
        out.push(':');
    }
    out.push_str(&el.name);
    for (p, u) in &scope[mark..] {
        if p.is_empty() {
            out.push_str(" xmlns='");
        } else {
            out.push_str(" xmlns:");
            out.push_str(p);
            out.push_str("='");
        }
        escape_attr(u, out);
        out.push('\'');
    }
    for (p, n, v) in &attrs {
        out.push(' ');
        if !p.is_empty() {
            out.push_str(p);
            out.push(':');
        }
        out.push_str(n);
        out.push_str("='");
        escape_attr(v, out);
        out.push('\'');
    }
    if el.children.is_empty() {
        out.push_str("/>");
    } else {
        out.push('>');
        for c in &el.children {
            match c {
                Node::Element(e) => write_element(e, out, scope),
                Node::Text(t) => escape_text(t, out),
            }
        }
        out.push_str("</");
        if let Some(p) = prefix {
            out.push_str(p);
            out.push(':');
        }
        out.push_str(&el.name);
        out.push('>');
    }
    scope.truncate(mark);
}

/// Escape character data. `\r` becomes a character reference so it survives re-parsing
/// (parsers normalise raw line ends).
pub fn escape_text(s: &str, out: &mut String) {
    escape_with(s, out, |b| match b {
        b'&' => Some("&amp;"),
        b'<' => Some("&lt;"),
        b'>' => Some("&gt;"),
        b'\r' => Some("&#13;"),
        _ => None,
    })
}

/// Escape an attribute value for single or double quotes; whitespace other than space becomes
/// a character reference (parsers normalise it to spaces otherwise).
pub fn escape_attr(s: &str, out: &mut String) {
    escape_with(s, out, |b| match b {
        b'&' => Some("&amp;"),
        b'<' => Some("&lt;"),
        b'\'' => Some("&apos;"),
        b'"' => Some("&quot;"),
        b'\t' => Some("&#9;"),
        b'\n' => Some("&#10;"),
        b'\r' => Some("&#13;"),
        _ => None,
    })
}

/// The quote around the attribute values of markup xmpp-cm writes itself (stream headers,
/// stream errors, WebSocket framing elements). Each peer keeps the bytes it always got: single
/// quotes on byte streams (upstream, Direct TLS), double quotes in WebSocket messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quote {
    Single,
    Double,
}

impl Quote {
    fn char(self) -> char {
        match self {
            Quote::Single => '\'',
            Quote::Double => '"',
        }
    }
}

/// Append ` name='value'` (or with `"`), the value escaped.
pub fn write_attr(out: &mut String, name: &str, value: &str, q: Quote) {
    out.push(' ');
    out.push_str(name);
    out.push('=');
    out.push(q.char());
    escape_attr(value, out);
    out.push(q.char());
}

/// Copy `s` to `out` in runs, replacing the (ASCII) bytes `rep` maps. ASCII bytes never occur
/// inside a multibyte UTF-8 sequence, so every cut is on a character boundary.
#[inline]
fn escape_with(s: &str, out: &mut String, rep: impl Fn(u8) -> Option<&'static str>) {
    let mut last = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if let Some(r) = rep(b) {
            out.push_str(&s[last..i]);
            out.push_str(r);
            last = i + 1;
        }
    }
    out.push_str(&s[last..]);
}
