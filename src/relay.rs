//! Every rewrite of what crosses the proxy, in one place, for every transport: feature
//! filtering (starttls, compression, `*-PLUS`, channel binding), XEP-0198 `location` stripping,
//! and namespace normalisation of client stanzas, plus the bounces owed to senders when a
//! client is gone. Transports (bosh/, websocket/, and Direct TLS through the WebSocket session) call these
//! functions; framing and
//! serialization stay in `xml`.

use crate::xml::{ns, Element, Node};
use crate::Error;

/// XEP-0440 SASL channel-binding type advertisement.
pub const SASL_CB: &str = "urn:xmpp:sasl-cb:0";
/// XEP-0198 legacy namespace (still offered by some servers).
pub const SM2: &str = "urn:xmpp:sm:2";
/// RFC 6120 §8.3.3 stanza error conditions.
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// Remove from `<stream:features/>` what cannot pass through a proxy: `<starttls/>` (the TLS hop
/// is ours), `<compression/>` (XEP-0138; HTTP compresses), channel-binding SASL mechanisms
/// (`*-PLUS`: the client's TLS ends at the proxy) and the XEP-0440 `<sasl-channel-binding/>`.
pub fn filter_features(f: &mut Element) {
    f.children.retain(|n| match n {
        Node::Element(e) => {
            !(e.is("starttls", ns::TLS)
                || e.is("compression", ns::COMPRESS_FEATURE)
                || e.is("sasl-channel-binding", SASL_CB))
        }
        Node::Text(_) => true,
    });
    if let Some(mechs) = f.child_mut("mechanisms", ns::SASL) {
        mechs.children.retain(|n| match n {
            Node::Element(m) => !(m.is("mechanism", ns::SASL) && m.text().trim().ends_with("-PLUS")),
            Node::Text(_) => true,
        });
    }
}

/// Rewrite a top-level element received from the upstream server before it reaches a client.
pub fn from_upstream(mut el: Element) -> Element {
    if el.is("features", ns::STREAM) {
        filter_features(&mut el);
    } else if (el.name == "enabled" || el.name == "resumed") && (el.ns == ns::SM3 || el.ns == SM2) {
        // Clients must resume through the proxy, never directly at the server's `location`.
        el.remove_attr("location");
    }
    el
}

/// Check and normalise a top-level element received from a client before it goes upstream.
/// Unqualified and httpbind-qualified elements (xmpp.js, and BOSH stanzas inheriting the
/// `<body/>` namespace) are moved to `jabber:client`, recursively, so `httpbind` never reaches
/// the server. Stream-level elements and `<starttls/>` are refused: they belong to our hop.
pub fn from_client(mut el: Element) -> Result<Element, Error> {
    if el.is("starttls", ns::TLS) {
        return Err(Error::BadRequest("starttls is not relayed".into()));
    }
    if el.ns == ns::STREAM {
        return Err(Error::BadRequest(format!("stream-level <{}/> from a client", safe_name(&el.name))));
    }
    fix_ns(&mut el);
    Ok(el)
}

/// A name for an error message: element names are already XML Names, but keep messages short.
fn safe_name(name: &str) -> &str {
    match name.char_indices().nth(32) {
        Some((i, _)) => &name[..i],
        None => name,
    }
}

fn fix_ns(el: &mut Element) {
    if el.ns.is_empty() || el.ns == ns::HTTPBIND {
        el.ns = ns::CLIENT.to_owned();
        el.prefix = None;
    }
    for c in el.elements_mut() {
        fix_ns(c);
    }
}

/// The error owed to the sender of a stanza that could not be delivered to a client that is
/// gone (XEP-0206 §7, RFC 6120 §10.4.3 / §8.3.3): messages get `recipient-unavailable`, iq
/// requests `service-unavailable`; presence, errors and iq results get nothing.
pub fn bounce(el: &Element) -> Option<Element> {
    if el.ns != ns::CLIENT {
        return None;
    }
    let ty = el.attr("type");
    let (condition, kind) = match (el.name.as_str(), ty) {
        ("message", Some("error")) => return None,
        ("message", _) => ("recipient-unavailable", "cancel"),
        ("iq", Some("get" | "set")) => ("service-unavailable", "cancel"),
        _ => return None,
    };
    let mut b = Element::new(el.name.clone(), ns::CLIENT);
    b.prefix = None;
    if let Some(from) = el.attr("from") {
        b.set_attr("to", from);
    }
    if let Some(to) = el.attr("to") {
        b.set_attr("from", to);
    }
    if let Some(id) = el.attr("id") {
        b.set_attr("id", id);
    }
    b.set_attr("type", "error");
    let error = Element::new("error", ns::CLIENT)
        .with_attr("type", kind)
        .with_child(Element::new(condition, STANZAS));
    Some(b.with_child(error))
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
