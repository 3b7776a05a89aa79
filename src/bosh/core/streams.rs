//! The streams of a multi-stream BOSH session (XEP-0124 §16): their names, what each has queued
//! for the client, which one the next response carries, and streams that ended whose terminate
//! the client has not been given yet. Pure; owned by `Core` only when the session advertised
//! the feature (boxed, so a single-stream session pays one pointer and none of these rules).
//!
//! Names are derived, not drawn: the first 64 bits of SHA-1 over a fixed label, the session's
//! sid and the stream's number. The sid is a ≥128-bit bearer secret (SEC-01), so a name is
//! unpredictable to anyone who does not already own the session, unique within the
//! connection manager as the sid is (§16.2 "opaque and unpredictable ... unique"), and reveals
//! nothing of the sid; the table tests get the same names for the same sid.

use sha1::{Digest, Sha1};

use crate::bosh::body::ResponseBody;
use crate::error::Error;
use crate::xml::Element;

/// A stream's number within its session, in the order streams were added; the shell keys its
/// upstream links by it.
pub type StreamId = u32;

/// The stream opened with the session (its link is the shell's first one).
pub const FIRST: StreamId = 0;

/// Why a stream ended, for its terminate body (`type='terminate' stream='…'`, §16.6).
pub(super) struct Ending {
    pub condition: Option<&'static str>,
    /// The server's `<stream:error/>`, relayed like a session's (XEP-0206 §6).
    pub stream_error: Option<Element>,
}

impl Ending {
    pub fn of(err: &Error) -> Ending {
        let stream_error = match err {
            Error::UpstreamStreamError(el) => Some(el.as_ref().clone()),
            _ => None,
        };
        Ending { condition: err.bosh_condition(), stream_error }
    }
}

struct Stream {
    id: StreamId,
    name: String,
    /// Stanzas for the client, serialized (what `Core::out` is for a single-stream session).
    out: String,
    /// Set when the stream ended: it is no longer open, and leaves once a response carried
    /// `out` and its terminate.
    end: Option<Ending>,
    /// The domain it was asked for, until the add-stream answer carries it as `from`.
    from: String,
}

/// What one response carries: the payloads of exactly one stream (§16.4 "MUST NOT contain
/// different payloads for different streams").
struct Batch {
    name: String,
    payload: String,
    /// The stream ended: this response is its terminate.
    end: Option<Ending>,
}

/// The name of stream `id` of the session `sid` (see the module comment).
pub(super) fn stream_name(sid: &str, id: StreamId) -> String {
    let mut h = Sha1::new();
    h.update(b"xmpp-cm bosh stream\0");
    h.update(sid.as_bytes());
    h.update(id.to_be_bytes());
    hex::encode(&h.finalize()[..8])
}

pub(super) struct Streams {
    /// `[bosh] max_streams_per_session`: open streams at most.
    max: usize,
    /// Streams still open or owed a terminate, in the order they were added.
    list: Vec<Stream>,
    next_id: StreamId,
    /// What the names derive from: the sid.
    seed: String,
    /// Where the next response starts looking for a stream with something queued (round robin,
    /// so one busy stream does not starve the others).
    cursor: usize,
    /// The first stream's name, until a response carried it (the creation response, §16.2).
    unannounced: Option<String>,
    /// The stream the pending add-stream or close-one request is about (kept here rather than
    /// in `Core`'s pending request, which every single-stream session carries).
    pub pending: Option<StreamId>,
}

impl Streams {
    pub fn new(sid: &str, max: usize) -> Streams {
        let mut s = Streams { max, list: Vec::new(), next_id: FIRST, seed: sid.to_owned(), cursor: 0, unannounced: None, pending: None };
        s.unannounced = Some(s.push_new(String::new()).1);
        s
    }

    fn name(&self, id: StreamId) -> String {
        stream_name(&self.seed, id)
    }

    fn push_new(&mut self, from: String) -> (StreamId, String) {
        let id = self.next_id;
        self.next_id += 1;
        let name = self.name(id);
        self.list.push(Stream { id, name: name.clone(), out: String::new(), end: None, from });
        (id, name)
    }

    fn open(&self) -> impl Iterator<Item = &Stream> {
        self.list.iter().filter(|s| s.end.is_none())
    }

    pub fn is_open(&self, id: StreamId) -> bool {
        self.open().any(|s| s.id == id)
    }

