//! A small namespace-resolved element tree, and its serializer.
//!
//! Parsed elements carry their resolved namespace (`ns`) and the prefix they were written with;
//! namespace declarations are *not* kept as attributes. The serializer re-declares whatever a
//! serialized fragment needs, so every fragment it writes is self-contained.

/// One attribute. `ns` is `None` for unprefixed attributes (which have no namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub prefix: Option<String>,
    pub name: String,
    pub ns: Option<String>,
    /// Unescaped value.
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
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
    pub attrs: Vec<Attr>,
    pub children: Vec<Node>,
}
