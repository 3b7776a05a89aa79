//! XEP-0156 discovery on the public listeners: `/.well-known/host-meta` (XRD, RFC 6415) and
//! `/.well-known/host-meta.json` (JRD), advertising the BOSH and WebSocket URLs
//! (CHECKLIST §8, DISCO-01..10).
//!
//! The URLs come from `[http] public_url`; when it is empty they are derived from the request's
//! `Host` and its scheme: https when xmpp-cm terminated TLS itself, or when a proxy listed in
//! `[http] trusted_proxies` said `proto=https` (see `front::client_ip`; the header is never
//! believed from anyone else). A document reached over plain HTTP carries no links
//! (DISCO-03: only `https://` and `wss://` are advertised). Only hosts this service answers for
//! (the served XMPP domains and the `public_url` host) get a document; others get 404
//! (DISCO-06). These two documents, and nothing else here, carry `Access-Control-Allow-Origin: *`
//! (DISCO-05) so web clients on other origins can read them.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::state::AppState;
use crate::Config;

pub const XRD_PATH: &str = "/.well-known/host-meta";
pub const JRD_PATH: &str = "/.well-known/host-meta.json";

pub const REL_BOSH: &str = "urn:xmpp:alt-connections:xbosh";
pub const REL_WEBSOCKET: &str = "urn:xmpp:alt-connections:websocket";
const XRD_NS: &str = "http://docs.oasis-open.org/ns/xri/xrd-1.0";

/// The two routes, to merge into the public router.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(XRD_PATH, get(xrd).options(preflight))
        .route(JRD_PATH, get(jrd).options(preflight))
}

/// The advertised endpoints for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links {
    pub bosh: String,
    pub websocket: String,
}

/// `Err(404)` for a host we do not answer for; `Ok(None)` when the request did not come over
/// HTTPS and no `public_url` is configured (an empty document, DISCO-03).
/// `secure`: the request reached us over HTTPS — directly (our TLS) or through a trusted proxy
/// that said so (`front::client_ip`); never a header believed from anyone.
pub fn links_for(config: &Config, headers: &HeaderMap, uri: &Uri, secure: bool) -> Result<Option<Links>, StatusCode> {
    let host_port = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let host = strip_port(&host_port);
    let public_host = config.http.public_url.strip_prefix("https://").map(|r| strip_port(r.split('/').next().unwrap_or("")));
    let known = config.serves(host) || public_host.is_some_and(|p| p.eq_ignore_ascii_case(host));
    if host.is_empty() || !known {
        return Err(StatusCode::NOT_FOUND);
    }
    let base = if !config.http.public_url.is_empty() {
        // The operator vouches for the public URL (it must be https, checked at load).
        config.http.public_url.trim_end_matches('/').to_string()
    } else if secure && valid_authority(&host_port) {
        format!("https://{host_port}")
    } else {
        return Ok(None);
    };
    let rest = base.strip_prefix("https://").unwrap_or(&base);
    Ok(Some(Links {
        bosh: format!("{base}{}", config.http.bosh_path),
        websocket: format!("wss://{rest}{}", config.http.websocket_path),
    }))
}

fn strip_port(hp: &str) -> &str {
    if let Some(v6) = hp.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    hp.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(hp, |(h, _)| h).trim_end_matches('.')
}

