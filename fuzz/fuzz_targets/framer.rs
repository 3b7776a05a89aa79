//! Framer on arbitrary bytes after a stream header: never panics, and cutting the same input
//! into chunks (sizes taken from the first byte) yields the same frames as feeding it whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmpp_cm_fuzz::xml::{Frame, Framer, Limits, XmlError};

const HDR: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' id='x' version='1.0'>";

fn run(chunks: &[&[u8]]) -> (Vec<Frame>, Option<XmlError>) {
    let limits = Limits { max_stanza_bytes: 4096, max_depth: 16, max_attrs: 16, max_name_len: 64 };
    let mut f = Framer::new(limits);
    let mut frames = Vec::new();
    for c in chunks {
        f.feed(c);
        loop {
            match f.next_frame() {
                Ok(Some(fr)) => frames.push(fr),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else { return };
    let step = usize::from(step % 16) + 1;
    let whole = run(&[HDR, body]);
    let mut chunks: Vec<&[u8]> = vec![HDR];
    chunks.extend(body.chunks(step));
    let split = run(&chunks);
    assert_eq!(split.0, whole.0);
    assert_eq!(split.1.is_some(), whole.1.is_some());
});
