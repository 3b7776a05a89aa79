//! HTTP compression of BOSH responses (issue 17): whether the request's `Accept-Encoding`
//! (RFC 9110 §12.5.3) allows gzip, and the gzip (RFC 1952, flate2's encoder) of a body worth it.
//! No IO. Per response, not per session: nothing here outlives the response it encodes.

use std::io::Write as _;

use axum::http::header::{self, HeaderMap, HeaderValue};
use bytes::Bytes;

use crate::config::{Bosh, Compression};

/// zlib's level 6 (its default): on BOSH bodies (XML stanzas) the same size as level 9 at a
/// third of its time; level 1 is faster on large bodies but a third larger (bench/findings.md).
const LEVEL: u32 = 6;

/// What `[bosh] compression` and one request's `Accept-Encoding` allow for its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Compression is off: the response says nothing about encodings.
    Off,
    /// Compression is on, the client did not accept gzip: identity, with `Vary`.
    Identity,
    /// gzip for bodies of at least `min_bytes`, with `Vary`.
    Gzip { min_bytes: usize },
}

impl Encoding {
    pub fn negotiate(config: &Bosh, headers: &HeaderMap) -> Encoding {
        match config.compression {
            Compression::Off => Encoding::Off,
            Compression::Gzip if accepts_gzip(headers.get_all(header::ACCEPT_ENCODING).iter().map(HeaderValue::as_bytes)) => {
                Encoding::Gzip { min_bytes: config.compression_min_bytes }
            }
            Compression::Gzip => Encoding::Identity,
        }
    }

    /// Encode `body` when this encoding and its size call for it (and gzip makes it smaller);
    /// returns whether it did.
    pub fn encode(self, body: &mut Bytes) -> bool {
        let Encoding::Gzip { min_bytes } = self else { return false };
        if body.len() < min_bytes {
            return false;
        }
        match gzip(body) {
            Some(z) if z.len() < body.len() => {
                *body = Bytes::from(z);
                true
            }
            _ => false,
        }
    }

    /// The headers of a response this encoding applied to: `Vary: Accept-Encoding` whenever
    /// compression is on (the representation depends on the request's header even when it
    /// was not compressed), `Content-Encoding: gzip` when `encoded`.
    pub fn mark(self, h: &mut HeaderMap, encoded: bool) {
        if self == Encoding::Off {
            return;
        }
        // Appended: CORS may already have said `Vary: Origin`.
        h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        if encoded {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
    }
}

/// Whether `gzip` is acceptable under these `Accept-Encoding` field values: listed (or as
/// `x-gzip`) with a q-value above 0, or not listed and `*` is, with a q-value above 0. An
/// explicit `gzip;q=0` wins over everything; an absent or empty header accepts nothing (we
/// answer identity, which is always acceptable). Entries that do not parse are ignored.
pub fn accepts_gzip<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> bool {
    let (mut gzip, mut star): (Option<u16>, Option<u16>) = (None, None);
    for value in values {
        let Ok(value) = std::str::from_utf8(value) else { continue };
        for item in value.split(',') {
            let Some((coding, q)) = parse_item(item) else { continue };
            let slot = if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                &mut gzip
            } else if coding == "*" {
                &mut star
            } else {
                continue;
            };
            // Listed twice: the lower weight holds, so a q=0 anywhere is honoured.
            *slot = Some(slot.map_or(q, |old| old.min(q)));
        }
    }
    gzip.or(star).is_some_and(|q| q > 0)
}

/// One `coding [; q=qvalue]` list member: the coding and its weight in thousandths (1000 when
/// no q is given). None for an empty member or a bad q-value.
fn parse_item(item: &str) -> Option<(&str, u16)> {
    let mut parts = item.split(';');
    let coding = parts.next()?.trim();
    if coding.is_empty() {
        return None;
    }
    let mut q = 1000;
    for p in parts {
        let (k, v) = p.split_once('=')?;
        if k.trim().eq_ignore_ascii_case("q") {
            q = qvalue(v.trim())?;
        }
    }
    Some((coding, q))
}

