//! Just enough XML for a load generator: split a byte stream into top-level elements (stream
//! header, stanzas, stream end) and read a start tag's name and attributes. It trusts the peer
//! to send well-formed XML (every target here is a real server or proxy); it never panics on
//! bad input, it reports `Err`. Deliberately independent of the crate's own `xml` module, so
//! the tool measuring xmpp-cm does not share its parser.

use bytes::{Bytes, BytesMut};

/// One thing the splitter found.
#[derive(Debug)]
pub enum Ev {
    /// A start tag at depth 0 (`<stream:stream …>`, `<body …>`): its bytes, and whether it was
    /// self-closing (`<body …/>`).
    Header(Bytes, bool),
    /// A complete element at the frame level (a stanza, `<stream:features/>`, …).
    Frame(Bytes),
    /// The end tag of the depth-0 element (`</stream:stream>`, `</body>`).
    End,
}

/// Resumable scanner over a growing buffer. Frames are the children of the depth-0 element.
#[derive(Debug, Default)]
pub struct Splitter {
    /// Where scanning resumes in the buffer (always at a `<` or at unscanned text).
    pos: usize,
    /// Current element depth; 0 outside the stream/body element.
    depth: u32,
}

const MAX_FRAME: usize = 4 << 20;

impl Splitter {
    pub fn reset(&mut self) {
        *self = Splitter::default();
    }

    /// The next event from `buf`, consuming its bytes; `Ok(None)` when more input is needed.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Ev>, &'static str> {
        loop {
            let Some(off) = memchr(b'<', &buf[self.pos..]) else {
                if self.depth <= 1 {
                    // Text between frames: whitespace keepalives.
                    let _ = buf.split_to(buf.len());
                    self.pos = 0;
                } else {
                    self.pos = buf.len();
                }
                if buf.len() > MAX_FRAME {
                    return Err("frame too large");
                }
                return Ok(None);
            };
            let lt = self.pos + off;
            if self.depth <= 1 && lt > 0 {
                let _ = buf.split_to(lt);
                self.pos = 0;
                return self.next(buf);
            }
            if buf.len() < lt + 2 {
                self.pos = lt;
                return Ok(None);
            }
            let kind = buf[lt + 1];
            let end = match kind {
                b'?' => find(&buf[lt..], b"?>").map(|i| lt + i + 2),
                b'!' => {
                    if buf[lt..].starts_with(b"<!--") {
                        find(&buf[lt..], b"-->").map(|i| lt + i + 3)
                    } else if buf[lt..].starts_with(b"<![CDATA[") {
                        find(&buf[lt..], b"]]>").map(|i| lt + i + 3)
                    } else if buf.len() < lt + 9 {
                        None
                    } else {
                        return Err("DOCTYPE or unknown markup");
                    }
                }
                _ => tag_end(&buf[lt..]).map(|i| lt + i + 1),
            };
            let Some(end) = end else {
                self.pos = lt;
                if buf.len() > MAX_FRAME {
                    return Err("frame too large");
                }
                return Ok(None);
            };
            self.pos = end;
            match kind {
                b'?' | b'!' => {
                    if self.depth <= 1 {
                        let _ = buf.split_to(end);
                        self.pos = 0;
                    }
                }
                b'/' => {
                    if self.depth == 0 {
                        return Err("end tag at depth 0");
                    }
                    self.depth -= 1;
                    if self.depth == 1 {
                        let f = buf.split_to(end).freeze();
                        self.pos = 0;
                        return Ok(Some(Ev::Frame(f)));
                    }
                    if self.depth == 0 {
                        let _ = buf.split_to(end);
                        self.pos = 0;
                        return Ok(Some(Ev::End));
                    }
                }
                _ => {
                    let self_closing = buf[end - 2] == b'/';
                    if self.depth == 0 {
                        let h = buf.split_to(end).freeze();
                        self.pos = 0;
                        if !self_closing {
                            self.depth = 1;
                        }
                        return Ok(Some(Ev::Header(h, self_closing)));
                    }
                    if self_closing {
                        if self.depth == 1 {
                            let f = buf.split_to(end).freeze();
                            self.pos = 0;
                            return Ok(Some(Ev::Frame(f)));
                        }
                    } else {
                        self.depth += 1;
                        if self.depth > 64 {
                            return Err("too deep");
                        }
                    }
                }
            }
        }
    }
}

/// Split a whole document (a BOSH `<body/>`): its root start tag, then its children.
pub fn split_document(doc: &[u8]) -> Result<(Bytes, Vec<Bytes>), &'static str> {
    let mut buf = BytesMut::from(doc);
    let mut sp = Splitter::default();
    let mut root = None;
    let mut children = Vec::new();
    while let Some(ev) = sp.next(&mut buf)? {
        match ev {
            Ev::Header(h, closed) => {
                root = Some(h);
                if closed {
                    break;
                }
            }
            Ev::Frame(f) => children.push(f),
            Ev::End => break,
        }
    }
    root.map(|r| (r, children)).ok_or("no root element")
}

