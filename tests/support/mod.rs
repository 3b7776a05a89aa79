//! Test harness shared by the integration tests (`mod support;`), one piece per job:
//! - one server-process handle, [`process::Server`] (temp dir, config file, spawn tied to the
//!   test process, readiness on ports, log capture, stop by PID), of which real Prosody and
//!   ejabberd (upstreams with their own throw-away CA and accounts), HAProxy and the xmpp-cm
//!   binary are configurations ([`prosody`], [`ejabberd`], [`haproxy`], [`xmpp_cm`]);
//! - one scripted fake upstream, [`fake`], for faults and timing a real server will not
//!   produce on demand (never instead of a real server);
//! - one WebSocket client, [`ws`] (plain, or over the TLS and HTTP/2 streams of
//!   tests/edge_common); a raw HTTP client for exact BOSH bytes ([`http`]; the BOSH session
//!   client is tests/bosh_client); raw c2s TCP clients ([`c2s`]); the npm clients strophe.js and
//!   xmpp.js ([`node`]).
//!
//! Two tiers use it. The integration tests drive processes through config files and ports,
//! like an operator. tests/inproc.rs runs xmpp-cm's own `server::serve` inside the test process
//! on a port-0 listener, in front of [`fake`], with a paused tokio clock for timer rules.
//!
//! Every process started here is killed by its own PID when its handle drops (SIGTERM, then
//! SIGKILL after 3 s), and is also tied to the test process (SIGKILL via `setpriv --pdeathsig`
//! when the test process dies), so a crashed or timed-out test leaves nothing behind.
//!
//! The start functions block (≤15 s) until the process accepts connections; call them from the
//! test itself, before the interesting part, also inside `#[tokio::test]`.
//!
//! Missing prerequisites (Prosody, ejabberd, HAProxy, `tests/js/node_modules`) make the test
//! panic with a message pointing at `scripts/test.sh`, which installs them.
#![allow(dead_code)]

pub mod c2s;
pub mod certs;
pub mod ejabberd;
pub mod fake;
pub mod haproxy;
pub mod http;
pub mod node;
pub mod process;
pub mod prosody;
pub mod ws;
pub mod xmpp_cm;

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::sync::Mutex;

// Re-exports for tests; each test binary uses only some of them.
#[allow(unused_imports)]
pub use ejabberd::{Ejabberd, EjabberdOpts};
#[allow(unused_imports)]
pub use http::{bosh_post, bosh_post_timeout, http_request, HttpResponse};
#[allow(unused_imports)]
pub use node::{node, NodeOutput};
#[allow(unused_imports)]
pub use prosody::{Prosody, ProsodyOpts};
#[allow(unused_imports)]
pub use xmpp_cm::XmppCm;

/// What xmpp-cm needs to know about an upstream server started by this harness.
pub trait Upstream {
    /// The JID domain it serves ("localhost").
    fn domain(&self) -> &str;
    /// Its client-to-server TCP port on 127.0.0.1 (STARTTLS offered).
    fn c2s_port(&self) -> u16;
    /// PEM file of the throw-away CA that signed its certificate.
    fn ca_file(&self) -> &Path;
}

/// Range the harness hands ports out of: below the Linux ephemeral range (32768–60999), which
/// load tests exhaust with outgoing connections, and above most well-known services.
const PORT_RANGE: std::ops::Range<u16> = 20000..32000;

/// A free TCP port on 127.0.0.1 below 32768. Picked pseudo-randomly (so parallel test processes
/// rarely collide), checked by binding, and never handed out twice by this process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let seed = std::collections::hash_map::RandomState::new();
    for attempt in 0u32..1000 {
        let mut h = seed.build_hasher();
        h.write_u32(std::process::id());
        h.write_u32(attempt);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        let span = PORT_RANGE.end - PORT_RANGE.start;
        let port = PORT_RANGE.start + (h.finish() % span as u64) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        let given = given.get_or_insert_with(HashSet::new);
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("free_port: no free port found in {PORT_RANGE:?} after 1000 attempts");
}

/// The last `n` lines of a text file (for failure messages); empty if it cannot be read.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Root of this crate (where Cargo.toml is), for paths like tests/js.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
