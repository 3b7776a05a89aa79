//! The front page on the public listeners (`GET /`): what this endpoint is, the BOSH and
//! WebSocket URLs clients should use, and a "Test this network" button whose test runs in the
//! visitor's browser (`front_page/front.js`): a WebSocket and a BOSH session, each only as far as
//! the server's stream features (no login), with the outcome and round-trip time of each and one
//! plain sentence ("WebSocket is blocked on this network; clients will fall back to BOSH").
//!
//! The page loads nothing from elsewhere and runs under a strict Content-Security-Policy, so its
//! script, style and icon are separate files served here ([`JS_PATH`], [`CSS_PATH`],
//! [`ICON_PATH`]), compiled into the binary. The URLs are derived like host-meta's
//! ([`crate::hostmeta`]): `[http] public_url` when set, else the request's `Host` and scheme
//! (https/wss only when xmpp-cm terminated TLS or a trusted proxy said so). Unlike host-meta,
//! plain http/ws URLs are shown too, since the page is for people, and any `Host` gets the page.
//! The domain the test opens a stream to is the first served one, given to the script in a
//! data attribute.
//!
//! `[http] front_page = false` turns all these paths into 404, as if they did not exist. The
//! routes are always registered and the switch read per request, so a configuration reload
//! can turn the page on or off. This module leaves the transports themselves to
//! [`crate::bosh`] and [`crate::websocket`]: the test is an ordinary client of them.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::config::Http;
use crate::state::AppState;
use crate::Config;

pub const PATH: &str = "/";
pub const JS_PATH: &str = "/xmpp-cm/front.js";
pub const CSS_PATH: &str = "/xmpp-cm/front.css";
/// Named by the page, so browsers ask for it rather than for a missing `/favicon.ico`.
pub const ICON_PATH: &str = "/xmpp-cm/icon.svg";
/// Every path this module serves (for the metrics route label).
pub const PATHS: [&str; 4] = [PATH, JS_PATH, CSS_PATH, ICON_PATH];

const PAGE: &str = include_str!("front_page/page.html");
const JS: &str = include_str!("front_page/front.js");
const CSS: &str = include_str!("front_page/front.css");
const ICON: &str = include_str!("front_page/favicon.svg");

/// Everything but the `connect-src` sources: nothing inline, nothing from elsewhere, no
/// framing, no forms, no `<base>`.
const CSP_HEAD: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                        base-uri 'none'; form-action 'none'; frame-ancestors 'none'; connect-src 'self' ws: wss:";

/// The page and its assets, to merge into the public router. A path that `http` already gives to
/// BOSH or WebSocket (say `bosh_path = "/"`) stays theirs: the page is then not served there.
pub fn routes(http: &Http) -> Router<Arc<AppState>> {
    let free = |p: &str| p != http.bosh_path && p != http.websocket_path;
    let mut r = Router::new();
    if free(PATH) {
        r = r.route(PATH, get(page).fallback(other_method));
    }
    if free(JS_PATH) {
        r = r.route(JS_PATH, get(script).fallback(other_method));
    }
    if free(CSS_PATH) {
        r = r.route(CSS_PATH, get(style).fallback(other_method));
    }
    if free(ICON_PATH) {
        r = r.route(ICON_PATH, get(icon).fallback(other_method));
    }
    r
}

async fn page(State(state): State<Arc<AppState>>, ext: axum::http::Extensions, headers: HeaderMap, uri: Uri) -> Response {
    let config = state.config();
    if !config.http.front_page {
        return StatusCode::NOT_FOUND.into_response();
    }
    let secure = ext.get::<crate::front::ClientInfo>().is_some_and(|c| c.secure);
    let links = links(&config, &headers, &uri, secure);
    let mut r = render(&config, &links).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    // The URLs depend on the Host header: never cached (by a shared cache in particular).
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&csp(&config.http)) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    security_headers(h);
    r
}

async fn script(State(state): State<Arc<AppState>>) -> Response {
    asset(&state, JS, "text/javascript; charset=utf-8")
}

async fn style(State(state): State<Arc<AppState>>) -> Response {
    asset(&state, CSS, "text/css; charset=utf-8")
}

