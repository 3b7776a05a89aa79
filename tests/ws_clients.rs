//! Real clients over WebSocket through the xmpp-cm binary, against both real upstream servers
//! (Prosody and ejabberd): strophe.js (WS-12, WS-16, WS-27 string matching), @xmpp/client
//! (stanzas without xmlns, WS-23; waits 2 s for our `<close/>`, WS-16), and a mixed pair where a
//! BOSH user and a WebSocket user chat both ways.

mod support;

use std::time::Duration;

use support::{node, Ejabberd, EjabberdOpts, Prosody, ProsodyOpts, XmppCm};

const T: Duration = Duration::from_secs(60);

fn run_clients(cm: &XmppCm, domain: &str, server: &str) {
    let ws = cm.ws_url();
    let bosh = cm.bosh_url();
    let out = node("strophe-chat.mjs", &["--url", &ws, "--domain", domain, "--messages", "3"], T);
    out.assert_ok(&format!("strophe.js over WebSocket via xmpp-cm to {server}"));
    let out = node("xmppjs-chat.mjs", &["--url", &ws, "--domain", domain, "--a", "carol:carolpass", "--b", "dave:davepass", "--messages", "3"], T);
    out.assert_ok(&format!("xmpp.js over WebSocket via xmpp-cm to {server}"));
    let out = node(
        "strophe-chat.mjs",
        &["--url", &bosh, "--url-b", &ws, "--domain", domain, "--messages", "3"],
        T,
    );
    out.assert_ok(&format!("strophe.js BOSH user ↔ WebSocket user via xmpp-cm to {server}"));
}

#[test]
fn ws_real_clients_prosody() {
    let p = Prosody::start(ProsodyOpts::default());
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    run_clients(&cm, p.domain(), "Prosody");
}

#[test]
fn ws_real_clients_ejabberd() {
    let e = Ejabberd::start(EjabberdOpts::default());
    let cm = XmppCm::start(&XmppCm::config_for(&e));
    run_clients(&cm, e.domain(), "ejabberd");
}
