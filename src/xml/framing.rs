//! Splitting the endless upstream XML stream into frames: the stream header, complete
//! top-level elements, and the stream close. A pure state machine fed with bytes; a byte cap
//! applies before parsing. Whitespace between top-level elements is dropped here.
//!
//! Design (after xmpp-proxy's `stanzafilter`): a resumable byte scanner finds where each
//! depth-1 element ends (quoted attribute values, self-closing tags, CDATA, XML declarations),
//! refusing comments, DOCTYPE and other processing instructions as soon as it sees them; the
//! complete element is then handed to [`parse_document`] with the bindings declared on the
//! current stream header. All markup bytes are ASCII, so chunk boundaries inside multibyte
//! UTF-8 need no care. The same type also frames the client side of legacy WebSocket framing
//! (`<stream:stream>` then stanzas, one per message).

use super::parse::{is_xml_space, parse_document_with_bindings, parse_in_scope};
use super::{ns, parse_document, Element, Limits, StreamHeader, XmlError};

/// What the framer yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `<stream:stream …>` (also after a restart, when a new header arrives on the same socket).
    StreamOpen(StreamHeader),
    /// A complete top-level element, with namespaces resolved against the stream root
    /// (so a `<message/>` has `ns == "jabber:client"`, `<stream:features/>` has the streams ns).
    Element(Element),
    /// `</stream:stream>`.
    StreamClose,
}

/// Where the scanner is inside the markup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Between constructs: `pos` is the next byte to classify (text or `<`).
    Markup,
    /// Inside a start or end tag that began at `tag_start`; `quote` is the open quote, if any.
    Tag { quote: Option<u8> },
    /// Inside `<![CDATA[`, looking for `]]>`.
    CData,
    /// Inside an XML declaration, looking for `?>`.
    Decl,
}

/// The stream splitter. Feed it bytes; take frames out.
#[derive(Debug)]
pub struct Framer {
    limits: Limits,
    /// Bytes received and not yet released; everything before `consumed` is already framed
    /// (or was dropped whitespace) and is released on the next [`Framer::feed`], so a
    /// long-lived stream does not grow the buffer.
    buf: Vec<u8>,
    /// End of the bytes already turned into frames.
    consumed: usize,
    /// Scan position (index into `buf`).
    pos: usize,
    scan: Scan,
    /// 0 before a header, 1 inside the stream, ≥ 2 inside a top-level element.
    depth: usize,
    /// Start of the tag (or declaration) being scanned.
    tag_start: usize,
    /// Start of the top-level element being accumulated (valid while `depth ≥ 2`).
    elem_start: usize,
    /// Qualified name of the current stream root as written (`stream:stream`): its end tag
    /// closes the stream, and a new start tag with this name is a restart.
    header_qname: Option<Vec<u8>>,
    /// Namespace bindings declared on the current stream header, inherited by its children.
    bindings: Vec<(String, String)>,
    /// An XML declaration was seen: the next start tag must be a stream header.
    decl_pending: bool,
    /// Sticky error: after one, the stream is unusable.
    failed: Option<XmlError>,
}

impl Framer {
    pub fn new(limits: super::Limits) -> Self {
        Framer {
            limits,
            buf: Vec::new(),
            consumed: 0,
            pos: 0,
            scan: Scan::Markup,
            depth: 0,
            tag_start: 0,
            elem_start: 0,
            header_qname: None,
            bindings: Vec::new(),
            decl_pending: false,
            failed: None,
        }
    }