fn memchr(c: u8, s: &[u8]) -> Option<usize> {
    s.iter().position(|&b| b == c)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Index of the `>` closing the tag that starts at `s[0] == '<'`, skipping quoted values.
fn tag_end(s: &[u8]) -> Option<usize> {
    let mut quote = 0u8;
    for (i, &b) in s.iter().enumerate().skip(1) {
        if quote != 0 {
            if b == quote {
                quote = 0;
            }
        } else if b == b'"' || b == b'\'' {
            quote = b;
        } else if b == b'>' {
            return Some(i);
        }
    }
    None
}

/// The element name of a frame (`message`, `stream:features`, `body`, …).
pub fn name(frame: &[u8]) -> &str {
    let s = frame.strip_prefix(b"<").unwrap_or(frame);
    let n = s.iter().position(|&b| b.is_ascii_whitespace() || b == b'>' || b == b'/').unwrap_or(s.len());
    std::str::from_utf8(&s[..n]).unwrap_or("")
}

/// The value of attribute `key` on the frame's start tag (unescaping only `&apos;`/`&quot;`/`&amp;` is not needed
/// for the values the bench reads: ids, sids, conditions, types).
pub fn attr<'a>(frame: &'a [u8], key: &str) -> Option<&'a str> {
    let end = tag_end(frame).unwrap_or(frame.len());
    let tag = &frame[..end];
    let k = key.as_bytes();
    let mut i = 0;
    while i + k.len() + 2 < tag.len() {
        if tag[i].is_ascii_whitespace() && tag[i + 1..].starts_with(k) {
            let mut j = i + 1 + k.len();
            while j < tag.len() && tag[j].is_ascii_whitespace() {
                j += 1;
            }
            if j < tag.len() && tag[j] == b'=' {
                j += 1;
                while j < tag.len() && tag[j].is_ascii_whitespace() {
                    j += 1;
                }
                let q = *tag.get(j)?;
                if q == b'\'' || q == b'"' {
                    let rest = &tag[j + 1..];
                    let n = memchr(q, rest)?;
                    return std::str::from_utf8(&rest[..n]).ok();
                }
            }
        }
        i += 1;
    }
    None
}

/// Text between the first `<tag>` / `<tag …>` and `</tag>` (e.g. the `<jid/>` of a bind result).
pub fn child_text<'a>(frame: &'a [u8], tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}");
    let start = find(frame, open.as_bytes())?;
    let gt = start + memchr(b'>', &frame[start..])? + 1;
    let close = format!("</{tag}>");
    let end = gt + find(&frame[gt..], close.as_bytes())?;
    std::str::from_utf8(&frame[gt..end]).ok()
}

/// Does the frame contain `needle` anywhere (e.g. `>PLAIN<` in a mechanisms list)?
pub fn contains(frame: &[u8], needle: &str) -> bool {
    find(frame, needle.as_bytes()).is_some()
}

/// Escape for an attribute value or text.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[&[u8]]) -> Vec<String> {
        let mut sp = Splitter::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in input {
            buf.extend_from_slice(chunk);
            while let Some(ev) = sp.next(&mut buf).unwrap() {
                out.push(match ev {
                    Ev::Header(h, c) => format!("H{}:{}", c as u8, String::from_utf8_lossy(&h)),
                    Ev::Frame(f) => format!("F:{}", String::from_utf8_lossy(&f)),
                    Ev::End => "E".into(),
                });
            }
        }
        out
    }

    #[test]
    fn splits_a_stream_in_any_chunking() {
        let doc: &[u8] = b"<?xml version='1.0'?><stream:stream a='>'>\n <stream:features><m x=\"/>\">PLAIN</m></stream:features> <message id='1'><body>a&lt;b</body></message><presence/><!-- c --></stream:stream>";
        let want = all(&[doc]);
        assert_eq!(want.len(), 5, "{want:?}");
        assert_eq!(want[3], "F:<presence/>");
        for cut in 1..doc.len() {
            assert_eq!(all(&[&doc[..cut], &doc[cut..]]), want, "cut at {cut}");
        }
        let bytewise: Vec<&[u8]> = doc.chunks(1).collect();
        assert_eq!(all(&bytewise), want);
    }

    #[test]
    fn documents_and_attributes() {
        let (root, kids) = split_document(b"<body sid='s1' type=\"terminate\" condition='x'><message id='a'/><iq id='b'><bind><jid>u@d/r</jid></bind></iq></body>").unwrap();
        assert_eq!(attr(&root, "sid"), Some("s1"));
        assert_eq!(attr(&root, "type"), Some("terminate"));
        assert_eq!(attr(&root, "id"), None);
        assert_eq!(kids.len(), 2);
        assert_eq!(name(&kids[1]), "iq");
        assert_eq!(child_text(&kids[1], "jid"), Some("u@d/r"));
        let (root, kids) = split_document(b"<body xmlns='x' sid='q'/>").unwrap();
        assert_eq!(attr(&root, "sid"), Some("q"));
        assert!(kids.is_empty());
    }
}