/// RFC 9110 §12.4.2: `0[.ddd]` or `1[.000]`, in thousandths.
fn qvalue(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths: u16 = format!("{frac:0<3}").parse().ok()?;
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The gzip member of `body`; None only if the encoder fails (it writes to memory, so never).
fn gzip(body: &[u8]) -> Option<Vec<u8>> {
    // XML stanzas shrink several times over; a quarter is a first guess that rarely regrows.
    let mut e = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4 + 64), flate2::Compression::new(LEVEL));
    e.write_all(body).ok()?;
    e.finish().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(v: &str) -> bool {
        accepts_gzip([v.as_bytes()])
    }

    #[test]
    fn gzip_is_accepted_when_listed_with_a_positive_weight() {
        for v in ["gzip", "GZIP", "x-gzip", "gzip, deflate, br", "br;q=1.0, gzip;q=0.8, *;q=0.1", "gzip;q=0.001", "gzip; q=1", "deflate, gzip;Q=0.5"] {
            assert!(accepts(v), "{v:?}");
        }
    }

    #[test]
    fn q_zero_and_absent_codings_are_refused() {
        for v in ["", "identity", "br, deflate", "gzip;q=0", "gzip;q=0.000", "gzip;q=0, *", "*, gzip;q=0", "gzip, gzip;q=0", "*;q=0", "identity;q=1, *;q=0"] {
            assert!(!accepts(v), "{v:?}");
        }
        assert!(!accepts_gzip(std::iter::empty::<&[u8]>()), "no Accept-Encoding header");
    }

    #[test]
    fn the_wildcard_covers_gzip_when_it_is_not_listed() {
        assert!(accepts("*"));
        assert!(accepts("br;q=0.9, *;q=0.5"));
        assert!(!accepts("br, *;q=0"));
    }

    #[test]
    fn bad_q_values_do_not_count() {
        for v in ["gzip;q=2", "gzip;q=1.5", "gzip;q=0.5000", "gzip;q=-1", "gzip;q=abc", "gzip;q=", "gzip;q=.5", "gzip;foo"] {
            assert!(!accepts(v), "{v:?}");
        }
        // A bad member does not spoil the good ones.
        assert!(accepts("gzip;q=7, x-gzip"));
    }

    #[test]
    fn several_header_lines_are_one_list() {
        assert!(accepts_gzip([b"br".as_slice(), b"gzip".as_slice()]));
        assert!(!accepts_gzip([b"gzip".as_slice(), b"gzip;q=0".as_slice()]));
    }

    #[test]
    fn q_values_parse_to_thousandths() {
        assert_eq!(qvalue("1"), Some(1000));
        assert_eq!(qvalue("1.000"), Some(1000));
        assert_eq!(qvalue("0.5"), Some(500));
        assert_eq!(qvalue("0.05"), Some(50));
        assert_eq!(qvalue("0"), Some(0));
        assert_eq!(qvalue("1.001"), None);
    }

    fn config(compression: Compression, min: usize) -> Bosh {
        Bosh { compression, compression_min_bytes: min, ..Bosh::default() }
    }

    fn headers(accept: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(accept).unwrap());
        h
    }

    #[test]
    fn negotiation_follows_the_config_and_the_request() {
        assert_eq!(Encoding::negotiate(&config(Compression::Off, 10), &headers("gzip")), Encoding::Off);
        assert_eq!(Encoding::negotiate(&config(Compression::Gzip, 10), &headers("gzip")), Encoding::Gzip { min_bytes: 10 });
        assert_eq!(Encoding::negotiate(&config(Compression::Gzip, 10), &headers("br")), Encoding::Identity);
        assert_eq!(Encoding::negotiate(&config(Compression::Gzip, 10), &HeaderMap::new()), Encoding::Identity);
    }

    fn roster(n: usize) -> Bytes {
        let items: String = (0..n).map(|i| format!("<item jid='contact{i}@example.org' name='Contact {i}' subscription='both'><group>Friends</group></item>")).collect();
        Bytes::from(format!("<body xmlns='http://jabber.org/protocol/httpbind'><iq type='result' id='r1' xmlns='jabber:client'><query xmlns='jabber:iq:roster'>{items}</query></iq></body>"))
    }

    #[test]
    fn bodies_over_the_threshold_are_gzipped_and_decode_back() {
        use std::io::Read as _;
        let original = roster(50);
        let mut body = original.clone();
        assert!(Encoding::Gzip { min_bytes: 1024 }.encode(&mut body));
        assert!(body.len() * 3 < original.len(), "{} → {}", original.len(), body.len());
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn small_bodies_and_other_encodings_are_left_alone() {
        let original = roster(50);
        for (enc, what) in [(Encoding::Gzip { min_bytes: original.len() + 1 }, "under the threshold"), (Encoding::Identity, "not accepted"), (Encoding::Off, "off")] {
            let mut body = original.clone();
            assert!(!enc.encode(&mut body), "{what}");
            assert_eq!(body, original, "{what}");
        }
        // Over the threshold but incompressible: sent as it is.
        let mut x: u32 = 0x9e37_79b9;
        let noise: Vec<u8> = (0..2048)
            .map(|_| {
                // xorshift32: bytes with no redundancy for deflate to find.
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect();
        let mut body = Bytes::from(noise.clone());
        assert!(!Encoding::Gzip { min_bytes: 64 }.encode(&mut body));
        assert_eq!(body, noise);
    }

    #[test]
    fn vary_whenever_on_and_content_encoding_only_when_encoded() {
        let mut h = HeaderMap::new();
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        Encoding::Identity.mark(&mut h, false);
        let vary: Vec<_> = h.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Origin", "Accept-Encoding"]);
        assert!(h.get(header::CONTENT_ENCODING).is_none());

        let mut h = HeaderMap::new();
        Encoding::Gzip { min_bytes: 1 }.mark(&mut h, true);
        assert_eq!(h.get(header::CONTENT_ENCODING).unwrap(), "gzip");
        assert_eq!(h.get(header::VARY).unwrap(), "Accept-Encoding");

        let mut h = HeaderMap::new();
        Encoding::Off.mark(&mut h, false);
        assert!(h.is_empty());
    }
}