    pub fn open_count(&self) -> usize {
        self.open().count()
    }

    /// The oldest open stream: where a restart without `stream` goes.
    pub fn first_open(&self) -> Option<StreamId> {
        self.open().next().map(|s| s.id)
    }

    /// The open stream called `name`.
    pub fn find(&self, name: &str) -> Option<StreamId> {
        self.open().find(|s| s.name == name).map(|s| s.id)
    }

    pub fn name_of(&self, id: StreamId) -> Option<&str> {
        self.list.iter().find(|s| s.id == id).map(|s| s.name.as_str())
    }

    /// A new stream to the domain `to` (as asked), or, at the cap, `Err` with a fresh name the
    /// refusal can carry (§16.6: a terminate that names a stream leaves the session alone).
    pub fn add(&mut self, to: &str) -> Result<StreamId, String> {
        if self.open_count() >= self.max {
            let id = self.next_id;
            self.next_id += 1;
            return Err(self.name(id));
        }
        let (id, _) = self.push_new(to.trim().to_ascii_lowercase());
        self.pending = Some(id);
        Ok(id)
    }

    /// The domain the stream was asked for (once: the add-stream answer's `from`).
    pub fn take_from(&mut self, id: StreamId) -> String {
        self.list.iter_mut().find(|s| s.id == id).map(|s| std::mem::take(&mut s.from)).unwrap_or_default()
    }

    pub fn remove(&mut self, id: StreamId) {
        self.list.retain(|s| s.id != id);
    }

    /// The stream ended (its terminate waits for a response); false when it was not open.
    pub fn end(&mut self, id: StreamId, ending: Ending) -> bool {
        match self.list.iter_mut().find(|s| s.id == id && s.end.is_none()) {
            Some(s) => {
                s.end = Some(ending);
                true
            }
            None => false,
        }
    }

    pub fn queue(&mut self, id: StreamId, el: &Element) {
        if let Some(s) = self.list.iter_mut().find(|s| s.id == id && s.end.is_none()) {
            if s.out.capacity() == 0 {
                s.out.reserve(1024);
            }
            el.write_xml(&mut s.out, "");
        }
    }

    pub fn queued_bytes(&self) -> usize {
        self.list.iter().map(|s| s.out.len()).sum()
    }

    /// Something for a response: stanzas, or a terminate owed.
    pub fn has_output(&self) -> bool {
        self.list.iter().any(|s| !s.out.is_empty() || s.end.is_some())
    }

    pub fn take_out(&mut self, id: StreamId) -> String {
        self.list.iter_mut().find(|s| s.id == id).map(|s| std::mem::take(&mut s.out)).unwrap_or_default()
    }

    /// Fill a response: the next stream's stanzas (or terminate) with its name, else nothing;
    /// the first response of all names the first stream (the discovery, §16.2). True when it
    /// carries something.
    pub fn next_body(&mut self, b: &mut ResponseBody) -> bool {
        let Some(batch) = self.take_next() else {
            if let Some(first) = self.unannounced.take() {
                b.push_attr("stream", first);
            }
            return false;
        };
        if let Some(end) = &batch.end {
            b.push_attr("type", "terminate");
            if let Some(c) = end.condition {
                b.push_attr("condition", c);
            }
        }
        if self.unannounced.as_deref() == Some(batch.name.as_str()) {
            self.unannounced = None;
        }
        b.push_attr("stream", batch.name);
        b.push_payload(batch.payload);
        if let Some(el) = batch.end.and_then(|e| e.stream_error) {
            b.push_elements(std::iter::once(&el));
        }
        true
    }

    /// What the next response carries: the next stream (round robin) with stanzas queued or a
    /// terminate owed; a stream that ended leaves with it.
    fn take_next(&mut self) -> Option<Batch> {
        let n = self.list.len();
        let i = (0..n).map(|k| (self.cursor + k) % n).find(|&i| !self.list[i].out.is_empty() || self.list[i].end.is_some())?;
        let s = &mut self.list[i];
        let batch = Batch { name: s.name.clone(), payload: std::mem::take(&mut s.out), end: s.end.take() };
        if batch.end.is_some() {
            self.list.remove(i);
            self.cursor = i;
        } else {
            self.cursor = i + 1;
        }
        Some(batch)
    }
}
