//! Who the client is: the TCP peer, unless that peer is a trusted proxy
//! (`[http] trusted_proxies`), in which case the right-most untrusted address of `Forwarded`
//! (RFC 7239) or `X-Forwarded-For` is believed. Logs and per-IP limits use the result.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

use crate::config::{cidr_contains, parse_cidr};

/// The client's address as far as xmpp-cm can tell, and whether it reached us over TLS
/// (directly, or at a trusted proxy that said `proto=https`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    pub ip: IpAddr,
    pub secure: bool,
}

/// Parsed `trusted_proxies`.
#[derive(Debug, Clone, Default)]
pub struct Trusted(Vec<(IpAddr, u8)>);

impl Trusted {
    pub fn new(list: &[String]) -> Trusted {
        Trusted(list.iter().filter_map(|c| parse_cidr(c)).collect())
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| cidr_contains(*n, ip))
    }

    /// The client behind `peer`, given the request headers.
    pub fn client(&self, peer: SocketAddr, tls: bool, headers: &HeaderMap) -> ClientInfo {
        let peer_ip = canonical(peer.ip());
        if !self.contains(peer_ip) {
            return ClientInfo { ip: peer_ip, secure: tls };
        }
        let mut chain: Vec<IpAddr> = Vec::new();
        let mut proto: Option<bool> = None;
        for v in headers.get_all("forwarded") {
            let Ok(v) = v.to_str() else { continue };
            for element in v.split(',') {
                for pair in element.split(';') {
                    let Some((k, val)) = pair.split_once('=') else { continue };
                    let k = k.trim().to_ascii_lowercase();
                    let val = val.trim().trim_matches('"');
                    if k == "for" {
                        if let Some(ip) = parse_node(val) {
                            chain.push(ip);
                        }
                    } else if k == "proto" {
                        proto = Some(val.eq_ignore_ascii_case("https"));
                    }
                }
            }
        }
        if chain.is_empty() {
            for v in headers.get_all("x-forwarded-for") {
                let Ok(v) = v.to_str() else { continue };
                chain.extend(v.split(',').filter_map(|s| parse_node(s.trim())));
            }
        }
        if proto.is_none() {
            proto = headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().eq_ignore_ascii_case("https"));
        }
        // Walk from the nearest hop outwards; the first untrusted address is the client.
        let ip = chain.iter().rev().copied().find(|ip| !self.contains(*ip)).or(chain.first().copied()).unwrap_or(peer_ip);
        ClientInfo { ip, secure: proto.unwrap_or(tls) }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// `1.2.3.4`, `1.2.3.4:80`, `[::1]:80`, `"[::1]"`; obfuscated identifiers (`_x`, `unknown`) → None.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    let inner = s.strip_prefix('[').and_then(|r| r.split(']').next())?;
    inner.parse::<IpAddr>().ok().map(canonical)
}

/// The client address an HTTP request stands for: the client IP after the trusted-proxy rules
/// ([`ClientInfo`]), with the TCP peer's port when that IP is the peer itself and port 0
/// when it came from a forwarding header (which carries no port); the TCP peer when there is
/// no `ClientInfo`; `None` when neither is known.
pub fn client_addr(ext: &axum::http::Extensions) -> Option<SocketAddr> {
    let peer = ext.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0);
    match (ext.get::<ClientInfo>().map(|c| c.ip), peer) {
        (Some(ip), Some(p)) if ip == p.ip().to_canonical() => Some(SocketAddr::new(ip, p.port())),
        (Some(ip), _) => Some(SocketAddr::new(ip, 0)),
        (None, p) => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        m
    }

    #[test]
    fn table() {
        let t = Trusted::new(&["10.0.0.0/8".into(), "127.0.0.1".into()]);
        let proxy: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:5555".parse().unwrap();
        type Case<'a> = (SocketAddr, Vec<(&'a str, &'a str)>, &'a str, bool);
        let cases: Vec<Case> = vec![
            // untrusted peer: headers ignored
            (stranger, vec![("x-forwarded-for", "1.1.1.1")], "203.0.113.9", false),
            // trusted peer, XFF: right-most untrusted
            (proxy, vec![("x-forwarded-for", "1.1.1.1, 198.51.100.7, 10.0.0.5")], "198.51.100.7", false),
            // Forwarded wins over XFF, quoted v6 with port, proto=https
            (proxy, vec![("forwarded", "for=\"[2001:db8::1]:4711\";proto=https"), ("x-forwarded-for", "1.1.1.1")], "2001:db8::1", true),
            (proxy, vec![("x-forwarded-for", "192.0.2.1"), ("x-forwarded-proto", "https")], "192.0.2.1", true),
            // trusted peer without headers: the peer itself
            (proxy, vec![], "10.1.2.3", false),
            // all hops trusted: the farthest
            (proxy, vec![("x-forwarded-for", "10.9.9.9, 127.0.0.1")], "10.9.9.9", false),
            // garbage is skipped
            (proxy, vec![("x-forwarded-for", "unknown, _hidden, 192.0.2.44")], "192.0.2.44", false),
        ];
        for (peer, hdrs, want, secure) in cases {
            let c = t.client(peer, false, &h(&hdrs));
            assert_eq!(c.ip.to_string(), want, "{hdrs:?}");
            assert_eq!(c.secure, secure, "{hdrs:?}");
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn client_addr_prefers_client_info() {
        use axum::extract::ConnectInfo;
        let peer = sa("127.0.0.1:40000");
        let mut ext = axum::http::Extensions::new();
        assert_eq!(client_addr(&ext), None);
        ext.insert(ConnectInfo(peer));
        assert_eq!(client_addr(&ext), Some(peer));
        ext.insert(ClientInfo { ip: "192.0.2.55".parse().unwrap(), secure: false });
        assert_eq!(client_addr(&ext), Some(sa("192.0.2.55:0")));
        ext.insert(ClientInfo { ip: peer.ip(), secure: false });
        assert_eq!(client_addr(&ext), Some(peer));
    }
}
