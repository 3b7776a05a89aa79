//! WebSocket message classification and translation (`websocket::message::classify`, then
//! `relay` as the session does) on arbitrary text. The first byte picks the connection state
//! (not yet opened / RFC 7395 / legacy framing) and whether the legacy framing is enabled.
//! Never panics; the legacy framing is only chosen where allowed and a framing, once chosen,
//! never changes; a stanza translated upstream (`jabber:client` stream) parses back to itself,
//! and one translated downstream is a standalone document a client can parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmpp_cm_fuzz::relay;
use xmpp_cm_fuzz::ws_message::{classify, Framing, Inbound};
use xmpp_cm_fuzz::xml::{ns, parse_document, Limits};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let framing = match sel % 3 {
        0 => None,
        1 => Some(Framing::Rfc7395),
        _ => Some(Framing::Legacy),
    };
    let legacy = sel & 0x80 != 0;
    let limits = Limits { max_stanza_bytes: 16 * 1024, max_depth: 16, max_attrs: 16, max_name_len: 64 };
    match classify(text, framing, legacy, &limits) {
        Err(_) | Ok(Inbound::Nothing) | Ok(Inbound::Close) => {}
        Ok(Inbound::Open(_, chosen)) => {
            if let Some(f) = framing {
                assert_eq!(chosen, f, "framing changed mid-connection");
            }
            if chosen == Framing::Legacy {
                assert!(legacy, "legacy framing chosen while disabled");
            }
        }
        Ok(Inbound::Element(el)) => {
            // Client → upstream, as the session sends it.
            if let Ok(up) = relay::from_client(el.clone()) {
                let wire = up.to_xml(ns::CLIENT);
                let inherited = [("", ns::CLIENT), ("stream", ns::STREAM)];
                let back = parse_document(wire.as_bytes(), &Limits::default(), &inherited);
                assert_eq!(back.as_ref(), Ok(&up), "{wire}");
            }
            // The same element coming back down (upstream → client) is a standalone document.
            let down = relay::from_upstream(el).to_xml("");
            if let Err(e) = parse_document(down.as_bytes(), &Limits::default(), &[]) {
                panic!("downstream message does not parse ({e}): {down}");
            }
        }
    }
});
