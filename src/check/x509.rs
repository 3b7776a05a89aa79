//! Just enough X.509 (RFC 5280) to tell an operator what a certificate says: subject, issuer,
//! validity and subjectAltName names. Verifying certificates is webpki's job, never this
//! file's; a certificate this reader cannot make sense of is shown as unreadable, nothing more.
//! No X.509 crate is in the dependency tree (webpki keeps its parser private), and these few
//! DER fields do not justify one.

use std::net::IpAddr;

/// What `check` prints about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// "CN=example.org, O=Example" (the attributes an operator recognises, in order).
    pub subject: String,
    pub issuer: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// subjectAltName dNSName entries.
    pub dns_names: Vec<String>,
    /// subjectAltName iPAddress entries.
    pub ips: Vec<IpAddr>,
}

impl Summary {
    /// Every name the certificate is valid for (SAN DNS names, then IPs).
    pub fn names(&self) -> Vec<String> {
        self.dns_names.iter().cloned().chain(self.ips.iter().map(|ip| ip.to_string())).collect()
    }
}

/// One DER TLV: (tag, contents, rest after it).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The contents of a TLV that must have `tag`, and the rest.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, body, rest) = tlv(input)?;
    (t == tag).then_some((body, rest))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

/// Parse a DER certificate; `None` when it is not one this reader understands.
pub fn summarize(der: &[u8]) -> Option<Summary> {
    let (cert, _) = expect(der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    // version [0] EXPLICIT, optional
    if let Some((0xa0, _, r)) = tlv(rest) {
        rest = r;
    }
    let (_serial, r) = expect(rest, 0x02)?;
    let (_sig_alg, r) = expect(r, SEQUENCE)?;
    let (issuer, r) = expect(r, SEQUENCE)?;
    let (validity, r) = expect(r, SEQUENCE)?;
    let (subject, r) = expect(r, SEQUENCE)?;
    let (_spki, mut r) = expect(r, SEQUENCE)?;
    let (nb_tag, nb, v) = tlv(validity)?;
    let (na_tag, na, _) = tlv(v)?;
    let mut s = Summary {
        subject: name(subject),
        issuer: name(issuer),
        not_before: time(nb_tag, nb)?,
        not_after: time(na_tag, na)?,
        dns_names: Vec::new(),
        ips: Vec::new(),
    };
    // issuerUniqueID [1], subjectUniqueID [2], extensions [3]
    while let Some((tag, body, next)) = tlv(r) {
        if tag == 0xa3 {
            extensions(body, &mut s);
        }
        r = next;
    }
    Some(s)
}

fn extensions(body: &[u8], s: &mut Summary) {
    let Some((mut list, _)) = expect(body, SEQUENCE) else { return };
    while let Some((ext, next)) = expect(list, SEQUENCE) {
        list = next;
        let Some((oid, mut r)) = expect(ext, OID) else { continue };
        if let Some((0x01, _, after_critical)) = tlv(r) {
            r = after_critical;
        }
        let Some((value, _)) = expect(r, OCTET_STRING) else { continue };
        if oid == OID_SAN {
            let Some((mut names, _)) = expect(value, SEQUENCE) else { continue };
            while let Some((tag, v, next)) = tlv(names) {
                names = next;
                match (tag, v.len()) {
                    (0x82, _) => s.dns_names.push(String::from_utf8_lossy(v).into_owned()),
                    (0x87, 4) => s.ips.push(IpAddr::from(<[u8; 4]>::try_from(v).unwrap_or_default())),
                    (0x87, 16) => s.ips.push(IpAddr::from(<[u8; 16]>::try_from(v).unwrap_or_default())),
                    _ => {}
                }
            }
        }
    }
}

/// A Name as "CN=…, O=…": the usual attributes by their short name, others by dotted OID.
fn name(rdns: &[u8]) -> String {
    let mut parts = Vec::new();
    let mut rest = rdns;
    while let Some((set, next)) = expect(rest, SET) {
        rest = next;
        let mut atvs = set;
        while let Some((atv, next)) = expect(atvs, SEQUENCE) {
            atvs = next;
            let Some((oid, r)) = expect(atv, OID) else { continue };
            let Some((_, value, _)) = tlv(r) else { continue };
            let key = match oid {
                [0x55, 0x04, 0x03] => "CN".to_string(),
                [0x55, 0x04, 0x0a] => "O".to_string(),
                [0x55, 0x04, 0x0b] => "OU".to_string(),
                [0x55, 0x04, 0x06] => "C".to_string(),
                [0x55, 0x04, 0x07] => "L".to_string(),
                [0x55, 0x04, 0x08] => "ST".to_string(),
                other => dotted(other),
            };
            parts.push(format!("{key}={}", String::from_utf8_lossy(value)));
        }
    }
    if parts.is_empty() {
        "(empty)".into()
    } else {
        parts.join(", ")
    }
}

fn dotted(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc = 0u64;
    for (i, b) in oid.iter().enumerate() {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() && i < 8 {
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        }
    }
    arcs.iter().map(u64::to_string).collect::<Vec<_>>().join(".")
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) → Unix seconds.
fn time(tag: u8, v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
    let digits = |a: usize, b: usize| -> Option<i64> { s.get(a..b)?.parse().ok() };
    let (year, r) = match tag {
        0x17 => {
            let yy = digits(0, 2)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, 2)
        }
        0x18 => (digits(0, 4)?, 4),
        _ => return None,
    };
    let (mo, d) = (digits(r, r + 2)?, digits(r + 2, r + 4)?);
    let (h, mi, sec) = (digits(r + 4, r + 6)?, digits(r + 6, r + 8)?, digits(r + 8, r + 10)?);
    Some(days_from_civil(year, mo, d) * 86_400 + h * 3600 + mi * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds → "2035-04-30 12:00 UTC".
pub fn date(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", secs / 3600, secs % 3600 / 60)
}

/// Seconds since the Unix epoch, now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
