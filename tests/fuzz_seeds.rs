//! Regenerates the committed fuzz seed corpus (`fuzz/corpus/<target>/seed-*`) from real traffic:
//! strophe.js (tests/js/strophe-chat.mjs with `--debug`, which logs every raw message it sends
//! and receives) logs in, chats and logs out through xmpp-cm to a real Prosody, once over BOSH
//! and once over WebSocket. Ignored by default (it writes into the source tree):
//!
//!     cargo test --test fuzz_seeds -- --ignored
//!
//! Seeds per target:
//! - `bosh_body`: every `<body/>` strophe.js posted, and every `<body/>` xmpp-cm answered;
//! - `ws_message`: a selector byte (see fuzz_targets/ws_message.rs: 0 = not yet opened,
//!   1 = RFC 7395, 2 = legacy; +0x80 = legacy framing enabled) + every message either way, and
//!   the same traffic re-framed as the legacy `<stream:stream>` framing;
//! - `parse_document`: every stanza (WebSocket message that is not `<open/>`/`<close/>`);
//! - `framer`: a chunk-size byte + the stanzas of one session as one stream.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::{node, Prosody, ProsodyOpts, XmppCm};

/// `[ts] A OUT <data>` / `[ts] B IN  <data>` lines of strophe-client.mjs's debug log.
fn raw_lines(stderr: &str) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    for line in stderr.lines() {
        let Some(rest) = line.split_once("] ").map(|(_, r)| r) else { continue };
        let Some((_, rest)) = rest.split_once(' ') else { continue };
        if let Some(d) = rest.strip_prefix("OUT ") {
            out.push((true, d.to_string()));
        } else if let Some(d) = rest.strip_prefix("IN  ") {
            out.push((false, d.to_string()));
        }
    }
    out
}

fn write_seeds(target: &str, seeds: &BTreeSet<Vec<u8>>) {
    let dir = support::repo_root().join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    for old in std::fs::read_dir(&dir).expect("read corpus dir").flatten() {
        if old.file_name().to_string_lossy().starts_with("seed-") {
            let _ = std::fs::remove_file(old.path());
        }
    }
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:03}")), s).expect("write seed");
    }
    eprintln!("{target}: {} seeds in {}", seeds.len(), dir.display());
}

fn run(cm: &XmppCm, transport: &str, url: &str) -> Vec<(bool, String)> {
    let out = node(
        "strophe-chat.mjs",
        &["--transport", transport, "--url", url, "--domain", "localhost", "--messages", "3", "--debug"],
        Duration::from_secs(60),
    );
    out.assert_ok(&format!("strophe.js {transport} chat (log: {})", cm.log_path().display()));
    let lines = raw_lines(&out.stderr);
    assert!(lines.len() > 10, "too little raw traffic logged: {}", out.stderr);
    lines
}

fn is_framing(m: &str) -> bool {
    m.starts_with("<open") || m.starts_with("<close")
}

/// `<open …/>` → the legacy header with the same attributes.
fn legacy_header(open: &str) -> String {
    let attrs = open
        .trim_start_matches("<open")
        .trim_end_matches('>')
        .trim_end_matches('/')
        .replace("xmlns=\"urn:ietf:params:xml:ns:xmpp-framing\"", "")
        .replace("xmlns='urn:ietf:params:xml:ns:xmpp-framing'", "");
    format!("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'{}>", attrs.trim_end())
}

#[test]
#[ignore = "writes fuzz/corpus/*/seed-*; run explicitly to regenerate the seeds"]
fn capture_fuzz_seeds_from_real_traffic() {
    let p = Prosody::start(ProsodyOpts { tls_required: true, ..Default::default() });
    let cm = XmppCm::start(&XmppCm::config_for(&p));

    let mut bosh = BTreeSet::new();
    for (_, data) in run(&cm, "bosh", &cm.bosh_url()) {
        if data.starts_with("<body") {
            bosh.insert(data.into_bytes());
        }
    }
    let mut ws = BTreeSet::new();
    let mut docs = BTreeSet::new();
    let mut framer = BTreeSet::new();
    let ws_lines = run(&cm, "ws", &cm.ws_url());
    let mut stream = Vec::new();
    for (i, (out, data)) in ws_lines.iter().enumerate() {
        let sel: u8 = if i == 0 { 0 } else { 1 };
        ws.insert([&[sel][..], data.as_bytes()].concat());
        if !is_framing(data) {
            docs.insert(data.clone().into_bytes());
            ws.insert([&[2 | 0x80][..], data.as_bytes()].concat());
            if *out {
                stream.extend_from_slice(data.as_bytes());
            }
        } else if *out && data.starts_with("<open") {
            ws.insert([&[0x80][..], legacy_header(data).as_bytes()].concat());
            ws.insert([&[2 | 0x80][..], legacy_header(data).as_bytes()].concat());
        } else if *out {
            ws.insert([&[2 | 0x80][..], b"</stream:stream>"].concat());
        }
    }
    for step in [0u8, 3, 15] {
        framer.insert([&[step][..], &stream].concat());
    }
    assert!(bosh.len() > 5 && ws.len() > 5 && docs.len() > 3, "{} {} {}", bosh.len(), ws.len(), docs.len());
    write_seeds("bosh_body", &bosh);
    write_seeds("ws_message", &ws);
    write_seeds("parse_document", &docs);
    write_seeds("framer", &framer);
}
