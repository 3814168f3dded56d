//! Tokens already verified, so that a client which sends the same token with every request pays
//! its signature check once (an ES256 verification is most of ordersvc's CPU per request).
//!
//! An entry is the exact token string (every byte of header, claims and signature) and the caller
//! it proved. It is served only before the token's `exp`, without the leeway the full check grants:
//! a token near its end is checked in full again, which may still accept it. The cache belongs to
//! one key set: when the set is replaced (a refresh for an unknown `kid`), the new set starts
//! empty, so no token outlives the key that verified it. A token that fails its check is never
//! cached, and a changed byte makes another string: a forged or altered token misses and is
//! checked in full.
//!
//! Bounded: at [`MAX_TOKENS`] entries the expired ones go, and if none has expired, all of them
//! (each live client then pays one more check). Entries hold no secret beyond what the client
//! sent; the key set holds only public keys.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::Caller;

/// At most this many tokens are remembered (each a few hundred bytes: about 10 MB at most).
pub const MAX_TOKENS: usize = 10_000;

/// Verified tokens of one key set.
#[derive(Default)]
pub struct Verified {
    tokens: Mutex<HashMap<Box<str>, Entry>>,
}

struct Entry {
    caller: Caller,
    /// The token's `exp` (seconds since the Unix epoch): served while the clock is before it.
    expires: u64,
}

impl Verified {
    /// The caller `token` proved, if it was verified with this key set and `now` (seconds since
    /// the Unix epoch) is before its `exp`.
    pub fn get(&self, token: &str, now: u64) -> Option<Caller> {
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = tokens.get(token)?;
        if now < entry.expires {
            return Some(entry.caller.clone());
        }
        tokens.remove(token);
        None
    }

    /// Remembers that `token`, which expires at `expires`, proved `caller` (just checked in full
    /// against this key set). An expired token is not kept.
    pub fn insert(&self, token: &str, caller: Caller, expires: u64, now: u64) {
        if now >= expires {
            return;
        }
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        if tokens.len() >= MAX_TOKENS && !tokens.contains_key(token) {
            tokens.retain(|_, entry| now < entry.expires);
            // All alive: start again rather than pick victims. Clearing keeps an insert O(1) on
            // average, where evicting one at a time after a scan would not.
            if tokens.len() >= MAX_TOKENS {
                tokens.clear();
            }
        }
        tokens.insert(token.into(), Entry { caller, expires });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn customer() -> Caller {
        Caller::Customer("c1".to_owned())
    }

    #[test]
    fn a_token_is_served_until_its_expiry_and_not_from_then_on() {
        let verified = Verified::default();
        verified.insert("token", customer(), NOW + 60, NOW);
        assert_eq!(verified.get("token", NOW), Some(customer()));
        assert_eq!(verified.get("token", NOW + 59), Some(customer()));
        assert_eq!(verified.get("token", NOW + 60), None);
        // Gone for good: an earlier clock reading does not bring it back.
        assert_eq!(verified.get("token", NOW), None);
    }

    #[test]
    fn only_the_exact_token_is_served() {
        let verified = Verified::default();
        verified.insert("header.claims.signature", customer(), NOW + 60, NOW);
        assert_eq!(verified.get("header.claims.signaturf", NOW), None);
        assert_eq!(verified.get("header.claims.signatur", NOW), None);
        assert_eq!(verified.get(" header.claims.signature", NOW), None);
    }

    #[test]
    fn an_expired_token_is_not_kept() {
        let verified = Verified::default();
        verified.insert("token", customer(), NOW, NOW);
        assert_eq!(verified.len(), 0);
        assert_eq!(verified.get("token", NOW - 1), None);
    }

    #[test]
    fn the_cache_never_holds_more_than_its_bound() {
        let verified = Verified::default();
        for n in 0..MAX_TOKENS * 3 {
            verified.insert(&format!("token-{n}"), customer(), NOW + 60, NOW);
            assert!(verified.len() <= MAX_TOKENS);
        }
        // The newest is always kept.
        let last = format!("token-{}", MAX_TOKENS * 3 - 1);
        assert_eq!(verified.get(&last, NOW), Some(customer()));
    }

    #[test]
    fn a_full_cache_drops_its_expired_tokens_first() {
        let verified = Verified::default();
        verified.insert("long-lived", customer(), NOW + 3600, NOW);
        for n in 1..MAX_TOKENS {
            verified.insert(&format!("short-{n}"), customer(), NOW + 10, NOW);
        }
        assert_eq!(verified.len(), MAX_TOKENS);
        verified.insert("new", customer(), NOW + 60, NOW + 20);
        assert_eq!(verified.len(), 2);
        assert_eq!(verified.get("long-lived", NOW + 20), Some(customer()));
    }
}