async fn icon(State(state): State<Arc<AppState>>) -> Response {
    asset(&state, ICON, "image/svg+xml")
}

fn asset(state: &AppState, body: &'static str, content_type: &'static str) -> Response {
    if !state.config().http.front_page {
        return StatusCode::NOT_FOUND.into_response();
    }
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidated every time: a new binary may bring a new script.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    security_headers(h);
    r
}

/// Anything but GET and HEAD: 405 naming the two, or 404 while the page is off.
async fn other_method(State(state): State<Arc<AppState>>, method: Method) -> Response {
    if !state.config().http.front_page {
        return StatusCode::NOT_FOUND.into_response();
    }
    tracing::debug!(%method, "front page: method not allowed");
    let mut r = StatusCode::METHOD_NOT_ALLOWED.into_response();
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    r
}

fn security_headers(h: &mut HeaderMap) {
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

/// The page's policy. With `public_url` set the BOSH URL may be another origin than the
/// page's (the page reached through an internal name): that origin is allowed too.
pub fn csp(http: &Http) -> String {
    let origin = http
        .public_url
        .strip_prefix("https://")
        .and_then(|r| r.split('/').next())
        .filter(|a| authority_ok(a))
        .map(|a| format!(" https://{a}"))
        .unwrap_or_default();
    format!("{CSP_HEAD}{origin}")
}

/// The URLs the page shows and tests. Without a usable `Host` they are the bare paths, which
/// the script resolves against the page's own address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links {
    pub bosh: String,
    pub websocket: String,
}

/// `public_url` when set; else from `Host` (or the HTTP/2 authority) and the scheme the
/// request came over (`secure`: xmpp-cm's TLS, or a trusted proxy's word; see
/// [`crate::front::ClientInfo`]).
pub fn links(config: &Config, headers: &HeaderMap, uri: &Uri, secure: bool) -> Links {
    let http = &config.http;
    if let Some(rest) = http.public_url.strip_prefix("https://") {
        let rest = rest.trim_end_matches('/');
        return Links { bosh: format!("https://{rest}{}", http.bosh_path), websocket: format!("wss://{rest}{}", http.websocket_path) };
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| authority_ok(h));
    match host {
        Some(h) => {
            let (web, ws) = if secure { ("https", "wss") } else { ("http", "ws") };
            Links { bosh: format!("{web}://{h}{}", http.bosh_path), websocket: format!("{ws}://{h}{}", http.websocket_path) }
        }
        None => Links { bosh: http.bosh_path.clone(), websocket: http.websocket_path.clone() },
    }
}

/// A Host value safe to echo into a URL and a CSP: DNS characters, brackets and a port only.
fn authority_ok(a: &str) -> bool {
    !a.is_empty() && a.len() <= 255 && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

/// The served domains, in configuration order: the allow-list, then static routes not in it.
fn domains(config: &Config) -> Vec<&str> {
    let mut out: Vec<&str> = config.upstream.domains.iter().map(String::as_str).collect();
    for d in config.upstream.routes.keys() {
        if !out.iter().any(|x| x.eq_ignore_ascii_case(d)) {
            out.push(d);
        }
    }
    out
}

/// The page, with every inserted value escaped (they end up in attributes and text alike).
pub fn render(config: &Config, links: &Links) -> String {
    let esc = |s: &str| {
        let mut out = String::new();
        crate::xml::element::escape_attr(s, &mut out);
        out
    };
    let domains = domains(config);
    let first = domains.first().copied().unwrap_or("");
    let list = match domains.as_slice() {
        [] => "no domain".to_string(),
        [one] => esc(one),
        [init @ .., last] => format!("{} and {}", init.iter().map(|d| esc(d)).collect::<Vec<_>>().join(", "), esc(last)),
    };
    PAGE.replace("{{DOMAIN}}", &esc(first))
        .replace("{{DOMAINS}}", &list)
        .replace("{{BOSH_URL}}", &esc(&links.bosh))
        .replace("{{WEBSOCKET_URL}}", &esc(&links.websocket))
}

#[cfg(test)]
mod tests;
