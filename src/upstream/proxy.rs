//! The PROXY protocol header (HAProxy's spec, versions 1 and 2) that tells the upstream server
//! the client's real address (`upstream.proxy_protocol`).
//!
//! The header is the first thing written on the upstream TCP connection, before the stream
//! header and before STARTTLS or direct TLS. Source = the client (after the trusted-proxy
//! rules of `front::client_ip`); destination = the upstream address xmpp-cm connected to, i.e.
//! what the server would have seen as its local address had the client connected directly.
//! When the client address is unknown the header still goes out (the server requires it), as
//! `PROXY UNKNOWN` (v1) or the `LOCAL` command (v2): the server then uses the socket's own
//! addresses.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::config::ProxyProtocol;

/// The v2 signature (12 bytes).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header bytes for `version`, or nothing when it is off.
pub fn header(version: ProxyProtocol, client: Option<SocketAddr>, upstream: SocketAddr) -> Vec<u8> {
    match version {
        ProxyProtocol::Off => Vec::new(),
        ProxyProtocol::V1 => v1(client, upstream).into_bytes(),
        ProxyProtocol::V2 => v2(client, upstream),
    }
}

/// Both addresses in one family: IPv4 when both are IPv4 (or IPv4-mapped), otherwise IPv6
/// with IPv4 addresses mapped (`::ffff:a.b.c.d`). The PROXY header has one family for both.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (src, dst) = (canon(src), canon(dst));
    if src.is_ipv4() == dst.is_ipv4() {
        return (src, dst);
    }
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    (v6(src), v6(dst))
}

/// `PROXY TCP4 192.0.2.55 127.0.0.1 0 5222\r\n` (at most 107 bytes).
pub fn v1(client: Option<SocketAddr>, upstream: SocketAddr) -> String {
    let Some(client) = client else {
        return "PROXY UNKNOWN\r\n".into();
    };
    let (src, dst) = same_family(client, upstream);
    let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!("PROXY {fam} {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port())
}

/// Signature, version 2 + command (PROXY, or LOCAL when the client is unknown), family
/// (TCP over IPv4 / IPv6), length, then addresses and ports in network order. No TLVs.
pub fn v2(client: Option<SocketAddr>, upstream: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    let Some(client) = client else {
        // LOCAL, AF_UNSPEC, no address block.
        out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        return out;
    };
    let (src, dst) = same_family(client, upstream);
    let mut addrs = Vec::with_capacity(36);
    let fam = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            addrs.extend_from_slice(&s.octets());
            addrs.extend_from_slice(&d.octets());
            0x11 // AF_INET, STREAM
        }
        (s, d) => {
            let six = |ip: IpAddr| match ip {
                IpAddr::V6(v6) => v6,
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            };
            let (s, d): (Ipv6Addr, Ipv6Addr) = (six(s), six(d));
            addrs.extend_from_slice(&s.octets());
            addrs.extend_from_slice(&d.octets());
            0x21 // AF_INET6, STREAM
        }
    };
    addrs.extend_from_slice(&src.port().to_be_bytes());
    addrs.extend_from_slice(&dst.port().to_be_bytes());
    out.push(0x21); // version 2, PROXY
    out.push(fam);
    out.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&addrs);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_exact_bytes() {
        let up = a("127.0.0.1:5222");
        let cases: &[(Option<&str>, &str, &str)] = &[
            (Some("192.0.2.55:0"), "127.0.0.1:5222", "PROXY TCP4 192.0.2.55 127.0.0.1 0 5222\r\n"),
            (Some("198.51.100.7:51234"), "10.0.0.5:5222", "PROXY TCP4 198.51.100.7 10.0.0.5 51234 5222\r\n"),
            (Some("[2001:db8::1]:4000"), "[2001:db8::2]:5222", "PROXY TCP6 2001:db8::1 2001:db8::2 4000 5222\r\n"),
            // Mixed families: both as IPv6 (IPv4-mapped).
            (Some("[2001:db8::1]:4000"), "127.0.0.1:5222", "PROXY TCP6 2001:db8::1 ::ffff:127.0.0.1 4000 5222\r\n"),
            (Some("192.0.2.1:1"), "[::1]:5222", "PROXY TCP6 ::ffff:192.0.2.1 ::1 1 5222\r\n"),
            // An IPv4-mapped client (dual-stack listener) is written as plain IPv4.
            (Some("[::ffff:192.0.2.9]:7"), "127.0.0.1:5222", "PROXY TCP4 192.0.2.9 127.0.0.1 7 5222\r\n"),
            (None, "127.0.0.1:5222", "PROXY UNKNOWN\r\n"),
        ];
        for (client, upstream, want) in cases {
            let got = header(ProxyProtocol::V1, client.map(a), a(upstream));
            assert_eq!(String::from_utf8(got).unwrap(), *want);
        }
        // The longest possible line fits the spec's 107 bytes.
        let long = v1(
            Some(a("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535")),
            a("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535"),
        );
        assert_eq!(long.len(), 104);
        assert!(header(ProxyProtocol::Off, Some(a("192.0.2.1:1")), up).is_empty());
    }

    #[test]
    fn v2_exact_bytes_ipv4() {
        let got = header(ProxyProtocol::V2, Some(a("192.0.2.55:258")), a("127.0.0.1:5222"));
        let want: Vec<u8> = [
            &b"\r\n\r\n\x00\r\nQUIT\n"[..],
            &[0x21, 0x11, 0x00, 0x0c],
            &[192, 0, 2, 55],
            &[127, 0, 0, 1],
            &[0x01, 0x02],
            &[0x14, 0x66], // 5222
        ]
        .concat();
        assert_eq!(got, want);
        assert_eq!(got.len(), 16 + 12);
    }

    #[test]
    fn v2_exact_bytes_ipv6_and_mixed() {
        let got = v2(Some(a("[2001:db8::1]:1")), a("[::1]:5222"));
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]);
        want.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01]);
        want.extend_from_slice(&[0x00, 0x01, 0x14, 0x66]);
        assert_eq!(got, want);

        let mixed = v2(Some(a("192.0.2.55:0")), a("[::1]:5222"));
        assert_eq!(&mixed[12..16], &[0x21, 0x21, 0x00, 0x24]);
        assert_eq!(&mixed[16..32], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 55]);
    }

    #[test]
    fn v2_unknown_client_is_local_command() {
        let got = v2(None, a("127.0.0.1:5222"));
        assert_eq!(got, [&V2_SIGNATURE[..], &[0x20, 0x00, 0x00, 0x00]].concat());
    }
}
