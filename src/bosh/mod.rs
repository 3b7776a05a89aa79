//! BOSH (XEP-0124 + XEP-0206).
//!
//! A request flows: [`http`] (HTTP edge: CORS, size limit, status codes; which session answers:
//! a new one, one of ours, or another replica's) → [`body`] (parse the `<body/>` wrapper) →
//! [`session::start`] (creation policy, then the task) or [`registry`] (sid → the session's
//! channel; [`exchange`] is what crosses it) → [`session`] (one task per session: the async
//! shell, with the upstream IO) → [`core`] (the session's rules as a synchronous state machine;
//! [`window`] orders rids and caches responses). The mapping of every failure to a terminate
//! condition is [`crate::error::Error::bosh_condition`].

pub mod body;
pub mod core;
pub mod exchange;
pub mod http;
pub mod registry;
pub mod session;
pub mod window;

pub use registry::Registry;

/// Content-Type of responses when the session did not ask for another one (BOSH-S-13).
pub const DEFAULT_CONTENT_TYPE: &str = "text/xml; charset=utf-8";
