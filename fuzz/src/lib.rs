//! The fuzz targets' view of xmpp-cm: the pure parsing modules, compiled from the main crate's
//! source at the same crate paths they have there (`crate::xml`, `crate::error`,
//! `crate::relay`), so fuzz builds stay small: no axum, tokio or rustls. The `xml` module uses
//! nothing outside itself; `error` and `relay` need only `xml`; the BOSH body parser and the
//! WebSocket message classifier need those three. Targets live in `fuzz_targets/`.

#[path = "../../src/xml/mod.rs"]
pub mod xml;

#[path = "../../src/error.rs"]
pub mod error;
pub use error::Error;

#[path = "../../src/relay.rs"]
pub mod relay;

/// `src/bosh/body.rs` (`bosh::body` in the main crate).
#[path = "../../src/bosh/body.rs"]
pub mod bosh_body;

/// `src/websocket/message.rs` (`websocket::message` in the main crate).
#[path = "../../src/websocket/message.rs"]
pub mod ws_message;