    /// Append bytes read from the socket. Ignored once the framer has failed.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.consumed > 0 {
            let c = self.consumed;
            self.buf.drain(..c);
            self.pos -= c;
            self.tag_start = self.tag_start.saturating_sub(c);
            self.elem_start = self.elem_start.saturating_sub(c);
            self.consumed = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held for a frame not yet complete (for tests and metrics).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.consumed
    }

    /// True between a stream header and its close.
    pub fn in_stream(&self) -> bool {
        self.depth >= 1
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, super::XmlError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.step() {
            Ok(f) => Ok(f),
            Err(e) => {
                self.failed = Some(e.clone());
                self.buf = Vec::new();
                self.consumed = 0;
                self.pos = 0;
                Err(e)
            }
        }
    }

    /// Start of the item being accumulated, if any (what the byte cap counts from).
    fn item_start(&self) -> Option<usize> {
        if self.depth >= 2 {
            Some(self.elem_start)
        } else if self.scan != Scan::Markup {
            Some(self.tag_start)
        } else {
            None
        }
    }

    /// Out of bytes: enforce the cap on what is held for the unfinished item.
    fn need_more(&self) -> Result<Option<Frame>, XmlError> {
        if let Some(s) = self.item_start() {
            if self.buf.len() - s > self.limits.max_stanza_bytes {
                return Err(XmlError::TooLarge(self.limits.max_stanza_bytes));
            }
        }
        Ok(None)
    }

    /// Does `buf[pos..]` start with `pat`? `None` when too few bytes are here to tell.
    fn starts(&self, pat: &[u8]) -> Option<bool> {
        let have = &self.buf[self.pos..];
        let n = have.len().min(pat.len());
        if have[..n] != pat[..n] {
            Some(false)
        } else if n < pat.len() {
            None
        } else {
            Some(true)
        }
    }

    fn step(&mut self) -> Result<Option<Frame>, XmlError> {
        loop {
            match self.scan {
                Scan::Markup => {
                    let Some(&b) = self.buf.get(self.pos) else { return self.need_more() };
                    if b != b'<' {
                        if self.depth <= 1 {
                            if !is_xml_space(b) {
                                return Err(XmlError::NotWellFormed("text at stream level".into()));
                            }
                            self.pos += 1;
                            self.consumed = self.pos;
                        } else {
                            match self.buf[self.pos..].iter().position(|&c| c == b'<') {
                                Some(i) => self.pos += i,
                                None => {
                                    self.pos = self.buf.len();
                                    return self.need_more();
                                }
                            }
                        }
                        continue;
                    }
                    let Some(&next) = self.buf.get(self.pos + 1) else { return self.need_more() };
                    match next {
                        b'?' => {
                            let have = &self.buf[self.pos..];
                            if have.len() < 6 {
                                let n = have.len().min(5);
                                if have[..n] == b"<?xml"[..n] {
                                    return self.need_more();
                                }
                            }
                            let decl = have.len() >= 6 && &have[..5] == b"<?xml" && is_xml_space(have[5]);
                            if !decl || self.depth >= 2 {
                                return Err(XmlError::Restricted("processing instruction"));
                            }
                            self.tag_start = self.pos;
                            self.pos += 5;
                            self.scan = Scan::Decl;
                        }
                        b'!' => {
                            match self.starts(b"<!--") {
                                Some(true) => return Err(XmlError::Restricted("comment")),
                                None => return self.need_more(),
                                Some(false) => {}
                            }
                            match self.starts(b"<![CDATA[") {
                                Some(true) if self.depth >= 2 => {
                                    self.pos += 9;
                                    self.scan = Scan::CData;
                                    continue;
                                }
                                Some(true) => {
                                    return Err(XmlError::NotWellFormed("text at stream level".into()))
                                }
                                None => return self.need_more(),
                                Some(false) => {}
                            }
                            // DOCTYPE, ENTITY, ELEMENT …: all DTD markup, never allowed.
                            return Err(XmlError::Restricted("DOCTYPE"));
                        }
                        _ => {
                            self.tag_start = self.pos;
                            self.pos += 1;
                            self.scan = Scan::Tag { quote: None };
                        }
                    }
                }
                Scan::Tag { mut quote } => {
                    let mut end = None;
                    let mut i = self.pos;
                    while i < self.buf.len() {
                        let b = self.buf[i];
                        match quote {
                            Some(q) if b == q => quote = None,
                            Some(_) => {}
                            None => match b {
                                b'\'' | b'"' => quote = Some(b),
                                b'>' => {
                                    end = Some(i + 1);
                                    break;
                                }
                                b'<' => return Err(XmlError::NotWellFormed("'<' inside a tag".into())),
                                _ => {}
                            },
                        }
                        i += 1;
                    }
                    match end {
                        None => {
                            self.pos = self.buf.len();
                            self.scan = Scan::Tag { quote };
                            return self.need_more();
                        }
                        Some(end) => {
                            self.pos = end;
                            self.scan = Scan::Markup;
                            if let Some(frame) = self.tag_done(end)? {
                                return Ok(Some(frame));
                            }
                        }
                    }
                }
                Scan::CData => match find(&self.buf[self.pos..], b"]]>") {
                    Some(i) => {
                        self.pos += i + 3;
                        self.scan = Scan::Markup;
                    }
                    None => {
                        self.pos = self.buf.len().saturating_sub(2).max(self.pos);
                        return self.need_more();
                    }
                },
                Scan::Decl => match find(&self.buf[self.pos..], b"?>") {
                    Some(i) => {
                        self.pos += i + 2;
                        self.scan = Scan::Markup;
                        if self.pos - self.tag_start > self.limits.max_stanza_bytes {
                            return Err(XmlError::TooLarge(self.limits.max_stanza_bytes));
                        }
                        // Let the document parser judge the declaration (version, encoding).
                        let mut doc = self.buf[self.tag_start..self.pos].to_vec();
                        doc.extend_from_slice(b"<x/>");
                        let mut limits = self.limits;
                        limits.max_stanza_bytes = limits.max_stanza_bytes.saturating_add(4);
                        parse_document(&doc, &limits, &[])?;
                        self.consumed = self.pos;
                        self.decl_pending = true;
                    }
                    None => {
                        self.pos = self.buf.len().saturating_sub(1).max(self.pos);
                        return self.need_more();
                    }
                },
            }
        }
    }

    /// A tag `buf[tag_start..end]` is complete: update depth, maybe yield a frame.
    fn tag_done(&mut self, end: usize) -> Result<Option<Frame>, XmlError> {
        let tag_start = self.tag_start;
        let is_end = self.buf.get(tag_start + 1) == Some(&b'/');
        let self_closing = !is_end && end >= tag_start + 3 && self.buf[end - 2] == b'/';
        if end - tag_start > self.limits.max_stanza_bytes && self.depth <= 1 {
            return Err(XmlError::TooLarge(self.limits.max_stanza_bytes));
        }

        if is_end {
            match self.depth {
                0 => Err(XmlError::NotWellFormed("end tag before the stream header".into())),
                1 => {
                    let name = trim_ascii(&self.buf[tag_start + 2..end - 1]);
                    if self.decl_pending || self.header_qname.as_deref() != Some(name) {
                        return Err(XmlError::NotWellFormed("unexpected end tag at stream level".into()));
                    }
                    self.depth = 0;
                    self.header_qname = None;
                    self.bindings.clear();
                    self.consumed = end;
                    Ok(Some(Frame::StreamClose))
                }
                2 => {
                    self.depth = 1;
                    self.element_done(end).map(Some)
                }
                _ => {
                    self.depth -= 1;
                    Ok(None)
                }
            }
        } else {
            let qname = tag_qname(&self.buf[tag_start..end]).to_vec();
            let is_header = self.depth == 0
                || (self.depth == 1
                    && (self.decl_pending || self.header_qname.as_deref() == Some(qname.as_slice())));
            if is_header {
                if self_closing {
                    return Err(XmlError::NotWellFormed("self-closing stream header".into()));
                }
                let mut doc = Vec::with_capacity(end - tag_start + 1);
                doc.extend_from_slice(&self.buf[tag_start..end - 1]);
                doc.extend_from_slice(b"/>");
                let mut limits = self.limits;
                limits.max_stanza_bytes = limits.max_stanza_bytes.saturating_add(1);
                let (root, bindings) = parse_document_with_bindings(&doc, &limits, &[])?;
                if root.name != "stream" {
                    return Err(XmlError::NotWellFormed("expected a stream header".into()));
                }
                if root.ns != ns::STREAM {
                    return Err(XmlError::NotWellFormed("stream header in the wrong namespace".into()));
                }
                self.depth = 1;
                self.header_qname = Some(qname);
                self.bindings = bindings;
                self.decl_pending = false;
                self.consumed = end;
                return Ok(Some(Frame::StreamOpen(StreamHeader::from_element(&root))));
            }
            match self.depth {
                1 => {
                    self.elem_start = tag_start;
                    if self_closing {
                        self.element_done(end).map(Some)
                    } else {
                        self.depth = 2;
                        Ok(None)
                    }
                }
                _ => {
                    if !self_closing {
                        self.depth += 1;
                        if self.depth > self.limits.max_depth {
                            return Err(XmlError::TooDeep(self.limits.max_depth));
                        }
                    }
                    Ok(None)
                }
            }
        }
    }

    /// A top-level element `buf[elem_start..end]` is complete: parse it.
    fn element_done(&mut self, end: usize) -> Result<Frame, XmlError> {
        let slice = &self.buf[self.elem_start..end];
        if slice.len() > self.limits.max_stanza_bytes {
            return Err(XmlError::TooLarge(self.limits.max_stanza_bytes));
        }
        // The stream root is depth 1, so a top-level element may nest one level less.
        let mut limits = self.limits;
        limits.max_depth = limits.max_depth.saturating_sub(1);
        let inherited = self.bindings.iter().map(|(p, u)| (p.as_str(), u.as_str()));
        let el = parse_in_scope(slice, &limits, inherited).map(|(el, _)| el).map_err(|e| match e {
            XmlError::TooDeep(_) => XmlError::TooDeep(self.limits.max_depth),
            e => e,
        })?;
        self.consumed = end;
        Ok(Frame::Element(el))
    }
}

/// The qualified name at the start of a start tag `<name …>`.
fn tag_qname(tag: &[u8]) -> &[u8] {
    let body = &tag[1..];
    let n = body.iter().position(|&b| is_xml_space(b) || b == b'/' || b == b'>').unwrap_or(body.len());
    &body[..n]
}

fn trim_ascii(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_xml_space(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|&b| !is_xml_space(b)).map_or(start, |i| i + 1);
    &s[start..end]
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
