//! Everything derived from a session id or a user id with the store's secret: record keys,
//! opaque handles and the Cluster bucket that ties a user's keys to one slot.
//!
//! A tower-sessions [`Id`] is 128 random bits. A session bound to a user gets an id whose top
//! [`BUCKET_BITS`] bits are `bucket(user) = HMAC(secret, user) mod 2^14`; the other 114 bits
//! stay random. Every key of that session and of its user (index, epoch) is tagged with the
//! bucket, so a single Lua script may touch them all on a Cluster. The record key never holds
//! the id itself, only `HMAC(secret, id)`, so a Redis dump yields no usable cookie.

use std::sync::Arc;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use redtower_client::{Key, Keyspace, Namespace, Segment};
use sha2::Sha256;
use tower_sessions_core::session::Id;

/// Bits of an id that carry its Cluster bucket.
pub(crate) const BUCKET_BITS: u32 = 14;
const RANDOM_BITS: u32 = 128 - BUCKET_BITS;
const RANDOM_MASK: u128 = (1u128 << RANDOM_BITS) - 1;

/// The namespace of all session keys.
pub(crate) const NAMESPACE: &str = "s";

#[derive(Clone)]
pub(crate) struct Keys {
    /// HMAC-SHA256 keyed with the secret and fed the domain of session ids / user ids: cloned
    /// per use, so the key schedule is computed once.
    id_mac: Arc<Hmac<Sha256>>,
    user_mac: Arc<Hmac<Sha256>>,
    ns: Namespace,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("ns", &self.ns)
            .finish_non_exhaustive()
    }
}

impl Keys {
    pub(crate) fn new(keyspace: &Keyspace, secret: &[u8]) -> Self {
        let keyed = |domain: &[u8]| {
            // HMAC accepts keys of any length.
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
                .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
            mac.update(domain);
            Arc::new(mac)
        };
        Self {
            id_mac: keyed(b"rt-session-id\0"),
            user_mac: keyed(b"rt-session-user\0"),
            ns: keyspace.namespace(NAMESPACE),
        }
    }

    fn mac(keyed: &Hmac<Sha256>, data: &[u8]) -> [u8; 32] {
        let mut mac = keyed.clone();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// The bucket of a user (`0..2^14`).
    pub(crate) fn user_bucket(&self, user: &str) -> u16 {
        let m = Self::mac(&self.user_mac, user.as_bytes());
        u16::from_be_bytes([m[0], m[1]]) >> (16 - BUCKET_BITS)
    }

    /// The opaque handle of a session: 22 base64url characters of `HMAC(secret, id)`.
    pub(crate) fn handle(&self, id: &Id) -> String {
        let m = Self::mac(&self.id_mac, &id.0.to_le_bytes());
        URL_SAFE_NO_PAD.encode(&m[..16])
    }

    /// `<prefix>:s:{<bucket>}`: the tag all keys of one bucket share.
    fn base(&self, bucket: u16) -> Key {
        self.ns.key(u32::from(bucket))
    }

    pub(crate) fn record_by_handle(&self, bucket: u16, handle: &str) -> Key {
        self.base(bucket).push(handle)
    }

    pub(crate) fn record(&self, id: &Id) -> Key {
        self.record_by_handle(bucket_of(id), &self.handle(id))
    }

    /// The text every record key of `bucket` starts with (for scripts that walk an index).
    pub(crate) fn record_prefix(&self, bucket: u16) -> String {
        let mut s = self.base(bucket).into_string();
        s.push(':');
        s
    }

    pub(crate) fn index(&self, user: &str) -> Key {
        self.base(self.user_bucket(user)).push("u").push(user)
    }

    pub(crate) fn epoch(&self, user: &str) -> Key {
        self.base(self.user_bucket(user)).push("g").push(user)
    }

    /// A fresh random id in `bucket`.
    pub(crate) fn new_id(bucket: u16) -> Id {
        let random: u128 = rand::random();
        let v = (u128::from(bucket) << RANDOM_BITS) | (random & RANDOM_MASK);
        Id(v as i128)
    }
}

/// The bucket an id carries.
pub(crate) fn bucket_of(id: &Id) -> u16 {
    ((id.0 as u128) >> RANDOM_BITS) as u16
}

/// Whether `handle` has the shape of a handle (so user input never builds odd keys).
pub(crate) fn valid_handle(handle: &str) -> bool {
    handle.len() == 22
        && handle
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && Segment::strict(handle).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_user_bucket_and_keys_share_a_slot() {
        let keys = Keys::new(&Keyspace::default(), b"secret-secret-secret-secret-1234");
        let b = keys.user_bucket("alice");
        for _ in 0..100 {
            let id = Keys::new_id(b);
            assert_eq!(bucket_of(&id), b);
            let rec = keys.record(&id);
            assert_eq!(rec.slot(), keys.index("alice").slot());
            assert_eq!(rec.slot(), keys.epoch("alice").slot());
            assert!(!rec.as_str().contains(&id.to_string()));
            assert!(valid_handle(&keys.handle(&id)));
        }
        assert_ne!(Keys::new_id(b), Keys::new_id(b));
        assert!(!valid_handle("../x"));
        assert!(!valid_handle("aaaaaaaaaaaaaaaaaaaaa:"));
    }
}