/// A Host value we are willing to echo into a URL: DNS characters, brackets and a port only.
fn valid_authority(hp: &str) -> bool {
    !hp.is_empty() && hp.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

/// The XRD document: default namespace on the root, unprefixed `<Link/>` children (DISCO-04).
pub fn xrd_document(links: Option<&Links>) -> String {
    let mut s = format!("<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='{XRD_NS}'>\n");
    if let Some(l) = links {
        for (rel, href) in [(REL_BOSH, &l.bosh), (REL_WEBSOCKET, &l.websocket)] {
            let mut h = String::new();
            crate::xml::element::escape_attr(href, &mut h);
            s.push_str(&format!("  <Link rel='{rel}' href='{h}'/>\n"));
        }
    }
    s.push_str("</XRD>\n");
    s
}

/// The JRD document (RFC 6415 appendix A).
pub fn jrd_document(links: Option<&Links>) -> String {
    let items: Vec<String> = links
        .map(|l| {
            [(REL_BOSH, &l.bosh), (REL_WEBSOCKET, &l.websocket)]
                .iter()
                .map(|(rel, href)| format!("{{\"rel\":{},\"href\":{}}}", json_str(rel), json_str(href)))
                .collect()
        })
        .unwrap_or_default();
    format!("{{\"links\":[{}]}}\n", items.join(","))
}

/// A JSON string literal (serde_json does the escaping).
fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Converse.js sends `Accept: application/xrd+xml, text/xml`; others send nothing or `*/*`.
/// The XRD is returned whatever the Accept header says (DISCO-10).
/// Whether the request came over HTTPS, as `front` established it.
fn secure(ext: &axum::http::Extensions) -> bool {
    ext.get::<crate::front::ClientInfo>().is_some_and(|c| c.secure)
}

async fn xrd(State(state): State<Arc<AppState>>, ext: axum::http::Extensions, headers: HeaderMap, uri: Uri) -> Response {
    document(&state, secure(&ext), &headers, &uri, "application/xrd+xml; charset=utf-8", xrd_document)
}

async fn jrd(State(state): State<Arc<AppState>>, ext: axum::http::Extensions, headers: HeaderMap, uri: Uri) -> Response {
    document(&state, secure(&ext), &headers, &uri, "application/json", jrd_document)
}

fn document(
    state: &AppState,
    secure: bool,
    headers: &HeaderMap,
    uri: &Uri,
    content_type: &'static str,
    render: fn(Option<&Links>) -> String,
) -> Response {
    let mut r = match links_for(&state.config(), headers, uri, secure) {
        Ok(links) => {
            let mut r = render(links.as_ref()).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
            r
        }
        Err(status) => (status, "no host-meta for this host\n").into_response(),
    };
    r.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    r
}

/// CORS preflight for the two documents (DISCO-05, DISCO-10).
async fn preflight(headers: HeaderMap) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, HEAD, OPTIONS"));
    let allow = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("Accept"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow);
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, OPTIONS"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(public_url: &str) -> Config {
        let mut c = Config::default();
        c.upstream.domains = vec!["a.test".into(), "b.test".into()];
        c.http.public_url = public_url.into();
        c
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn links_by_host_scheme_and_public_url() {
        let uri: Uri = "/.well-known/host-meta".parse().unwrap();
        let derived = config("");
        type Case<'a> = (&'a Config, Vec<(&'static str, &'a str)>, Result<Option<(&'a str, &'a str)>, StatusCode>);
        let cases: Vec<Case> = vec![
            (&derived, vec![("host", "a.test"), ("x-forwarded-proto", "https")], Ok(Some(("https://a.test/http-bind", "wss://a.test/xmpp-websocket")))),
            (&derived, vec![("host", "B.test:8443"), ("x-forwarded-proto", "https")], Ok(Some(("https://b.test:8443/http-bind", "wss://b.test:8443/xmpp-websocket")))),
            // Plain HTTP: a document without links (DISCO-03).
            (&derived, vec![("host", "a.test")], Ok(None)),
            (&derived, vec![("host", "a.test"), ("x-forwarded-proto", "http")], Ok(None)),
            // Unknown host (DISCO-06).
            (&derived, vec![("host", "x.test"), ("x-forwarded-proto", "https")], Err(StatusCode::NOT_FOUND)),
            (&derived, vec![], Err(StatusCode::NOT_FOUND)),
        ];
        for (c, h, want) in cases {
            // In these rows "x-forwarded-proto: https" stands for a request that front judged
            // secure (own TLS, or a trusted proxy that said so).
            let secure = h.iter().any(|(k, v)| *k == "x-forwarded-proto" && *v == "https");
            let got = links_for(c, &headers(&h), &uri, secure);
            let want = want.map(|o| o.map(|(b, w)| Links { bosh: b.into(), websocket: w.into() }));
            assert_eq!(got, want, "{h:?}");
        }
        let public = config("https://chat.example.org/");
        for host in ["chat.example.org", "a.test", "chat.example.org:443"] {
            let got = links_for(&public, &headers(&[("host", host)]), &uri, false).unwrap().unwrap();
            assert_eq!(got.bosh, "https://chat.example.org/http-bind");
            assert_eq!(got.websocket, "wss://chat.example.org/xmpp-websocket");
        }
        assert_eq!(links_for(&public, &headers(&[("host", "evil.test")]), &uri, true), Err(StatusCode::NOT_FOUND));
    }

    #[test]
    fn documents_are_plain_enough_for_naive_parsers() {
        let l = Links { bosh: "https://h/http-bind?a=1&b=2".into(), websocket: "wss://h/ws".into() };
        let x = xrd_document(Some(&l));
        assert!(x.contains("<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>"), "{x}");
        assert!(x.contains("<Link rel='urn:xmpp:alt-connections:xbosh' href='https://h/http-bind?a=1&amp;b=2'/>"), "{x}");
        assert!(x.contains("<Link rel='urn:xmpp:alt-connections:websocket' href='wss://h/ws'/>"), "{x}");
        assert_eq!(xrd_document(None).matches("<Link").count(), 0);
        let j = jrd_document(Some(&l));
        assert_eq!(
            j,
            "{\"links\":[{\"rel\":\"urn:xmpp:alt-connections:xbosh\",\"href\":\"https://h/http-bind?a=1&b=2\"},\
             {\"rel\":\"urn:xmpp:alt-connections:websocket\",\"href\":\"wss://h/ws\"}]}\n"
        );
        assert_eq!(jrd_document(None), "{\"links\":[]}\n");
    }
}
