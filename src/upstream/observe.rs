//! Watching one connect step by step: [`super::connect_observed`] reports every step it takes
//! (route, addresses, SSRF guard, TCP, PROXY header, stream open, STARTTLS, TLS) to an
//! [`Observer`] as it happens, with the step's duration. Sessions pass [`Quiet`], which ignores
//! everything; `xmpp-cm check` (`crate::check`) prints each step. Only the path taken is
//! reported, so what `check` shows is what a session does, not a re-enactment of it.
//! Describing a step for humans is the observer's business; nothing here formats text.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::config::ProxyProtocol;
use crate::error::Error;
use crate::xml::{Element, StreamHeader};

use super::resolve::{Resolution, Target};
use super::tls::Verification;

/// Receives the steps of a connect in the order they are taken. Called inline on the connect
/// path, so it must not block.
pub trait Observer: Send + Sync {
    fn step(&self, took: Duration, what: What<'_>);
}

/// The observer sessions use: nothing is recorded.
pub struct Quiet;

impl Observer for Quiet {
    fn step(&self, _took: Duration, _what: What<'_>) {}
}

/// One step of a connect, and how it went.
#[derive(Debug)]
pub enum What<'a> {
    /// Where to connect and why: static route, SRV answers, or the domain:5222 fallback.
    Route(&'a Resolution),
    /// A direct-TLS target passed over because `upstream.tls = none`.
    Skipped { target: &'a Target },
    /// A target host's addresses: an IP literal as is, otherwise its A and AAAA records.
    Addresses { target: &'a Target, result: Result<&'a [IpAddr], &'a Error> },
    /// The SSRF guard's decision on those addresses.
    Guard { target: &'a Target, decision: &'a Guard },
    /// TCP connect to one address (`Ok`: the local address used).
    Tcp { addr: SocketAddr, result: Result<SocketAddr, &'a Error> },
    /// The PROXY protocol header, the first bytes on the connection (`len` bytes).
    ProxyHeader { version: ProxyProtocol, len: usize, result: Result<(), &'a Error> },
    /// Our stream header out, the server's header and `<stream:features/>` in (`secure`: over TLS).
    StreamOpen { secure: bool, result: Result<(&'a StreamHeader, &'a Element), &'a Error> },
    /// The STARTTLS decision and exchange.
    StartTls(Result<StartTls, &'a Error>),
    /// A TLS handshake (`direct`: XEP-0368, from the first byte). `verification` is what the
    /// certificate verifier saw, when the TLS configs record it (`Upstream::new_observed`).
    Tls { direct: bool, result: Result<TlsInfo, &'a Error>, verification: Option<Verification> },
}

/// The SSRF guard on one target ([`super::resolve::refused_address`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// The addresses that will be tried.
    pub allowed: Vec<IpAddr>,
    /// The addresses refused, each with why.
    pub refused: Vec<(IpAddr, &'static str)>,
    /// Why the guard was not applied at all (a trusted target, `allow_private_targets`).
    pub bypassed: Option<&'static str>,
}

/// What happened about STARTTLS on a plaintext stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTls {
    /// `<starttls/>` answered with `<proceed/>`: the TLS handshake follows.
    Proceeded,
    /// `upstream.tls = opportunistic` and the server offers none: the stream stays plaintext.
    NotOffered,
    /// `upstream.tls = none`: not attempted.
    Disabled,
}

/// A completed TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// "TLSv1_3".
    pub version: String,
    /// "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
    /// The ALPN protocol agreed, if any.
    pub alpn: Option<String>,
}
