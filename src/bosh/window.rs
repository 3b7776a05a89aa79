//! The rid window of one BOSH session (XEP-0124 §14): which rid comes next, which rids may be
//! parked, and the cache of answered responses for retransmissions. Pure: no IO, no clock
//! (times are passed in), so it is tested with tables.
//!
//! Decision (CHECKLIST A-01): the window is anchored on the highest in-sequence rid *received*;
//! a rid above `last + requests` ends the session; the window check happens before the
//! overactivity check (which lives in the session, because it counts held requests).

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

/// Where an incoming rid falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Exactly the next rid: process it now.
    Next,
    /// Inside the window but ahead of a gap: park it until the gap closes.
    Early,
    /// Already received: a retransmission (the caller checks held requests, then the cache).
    Repeat,
    /// Above the window: `item-not-found`.
    TooHigh,
}

/// One answered response kept for retransmissions (BOSH-R-09/10).
#[derive(Debug, Clone)]
pub struct Cached {
    pub rid: u64,
    /// Shared with the answer that went out (no copy per response).
    pub body: Bytes,
    pub sent_at: Instant,
}

#[derive(Debug)]
pub struct Window {
    /// The next rid we expect (highest in-sequence rid received + 1).
    next: u64,
    /// `requests` as advertised.
    requests: u64,
    /// Most recent answered responses in rid order; at most `cache_cap` entries.
    cache: VecDeque<Cached>,
    cache_cap: usize,
}

impl Window {
    /// `first_rid` is the rid of the creation request (already received).
    pub fn new(first_rid: u64, requests: u64, cache_cap: usize) -> Self {
        Window { next: first_rid + 1, requests: requests.max(1), cache: VecDeque::new(), cache_cap: cache_cap.max(1) }
    }

    pub fn next_rid(&self) -> u64 {
        self.next
    }

    /// The highest rid received with no gap below it.
    pub fn last_in_order(&self) -> u64 {
        self.next - 1
    }

    pub fn classify(&self, rid: u64) -> Class {
        if rid < self.next {
            Class::Repeat
        } else if rid == self.next {
            Class::Next
        } else if rid <= self.last_in_order().saturating_add(self.requests) {
            Class::Early
        } else {
            Class::TooHigh
        }
    }

    /// The next rid has been taken for processing.
    pub fn advance(&mut self) {
        self.next += 1;
    }

    /// Remember the response to `rid` (not for pause or error responses).
    pub fn store(&mut self, rid: u64, body: Bytes, now: Instant) {
        let at = self.cache.iter().position(|c| c.rid > rid).unwrap_or(self.cache.len());
        self.cache.insert(at, Cached { rid, body, sent_at: now });
        while self.cache.len() > self.cache_cap {
            self.cache.pop_front();
        }
    }

    pub fn cached(&self, rid: u64) -> Option<&Cached> {
        self.cache.iter().find(|c| c.rid == rid)
    }

    /// The client acknowledged every response up to `rid` (XEP-0124 §9.2): forget them.
    pub fn ack(&mut self, rid: u64) {
        while self.cache.front().is_some_and(|c| c.rid <= rid) {
            self.cache.pop_front();
        }
    }

    /// The highest rid answered so far, if any response is still cached.
    pub fn last_answered(&self) -> Option<u64> {
        self.cache.back().map(|c| c.rid)
    }

    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        // creation rid 100, requests 2 → next 101, window (100, 102]
        let w = Window::new(100, 2, 2);
        let table = [
            (99, Class::Repeat),
            (100, Class::Repeat),
            (101, Class::Next),
            (102, Class::Early),
            (103, Class::TooHigh),
            (u64::MAX, Class::TooHigh),
        ];
        for (rid, want) in table {
            assert_eq!(w.classify(rid), want, "rid {rid}");
        }
    }

    #[test]
    fn window_moves_with_in_order_rids() {
        let mut w = Window::new(1, 2, 2);
        w.advance(); // took 2
        assert_eq!(w.classify(2), Class::Repeat);
        assert_eq!(w.classify(3), Class::Next);
        assert_eq!(w.classify(4), Class::Early);
        assert_eq!(w.classify(5), Class::TooHigh);
    }

    #[test]
    fn near_max_rid_does_not_overflow() {
        let w = Window::new(crate::bosh::body::MAX_RID - 1, 2, 2);
        assert_eq!(w.classify(crate::bosh::body::MAX_RID), Class::Next);
    }

    #[test]
    fn cache_keeps_the_most_recent_and_acks_trim() {
        let now = Instant::now();
        let mut w = Window::new(1, 2, 2);
        w.store(1, Bytes::from_static(b"a"), now);
        w.store(2, Bytes::from_static(b"b"), now);
        w.store(3, Bytes::from_static(b"c"), now);
        assert!(w.cached(1).is_none());
        assert_eq!(w.cached(2).map(|c| &c.body[..]), Some(&b"b"[..]));
        assert_eq!(w.last_answered(), Some(3));
        w.ack(2);
        assert!(w.cached(2).is_none());
        assert_eq!(w.cache_len(), 1);
    }

    #[test]
    fn out_of_order_answers_stay_sorted() {
        let now = Instant::now();
        let mut w = Window::new(1, 3, 3);
        w.store(3, Bytes::from_static(b"c"), now);
        w.store(2, Bytes::from_static(b"b"), now);
        assert_eq!(w.last_answered(), Some(3));
    }
}
