//! Cluster sids: the owner of a BOSH session, sealed into its sid (ARCHITECTURE.md §5).
//!
//! A sid is URL-safe base64 (no padding) of
//! `version (1) ‖ nonce (12) ‖ AES-256-GCM(random (8) ‖ owner ip (16, v4-mapped) ‖ port (2) ‖ epoch (8)) ‖ tag (16)`:
//! 84 characters, 160 random bits (nonce and the random block). The key is derived from the
//! cluster secret with HKDF-SHA256. Encryption keeps internal addresses out of what clients
//! see; the tag means a sid that was not minted under the key opens to nothing, so a client
//! can never name an address for xmpp-cm to dial. Pure: no IO, no clock.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

/// First byte of every sid; also the AEAD's associated data.
const VERSION: u8 = 1;
/// The sealed block: random, ip, port, epoch.
const PLAIN: usize = 8 + 16 + 2 + 8;
const TAG: usize = 16;
const RAW: usize = 1 + NONCE_LEN + PLAIN + TAG;
/// Length of an encoded sid.
pub const SID_LEN: usize = (RAW * 4).div_ceil(3);

/// Mints and opens sids under one cluster key.
pub struct SidCodec {
    key: LessSafeKey,
}

impl SidCodec {
    /// `secret`: the shared key as read from `cluster.secret_file` (trimmed).
    pub fn new(secret: &[u8]) -> SidCodec {
        let key = super::derive(secret, b"xmpp-cm sid v1");
        SidCodec { key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("a 32-byte key")) }
    }

    /// A new sid naming `owner` and its process `epoch`.
    pub fn mint(&self, owner: SocketAddr, epoch: u64) -> String {
        let mut random = [0u8; NONCE_LEN + 8];
        getrandom::getrandom(&mut random).expect("the OS random source is unavailable");
        let (nonce, salt) = random.split_at(NONCE_LEN);
        let mut raw = Vec::with_capacity(RAW);
        raw.push(VERSION);
        raw.extend_from_slice(nonce);
        raw.extend_from_slice(salt);
        let ip = match owner.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        raw.extend_from_slice(&ip.octets());
        raw.extend_from_slice(&owner.port().to_be_bytes());
        raw.extend_from_slice(&epoch.to_be_bytes());
        let nonce = Nonce::try_assume_unique_for_key(nonce).expect("12 bytes");
        let mut sealed = raw.split_off(1 + NONCE_LEN);
        self.key.seal_in_place_append_tag(nonce, Aad::from([VERSION]), &mut sealed).expect("sealing cannot fail");
        raw.extend_from_slice(&sealed);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// The owner and epoch a sid names, if it was minted under this key and not altered.
    pub fn open(&self, sid: &str) -> Option<(SocketAddr, u64)> {
        if sid.len() != SID_LEN {
            return None;
        }
        let mut raw = [0u8; RAW];
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(sid, &mut raw).ok()?;
        if n != RAW || raw[0] != VERSION {
            return None;
        }
        let (head, sealed) = raw.split_at_mut(1 + NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&head[1..]).ok()?;
        let plain = self.key.open_in_place(nonce, Aad::from([VERSION]), sealed).ok()?;
        let ip: [u8; 16] = plain[8..24].try_into().ok()?;
        let ip = Ipv6Addr::from(ip);
        let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
        let port = u16::from_be_bytes(plain[24..26].try_into().ok()?);
        let epoch = u64::from_be_bytes(plain[26..34].try_into().ok()?);
        Some((SocketAddr::new(ip, port), epoch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn round_trip_for_v4_and_v6_owners() {
        let c = SidCodec::new(KEY);
        for owner in ["10.1.2.3:5281", "[fd00::17]:5281", "127.0.0.1:1"] {
            let owner: SocketAddr = owner.parse().unwrap();
            let sid = c.mint(owner, 0xdead_beef_0102);
            assert_eq!(sid.len(), SID_LEN);
            assert!(sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{sid}");
            assert!(!sid.contains("10.1.2.3") && !sid.contains("fd00"));
            assert_eq!(c.open(&sid), Some((owner, 0xdead_beef_0102)));
        }
    }

    #[test]
    fn sids_are_unique() {
        let c = SidCodec::new(KEY);
        let owner: SocketAddr = "10.0.0.1:5281".parse().unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..5_000 {
            assert!(seen.insert(c.mint(owner, 7)));
        }
    }

    /// SEC-01 / issue 14: a forged or altered sid opens to nothing (no address to dial).
    #[test]
    fn forged_altered_and_foreign_sids_do_not_open() {
        let c = SidCodec::new(KEY);
        let other = SidCodec::new(b"another key, also thirty-two bytes!!");
        let owner: SocketAddr = "10.0.0.1:5281".parse().unwrap();
        let sid = c.mint(owner, 1);
        assert_eq!(other.open(&sid), None, "another cluster's key");
        for i in 0..sid.len() {
            let mut b = sid.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(b).unwrap();
            if altered != sid {
                assert_eq!(c.open(&altered), None, "altered at {i}");
            }
        }
        for junk in ["", "abc", &"A".repeat(SID_LEN), &"%".repeat(SID_LEN), &sid[..SID_LEN - 1], &format!("{sid}A")] {
            assert_eq!(c.open(junk), None, "{junk:?}");
        }
        // A single-replica sid (22 characters) is not a cluster sid.
        assert_eq!(c.open(&crate::bosh::registry::new_sid()), None);
    }
}
